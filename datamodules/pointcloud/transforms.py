"""Point-cloud sampling and augmentation (the SVL / ULIP / OpenShape recipe).

Layouts
-------
* a single cloud is a tensor ``[M, C]`` with ``C >= 3``: columns ``0:3`` are xyz, columns ``3:6`` (when
  present) are rgb in ``[0, 1]``;
* batched xyz for :func:`farthest_point_sample` (``spikelight.models.pointops``, the one FPS) is ``[B, N, 3]``.

Every random operation takes an optional ``torch.Generator``. With a seeded generator the result is
reproducible; with ``None`` the global torch RNG is used (which Lightning's ``seed_everything`` and the
DataLoader's per-worker seeding make reproducible as well).

The default "up" axis is ``y`` (index 1), as in ModelNet40 ``normal_resampled`` and ULIP ShapeNet-55.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from spikelight.models.pointops import farthest_point_sample

__all__ = [
    "RGB_DEFAULT",
    "farthest_point_sample",
    "sample_points",
    "normalize_unit_sphere",
    "random_point_dropout",
    "random_scale_shift",
    "random_rotation_jitter",
    "random_rotate_up",
    "random_rgb_drop",
    "ensure_rgb",
    "PointCloudTransform",
]

#: colour used when a format has no colour, or when rgb is dropped (SVL / OpenShape recipe)
RGB_DEFAULT = 0.4


def _rand(shape: Sequence[int] | int, generator: torch.Generator | None, device=None) -> Tensor:
    if isinstance(shape, int):
        shape = (shape,)
    return torch.rand(*shape, generator=generator, device=device)


def sample_points(
    points: Tensor,
    n: int,
    *,
    method: str = "random",
    generator: torch.Generator | None = None,
) -> Tensor:
    """Return exactly ``n`` rows of ``points`` ``[M, C]``.

    ``method``: ``"random"`` (uniform without replacement), ``"fps"`` (farthest point sampling, start at
    index 0), ``"first"`` (the first ``n`` rows, as PointNet++ does on ModelNet40). When ``M < n``, all
    points are kept and the missing rows are random duplicates (drawn with replacement).
    """
    M = points.shape[0]
    if M == 0:
        raise ValueError("sample_points: empty point cloud")
    if M < n:
        extra = torch.randint(0, M, (n - M,), generator=generator)
        return torch.cat([points, points[extra]], 0)
    if M == n:
        return points
    if method == "random":
        sel = torch.randperm(M, generator=generator)[:n]
    elif method == "fps":
        sel = farthest_point_sample(points[None, :, :3], n)[0]
    elif method == "first":
        sel = torch.arange(n)
    else:
        raise ValueError(f"unknown sampling method {method!r}; expected 'random', 'fps' or 'first'")
    return points[sel]


def normalize_unit_sphere(points: Tensor) -> Tensor:
    """Centre xyz at the centroid and scale so the farthest point lies on the unit sphere.

    ``points`` ``[M, C]`` (or ``[B, M, C]``); only ``[..., :3]`` changes. A degenerate cloud (all points
    equal) is centred and left unscaled.
    """
    xyz = points[..., :3]
    xyz = xyz - xyz.mean(-2, keepdim=True)
    r = xyz.norm(dim=-1).amax(-1, keepdim=True)[..., None]
    xyz = xyz / torch.where(r > 1e-12, r, torch.ones_like(r))
    return torch.cat([xyz, points[..., 3:]], -1)


def ensure_rgb(points: Tensor, rgb_default: float = RGB_DEFAULT) -> Tensor:
    """``[M, 3]`` -> ``[M, 6]`` with constant rgb; ``[M, >=6]`` -> first 6 columns."""
    if points.shape[-1] >= 6:
        return points[..., :6]
    if points.shape[-1] != 3:
        raise ValueError(f"expected 3 (xyz) or >= 6 (xyz+rgb) channels, got {points.shape[-1]}")
    return torch.cat([points, torch.full_like(points, rgb_default)], -1)


def random_point_dropout(
    points: Tensor, *, max_ratio: float = 0.875, generator: torch.Generator | None = None
) -> Tensor:
    """PointNet++-style dropout: draw ``r ~ U(0, max_ratio)``, drop each point with probability ``r``
    and overwrite the dropped rows with the first row (the count of rows stays the same)."""
    ratio = float(_rand(1, generator)) * max_ratio
    drop = _rand(points.shape[0], generator) <= ratio
    drop[0] = False
    return torch.where(drop[:, None], points[0:1], points)


def random_scale_shift(
    points: Tensor,
    *,
    scale: tuple[float, float] = (0.8, 1.25),
    shift: float = 0.1,
    anisotropic: bool = False,
    generator: torch.Generator | None = None,
) -> Tensor:
    """xyz * s + t with ``s ~ U(scale)`` (one factor, or one per axis when ``anisotropic``) and
    ``t ~ U(-shift, shift)^3``."""
    k = 3 if anisotropic else 1
    s = scale[0] + (scale[1] - scale[0]) * _rand(k, generator)
    t = (2 * _rand(3, generator) - 1) * shift
    xyz = points[:, :3] * s.to(points) + t.to(points)
    return torch.cat([xyz, points[:, 3:]], 1)


def _rotation_matrix(angles: Tensor) -> Tensor:
    """Euler angles ``[3]`` (about x, y, z) -> ``R = Rz @ Ry @ Rx`` ``[3, 3]``."""
    ax, ay, az = (float(a) for a in angles)
    cx, sx, cy, sy, cz, sz = (
        math.cos(ax),
        math.sin(ax),
        math.cos(ay),
        math.sin(ay),
        math.cos(az),
        math.sin(az),
    )
    rx = torch.tensor([[1, 0, 0], [0, cx, -sx], [0, sx, cx]], dtype=torch.float32)
    ry = torch.tensor([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]], dtype=torch.float32)
    rz = torch.tensor([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]], dtype=torch.float32)
    return rz @ ry @ rx


def _apply_rotation(points: Tensor, rot: Tensor) -> Tensor:
    """xyz @ rot.T, written as three broadcast multiply-adds (a 3x3 matmul through BLAS is slow and
    thread-bound for a single small cloud)."""
    rot = rot.to(points)
    xyz = points[:, 0:1] * rot[:, 0] + points[:, 1:2] * rot[:, 1] + points[:, 2:3] * rot[:, 2]
    return torch.cat([xyz, points[:, 3:]], 1)


def random_rotation_jitter(
    points: Tensor, *, sigma: float = 0.06, clip: float = 0.18, generator: torch.Generator | None = None
) -> Tensor:
    """Small rotation about all three axes: angles ``clip(N(0, sigma), -clip, clip)`` radians."""
    angles = (torch.randn(3, generator=generator) * sigma).clamp(-clip, clip)
    return _apply_rotation(points, _rotation_matrix(angles))


def random_rotate_up(points: Tensor, *, up_axis: int = 1, generator: torch.Generator | None = None) -> Tensor:
    """Rotation by a uniform angle in ``[0, 2 pi)`` about the ``up_axis`` (0=x, 1=y, 2=z)."""
    angles = torch.zeros(3)
    angles[up_axis] = float(_rand(1, generator)) * 2 * math.pi
    return _apply_rotation(points, _rotation_matrix(angles))


def random_rgb_drop(
    points: Tensor, *, p: float = 0.5, value: float = RGB_DEFAULT, generator: torch.Generator | None = None
) -> Tensor:
    """With probability ``p`` set the rgb columns ``3:6`` to ``value``."""
    if points.shape[1] < 6:
        return points
    if float(_rand(1, generator)) < p:
        points = points.clone()
        points[:, 3:6] = value
    return points


class PointCloudTransform:
    """Sampling + normalisation + (optional) SVL augmentation, on one cloud.

    ``__call__(points [M, 3|>=6], generator=None) -> [num_points, 6]`` float32: xyz then rgb in
    ``[0, 1]`` (constant ``rgb_default`` when the input has no colour). Order: sample ``num_points``
    rows, normalise to the unit sphere, then (``augment=True``) point dropout, scale / shift, rotation
    jitter, rotation about the up axis, rgb drop. Without augmentation the output lies in the unit
    sphere.

    Args:
        num_points: rows in the output (``None`` keeps all rows).
        sampling: ``"random"``, ``"fps"`` or ``"first"`` (see :func:`sample_points`).
        normalize: centre + scale to the unit sphere.
        augment: apply the random augmentations below.
        dropout_max: max point-dropout ratio (0 disables).
        scale: range of the random scale (``None`` disables scale and shift).
        shift: max absolute random translation per axis.
        jitter_sigma / jitter_clip: rotation jitter in radians (``jitter_sigma=0`` disables).
        rotate_up: random rotation about ``up_axis``.
        rgb_drop_p: probability of replacing the colour by ``rgb_default``.
    """

    def __init__(
        self,
        *,
        num_points: int | None = 1024,
        sampling: str = "random",
        normalize: bool = True,
        augment: bool = False,
        dropout_max: float = 0.875,
        scale: tuple[float, float] | None = (0.8, 1.25),
        shift: float = 0.1,
        jitter_sigma: float = 0.06,
        jitter_clip: float = 0.18,
        rotate_up: bool = True,
        up_axis: int = 1,
        rgb_drop_p: float = 0.5,
        rgb_default: float = RGB_DEFAULT,
    ) -> None:
        if sampling not in ("random", "fps", "first"):
            raise ValueError(f"unknown sampling {sampling!r}; expected 'random', 'fps' or 'first'")
        self.num_points = num_points
        self.sampling = sampling
        self.normalize = normalize
        self.augment = augment
        self.dropout_max = dropout_max
        self.scale = tuple(scale) if scale is not None else None
        self.shift = shift
        self.jitter_sigma = jitter_sigma
        self.jitter_clip = jitter_clip
        self.rotate_up = rotate_up
        self.up_axis = up_axis
        self.rgb_drop_p = rgb_drop_p
        self.rgb_default = rgb_default

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(num_points={self.num_points}, sampling={self.sampling!r}, "
            f"normalize={self.normalize}, augment={self.augment})"
        )

    def __call__(self, points: Tensor, generator: torch.Generator | None = None) -> Tensor:
        if not torch.is_tensor(points):
            points = torch.as_tensor(points)
        pts = ensure_rgb(points.float(), self.rgb_default)
        if self.num_points is not None:
            pts = sample_points(pts, self.num_points, method=self.sampling, generator=generator)
        if self.normalize:
            pts = normalize_unit_sphere(pts)
        if self.augment:
            if self.dropout_max > 0:
                pts = random_point_dropout(pts, max_ratio=self.dropout_max, generator=generator)
            if self.scale is not None:
                pts = random_scale_shift(pts, scale=self.scale, shift=self.shift, generator=generator)
            if self.jitter_sigma > 0:
                pts = random_rotation_jitter(
                    pts, sigma=self.jitter_sigma, clip=self.jitter_clip, generator=generator
                )
            if self.rotate_up:
                pts = random_rotate_up(pts, up_axis=self.up_axis, generator=generator)
            if self.rgb_drop_p > 0:
                pts = random_rgb_drop(pts, p=self.rgb_drop_p, value=self.rgb_default, generator=generator)
        return pts.contiguous()
