"""Rendering of point samples into images (the synthetic objects' "rendered views") and axis rotations.

:func:`render_points` is a z-buffered splat renderer with two-sided Lambert shading on a white background;
:func:`rotation` the 3x3 rotation about a coordinate axis. Used by :mod:`.procedural`.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["render_points", "rotation"]


def rotation(axis: str, angle: float) -> np.ndarray:
    """The 3x3 rotation by ``angle`` radians about the ``"x"``, ``"y"`` or ``"z"`` axis."""
    c, s = math.cos(angle), math.sin(angle)
    if axis == "x":
        return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
    if axis == "y":
        return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


def render_points(
    xyz: np.ndarray,
    normals: np.ndarray,
    albedo: np.ndarray,
    *,
    size: int,
    azimuth: float,
    elevation: float,
    background: float = 1.0,
    fill: float = 0.86,
    splat: int = 2,
    ambient: float = 0.3,
) -> np.ndarray:
    """Rasterise dense surface samples into a ``size x size`` RGB uint8 image ``[H, W, 3]``.

    Orthographic camera on the view sphere (``azimuth`` about y, ``elevation`` above the horizon, radians)
    looking at the object; the projection is fitted to ``fill`` of the image. Every sample covers a
    ``splat x splat`` pixel footprint; a z-buffer keeps the nearest sample per pixel. Shading: two-sided
    Lambert, ``ambient + (1 - ambient) * max(0, n . l)`` with a light above-left of the camera.
    """
    R = (rotation("x", elevation) @ rotation("y", azimuth)).astype(np.float32)
    p = np.asarray(xyz, np.float32) @ R.T
    lo, hi = p[:, :2].min(0), p[:, :2].max(0)
    scale = fill * size / max(float((hi - lo).max()), 1e-9)
    centre = (lo + hi) / 2
    ui = np.floor((p[:, 0] - centre[0]) * scale + (size - splat) / 2).astype(np.int64)
    vi = np.floor((centre[1] - p[:, 1]) * scale + (size - splat) / 2).astype(np.int64)
    n_pts, offs = len(p), np.arange(splat)
    U = (ui[None, None, :] + offs[:, None, None]).reshape(-1)  # [splat * splat * n]
    V = np.broadcast_to(vi[None, None, :] + offs[None, :, None], (splat, splat, n_pts)).reshape(-1)
    U = np.broadcast_to(U.reshape(splat, 1, n_pts), (splat, splat, n_pts)).reshape(-1)
    Z = np.broadcast_to(p[:, 2], (splat, splat, n_pts)).reshape(-1)
    P = np.broadcast_to(np.arange(n_pts), (splat, splat, n_pts)).reshape(-1)
    ok = (U >= 0) & (U < size) & (V >= 0) & (V < size)
    pix, Z, P = V[ok] * size + U[ok], Z[ok], P[ok]
    zbuf = np.full(size * size, -np.inf, dtype=np.float32)
    np.maximum.at(zbuf, pix, Z)  # z-buffer: nearest (largest z) per pixel
    win = Z >= zbuf[pix]
    pix, P = pix[win], P[win]  # equal-depth ties: any of them
    n = np.asarray(normals, np.float32)[P] @ R.T
    n = np.where(n[:, 2:3] < 0, -n, n)  # two-sided: face the camera (camera looks along -z)
    light = np.array([-0.35, 0.6, 0.72], np.float32)
    light /= np.linalg.norm(light)
    shade = ambient + (1 - ambient) * np.clip(n @ light, 0, 1)
    img = np.full((size * size, 3), background, dtype=np.float32)
    img[pix] = np.clip(np.asarray(albedo, np.float32)[P] * shade[:, None], 0, 1)
    img = img.reshape(size, size, 3)
    # fill pin-holes: background pixels with >= 3 covered 4-neighbours take their mean colour
    cov = np.zeros((size + 2, size + 2), dtype=np.float32)
    covered = np.zeros(size * size, dtype=bool)
    covered[pix] = True
    cov[1:-1, 1:-1] = covered.reshape(size, size)
    pad = np.zeros((size + 2, size + 2, 3), dtype=np.float32)
    pad[1:-1, 1:-1] = img * cov[1:-1, 1:-1, None]
    nb = cov[:-2, 1:-1] + cov[2:, 1:-1] + cov[1:-1, :-2] + cov[1:-1, 2:]
    nsum = pad[:-2, 1:-1] + pad[2:, 1:-1] + pad[1:-1, :-2] + pad[1:-1, 2:]
    zp = np.full((size + 2, size + 2), np.inf, dtype=np.float32)
    zp[1:-1, 1:-1] = np.where(covered, zbuf, np.inf).reshape(size, size)
    zn = np.minimum(np.minimum(zp[:-2, 1:-1], zp[2:, 1:-1]), np.minimum(zp[1:-1, :-2], zp[1:-1, 2:]))
    see_through = (nb == 4) & (zn > zp[1:-1, 1:-1] + 0.1)  # a back face seen through a gap in the front
    hole = ((~covered.reshape(size, size)) & (nb >= 3)) | see_through
    img[hole] = nsum[hole] / nb[hole, None]
    return (img * 255 + 0.5).astype(np.uint8)
