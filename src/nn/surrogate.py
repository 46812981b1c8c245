"""Surrogate gradients for the Heaviside spike function.

A spiking neuron fires ``S = Heaviside(x)`` with ``x = H - V_th`` (``S = 1`` where ``x >= 0``).
The step has zero gradient almost everywhere, so training replaces its derivative by a
smooth or box-shaped *surrogate* ``g(x)``; the forward pass stays an exact 0/1 step.

Each surrogate is the derivative of a *primitive* ``p(x)`` (a smooth or ramp stand-in for the
step), so ``g = dp/dx``; the primitive is exposed to make the surrogate checkable with
``torch.autograd.gradcheck`` (see :class:`SurrogateSpike` with ``smooth=True``).

Kinds and their ``alpha`` (spikingjelly's conventions for sigmoid and atan):

=============  ===============================================  =====================================  =======
kind           primitive ``p(x)``                               surrogate ``g(x) = p'(x)``             alpha
=============  ===============================================  =====================================  =======
rectangular    ``clip(alpha * x + 1/2, 0, 1)``                  ``alpha`` on ``|x| < 1 / (2 alpha)``    1.0
sigmoid        ``sigmoid(alpha * x)``                           ``alpha * s * (1 - s)``                4.0
atan           ``arctan(pi/2 * alpha * x) / pi + 1/2``          ``alpha / 2 / (1 + (pi/2 alpha x)^2)``  2.0
=============  ===============================================  =====================================  =======

All three have unit area (they spread one unit of gradient around the threshold) and ``alpha``
is a sharpness: the rectangular window has width ``1/alpha`` and height ``alpha`` (spikingjelly's
``Rect``; 2.x also names sigmoid ``Sigmoid`` and atan ``ATan`` with the same formulas).

Tensor layout: any; every function here is elementwise.
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "DEFAULT_ALPHA",
    "SURROGATES",
    "SurrogateSpike",
    "heaviside",
    "surrogate",
    "surrogate_grad",
    "surrogate_grad_",
    "surrogate_primitive",
]

DEFAULT_ALPHA: dict[str, float] = {"rectangular": 1.0, "sigmoid": 4.0, "atan": 2.0}
SURROGATES: tuple[str, ...] = tuple(DEFAULT_ALPHA)


def _check(kind: str, alpha: float | None) -> float:
    if kind not in DEFAULT_ALPHA:
        raise ValueError(f"unknown surrogate {kind!r}; choose one of {SURROGATES}")
    alpha = DEFAULT_ALPHA[kind] if alpha is None else float(alpha)
    if not alpha > 0:
        raise ValueError(f"surrogate alpha must be > 0, got {alpha}")
    return alpha


def heaviside(x: torch.Tensor) -> torch.Tensor:
    """Exact step: 1 where ``x >= 0`` else 0, in ``x``'s dtype."""
    return (x >= 0).to(x.dtype)


def surrogate_primitive(x: torch.Tensor, kind: str = "atan", alpha: float | None = None) -> torch.Tensor:
    """The smooth (or ramp) stand-in ``p(x)`` whose derivative is the surrogate gradient."""
    alpha = _check(kind, alpha)
    if kind == "rectangular":
        return (alpha * x + 0.5).clamp(0.0, 1.0)
    if kind == "sigmoid":
        return torch.sigmoid(alpha * x)
    return torch.atan((math.pi / 2 * alpha) * x) / math.pi + 0.5


def surrogate_grad(x: torch.Tensor, kind: str = "atan", alpha: float | None = None) -> torch.Tensor:
    """Analytic surrogate derivative ``g(x) = dp/dx`` (elementwise, same dtype as ``x``)."""
    alpha = _check(kind, alpha)
    if kind == "rectangular":
        return (x.abs() < 0.5 / alpha).to(x.dtype) * alpha
    if kind == "sigmoid":
        s = torch.sigmoid(alpha * x)
        return alpha * s * (1.0 - s)
    z = (math.pi / 2 * alpha) * x
    return (alpha / 2) / (1.0 + z * z)


def surrogate_grad_(buf: torch.Tensor, kind: str, alpha: float) -> torch.Tensor:
    """In-place :func:`surrogate_grad`: overwrite ``buf`` (holding ``x``) with ``g(x)``; no allocation."""
    if kind == "rectangular":
        torch.lt(buf.abs_(), 0.5 / alpha, out=buf)
        return buf.mul_(alpha)
    if kind == "sigmoid":
        buf.mul_(alpha).sigmoid_()
        return buf.addcmul_(buf, buf, value=-1.0).mul_(alpha)  # s - s^2 = s (1 - s)
    if kind == "atan":
        buf.mul_(math.pi / 2 * alpha)
        return buf.mul_(buf).add_(1.0).reciprocal_().mul_(alpha / 2)
    raise ValueError(f"unknown surrogate {kind!r}; choose one of {SURROGATES}")


class SurrogateSpike(torch.autograd.Function):
    """``Heaviside(x)`` forward, ``grad * g(x)`` backward.

    ``smooth=True`` makes the forward return the primitive ``p(x)`` instead of the step; the
    backward is unchanged, so ``torch.autograd.gradcheck`` on the smooth variant verifies the
    very backward code used in training. Only for tests.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, kind: str, alpha: float, smooth: bool = False):  # type: ignore[override]
        ctx.save_for_backward(x)
        ctx.kind, ctx.alpha = kind, alpha
        return surrogate_primitive(x, kind, alpha) if smooth else heaviside(x)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):  # type: ignore[override]
        (x,) = ctx.saved_tensors
        return grad_out * surrogate_grad(x, ctx.kind, ctx.alpha), None, None, None


def surrogate(x: torch.Tensor, kind: str = "atan", alpha: float | None = None) -> torch.Tensor:
    """Spike ``Heaviside(x)`` with the surrogate gradient ``kind`` (``x = H - V_th``)."""
    return SurrogateSpike.apply(x, kind, _check(kind, alpha), False)
