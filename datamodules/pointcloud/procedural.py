"""Procedural 3D objects for the synthetic triplets: primitive triangle meshes (box, frustum / cylinder /
cone, sphere patch, torus arc, pyramid, prism) assembled by one builder per category with random
proportions, a random yaw and a random named colour per object (some parts get a fixed material colour:
wooden legs, black wheels, a brown trunk ...); area-weighted surface samples with normals and albedo, and
a z-buffered splat renderer (two-sided Lambert shading, white background). The y axis is up.

Parts (for part segmentation, optional): ``make_object(..., with_parts=True)`` also returns, per face, the
*primitive* it belongs to (the index of the ``_Builder.part`` call that placed it) and its *part*: the
statement of the category builder that placed the primitive (``_legs(...)`` is one part however many legs it
draws; a loop of shelves is one part), an index into :func:`part_names` ``(category)``. Part labels are fixed
per category (the builder's statements in source order); an object built by one branch of a builder (a
round table) simply lacks the parts of the other branch. ``sample_object(..., face_ids=...)`` carries any
per-face ids to the samples. Neither touches the random stream: the default outputs are unchanged.
"""

from __future__ import annotations

import ast
import inspect
import math
import sys
import textwrap
from collections.abc import Callable
from functools import lru_cache
from typing import NamedTuple

import numpy as np

from spikelight.datamodules.pointcloud.render import render_points, rotation

__all__ = [
    "CATEGORIES", "COLOURS", "COLOUR_NAMES", "ObjectParts", "make_object", "part_names", "sample_object",
    "render_points", "rotation",
]

#: named colours (linear-ish sRGB in [0, 1]); the caption uses the name
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.85, 0.12, 0.10),
    "green": (0.15, 0.62, 0.20),
    "blue": (0.14, 0.30, 0.85),
    "yellow": (0.95, 0.85, 0.12),
    "orange": (0.96, 0.50, 0.08),
    "purple": (0.52, 0.20, 0.70),
    "pink": (0.96, 0.52, 0.72),
    "brown": (0.50, 0.30, 0.12),
    "gray": (0.52, 0.52, 0.54),
    "black": (0.10, 0.10, 0.11),
    "cyan": (0.10, 0.74, 0.80),
}
COLOUR_NAMES = list(COLOURS)
_WOOD = (0.55, 0.36, 0.18)
_METAL = (0.62, 0.63, 0.66)
_DARK = (0.12, 0.12, 0.13)
_LIGHT = (0.90, 0.89, 0.86)

# ----------------------------------------------------------------------------------------------------
# unit primitive meshes (y up, fitting in [-0.5, 0.5]^3 unless stated); cached, read-only
# ----------------------------------------------------------------------------------------------------
def _grid_faces(rows: int, cols: int, wrap: bool) -> np.ndarray:
    """Quads of a (rows+1) x cols vertex grid (cols wraps around when ``wrap``) -> triangles [F, 3]."""
    i, j = np.meshgrid(np.arange(rows), np.arange(cols if wrap else cols - 1), indexing="ij")
    j1 = (j + 1) % cols
    a, b = i * cols + j, i * cols + j1
    c, d = (i + 1) * cols + j, (i + 1) * cols + j1
    return np.concatenate([np.stack([a, c, b], -1).reshape(-1, 3), np.stack([b, c, d], -1).reshape(-1, 3)])


