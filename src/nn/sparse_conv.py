"""Sparse 3D convolution in pure PyTorch, with spconv 2.x semantics (and spconv as a backend).

The sparse tensors, kernel maps, voxelisation and pooling are in :mod:`spikelight.nn.sparse_tensor`
(re-exported here).

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

spconv's CUDA kernels run outside PyTorch's dispatcher, so op counters built on it (the energy
meter, :mod:`spikelight.profiling.energy`) cannot see them: :func:`set_backend` switches every
sparse convolution of a model to another backend (and back) for such measurements.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from spikelight.nn.sparse_tensor import (
    KernelMap,
    SparseTensor,
    _site_keys,
    _triple,
    build_kernel_map,
    global_max_pool,
    global_mean_pool,
    voxelize,
)

__all__ = [
    "BatchNormLastDim",
    "KernelMap",
    "SparseActivation",
    "SparseBatchNorm",
    "SparseConv3d",
    "SparseTensor",
    "SubMConv3d",
    "build_kernel_map",
    "set_backend",
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

    # -- forward ------------------------------------------------------------------------------
    def uses_spconv(self, x: SparseTensor) -> bool:
        """Whether :meth:`forward` on ``x`` runs spconv's kernels (see the module docstring)."""
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
        if self.uses_spconv(x):
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


def set_backend(model: nn.Module, backend: str) -> dict[nn.Module, str]:
    """Set ``backend`` on every sparse convolution in ``model``; returns ``{layer: previous backend}``
    of the layers it changed, so that ``for m, b in changed.items(): m.backend = b`` restores them."""
    if backend not in _BACKENDS:
        raise ValueError(f"backend must be one of {_BACKENDS}, got {backend!r}")
    changed = {}
    for m in model.modules():
        if isinstance(m, _SparseConv3dBase) and m.backend != backend:
            changed[m] = m.backend
            m.backend = backend
    return changed


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
