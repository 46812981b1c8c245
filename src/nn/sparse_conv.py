"""Sparse 3D convolution in pure PyTorch, with spconv 2.x semantics (and spconv as a backend).

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

Convolution semantics (identical to ``F.conv3d`` on the dense grid, i.e. cross-correlation)
-----------------------------------------------------------------------------------------
Weights are ``[C_out, k0, k1, k2, C_in]`` (spconv 2.x "KRSC", so state dicts copy over; see
:func:`weight_from_spconv` for spconv's one quirk, 1x1 kernels).

* :class:`SubMConv3d` (submanifold, odd ``k``): output sites = input sites, and
  ``out[p] = sum_d W[:, d, :] @ x[p + d - k // 2]`` over offsets ``d`` whose site is occupied.
  Equals the dense ``conv3d(padding=k // 2)`` read back at the input sites.
* :class:`SparseConv3d` (``k``, ``stride``, ``padding``): output sites = every ``o`` with
  ``0 <= o < (S + 2 p - k) // s + 1`` that has an occupied input ``i = o * s - p + d`` for some
  ``d`` in ``[0, k)^3``; ``out[o] = sum W[:, d, :] @ x[o * s - p + d]``. Equals the dense
  ``conv3d(stride=s, padding=p)`` read back at those sites (dense outputs elsewhere are 0).
  Output sites are sorted by ``(batch, i0, i1, i2)``. Inputs beyond the last full window are
  dropped exactly as a dense conv drops them; :func:`voxelize` pads ``spatial_shape`` to a
  multiple of 16 so that four ``k = s = 2`` downsamplings never drop anything.

Implementation: coordinates are hashed to int64 keys ``((b S0 + i0) S1 + i1) S2 + i2``, sorted
once, and every kernel offset is looked up with ``torch.searchsorted``. The result (a *kernel
map*: for each offset the pairs ``(input row, output row)``) is cached per ``indice_key`` (or,
without a key, per layer geometry and input-indices object). The convolution itself is a custom
autograd Function that loops over offsets doing gather -> matmul -> ``index_add`` (scatter); its
backward recomputes the gathers, so only the input features are kept for backward.

Backends
--------
``backend="torch"`` is the pure-PyTorch path (CPU and CUDA, forward and backward).
``backend="spconv"`` calls ``spconv.pytorch`` (2.x) with the same weight; a ``[T, M, C]`` input is
folded into ``T * B`` batch entries and unfolded again, and strided outputs are re-sorted by
site so both backends return identical layouts. ``backend="auto"`` (default) uses spconv when it
imports and the features are on CUDA (spconv's CPU build has no backward), else torch.
1x1 kernels with stride 1 are a plain matmul in every backend.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "BatchNormLastDim",
    "KernelMap",
    "SparseActivation",
    "SparseBatchNorm",
    "SparseConv3d",
    "SparseTensor",
    "SubMConv3d",
    "build_kernel_map",
    "global_max_pool",
    "global_mean_pool",
    "sparse_conv_reference",
    "spconv_available",
    "voxelize",
    "weight_from_spconv",
    "weight_to_spconv",
]

_BACKENDS = ("auto", "torch", "spconv")


def spconv_available() -> bool:
    """True when ``import spconv.pytorch`` works."""
    try:
        import spconv.pytorch  # noqa: F401
    except Exception:  # pragma: no cover - depends on the environment
        return False
    return True


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
        flat = self.indices.long()
        lin = ((flat[:, 0] * S0 + flat[:, 1]) * S1 + flat[:, 2]) * S2 + flat[:, 3]
        out = f.new_zeros(T, B * S0 * S1 * S2, C)
        out.index_copy_(1, lin, f)
        out = out.view(T, B, S0, S1, S2, C).permute(0, 1, 5, 2, 3, 4).contiguous()
        return out if self.features.dim() == 3 else out[0]


def _site_keys(indices: Tensor, spatial_shape: tuple[int, int, int]) -> Tensor:
    """int64 key of each ``(b, i0, i1, i2)`` row (row-major over ``[B, S0, S1, S2]``)."""
    S0, S1, S2 = spatial_shape
    idx = indices.long()
    return ((idx[:, 0] * S0 + idx[:, 1]) * S1 + idx[:, 2]) * S2 + idx[:, 3]


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
        S0, S1, S2 = out_shape
        out_indices = torch.stack(
            [uniq // (S0 * S1 * S2), (uniq // (S1 * S2)) % S0, (uniq // S2) % S1, uniq % S2], dim=1
        )
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
# Gather - matmul - scatter
# ---------------------------------------------------------------------------------------------


def _add_rows_(out: Tensor, idx: Tensor, src: Tensor) -> None:
    """``out[idx] += src`` for *unique* ``idx`` (true per kernel offset: a partial bijection).

    CUDA: ``index_add_`` (no two atomics hit one row). CPU: ``index_add_`` on 2-D tensors loops
    over rows with one kernel launch each (and a thread-pool round trip per row when
    multi-threaded), so gather-add-copy (three vectorised kernels) is used instead.
    """
    if out.is_cuda:
        out.index_add_(0, idx, src)
    else:
        out.index_copy_(0, idx, out.index_select(0, idx).add_(src))


class _GatherMatmulScatter(torch.autograd.Function):
    """``out[..., o, :] += x[..., i, :] @ W[:, k, :]^T`` for every pair ``(i, o)`` of offset ``k``.

    x: ``[M_in, C_in]`` or ``[T, M_in, C_in]``; weight: ``[C_out, K, C_in]``; returns
    ``[(T,) M_out, C_out]``. Internally the sites are the leading axis (``[M, T * C]`` rows), so
    every gather / scatter is a 2-D row operation (much faster than on a middle axis). Within
    one offset every input and every output row occurs at most once, so the scatter needs no
    atomics (:func:`_add_rows_`). Backward recomputes the gathers: only ``x`` and the weight are
    saved.
    """

    @staticmethod
    def forward(ctx, x, weight, in_idx, out_idx, offsets, num_out):  # type: ignore[override]
        dtype = torch.promote_types(x.dtype, weight.dtype)
        if torch.is_autocast_enabled(x.device.type):
            dtype = torch.get_autocast_dtype(x.device.type)
        timed = x.dim() == 3
        T = x.shape[0] if timed else 1
        c_out, c_in = weight.shape[0], weight.shape[2]
        rows = (x.transpose(0, 1) if timed else x).to(dtype).contiguous()  # [M, (T,) C_in]
        wk = weight.to(dtype).permute(1, 2, 0).contiguous()  # [K, C_in, C_out]
        out = rows.new_zeros(num_out, T * c_out)
        for k in range(wk.shape[0]):
            a, b = offsets[k], offsets[k + 1]
            if a == b:
                continue
            g = rows.index_select(0, in_idx[a:b]).reshape(-1, c_in)  # [(P T), C_in]
            _add_rows_(out, out_idx[a:b], (g @ wk[k]).reshape(b - a, T * c_out))
        ctx.save_for_backward(x, weight, in_idx, out_idx)
        ctx.offsets = offsets
        out = out.view(num_out, T, c_out)
        return out.transpose(0, 1) if timed else out[:, 0]

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        x, weight, in_idx, out_idx = ctx.saved_tensors
        offsets = ctx.offsets
        need_x, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        dtype = grad_out.dtype
        timed = x.dim() == 3
        T = x.shape[0] if timed else 1
        c_out, c_in = weight.shape[0], weight.shape[2]
        rows = (x.transpose(0, 1) if timed else x).to(dtype).contiguous()  # [M, (T,) C_in]
        grows = (grad_out.transpose(0, 1) if timed else grad_out).contiguous().reshape(-1, T * c_out)
        wk = weight.to(dtype).permute(1, 0, 2).contiguous()  # [K, C_out, C_in]
        gx = rows.new_zeros(rows.shape[0], T * c_in) if need_x else None
        gw = weight.new_zeros(weight.shape[1], c_out, c_in, dtype=dtype) if need_w else None
        for k in range(wk.shape[0]):
            a, b = offsets[k], offsets[k + 1]
            if a == b:
                continue
            g = grows.index_select(0, out_idx[a:b]).reshape(-1, c_out)  # [(P T), C_out]
            if need_x:
                _add_rows_(gx, in_idx[a:b], (g @ wk[k]).reshape(b - a, T * c_in))
            if need_w:
                xs = rows.index_select(0, in_idx[a:b]).reshape(-1, c_in)
                gw[k] = g.t() @ xs
        if gx is not None:
            gx = gx.view(-1, T, c_in)
            gx = (gx.transpose(0, 1) if timed else gx[:, 0]).to(x.dtype)
        if gw is not None:
            gw = gw.transpose(0, 1).to(weight.dtype)
        return gx, gw, None, None, None, None


def sparse_conv_reference(x: SparseTensor, weight: Tensor, kmap: KernelMap) -> Tensor:
    """Plain-autograd version of the gather-matmul-scatter (for tests). Returns output features."""
    w = weight.reshape(weight.shape[0], -1, weight.shape[-1])
    out = x.features.new_zeros(*x.features.shape[:-2], kmap.num_out, w.shape[0])
    for k in range(w.shape[1]):
        a, b = kmap.offsets[k], kmap.offsets[k + 1]
        src = x.features.index_select(-2, kmap.in_idx[a:b]) @ w[:, k].t()
        out = out.index_add(-2, kmap.out_idx[a:b], src)
    return out


# ---------------------------------------------------------------------------------------------
# Modules
# ---------------------------------------------------------------------------------------------


class _SparseConv3dBase(nn.Module):
    """Shared code of :class:`SubMConv3d` and :class:`SparseConv3d`.

    Input/output: :class:`SparseTensor` with ``[M, C]`` or ``[T, M, C]`` features.
    Weight ``[C_out, k0, k1, k2, C_in]`` (spconv 2.x KRSC), optional bias ``[C_out]``.
    """

    subm: bool = False

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size=3,
        *,
        stride=1,
        padding=0,
        bias: bool = False,
        indice_key: str | None = None,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        if backend not in _BACKENDS:
            raise ValueError(f"backend must be one of {_BACKENDS}, got {backend!r}")
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.kernel_size = _triple(kernel_size, "kernel_size")
        self.stride = (1, 1, 1) if self.subm else _triple(stride, "stride")
        self.padding = (0, 0, 0) if self.subm else _triple(padding, "padding")
        if self.subm and any(k % 2 == 0 for k in self.kernel_size):
            raise ValueError(f"SubMConv3d needs odd kernel sizes, got {self.kernel_size}")
        self.indice_key = indice_key
        self.backend = backend
        self.weight = nn.Parameter(torch.empty(self.out_channels, *self.kernel_size, self.in_channels))
        self.bias = nn.Parameter(torch.empty(self.out_channels)) if bias else None
        self.reset_parameters()

    @property
    def is_pointwise(self) -> bool:
        """1x1x1 kernel with stride 1: a plain matmul on the features (no kernel map)."""
        return self.kernel_size == (1, 1, 1) and self.stride == (1, 1, 1) and self.padding == (0, 0, 0)

    def reset_parameters(self) -> None:
        # like nn.Conv3d: kaiming_uniform(a=sqrt(5)) with fan_in = C_in * k0 * k1 * k2
        fan_in = self.in_channels * math.prod(self.kernel_size)
        bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)

    def extra_repr(self) -> str:
        s = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}"
        if not self.subm:
            s += f", stride={self.stride}, padding={self.padding}"
        s += f", bias={self.bias is not None}"
        if self.indice_key is not None:
            s += f", indice_key={self.indice_key!r}"
        return s + f", backend={self.backend!r}"

    # -- kernel map ---------------------------------------------------------------------------
    def kernel_map(self, x: SparseTensor) -> KernelMap:
        """The (cached) kernel map of this layer for input ``x``."""
        geom = (self.subm, self.kernel_size, self.stride, self.padding)
        key = self.indice_key if self.indice_key is not None else ("auto", *geom)
        km = x.cache.get(key)
        if km is not None:
            same_geom = (km.subm, km.kernel_size, km.stride, km.padding) == geom
            if km.in_indices is x.indices and same_geom:
                return km
            if self.indice_key is not None and not (
                same_geom and km.in_indices.shape == x.indices.shape and torch.equal(km.in_indices, x.indices)
            ):
                raise ValueError(
                    f"indice_key {self.indice_key!r} is shared by layers with different geometry or "
                    f"inputs on different sites ({km.kernel_size}/{km.stride} vs {self.kernel_size}/"
                    f"{self.stride}); give each distinct layer its own key"
                )
            if self.indice_key is not None:
                return km
        km = build_kernel_map(
            x.indices,
            x.spatial_shape,
            x.batch_size,
            kernel_size=self.kernel_size,
            stride=self.stride,
            padding=self.padding,
            subm=self.subm,
        )
        x.cache[key] = km
        return km

    def num_pairs(self, x: SparseTensor) -> int:
        """Number of (input site, output site, offset) pairs, i.e. ``C_in x C_out`` MACs each."""
        if self.is_pointwise:
            return x.num_sites
        return self.kernel_map(x).num_pairs

    def synaptic_ops(self, x: SparseTensor) -> tuple[float, float]:
        """Operation counts of this layer on input ``x`` (for energy accounting by hooks).

        Returns ``(macs, acs)``: ``macs = pairs * C_in * C_out * T`` (dense-value count) and
        ``acs = C_out * sum over pairs of the input values`` (spike-count-weighted additions,
        summed over T). For spike inputs (integers) ``acs`` is the accumulate count.
        """
        T = x.timesteps or 1
        f = x.features if x.features.dim() == 3 else x.features.unsqueeze(0)
        if self.is_pointwise:
            pairs, weighted = x.num_sites, float(f.detach().sum())
        else:
            km = self.kernel_map(x)
            pairs = km.num_pairs
            weighted = float(f.detach().index_select(1, km.in_idx).sum()) if pairs else 0.0
        return float(pairs * self.in_channels * self.out_channels * T), weighted * self.out_channels

    # -- forward ------------------------------------------------------------------------------
    def _use_spconv(self, x: SparseTensor) -> bool:
        if self.backend == "torch" or self.is_pointwise:
            return False
        if self.backend == "spconv":
            if not spconv_available():
                raise RuntimeError("backend='spconv' but `import spconv.pytorch` fails; install spconv-cu12x")
            return True
        return x.features.is_cuda and spconv_available()

    def forward(self, x: SparseTensor) -> SparseTensor:
        if not isinstance(x, SparseTensor):
            raise TypeError(f"{type(self).__name__} expects a SparseTensor, got {type(x).__name__}")
        if x.num_channels != self.in_channels:
            raise ValueError(
                f"{type(self).__name__}: expected {self.in_channels} input channels, got {x.num_channels}"
            )
        if self.is_pointwise:
            feats = x.features @ self.weight.reshape(self.out_channels, self.in_channels).t().to(
                x.features.dtype
            )
            if self.bias is not None:
                feats = feats + self.bias
            return x.replace_feature(feats)
        if self._use_spconv(x):
            out = self._forward_spconv(x)
        else:
            km = self.kernel_map(x)
            w = self.weight.reshape(self.out_channels, -1, self.in_channels)
            feats = _GatherMatmulScatter.apply(x.features, w, km.in_idx, km.out_idx, km.offsets, km.num_out)
            if self.subm:
                out = x.replace_feature(feats)
            else:
                out = SparseTensor(feats, km.out_indices, km.out_spatial_shape, x.batch_size, x.cache)
        if self.bias is not None:
            out = out.replace_feature(out.features + self.bias)
        return out

    # -- spconv backend (not exercised in CPU CI) ---------------------------------------------
    def _spconv_module(self):
        mod = self.__dict__.get("_spconv_mod")
        if mod is None:
            import spconv.pytorch as spconv

            cls = spconv.SubMConv3d if self.subm else spconv.SparseConv3d
            kw = {} if self.subm else {"stride": self.stride, "padding": self.padding}
            mod = cls(self.in_channels, self.out_channels, self.kernel_size, bias=False, **kw)
            self.__dict__["_spconv_mod"] = mod  # not a registered submodule: no duplicate weight
        mod.weight = self.weight  # share the parameter (KRSC layout in spconv 2.x)
        return mod

    def _forward_spconv(self, x: SparseTensor) -> SparseTensor:
        import spconv.pytorch as spconv

        feats = x.features
        timed = feats.dim() == 3
        T = feats.shape[0] if timed else 1
        M, B = x.num_sites, x.batch_size
        f = feats.reshape(T * M, -1) if timed else feats
        idx = x.indices.long()
        if timed:
            idx = idx.repeat(T, 1)
            idx[:, 0] += torch.arange(T, device=idx.device).repeat_interleave(M) * B
        sp_in = spconv.SparseConvTensor(f.contiguous(), idx.int().contiguous(), list(x.spatial_shape), T * B)
        sp_out = self._spconv_module()(sp_in)
        out_f, out_idx = sp_out.features, sp_out.indices.long()
        out_shape = tuple(int(s) for s in sp_out.spatial_shape)
        if self.subm:  # spconv keeps the input order for submanifold convolutions
            return x.replace_feature(out_f.reshape(T, M, -1) if timed else out_f)
        t = out_idx[:, 0] // B
        site = out_idx.clone()
        site[:, 0] = out_idx[:, 0] % B
        order = torch.argsort(_site_keys(site, out_shape) * T + t)
        m_out = out_idx.shape[0] // T
        out_f = out_f[order].reshape(m_out, T, -1).transpose(0, 1)
        new_idx = site[order][::T]
        return SparseTensor(out_f if timed else out_f[0], new_idx, out_shape, B, x.cache)


class SubMConv3d(_SparseConv3dBase):
    """Submanifold sparse 3D convolution (output sites = input sites); odd ``kernel_size``.

    ``SubMConv3d(in_channels, out_channels, kernel_size=3, *, bias=False, indice_key=None,
    backend="auto")``. Layers with the same ``indice_key`` share one kernel map (they must see
    the same sites); without a key the map is still cached per input-indices object.
    """

    subm = True


class SparseConv3d(_SparseConv3dBase):
    """Regular (strided) sparse 3D convolution; output sites = occupied downsampled sites.

    ``SparseConv3d(in_channels, out_channels, kernel_size=2, *, stride=2, padding=0, bias=False,
    indice_key=None, backend="auto")``.
    """

    subm = False

    def __init__(self, in_channels: int, out_channels: int, kernel_size=2, *, stride=2, **kw) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, **kw)


class BatchNormLastDim(nn.Module):
    """BatchNorm over the last axis of ``[..., C]`` (all leading axes are samples).

    Wraps a child ``nn.BatchNorm1d`` (``self.bn``) so ``SyncBatchNorm.convert_sync_batchnorm``
    converts it and this wrapper keeps the reshape.
    """

    def __init__(self, num_features: int, *, eps: float = 1e-5, momentum: float = 0.1) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(num_features, eps=eps, momentum=momentum)

    def forward(self, x: Tensor) -> Tensor:
        if x.numel() == 0:
            return x
        flat = x.reshape(-1, x.shape[-1])
        if self.training and flat.shape[0] < 2:
            # one sample per channel has no batch statistics (nn.BatchNorm1d raises): normalise
            # with the running statistics instead (degenerate inputs, e.g. a single voxel).
            bn = self.bn
            out = F.batch_norm(flat, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)
            return out.view_as(x)
        return self.bn(flat).view_as(x)


class SparseBatchNorm(BatchNormLastDim):
    """BatchNorm1d on the features of a :class:`SparseTensor` (every site of every timestep is a
    sample)."""

    def forward(self, x: SparseTensor) -> SparseTensor:  # type: ignore[override]
        return x.replace_feature(super().forward(x.features))


class SparseActivation(nn.Module):
    """Apply a tensor module (e.g. an ``ILIF`` neuron) to the features of a :class:`SparseTensor`.

    Features ``[T, M, C]`` are handed over as they are (a neuron's ``[T, B, ...]`` layout with the
    sites as ``B``); ``[M, C]`` features are given a ``T = 1`` axis and squeezed back.
    """

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: SparseTensor) -> SparseTensor:
        f = x.features
        out = self.module(f) if f.dim() == 3 else self.module(f.unsqueeze(0))[0]
        return x.replace_feature(out)


# ---------------------------------------------------------------------------------------------
# Spconv weight conversion
# ---------------------------------------------------------------------------------------------


def weight_from_spconv(w: Tensor) -> Tensor:
    """Convert a spconv 2.x conv weight (KRSC ``[C_out, k0, k1, k2, C_in]``) to this module's.

    The layouts are identical except spconv's 1x1x1 path, which multiplies by
    ``w.view(C_in, C_out)`` (not ``w.view(C_out, C_in).T``); that case is re-ordered here.
    """
    if w.dim() != 5:
        raise ValueError(f"expected a 5-D KRSC weight, got {tuple(w.shape)}")
    c_out, c_in = w.shape[0], w.shape[-1]
    if tuple(w.shape[1:4]) == (1, 1, 1):
        return w.reshape(c_in, c_out).t().reshape(c_out, 1, 1, 1, c_in).contiguous()
    return w.clone()


def weight_to_spconv(w: Tensor) -> Tensor:
    """Inverse of :func:`weight_from_spconv`."""
    if w.dim() != 5:
        raise ValueError(f"expected a 5-D KRSC weight, got {tuple(w.shape)}")
    c_out, c_in = w.shape[0], w.shape[-1]
    if tuple(w.shape[1:4]) == (1, 1, 1):
        return w.reshape(c_out, c_in).t().reshape(c_out, 1, 1, 1, c_in).contiguous()
    return w.clone()


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
    S0, S1, S2 = shape
    indices = torch.stack(
        [uniq // (S0 * S1 * S2), (uniq // (S1 * S2)) % S0, (uniq // S2) % S1, uniq % S2], dim=1
    )
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