def _frozen(v: np.ndarray, f: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    v, f = np.ascontiguousarray(v, np.float64), np.ascontiguousarray(f, np.int64)
    v.flags.writeable = False
    f.flags.writeable = False
    return v, f


@lru_cache(maxsize=None)
def _box() -> tuple[np.ndarray, np.ndarray]:
    v = np.array([[x, y, z] for x in (-0.5, 0.5) for y in (-0.5, 0.5) for z in (-0.5, 0.5)])
    quads = [(0, 1, 3, 2), (4, 6, 7, 5), (0, 4, 5, 1), (2, 3, 7, 6), (0, 2, 6, 4), (1, 5, 7, 3)]
    f = [(q[0], q[1], q[2]) for q in quads] + [(q[0], q[2], q[3]) for q in quads]
    return _frozen(v, np.array(f))


@lru_cache(maxsize=None)
def _frustum(top: float = 1.0, caps: bool = True, seg: int = 24) -> tuple[np.ndarray, np.ndarray]:
    """Radius 0.5 at y=-0.5, radius 0.5*top at y=0.5; ``top=0`` is a cone, ``caps=False`` an open tube."""
    phi = np.linspace(0, 2 * np.pi, seg, endpoint=False)
    ring = np.stack([np.cos(phi), np.zeros(seg), np.sin(phi)], 1) * 0.5
    bottom = ring + [0, -0.5, 0]
    upper = ring * [top, 0, top] + [0, 0.5, 0]
    v = [bottom, upper]
    f = [_grid_faces(1, seg, True)]
    if caps:
        v.append(np.array([[0, -0.5, 0], [0, 0.5, 0]]))
        cb, ct = 2 * seg, 2 * seg + 1
        j = np.arange(seg)
        f.append(np.stack([np.full(seg, cb), j, (j + 1) % seg], 1))
        if top > 0:
            f.append(np.stack([np.full(seg, ct), seg + (j + 1) % seg, seg + j], 1))
    return _frozen(np.concatenate(v), np.concatenate(f))


@lru_cache(maxsize=None)
def _sphere(theta0: float = 0.0, theta1: float = math.pi, nu: int = 24, nv: int = 12):
    """Sphere patch of radius 0.5 between polar angles ``theta0`` (0 = top) and ``theta1``."""
    th = np.linspace(theta0, theta1, nv + 1)
    ph = np.linspace(0, 2 * np.pi, nu, endpoint=False)
    T, P = np.meshgrid(th, ph, indexing="ij")
    v = np.stack([np.sin(T) * np.cos(P), np.cos(T), np.sin(T) * np.sin(P)], -1).reshape(-1, 3) * 0.5
    return _frozen(v, _grid_faces(nv, nu, True))


@lru_cache(maxsize=None)
def _torus(tube: float, arc: float = 2 * math.pi, nu: int = 32, nv: int = 10):
    """Torus around the y axis, major radius 1, tube radius ``tube``; ``arc < 2 pi`` gives an open arc
    centred on +x. (Size 2 + 2*tube across: scale it yourself.)"""
    closed = arc >= 2 * math.pi - 1e-9
    ph = np.linspace(-arc / 2, arc / 2, nu, endpoint=not closed)
    th = np.linspace(0, 2 * np.pi, nv, endpoint=False)
    P, T = np.meshgrid(ph, th, indexing="ij")  # rows along the arc, cols around the tube
    rr = 1 + tube * np.cos(T)
    v = np.stack([rr * np.cos(P), tube * np.sin(T), rr * np.sin(P)], -1).reshape(-1, 3)
    f = _grid_faces(nu - 1, nv, True)
    if closed:  # stitch the last row of the arc to the first
        j = np.arange(nv)
        a, b = (nu - 1) * nv + j, (nu - 1) * nv + (j + 1) % nv
        f = np.concatenate([f, np.stack([a, j, b], 1), np.stack([b, j, (j + 1) % nv], 1)])
    return _frozen(v, f)


@lru_cache(maxsize=None)
def _pyramid():
    v = np.array([[-0.5, -0.5, -0.5], [0.5, -0.5, -0.5], [0.5, -0.5, 0.5], [-0.5, -0.5, 0.5], [0, 0.5, 0]])
    f = np.array([[0, 1, 2], [0, 2, 3], [0, 4, 1], [1, 4, 2], [2, 4, 3], [3, 4, 0]])
    return _frozen(v, f)


@lru_cache(maxsize=None)
def _prism():
    """Triangular prism: cross-section (-.5,-.5), (.5,-.5), (0,.5) in xy, extruded along z in [-.5, .5]."""
    tri = np.array([[-0.5, -0.5], [0.5, -0.5], [0.0, 0.5]])
    v = np.concatenate([np.c_[tri, np.full(3, -0.5)], np.c_[tri, np.full(3, 0.5)]])
    f = np.array([[0, 2, 1], [3, 4, 5], [0, 1, 4], [0, 4, 3], [1, 2, 5], [1, 5, 4], [2, 0, 3], [2, 3, 5]])
    return _frozen(v, f)


_AX_X = rotation("z", -math.pi / 2)  # maps the primitives' y axis onto +x
_AX_Z = rotation("x", math.pi / 2)  # maps the y axis onto +z


class _Builder:
    """Collects placed parts: ``part(mesh, size, pos, colour, rot)`` puts ``mesh`` scaled by ``size``,
    rotated by ``rot`` (3x3) and translated to ``pos``."""

    def __init__(self, rng: np.random.Generator, colour: tuple[float, float, float]):
        self.rng, self.main = rng, np.asarray(colour)
        self.verts: list[np.ndarray] = []
        self.faces: list[np.ndarray] = []
        self.cols: list[np.ndarray] = []
        self.n = 0
        self.sites: list[tuple[object, int] | None] = []  # per primitive: (builder code, line) that placed it

    def u(self, a: float, b: float) -> float:
        return float(self.rng.uniform(a, b))

    def part(self, mesh, size, pos, colour=None, rot=None) -> None:
        v, f = mesh
        v = v * np.asarray(size, dtype=np.float64)
        if rot is not None:
            v = v @ np.asarray(rot).T
        v = v + np.asarray(pos, dtype=np.float64)
        col = self.main if colour is None else np.asarray(colour)
        col = np.clip(col + self.rng.uniform(-0.04, 0.04, 3), 0, 1)  # slight per-part tint
        self.verts.append(v)
        self.faces.append(f + self.n)
        self.cols.append(np.broadcast_to(col, (len(f), 3)))
        self.n += len(v)
        self.sites.append(_builder_site())

    # shorthands
    def box(self, size, pos, colour=None, rot=None):
        self.part(_box(), size, pos, colour, rot)

    def cyl(self, r, h, pos, colour=None, axis="y", top=1.0, caps=True, seg=24, rz=None):
        rot = {"y": None, "x": _AX_X, "z": _AX_Z}[axis]
        rz = r if rz is None else rz
        self.part(_frustum(round(top, 3), caps, seg), (2 * r, h, 2 * rz), pos, colour, rot)

    def mesh(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return (
            np.concatenate(self.verts),
            np.concatenate(self.faces),
            np.concatenate(self.cols).astype(np.float64),
        )


def _builder_site() -> tuple[object, int] | None:
    """``(code, line)`` of the category-builder statement running now (the innermost frame whose code is
    one of :data:`CATEGORIES`' builders); ``None`` outside a builder. Reads frames only (no random draw)."""
    frame = sys._getframe(2)
    codes = _builder_codes()
    while frame is not None:
        if frame.f_code in codes:
            return frame.f_code, frame.f_lineno
        frame = frame.f_back
    return None


def _legs(b: _Builder, xs: float, zs: float, h: float, t: float, colour, round_legs: bool) -> None:
    for sx in (-1, 1):
        for sz in (-1, 1):
            pos = (sx * xs, h / 2, sz * zs)
            if round_legs:
                b.cyl(t / 2, h, pos, colour, seg=10)
            else:
                b.box((t, h, t), pos, colour)


# ----------------------------------------------------------------------------------------------------
# category builders (each draws its own proportions)
# ----------------------------------------------------------------------------------------------------
def _c_box(b: _Builder):
    sx, sy, sz = b.u(0.4, 1.0), b.u(0.4, 1.0), b.u(0.4, 1.0)
    b.box((sx, sy, sz), (0, sy / 2, 0))


def _c_cylinder(b: _Builder):
    r, h = b.u(0.2, 0.45), b.u(0.5, 1.3)
    b.cyl(r, h, (0, h / 2, 0))


def _c_cone(b: _Builder):
    r, h = b.u(0.25, 0.5), b.u(0.6, 1.3)
    b.cyl(r, h, (0, h / 2, 0), top=0.0)


def _c_sphere(b: _Builder):
    d = b.u(0.6, 1.0)
    b.part(_sphere(), (d, d * b.u(0.9, 1.1), d), (0, 0, 0))


def _torus_like(b: _Builder, tube: float):
    tilt = b.u(0, math.pi / 2) if b.rng.random() < 0.5 else 0.0
    b.part(_torus(round(tube, 2)), (0.5, 0.5, 0.5), (0, 0, 0), rot=rotation("x", tilt))


def _c_torus(b: _Builder):
    _torus_like(b, b.u(0.28, 0.5))


def _c_ring(b: _Builder):
    _torus_like(b, b.u(0.05, 0.1))


def _c_pyramid(b: _Builder):
    w, h = b.u(0.6, 1.0), b.u(0.5, 1.2)
    b.part(_pyramid(), (w, h, w * b.u(0.9, 1.1)), (0, h / 2, 0))


def _c_chair(b: _Builder):
    w, d, hs, t = b.u(0.45, 0.6), b.u(0.45, 0.6), b.u(0.4, 0.55), b.u(0.04, 0.07)
    legc = _WOOD if b.rng.random() < 0.5 else None
    lt = b.u(0.035, 0.06)
    _legs(b, w / 2 - lt / 2, d / 2 - lt / 2, hs, lt, legc, b.rng.random() < 0.5)
    b.box((w, t, d), (0, hs + t / 2, 0))
    hb = b.u(0.4, 0.65)
    b.box((w, hb, t), (0, hs + t + hb / 2, -d / 2 + t / 2))


def _c_table(b: _Builder):
    h, t = b.u(0.6, 0.8), b.u(0.03, 0.06)
    topc = None
    legc = _WOOD if b.rng.random() < 0.4 else None
    if b.rng.random() < 0.3:  # round table on a pedestal
        r = b.u(0.45, 0.7)
        b.cyl(r, t, (0, h - t / 2, 0), topc, seg=32)
        b.cyl(b.u(0.04, 0.07), h - t, (0, (h - t) / 2, 0), legc, seg=12)
        b.cyl(r * 0.45, 0.04, (0, 0.02, 0), legc, seg=24)
    else:
        w, d, lt = b.u(0.9, 1.5), b.u(0.6, 0.9), b.u(0.05, 0.08)
        b.box((w, t, d), (0, h - t / 2, 0), topc)
        _legs(b, w / 2 - lt, d / 2 - lt, h - t, lt, legc, b.rng.random() < 0.4)


def _c_stool(b: _Builder):
    r, h, t = b.u(0.16, 0.25), b.u(0.45, 0.75), b.u(0.04, 0.07)
    b.cyl(r, t, (0, h - t / 2, 0), seg=24)
    n = 3 if b.rng.random() < 0.5 else 4
    legc = _WOOD if b.rng.random() < 0.5 else _METAL
    for k in range(n):
        a = 2 * math.pi * k / n + math.pi / 4
        b.cyl(0.02, h - t, (0.75 * r * math.cos(a), (h - t) / 2, 0.75 * r * math.sin(a)), legc, seg=8)


def _c_bench(b: _Builder):
    L, d, h, t = b.u(1.3, 1.9), b.u(0.3, 0.45), b.u(0.4, 0.5), b.u(0.04, 0.07)
    legc = _METAL if b.rng.random() < 0.5 else _DARK
    b.box((L, t, d), (0, h - t / 2, 0))
    for sx in (-1, 1):  # slab legs at both ends
        b.box((0.05, h - t, d * 0.9), (sx * (L / 2 - 0.12), (h - t) / 2, 0), legc)
    if b.rng.random() < 0.5:  # park bench with a back
        hb = b.u(0.25, 0.4)
        b.box((L, hb, t), (0, h + 0.05 + hb / 2, -d / 2 + t / 2))


def _c_bed(b: _Builder):
    w, L, h = b.u(0.9, 1.4), b.u(1.7, 2.1), b.u(0.2, 0.3)
    b.box((w, h, L), (0, 0.08 + h / 2, 0))
    for sx in (-1, 1):
        for sz in (-1, 1):
            b.box((0.06, 0.08, 0.06), (sx * (w / 2 - 0.05), 0.04, sz * (L / 2 - 0.05)), _DARK)
    mh = b.u(0.12, 0.2)
    b.box((w * 0.96, mh, L * 0.96), (0, 0.08 + h + mh / 2, 0.01), _LIGHT)
    hb = b.u(0.5, 0.8)
    b.box((w, hb, 0.06), (0, hb / 2, -L / 2 - 0.03))
    b.box((w * 0.4, 0.08, 0.25), (0, 0.08 + h + mh + 0.04, -L / 2 + 0.2), _LIGHT)


def _c_shelf(b: _Builder):
    W, H, D, t = b.u(0.6, 1.0), b.u(1.0, 1.8), b.u(0.25, 0.4), 0.04
    for sx in (-1, 1):
        b.box((t, H, D), (sx * (W / 2 - t / 2), H / 2, 0))
    n = int(b.rng.integers(3, 6))
    for k in range(n):
        y = t / 2 + k * (H - t) / (n - 1)
        b.box((W - 2 * t, t, D), (0, y, 0))
    b.box((W, H, 0.02), (0, H / 2, -D / 2 + 0.01))


def _c_sofa(b: _Builder):
    W, D, hs = b.u(1.4, 2.0), b.u(0.7, 0.9), b.u(0.35, 0.45)
    b.box((W, hs - 0.08, D), (0, 0.08 + (hs - 0.08) / 2, 0))
    hb, tb = b.u(0.35, 0.5), b.u(0.15, 0.22)
    b.box((W, hb, tb), (0, hs + hb / 2, -D / 2 + tb / 2))
    ha, ta = b.u(0.15, 0.25), b.u(0.12, 0.2)
    for sx in (-1, 1):
        b.box((ta, ha, D), (sx * (W / 2 + ta / 2), hs + ha / 2 - 0.08, 0))
    _legs(b, W / 2 - 0.06, D / 2 - 0.06, 0.08, 0.05, _DARK, False)


def _c_mug(b: _Builder):
    r, h = b.u(0.22, 0.32), b.u(0.45, 0.7)
    b.cyl(r, h, (0, h / 2, 0), caps=False, seg=28)
    b.cyl(r, 0.02, (0, 0.01, 0), seg=28)
    hr = h * b.u(0.22, 0.3)
    b.part(_torus(0.18, math.pi * 1.1), (hr, hr, hr), (r + hr * 0.2, h * 0.5, 0), rot=rotation("x", math.pi / 2))


def _c_bowl(b: _Builder):
    r, depth = b.u(0.45, 0.6), b.u(0.45, 0.8)
    b.part(_sphere(math.pi / 2, math.pi), (2 * r, 2 * r * depth, 2 * r), (0, r * depth, 0))
    b.cyl(r * 0.4, 0.05, (0, 0.025, 0), seg=24)


def _c_bottle(b: _Builder):
    r, h = b.u(0.14, 0.22), b.u(0.5, 0.8)
    b.cyl(r, h, (0, h / 2, 0), seg=24)
    sh, nr = b.u(0.1, 0.2), r * b.u(0.3, 0.45)
    b.cyl(r, sh, (0, h + sh / 2, 0), top=nr / r, caps=False, seg=24)
    nh = b.u(0.12, 0.25)
    b.cyl(nr, nh, (0, h + sh + nh / 2, 0), caps=False, seg=16)
    b.cyl(nr * 1.15, 0.06, (0, h + sh + nh + 0.03, 0), _DARK if b.rng.random() < 0.5 else _LIGHT, seg=16)


def _c_lamp(b: _Builder):
    H = b.u(0.7, 1.3)
    basec = _METAL if b.rng.random() < 0.5 else _DARK
    b.cyl(b.u(0.15, 0.25), 0.05, (0, 0.025, 0), basec, seg=24)
    b.cyl(0.02, H, (0, H / 2, 0), basec, seg=8)
    sr, sh = b.u(0.2, 0.32), b.u(0.22, 0.35)
    b.cyl(sr, sh, (0, H + sh * 0.3, 0), top=b.u(0.45, 0.7), caps=False, seg=28)


def _c_car(b: _Builder):
    L, W, hb, wr = b.u(1.5, 2.0), b.u(0.7, 0.9), b.u(0.28, 0.38), b.u(0.15, 0.2)
    b.box((L, hb, W), (0, wr + hb / 2, 0))
    cl, ch = L * b.u(0.45, 0.6), hb * b.u(0.7, 1.0)
    b.box(
        (cl, ch, W * 0.88),
        (-L * b.u(0.0, 0.1), wr + hb + ch / 2, 0),
        _LIGHT if b.rng.random() < 0.3 else None,
    )
    for sx in (-1, 1):
        for sz in (-1, 1):
            b.cyl(wr, 0.12, (sx * L * 0.32, wr, sz * (W / 2)), _DARK, axis="z", seg=16)


def _c_airplane(b: _Builder):
    L, r = b.u(1.6, 2.0), b.u(0.07, 0.11)
    b.cyl(r, L * 0.7, (0, 0, 0), axis="x", caps=False, seg=16)
    b.cyl(r, L * 0.12, (L * 0.35 + L * 0.06, 0, 0), axis="x", top=0.0, caps=False, seg=16)
    b.cyl(r, L * 0.18, (-L * 0.35 - L * 0.09, 0, 0), axis="x", top=0.25, caps=False, seg=16, rz=None)
    span, chord = b.u(1.4, 2.0), b.u(0.22, 0.35)
    wc = None if b.rng.random() < 0.6 else _LIGHT
    b.box((chord, 0.03, span), (b.u(-0.05, 0.1), -r * 0.3, 0), wc)
    b.box((chord * 0.6, 0.025, span * 0.35), (-L * 0.45, 0, 0), wc)
    fh = b.u(0.2, 0.3)
    b.box((chord * 0.6, fh, 0.025), (-L * 0.45, fh / 2 + r * 0.5, 0), wc)


def _c_tree(b: _Builder):
    th, tr = b.u(0.3, 0.55), b.u(0.05, 0.09)
    b.cyl(tr, th, (0, th / 2, 0), _WOOD, seg=10)
    if b.rng.random() < 0.5:  # broadleaf
        d = b.u(0.6, 0.9)
        b.part(_sphere(), (d, d * b.u(0.9, 1.3), d), (0, th + d * 0.4, 0))
    else:  # pine: stacked cones
        n, r0 = int(b.rng.integers(2, 4)), b.u(0.3, 0.45)
        y = th * 0.8
        for k in range(n):
            rk, hk = r0 * (1 - 0.22 * k), b.u(0.35, 0.5)
            b.cyl(rk, hk, (0, y + hk / 2, 0), top=0.0, seg=20)
            y += hk * 0.55


def _c_house(b: _Builder):
    W, H, D = b.u(0.8, 1.2), b.u(0.5, 0.8), b.u(0.7, 1.0)
    b.box((W, H, D), (0, H / 2, 0))
    rh = b.u(0.3, 0.55)
    roofc = [(0.55, 0.15, 0.1), _DARK, (0.35, 0.22, 0.12)][int(b.rng.integers(3))]
    b.part(_prism(), (W * 1.1, rh, D * 1.1), (0, H + rh / 2, 0), roofc)
    b.box((0.18, 0.32, 0.02), (b.u(-0.2, 0.2) * W, 0.16, D / 2 + 0.01), _DARK)


def _c_rocket(b: _Builder):
    r, h = b.u(0.1, 0.16), b.u(0.9, 1.4)
    b.cyl(r, h, (0, h / 2 + 0.1, 0), caps=False, seg=20)
    nh = b.u(0.2, 0.35)
    b.cyl(r, nh, (0, h + 0.1 + nh / 2, 0), top=0.0, caps=False, seg=20)
    b.cyl(r * 0.8, 0.1, (0, 0.05, 0), _DARK, top=1.3, seg=16)
    n, fc = int(b.rng.integers(3, 5)), _LIGHT if b.rng.random() < 0.5 else _DARK
    for k in range(n):
        a = 2 * math.pi * k / n
        fl = b.u(0.15, 0.25)
        b.box(
            (fl, 0.3, 0.02), ((r + fl / 2) * math.cos(a), 0.25, (r + fl / 2) * math.sin(a)), fc, rotation("y", -a)
        )


def _c_dumbbell(b: _Builder):
    L = b.u(0.6, 0.9)
    b.cyl(0.03, L, (0, 0, 0), _METAL, axis="x", seg=10)
    if b.rng.random() < 0.5:
        d = b.u(0.25, 0.35)
        for sx in (-1, 1):
            b.part(_sphere(), (d, d, d), (sx * L / 2, 0, 0))
    else:
        wr, wl = b.u(0.14, 0.2), b.u(0.12, 0.2)
        for sx in (-1, 1):
            b.cyl(wr, wl, (sx * (L / 2 - wl / 2 + 0.05), 0, 0), axis="x", seg=20)


def _c_mushroom(b: _Builder):
    sr, sh = b.u(0.07, 0.13), b.u(0.3, 0.5)
    b.cyl(sr, sh, (0, sh / 2, 0), _LIGHT, seg=14)
    cr, ch = b.u(0.3, 0.5), b.u(0.3, 0.6)
    b.part(_sphere(0.0, math.pi / 2), (2 * cr, 2 * cr * ch, 2 * cr), (0, sh, 0))
    b.cyl(cr, 0.01, (0, sh, 0), _LIGHT, seg=24)


def _c_snowman(b: _Builder):
    y = 0.0
    for d in (b.u(0.55, 0.7), b.u(0.4, 0.5), b.u(0.28, 0.36)):
        b.part(_sphere(), (d, d, d), (0, y + d / 2, 0))
        y += d * 0.85
    b.cyl(0.03, 0.15, (0, y - 0.1, 0.2), (0.95, 0.5, 0.1), axis="z", top=0.0, seg=8)
    b.cyl(0.14, 0.2, (0, y + 0.1, 0), _DARK, seg=16)


def _c_monitor(b: _Builder):
    W, H = b.u(0.9, 1.4), b.u(0.55, 0.8)
    y0 = b.u(0.2, 0.3)
    b.box((W, H, 0.05), (0, y0 + H / 2, 0))
    b.box((W * 0.92, H * 0.88, 0.01), (0, y0 + H / 2, 0.03), _DARK)
    b.box((0.08, y0, 0.05), (0, y0 / 2, -0.03), _METAL)
    b.box((W * 0.35, 0.03, 0.25), (0, 0.015, 0), _METAL)


#: category name -> builder; order defines the category index
CATEGORIES: dict[str, Callable[[_Builder], None]] = {
    "box": _c_box, "cylinder": _c_cylinder, "cone": _c_cone, "sphere": _c_sphere, "torus": _c_torus,
    "ring": _c_ring, "pyramid": _c_pyramid, "chair": _c_chair, "table": _c_table, "stool": _c_stool,
    "bench": _c_bench, "bed": _c_bed, "shelf": _c_shelf, "sofa": _c_sofa, "mug": _c_mug, "bowl": _c_bowl,
    "bottle": _c_bottle, "lamp": _c_lamp, "car": _c_car, "airplane": _c_airplane, "tree": _c_tree,
    "house": _c_house, "rocket": _c_rocket, "dumbbell": _c_dumbbell, "mushroom": _c_mushroom,
    "snowman": _c_snowman, "monitor": _c_monitor,
}  # fmt: skip


@lru_cache(maxsize=None)
def _builder_codes() -> frozenset:
    return frozenset(fn.__code__ for fn in CATEGORIES.values())


_PART_CALLS = {"part", "box", "cyl", "_legs", "_torus_like"}  # calls that place primitives


def _call_name(node: ast.Call) -> str | None:
    fn = node.func
    if isinstance(fn, ast.Attribute) and isinstance(fn.value, ast.Name) and fn.value.id == "b":
        return fn.attr
    return fn.id if isinstance(fn, ast.Name) else None


@lru_cache(maxsize=None)
def _part_statements(category: str) -> tuple[tuple[int, int, str], ...]:
    """The primitive-placing calls of a category builder in source order: ``(first line, last line,
    source text)`` (absolute line numbers of the module)."""
    fn = CATEGORIES[category]
    lines, first = inspect.getsourcelines(fn)
    tree = ast.parse(textwrap.dedent("".join(lines)))
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and _call_name(n) in _PART_CALLS]
    calls.sort(key=lambda n: (n.lineno, n.col_offset))
    src = textwrap.dedent("".join(lines))
    out = []
    for n in calls:
        text = " ".join((ast.get_source_segment(src, n) or _call_name(n) or "?").split())
        out.append((first + n.lineno - 1, first + n.end_lineno - 1, text))
    return tuple(out)


def part_names(category: str) -> list[str]:
    """The part labels of ``category``: one per primitive-placing statement of its builder, in source order
    (a short text of the statement, e.g. ``"_legs(b, w / 2 - lt / 2, ...)"``)."""
    if category not in CATEGORIES:
        raise KeyError(f"unknown synthetic category {category!r}; choose from {list(CATEGORIES)}")
    return [text if len(text) <= 60 else text[:57] + "..." for _, _, text in _part_statements(category)]


def _part_of_site(category: str, site: tuple[object, int] | None) -> int:
    if site is not None and site[0] is CATEGORIES[category].__code__:
        for k, (lo, hi, _) in enumerate(_part_statements(category)):
            if lo <= site[1] <= hi:
                return k
    raise RuntimeError(f"synthetic {category!r}: a primitive was placed outside the builder's part statements "
                       f"(site {site}); parts are the builder's calls of {sorted(_PART_CALLS)}")


class ObjectParts(NamedTuple):
    """Per-face ids of a built object: ``primitive [F]`` (index of the ``_Builder.part`` call that placed the
    face) and ``part [F]`` (index into :func:`part_names` ``(category)``)."""

    primitive: np.ndarray
    part: np.ndarray


def make_object(category: str, rng: np.random.Generator, *, with_parts: bool = False):
    """Build one random object: ``vertices [V, 3]``, ``faces [F, 3]``, per-face albedo ``[F, 3]`` and the
    colour name. A random yaw about y is applied. ``with_parts=True`` appends an :class:`ObjectParts`
    (per-face primitive and part ids); the random stream and the other outputs are the same either way."""
    if category not in CATEGORIES:
        raise KeyError(f"unknown synthetic category {category!r}; choose from {list(CATEGORIES)}")
    cname = COLOUR_NAMES[int(rng.integers(len(COLOUR_NAMES)))]
    b = _Builder(rng, COLOURS[cname])
    CATEGORIES[category](b)
    v, f, col = b.mesh()
    v = v @ rotation("y", float(rng.uniform(0, 2 * math.pi))).T
    if not with_parts:
        return v, f, col, cname
    sizes = [len(fk) for fk in b.faces]
    prim = np.repeat(np.arange(len(sizes), dtype=np.int64), sizes)
    part_of_prim = np.array([_part_of_site(category, s) for s in b.sites], dtype=np.int64)
    return v, f, col, cname, ObjectParts(prim, part_of_prim[prim])


def sample_object(
    vertices: np.ndarray, faces: np.ndarray, face_colours: np.ndarray, n: int, rng: np.random.Generator,
    *, face_ids: np.ndarray | None = None,
):
    """Area-weighted surface samples: xyz ``[n, 3]``, unit face normals ``[n, 3]``, albedo ``[n, 3]``; with
    ``face_ids`` (any per-face array, e.g. :attr:`ObjectParts.part`) also the samples' ids ``[n]`` (same random
    draws: the first three outputs do not depend on it)."""
    a, b, c = vertices[faces[:, 0]], vertices[faces[:, 1]], vertices[faces[:, 2]]
    cr = np.cross(b - a, c - a)
    area2 = np.linalg.norm(cr, axis=1)
    normals = cr / np.maximum(area2, 1e-12)[:, None]
    cdf = np.cumsum(area2)
    fi = np.searchsorted(cdf, rng.random(n) * cdf[-1], side="right").clip(max=len(faces) - 1)
    u, w = rng.random(n), rng.random(n)
    flip = u + w > 1
    u[flip], w[flip] = 1 - u[flip], 1 - w[flip]
    pts = a[fi] + u[:, None] * (b[fi] - a[fi]) + w[:, None] * (c[fi] - a[fi])
    if face_ids is not None:
        return pts, normals[fi], face_colours[fi], np.asarray(face_ids)[fi]
    return pts, normals[fi], face_colours[fi]
