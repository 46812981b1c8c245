"""FLOP formulas of the products the energy meter counts, and the operands each one multiplies.

FLOPs here are multiply-accumulates (MACs) of the dense op, forward only:

* ``convolution`` (any dims, groups, transposed): ``N * prod(out_spatial) * weight.numel()``
  (transposed: ``prod(in_spatial)``);
* ``mm`` / ``addmm`` ``[n,k]x[k,m]``: ``n*k*m``; ``bmm`` / ``baddbmm``: ``b*n*k*m``;
  ``mv`` / ``addmv``: ``n*k``; ``dot``: ``k``;
* fused attention (``_scaled_dot_product_*``): ``B*H*L*S*(E + Ev)``;
* any other forward op known to ``torch.utils.flop_counter``: half its FLOP figure (2 per MAC),
  see :func:`registry_formula`.

A formula maps ``(args, kwargs, out)`` of an aten op to ``(macs, operands)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch

__all__ = ["FORMULAS", "registry_formula"]

aten = torch.ops.aten


def _prod(xs: Iterable[int]) -> int:
    return math.prod(int(x) for x in xs)


def _conv(args, kwargs, out) -> tuple[int, list]:
    x, w = args[0], args[1]
    transposed = bool(args[6]) if len(args) > 6 else bool(kwargs.get("transposed", False))
    side = x if transposed else out
    return int(side.shape[0]) * _prod(side.shape[2:]) * w.numel(), [x, w]


def _mm(a, b) -> tuple[int, list]:
    return int(a.shape[0]) * int(a.shape[1]) * int(b.shape[1]), [a, b]


def _bmm(a, b) -> tuple[int, list]:
    return int(a.shape[0]) * int(a.shape[1]) * int(a.shape[2]) * int(b.shape[2]), [a, b]


def _sdpa(args, kwargs, out) -> tuple[int, list]:
    q, k, v = args[0], args[1], args[2]  # [B, H, L, E], [B, H, S, E], [B, H, S, Ev]
    L, E, S, Ev = q.shape[-2], q.shape[-1], k.shape[-2], v.shape[-1]
    return _prod(q.shape[:-2]) * int(L) * int(S) * (int(E) + int(Ev)), [q, k, v]


FORMULAS: dict[Any, Callable[[tuple, dict, Any], tuple[int, list]]] = {
    aten.convolution: _conv,
    aten._convolution: _conv,
    aten.mm: lambda a, k, o: _mm(a[0], a[1]),
    aten.addmm: lambda a, k, o: _mm(a[1], a[2]),
    aten.bmm: lambda a, k, o: _bmm(a[0], a[1]),
    aten.baddbmm: lambda a, k, o: _bmm(a[1], a[2]),
    aten.mv: lambda a, k, o: (int(a[0].shape[0]) * int(a[0].shape[1]), [a[0], a[1]]),
    aten.addmv: lambda a, k, o: (int(a[1].shape[0]) * int(a[1].shape[1]), [a[1], a[2]]),
    aten.dot: lambda a, k, o: (int(a[0].shape[0]), [a[0], a[1]]),
}
for _name in (
    "_scaled_dot_product_flash_attention",
    "_scaled_dot_product_flash_attention_for_cpu",
    "_scaled_dot_product_efficient_attention",
    "_scaled_dot_product_cudnn_attention",
    "_scaled_dot_product_fused_attention_overrideable",
):
    if hasattr(aten, _name):
        FORMULAS[getattr(aten, _name)] = _sdpa


def registry_formula(packet) -> Callable | None:
    """Fallback: a forward op known to ``torch.utils.flop_counter`` (FLOPs there are 2 per MAC)."""
    from torch.utils.flop_counter import flop_registry

    if "backward" in str(packet):
        return None
    fn = flop_registry.get(packet)
    if fn is None:
        return None

    def formula(args, kwargs, out):
        tensors = [a for a in args[:3] if isinstance(a, torch.Tensor)]
        return int(fn(*args, **kwargs, out_val=out)) // 2, tensors

    return formula
