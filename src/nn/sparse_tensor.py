"""Sparse voxel tensors: :class:`SparseTensor`, kernel maps, voxelisation and global pooling.

The convolutions that consume them are in :mod:`spikelight.nn.sparse_conv` (which re-exports
everything here).

Sparse tensor
-------------
:class:`SparseTensor` holds the occupied sites of a batch of voxel grids:

* ``features``: ``[M, C]`` or, with a time axis, ``[T, M, C]`` (every timestep shares the sites;
  a site with no input at step ``t`` simply has zero features there).
* ``indices``: ``[M, 4]`` integer ``(batch, i0, i1, i2)``. The three spatial columns are in the
  same order as ``spatial_shape`` and as the kernel axes of the weights. :func:`voxelize` writes
  ``(batch, x, y, z)`` (the points' own channel order); spconv users often write ``(batch, z, y,
  x)``. Either works: the convolution only needs indices, shape and weights to agree.
* ``spatial_shape``: ``(S0, S1, S2)``; ``batch_size``: ``B``.
* ``cache``: kernel maps, shared by every tensor derived from the same input (so one forward
  pass builds each map once and drops them all when the tensors go away).

Kernel maps
-----------
Coordinates are hashed to int64 keys ``((b S0 + i0) S1 + i1) S2 + i2``, sorted once, and every
kernel offset is looked up with ``torch.searchsorted``. The result (a *kernel map*: for each
offset the pairs ``(input row, output row)``) is what a sparse convolution gathers and scatters
along; see :mod:`spikelight.nn.sparse_conv` for the convolution semantics it implements.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

__all__ = [
    "KernelMap",
    "SparseTensor",
    "build_kernel_map",
    "global_max_pool",
    "global_mean_pool",
    "voxelize",
]


def _triple(v, name: str) -> tuple[int, int, int]:
    if isinstance(v, int):
        v = (v, v, v)
    v = tuple(int(a) for a in v)
    if len(v) != 3:
        raise ValueError(f"{name} must be an int or 3 ints, got {v}")
    return v  # type: ignore[return-value]


# ---------------------------------------------------------------------------------------------
# Sparse tensor
# ---------------------------------------------------------------------------------------------


@dataclass
class SparseTensor:
    """Occupied sites of ``batch_size`` voxel grids (see the module docstring for the layout).

    Attributes:
        features: ``[M, C]`` or ``[T, M, C]`` float.
        indices: ``[M, 4]`` int64 ``(batch, i0, i1, i2)``.
        spatial_shape: ``(S0, S1, S2)``.
        batch_size: ``B``.
        cache: kernel-map cache shared with derived tensors.
    """

    features: Tensor
    indices: Tensor
    spatial_shape: tuple[int, int, int]
    batch_size: int
    cache: dict = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.indices.dim() != 2 or self.indices.shape[1] != 4:
            raise ValueError(f"indices must be [M, 4] (batch, i0, i1, i2), got {tuple(self.indices.shape)}")
        if self.features.dim() not in (2, 3) or self.features.shape[-2] != self.indices.shape[0]:
            raise ValueError(
                f"features must be [M, C] or [T, M, C] with M = {self.indices.shape[0]} sites, "
                f"got {tuple(self.features.shape)}"
            )
        if self.indices.is_floating_point():
            raise TypeError("indices must be an integer tensor")
        self.spatial_shape = _triple(self.spatial_shape, "spatial_shape")
        self.batch_size = int(self.batch_size)

    @property
    def num_sites(self) -> int:
        return int(self.indices.shape[0])

    @property
    def num_channels(self) -> int:
        return int(self.features.shape[-1])

    @property
    def timesteps(self) -> int | None:
        """``T`` for ``[T, M, C]`` features, ``None`` for ``[M, C]``."""
        return int(self.features.shape[0]) if self.features.dim() == 3 else None

    def replace_feature(self, features: Tensor) -> SparseTensor:
        """Same sites (and kernel-map cache), new features ``[M, C']`` / ``[T, M, C']``."""
        return SparseTensor(features, self.indices, self.spatial_shape, self.batch_size, self.cache)

    def to(self, *args, **kwargs) -> SparseTensor:
        """Move features (dtype/device) and indices (device only); the cache is dropped."""
        feats = self.features.to(*args, **kwargs)
        return SparseTensor(feats, self.indices.to(feats.device), self.spatial_shape, self.batch_size)

    def dense(self) -> Tensor:
        """Scatter to a dense grid ``[B, C, S0, S1, S2]`` (``[T, B, C, S0, S1, S2]`` with time)."""
        f = self.features if self.features.dim() == 3 else self.features.unsqueeze(0)
        T, _, C = f.shape
        B = self.batch_size
        S0, S1, S2 = self.spatial_shape
        lin = _site_keys(self.indices, self.spatial_shape)
        out = f.new_zeros(T, B * S0 * S1 * S2, C)
        out.index_copy_(1, lin, f)
        out = out.view(T, B, S0, S1, S2, C).permute(0, 1, 5, 2, 3, 4).contiguous()
        return out if self.features.dim() == 3 else out[0]


def _site_keys(indices: Tensor, spatial_shape: tuple[int, int, int]) -> Tensor:
    """int64 key of each ``(b, i0, i1, i2)`` row (row-major over ``[B, S0, S1, S2]``)."""
    S0, S1, S2 = spatial_shape
    idx = indices.long()
    return ((idx[:, 0] * S0 + idx[:, 1]) * S1 + idx[:, 2]) * S2 + idx[:, 3]


def _keys_to_indices(keys: Tensor, spatial_shape: tuple[int, int, int]) -> Tensor:
    """Inverse of :func:`_site_keys`: ``[M]`` keys -> ``[M, 4]`` ``(b, i0, i1, i2)``."""
    S0, S1, S2 = spatial_shape
    return torch.stack(
        [keys // (S0 * S1 * S2), (keys // (S1 * S2)) % S0, (keys // S2) % S1, keys % S2], dim=1
    )


def _check_key_range(batch_size: int, spatial_shape: tuple[int, int, int]) -> None:
    if max(batch_size, 1) * math.prod(spatial_shape) >= 2**62:
        raise ValueError(
            f"sparse grid too large to hash into int64 keys: batch {batch_size} x spatial {spatial_shape}; "
            "use a coarser grid_size or normalise the point clouds"
        )


# ---------------------------------------------------------------------------------------------
# Kernel maps
# ---------------------------------------------------------------------------------------------


@dataclass
class KernelMap:
    """Pairs ``(in_idx[j], out_idx[j])`` grouped by kernel offset: offset ``k`` (row-major over
    ``[k0, k1, k2]``, i.e. ``weight[:, a, b, c, :]`` is ``k = (a k1 + b) k2 + c``) owns the
    slice ``offsets[k]:offsets[k + 1]``.
    """

    in_idx: Tensor
    out_idx: Tensor
    offsets: list[int]
    out_indices: Tensor
    out_spatial_shape: tuple[int, int, int]
    num_out: int
    in_indices: Tensor
    kernel_size: tuple[int, int, int]
    stride: tuple[int, int, int]
    padding: tuple[int, int, int]
    subm: bool

    @property
    def num_pairs(self) -> int:
        return int(self.in_idx.numel())

    def pairs_per_offset(self) -> list[int]:
        return [b - a for a, b in itertools.pairwise(self.offsets)]


def _kernel_offsets(kernel_size: tuple[int, int, int], device) -> Tensor:
    k0, k1, k2 = kernel_size
    grid = torch.stack(
        torch.meshgrid(
            torch.arange(k0, device=device),
            torch.arange(k1, device=device),
            torch.arange(k2, device=device),
            indexing="ij",
        ),
        dim=-1,
    )
    return grid.reshape(-1, 3)  # [K, 3] row-major, matching weight[:, a, b, c, :]


def build_kernel_map(
    indices: Tensor,
    spatial_shape: tuple[int, int, int],
    batch_size: int,
    *,
    kernel_size,
    stride=1,
    padding=0,
    subm: bool,
) -> KernelMap:
    """Build the kernel map of one sparse convolution (see the module docstring).

    Args:
        indices: ``[M, 4]`` integer ``(batch, i0, i1, i2)``, unique rows.
        spatial_shape: input grid ``(S0, S1, S2)``.
        batch_size: ``B``.
        kernel_size, stride, padding: ints or triples. ``subm=True`` needs odd kernels and uses
            stride 1 with implicit centred padding (``padding`` is ignored, like spconv).
        subm: submanifold (output sites = input sites) or regular strided conv.
    """
    ks = _triple(kernel_size, "kernel_size")
    st = _triple(stride, "stride")
    pd = _triple(padding, "padding")
    shape = _triple(spatial_shape, "spatial_shape")
    _check_key_range(batch_size, shape)
    device = indices.device
    idx = indices.long()
    M = idx.shape[0]
    offs = _kernel_offsets(ks, device)
    shape_t = torch.tensor(shape, device=device)
    if subm:
        if any(k % 2 == 0 for k in ks):
            raise ValueError(f"submanifold convolution needs odd kernel sizes, got {ks}")
        out_shape = shape
    else:
        out_shape = tuple((s + 2 * p - k) // t + 1 for s, p, k, t in zip(shape, pd, ks, st))
        if min(out_shape) < 1:
            raise ValueError(f"kernel {ks} with stride {st}, padding {pd} does not fit spatial shape {shape}")
    empty = torch.empty(0, dtype=torch.long, device=device)
    if M == 0:
        return KernelMap(
            empty, empty, [0] * (len(offs) + 1), idx.new_zeros(0, 4), out_shape, 0, indices, ks, st, pd, subm
        )

    b = idx[:, :1]
    xyz = idx[:, 1:]
    in_pairs, out_pairs, counts = [], [], []
    if subm:
        keys = _site_keys(idx, shape)
        sorted_keys, perm = torch.sort(keys)
        centre = torch.tensor([k // 2 for k in ks], device=device)
        for d in offs:
            q = xyz + (d - centre)  # input site feeding output p at this offset
            valid = ((q >= 0) & (q < shape_t)).all(1)
            qkeys = _site_keys(torch.cat([b, q], 1), shape)
            pos = torch.searchsorted(sorted_keys, qkeys).clamp_(max=M - 1)
            hit = valid & (sorted_keys[pos] == qkeys)
            out_rows = hit.nonzero().squeeze(1)
            in_pairs.append(perm[pos[out_rows]])
            out_pairs.append(out_rows)
            counts.append(out_rows.numel())
        out_indices = idx
        num_out = M
    else:
        st_t = torch.tensor(st, device=device)
        pd_t = torch.tensor(pd, device=device)
        out_shape_t = torch.tensor(out_shape, device=device)
        cand_in, cand_key, cand_k = [], [], []
        for k, d in enumerate(offs):
            num = xyz + pd_t - d  # = o * s
            o = torch.div(num, st_t, rounding_mode="floor")
            valid = ((num % st_t) == 0).all(1) & (o >= 0).all(1) & (o < out_shape_t).all(1)
            rows = valid.nonzero().squeeze(1)
            cand_in.append(rows)
            cand_key.append(_site_keys(torch.cat([b[rows], o[rows]], 1), out_shape))
            cand_k.append(torch.full_like(rows, k))
        all_keys = torch.cat(cand_key)
        uniq, inverse = torch.unique(all_keys, sorted=True, return_inverse=True)
        num_out = int(uniq.numel())
        out_indices = _keys_to_indices(uniq, out_shape)
        start = 0
        for rows in cand_in:
            n = rows.numel()
            in_pairs.append(rows)
            out_pairs.append(inverse[start : start + n])
            counts.append(n)
            start += n
    offsets = [0, *itertools.accumulate(counts)]
    return KernelMap(
        torch.cat(in_pairs) if in_pairs else empty,
        torch.cat(out_pairs) if out_pairs else empty,
        offsets,
        out_indices,
        out_shape,
        num_out,
        indices,
        ks,
        st,
        pd,
        subm,
    )


# ---------------------------------------------------------------------------------------------
# Voxelisation and pooling
# ---------------------------------------------------------------------------------------------


def voxelize(
    points: Tensor,
    grid_size: float = 0.02,
    *,
    mask: Tensor | None = None,
    shape_multiple: int = 16,
) -> SparseTensor:
    """Voxelise point clouds: one site per occupied voxel, features = mean of the points' features.

    Args:
        points: ``[B, N, F]`` or ``[T, B, N, F]``; channels ``0:3`` are xyz, all ``F`` channels
            (xyz + rgb, ...) are averaged into the voxel features.
        grid_size: voxel edge length (same unit as xyz).
        mask: optional bool ``[B, N]`` / ``[T, B, N]``, False marks padding points to ignore.
        shape_multiple: ``spatial_shape`` is rounded up to a multiple of this (16 = four stride-2
            downsamplings never drop a site).

    Returns:
        :class:`SparseTensor` with ``indices (batch, x, y, z)``: voxel coordinates
        ``floor((xyz - min_b) / grid_size)``, where ``min_b`` is sample ``b``'s minimum over its
        points (and timesteps), so every coordinate is ``>= 0``. Features ``[M, F]`` (or
        ``[T, M, F]``: sites are the union over time, a voxel empty at step ``t`` has zero
        features there). Sites are sorted by ``(batch, x, y, z)``. Duplicate points simply
        average; empty inputs give ``M = 0``.

    Raises:
        ValueError: wrong shape, non-positive grid, or non-finite coordinates.
    """
    if points.dim() not in (3, 4) or points.shape[-1] < 3:
        raise ValueError(f"points must be [B, N, F] or [T, B, N, F] with F >= 3, got {tuple(points.shape)}")
    if not grid_size > 0:
        raise ValueError(f"grid_size must be > 0, got {grid_size}")
    timed = points.dim() == 4
    pts = points if timed else points.unsqueeze(0)
    T, B, N, Fdim = pts.shape
    device = pts.device
    if mask is None:
        valid = torch.ones(T, B, N, dtype=torch.bool, device=device)
    else:
        valid = (mask if timed else mask.unsqueeze(0)).to(device=device, dtype=torch.bool).expand(T, B, N)
    xyz = pts[..., :3].detach()
    if not torch.isfinite(xyz[valid]).all():
        raise ValueError("voxelize: point coordinates contain NaN or Inf")
    shape_multiple = max(int(shape_multiple), 1)

    n_valid = int(valid.sum())
    if n_valid == 0:
        shape = (shape_multiple,) * 3
        feats = pts.new_zeros(T, 0, Fdim)
        idx = torch.zeros(0, 4, dtype=torch.long, device=device)
        return SparseTensor(feats if timed else feats[0], idx, shape, B)

    big = torch.finfo(xyz.dtype).max
    masked = torch.where(valid.unsqueeze(-1), xyz, torch.full_like(xyz, big))
    mins = masked.amin(dim=(0, 2))  # [B, 3]
    mins = torch.where(torch.isfinite(mins) & (mins < big), mins, torch.zeros_like(mins))
    grid = torch.floor((xyz - mins[None, :, None, :]) / grid_size).long().clamp_(min=0)  # [T, B, N, 3]

    tt, bb, nn_ = valid.nonzero(as_tuple=True)
    g = grid[tt, bb, nn_]  # [P, 3]
    extent = g.amax(0) + 1
    shape = tuple(int(-(-int(e) // shape_multiple) * shape_multiple) for e in extent)
    _check_key_range(B, shape)
    idx_rows = torch.cat([bb.unsqueeze(1), g], 1)
    keys = _site_keys(idx_rows, shape)
    uniq, site = torch.unique(keys, sorted=True, return_inverse=True)
    M = int(uniq.numel())
    indices = _keys_to_indices(uniq, shape)
    vals = pts[tt, bb, nn_]  # [P, F] (keeps the autograd graph to the features)
    slot = tt * M + site
    sums = pts.new_zeros(T * M, Fdim).scatter_add(0, slot.unsqueeze(1).expand(-1, Fdim), vals)
    cnt = torch.zeros(T * M, device=device, dtype=pts.dtype).index_add_(
        0, slot, torch.ones_like(slot, dtype=pts.dtype)
    )
    feats = (sums / cnt.clamp(min=1).unsqueeze(1)).view(T, M, Fdim)
    return SparseTensor(feats if timed else feats[0], indices, shape, B)


def _batch_counts(x: SparseTensor) -> Tensor:
    b = x.indices[:, 0].long()
    return torch.zeros(x.batch_size, device=b.device, dtype=x.features.dtype).index_add_(
        0, b, torch.ones_like(b, dtype=x.features.dtype)
    )


def global_mean_pool(x: SparseTensor) -> Tensor:
    """Mean of the features of each sample: ``[B, C]`` (``[T, B, C]`` with time).

    A sample with no sites gets zeros.
    """
    f = x.features if x.features.dim() == 3 else x.features.unsqueeze(0)
    b = x.indices[:, 0].long()
    sums = f.new_zeros(f.shape[0], x.batch_size, f.shape[-1]).scatter_add(1, b.view(1, -1, 1).expand_as(f), f)
    out = sums / _batch_counts(x).clamp(min=1).view(1, -1, 1)
    return out if x.features.dim() == 3 else out[0]


def global_max_pool(x: SparseTensor) -> Tensor:
    """Max of the features of each sample: ``[B, C]`` (``[T, B, C]``); empty samples get zeros."""
    f = x.features if x.features.dim() == 3 else x.features.unsqueeze(0)
    b = x.indices[:, 0].long()
    T, _, C = f.shape
    out = f.new_full((T, x.batch_size, C), float("-inf"))
    out = out.scatter_reduce(1, b.view(1, -1, 1).expand(T, -1, C), f, reduce="amax", include_self=True)
    out = torch.where(torch.isinf(out), torch.zeros_like(out), out)
    return out if x.features.dim() == 3 else out[0]
