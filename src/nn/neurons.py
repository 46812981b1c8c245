"""Spiking neurons as plain ``nn.Module``s: I-LIF (SVL), binary spike (T-RevSNN), LIF.

Layout
------
Stateful neurons (:class:`ILIF`, :class:`LIF`) take the whole sequence at once:
input ``[T, B, ...]`` (time first, any trailing shape, ``T >= 1``), output of the same shape
(:class:`ILIF` with ``spike_driven=True`` returns ``[D, T, B, ...]``, see below).
:class:`BinarySpike` is stateless and works on any layout.

No hidden state
---------------
The membrane potential is a *local variable of forward*: it starts at rest (``0`` for I-LIF and
soft-reset LIF, ``v_reset`` for hard-reset LIF) at ``t = 0`` of every call and is discarded on
return. Nothing persists across calls, so nothing leaks from one batch to the next and there
is no ``reset_net`` to remember (unlike spikingjelly). Feed all ``T`` steps in one call.

Speed
-----
The loop over ``T`` runs inside one ``torch.autograd.Function`` per neuron with a hand-written
BPTT backward: forward keeps only what backward needs (I-LIF: a 1-byte window mask per
element; LIF: the charged potential ``H``, or just ``X`` when ``T = 1``), so no per-step autograd
graph is built. Every step writes into preallocated buffers with ``out=``/in-place ops; saved
tensors are per-step (on CPU one big ``[T, ...]`` allocation costs page faults every call,
per-step ones are recycled by the allocator). Without gradients a lighter inference loop runs;
``T = 1`` skips the membrane update. No ``torch.jit``/``torch.compile`` is involved.
Neuron parameters (``beta``, ``vth``, ``tau`` ...) are constants: gradients flow to the input only.

I-LIF (integer LIF, SVL / E-3DSNN)
----------------------------------
::

    H[t] = beta * V[t-1] + X[t]                      (V[-1] = 0)
    S[t] = round(clip(H[t] / Vth, 0, D))              integer spike count in 0..D
    V[t] = H[t] - S[t] * Vth                          soft reset

* Output is the integer count ``S`` (float dtype), *not* ``S * Vth``; SVL uses ``Vth = 1`` where
  the two agree. Rounding is ``torch.round`` (half to even), as in the authors' code.
* Surrogate (straight-through): ``dS/dH = 1/Vth`` where ``0 < H/Vth < D`` (strict), else 0. The
  ``1/Vth`` is the chain rule through ``H/Vth``, so with ``Vth = 1`` the STE gradient is exactly 1.
  ``inclusive_window=True`` uses ``0 <= H/Vth <= D`` like the authors' code and spikingjelly 2.x's
  ``ILIFNode(tau=1/(1-beta))``, which this neuron then matches exactly (tested).
* The reset is differentiated by default (``dV/dH = 1 - Vth * dS/dH``, i.e. 0 inside the
  window and 1 outside); ``detach_reset=True`` treats ``S`` in the reset as a constant.
* ``spike_driven=True`` (inference): returns :func:`unfold_spikes` of ``S``, a 0/1 tensor
  ``[D, T, B, ...]`` with ``out.sum(0) == S``; sub-step ``k`` holds ``S > k``. A following linear
  or conv layer is applied *without bias* to every binary sub-step, the D results are summed
  (additions only), and the bias is added once (:func:`spike_driven_forward`). The unfolded
  output carries no gradient.

Binary spike (T-RevSNN)
-----------------------
``S = 1 if u >= threshold else 0`` (``= round(clip(u, 0, 1))`` for threshold 0.5, except that it
fires at exactly 0.5), straight-through gradient 1 on ``[threshold - 0.5, threshold + 0.5]``
(``[0, 1]`` for the default), 0 elsewhere. Stateless, no reset.

LIF (spikingjelly's ``LIFNode`` equations)
------------------------------------------
::

    decay_input:     H = V + (X - (V - V_reset)) / tau
    not decay_input: H = V - (V - V_reset) / tau + X          (V_reset = 0 for soft reset)
    S = Heaviside(H - Vth)    (fires when H >= Vth), surrogate gradient g(H - Vth)
    hard reset:      V = H * (1 - S) + V_reset * S
    soft reset:      V = H - S * Vth                          (v_reset=None)

``detach_reset=True`` uses ``S`` without gradient in the reset. Surrogates: see
:mod:`spikelight.nn.surrogate`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn
from torch.autograd.function import once_differentiable

from spikelight.nn.surrogate import _check, surrogate_grad_, surrogate_primitive

__all__ = [
    "ILIF",
    "LIF",
    "BinarySpike",
    "SpikingNeuron",
    "spike_driven_forward",
    "unfold_spikes",
]


def _check_seq(x: torch.Tensor, name: str) -> None:
    if x.dim() < 1 or x.shape[0] < 1:
        raise ValueError(f"{name} expects input [T, B, ...] with T >= 1, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{name} expects a floating-point input, got {x.dtype}")


# ---------------------------------------------------------------------------------------------
# I-LIF
# ---------------------------------------------------------------------------------------------


def _ilif_infer(x: torch.Tensor, beta: float, vth: float, D: int) -> torch.Tensor:
    """I-LIF forward without autograd bookkeeping. x: [T, ...] -> S: [T, ...]."""
    s = torch.empty_like(x)
    inv = 1.0 / vth
    T = x.shape[0]
    v = torch.empty_like(x[0]) if T > 1 else None  # membrane, updated in place
    for t in range(T):
        h = x[t] if t == 0 else torch.add(x[t], v, alpha=beta, out=v)
        st = s[t]
        torch.clamp(h if inv == 1.0 else h * inv, 0, D, out=st)
        st.round_()
        if t + 1 < T:
            torch.sub(h, st, alpha=vth, out=v)
    return s


def _ilif_mask(u: torch.Tensor, D: int, inclusive: bool, scratch: torch.Tensor | None = None) -> torch.Tensor:
    """STE window of I-LIF: 0 < u < D (or 0 <= u <= D); bool, same shape as u."""
    m = torch.ge(u, 0) if inclusive else torch.gt(u, 0)
    if scratch is None:
        scratch = torch.empty_like(m)
    if inclusive:
        torch.le(u, D, out=scratch)
    else:
        torch.lt(u, D, out=scratch)
    return m.logical_and_(scratch)


class _ILIFFunction(torch.autograd.Function):
    """Multi-step I-LIF with a straight-through BPTT backward. x: [T, ...] -> S: [T, ...].

    Saves one bool mask (1 byte) per element: the STE window of every step.
    """

    @staticmethod
    def forward(ctx, x, beta: float, vth: float, D: int, detach_reset: bool, inclusive: bool):  # type: ignore[override]
        s = torch.empty_like(x)
        inv = 1.0 / vth
        T = x.shape[0]
        ctx.params = (beta, inv, D, detach_reset, inclusive)
        if T == 1:  # no membrane: S = round(clip(X / Vth, 0, D))
            u = x[0] if inv == 1.0 else x[0] * inv
            mask = _ilif_mask(u, D, inclusive)
            torch.clamp(u, 0, D, out=s[0])
            s[0].round_()
            ctx.save_for_backward(mask)
            return s
        v = torch.empty_like(x[0])  # membrane, updated in place
        u = v if inv == 1.0 else torch.empty_like(v)
        scratch = torch.empty(x.shape[1:], dtype=torch.bool, device=x.device)
        masks = []  # per-step tensors: cheap heap allocations on CPU, unlike one [T, ...] tensor
        for t in range(T):
            h = x[t] if t == 0 else torch.add(x[t], v, alpha=beta, out=v)
            if inv != 1.0:
                torch.mul(h, inv, out=u)
            else:
                u = h
            st = s[t]
            masks.append(_ilif_mask(u, D, inclusive, scratch))
            torch.clamp(u, 0, D, out=st)
            st.round_()
            if t + 1 < T:
                torch.sub(h, st, alpha=vth, out=v)
        ctx.save_for_backward(*masks)
        return s

    @staticmethod
    @once_differentiable
    def backward(ctx, gs):  # type: ignore[override]
        beta, inv, _, detach_reset, _ = ctx.params
        masks = ctx.saved_tensors
        gx = torch.empty_like(gs)
        zero = gs.new_zeros(())
        gv = torch.empty_like(gs[0]) if gs.shape[0] > 1 else None  # dL/dV[t]
        g = torch.empty_like(gs[0]) if inv != 1.0 else None
        for t in range(gs.shape[0] - 1, -1, -1):
            gt = gs[t] if inv == 1.0 else torch.mul(gs[t], inv, out=g)
            if t == gs.shape[0] - 1:  # V[T-1] is not used
                torch.where(masks[t], gt, zero, out=gx[t])
            elif detach_reset:  # dV/dH = 1
                torch.where(masks[t], gt, zero, out=gx[t]).add_(gv)
            else:  # dV/dH = 1 - mask
                torch.where(masks[t], gt, gv, out=gx[t])
            if t > 0:
                torch.mul(gx[t], beta, out=gv)
        return gx, None, None, None, None, None


def unfold_spikes(s: torch.Tensor, D: int) -> torch.Tensor:
    """Unfold integer spike counts into D binary sub-steps.

    Args:
        s: integer-valued counts in ``0..D`` (any layout, float or int dtype).
        D: number of sub-steps (the I-LIF's maximum count).

    Returns:
        0/1 tensor ``[D, *s.shape]`` in ``s``'s dtype with sub-step ``k = s > k``, so that
        ``out.sum(0) == s`` and every sub-step is a plain binary spike map.
    """
    if D < 1:
        raise ValueError(f"D must be >= 1, got {D}")
    ks = torch.arange(D, device=s.device, dtype=s.dtype).view(D, *([1] * s.dim()))
    return (s.unsqueeze(0) > ks).to(s.dtype)


def spike_driven_forward(layer: nn.Module, spikes: torch.Tensor) -> torch.Tensor:
    """Apply a linear/conv ``layer`` to D binary sub-steps and sum them (additions only).

    Args:
        layer: ``nn.Linear`` or ``nn.Conv1d/2d/3d``.
        spikes: ``[D, N, ...]``, the layer's usual input with a leading sub-step axis (e.g.
            from :func:`unfold_spikes`; flatten ``T`` into ``N`` first for conv layers).

    Returns:
        ``sum_k layer_without_bias(spikes[k]) + bias``: the bias is added once, not D times.
        Equals ``layer(spikes.sum(0))`` up to float summation order.
    """
    D = spikes.shape[0]
    flat = rearrange(spikes, "d n ... -> (d n) ...")
    if isinstance(layer, nn.Linear):
        y = F.linear(flat, layer.weight)
        bias_shape = (-1,)
    elif isinstance(layer, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        y = layer._conv_forward(flat, layer.weight, None)
        bias_shape = (-1,) + (1,) * (y.dim() - 2)
    else:
        raise TypeError(f"spike_driven_forward supports nn.Linear and nn.ConvNd, got {type(layer).__name__}")
    y = rearrange(y, "(d n) ... -> d n ...", d=D).sum(0)
    if layer.bias is not None:
        y = y + layer.bias.view(bias_shape)
    return y


class SpikingNeuron(nn.Module):
    """Base class of spikelight's neurons (found by ``isinstance`` for firing/energy accounting).

    Attributes:
        max_spike: largest value one neuron can emit per timestep (D for I-LIF, 1 for binary).
    """

    max_spike: int = 1


class ILIF(SpikingNeuron):
    """Integer LIF (multi-spike) neuron of SVL; see the module docstring for the equations.

    Args:
        beta: membrane leak (``H = beta * V + X``).
        vth: threshold; output counts are in units of ``vth``.
        D: maximum integer spike per timestep.
        spike_driven: return the unfolded binary form ``[D, T, B, ...]`` (inference only).
        detach_reset: do not back-propagate through the soft reset.
        inclusive_window: STE window ``0 <= H/Vth <= D`` instead of the strict ``0 < H/Vth < D``
            of the reference (the authors' code and spikingjelly's ``ILIFNode`` are inclusive; the
            two differ only where ``H/Vth`` is exactly 0 or D, e.g. all-zero inputs).

    Shape: ``[T, B, ...] -> [T, B, ...]`` integer counts (float dtype), or ``[D, T, B, ...]``
    0/1 when ``spike_driven``.
    """

    def __init__(
        self,
        *,
        beta: float = 0.25,
        vth: float = 1.0,
        D: int = 4,
        spike_driven: bool = False,
        detach_reset: bool = False,
        inclusive_window: bool = False,
    ) -> None:
        super().__init__()
        if not vth > 0:
            raise ValueError(f"ILIF vth must be > 0, got {vth}")
        if int(D) != D or D < 1:
            raise ValueError(f"ILIF D must be a positive integer, got {D}")
        self.beta, self.vth, self.D = float(beta), float(vth), int(D)
        self.spike_driven, self.detach_reset = bool(spike_driven), bool(detach_reset)
        self.inclusive_window = bool(inclusive_window)
        self.max_spike = self.D

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_seq(x, "ILIF")
        if torch.is_grad_enabled() and x.requires_grad and not self.spike_driven:
            return _ILIFFunction.apply(x, self.beta, self.vth, self.D, self.detach_reset, self.inclusive_window)
        s = _ilif_infer(x.detach(), self.beta, self.vth, self.D)
        return unfold_spikes(s, self.D) if self.spike_driven else s

    def extra_repr(self) -> str:
        return (
            f"beta={self.beta}, vth={self.vth}, D={self.D}, spike_driven={self.spike_driven}, "
            f"detach_reset={self.detach_reset}, inclusive_window={self.inclusive_window}"
        )


# ---------------------------------------------------------------------------------------------
# Binary spike
# ---------------------------------------------------------------------------------------------


class _BinarySpikeFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, threshold: float):  # type: ignore[override]
        lo, hi = threshold - 0.5, threshold + 0.5
        ctx.save_for_backward(torch.logical_and(u >= lo, u <= hi))
        return (u >= threshold).to(u.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, g):  # type: ignore[override]
        (mask,) = ctx.saved_tensors
        return torch.where(mask, g, g.new_zeros(())), None


class BinarySpike(SpikingNeuron):
    """Stateless binary spike of T-RevSNN: ``u >= threshold``, STE on ``[thr - 0.5, thr + 0.5]``.

    Shape: any -> same.
    """

    max_spike = 1

    def __init__(self, *, threshold: float = 0.5) -> None:
        super().__init__()
        self.threshold = float(threshold)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and u.requires_grad:
            return _BinarySpikeFunction.apply(u, self.threshold)
        return (u >= self.threshold).to(u.dtype)

    def extra_repr(self) -> str:
        return f"threshold={self.threshold}"


# ---------------------------------------------------------------------------------------------
# LIF
# ---------------------------------------------------------------------------------------------


def _lif_coeffs(tau: float, v_reset: float | None, decay_input: bool):
    """(k, decay, c, c0): H = k X + decay V + c; c0 is the constant of the first step (V = rest)."""
    vr = 0.0 if v_reset is None else v_reset
    k = 1.0 / tau if decay_input else 1.0
    decay = 1.0 - 1.0 / tau
    return k, decay, vr / tau, vr  # first step: decay * vr + vr / tau = vr


def _lif_charge(out, x_t, v, k: float, decay: float, c: float) -> torch.Tensor:
    """out = k * x_t + decay * v + c   (v None: the first step, v = rest is folded into c)."""
    if v is None:
        if k == 1.0:
            out.copy_(x_t)
        else:
            torch.mul(x_t, k, out=out)
    elif k == 1.0:
        torch.add(x_t, v, alpha=decay, out=out)
    else:
        torch.mul(x_t, k, out=out).add_(v, alpha=decay)
    if c != 0.0:
        out.add_(c)
    return out


def _lif_reset(v, h, s_t, vth: float, v_reset: float | None, vr_t) -> torch.Tensor:
    """v = h - vth * s (soft) or h (1 - s) + v_reset s (hard); exact for s in {0, 1}."""
    if v_reset is None:
        return torch.sub(h, s_t, alpha=vth, out=v)
    if v_reset == 0.0:
        return torch.addcmul(h, h, s_t, value=-1.0, out=v)
    return torch.lerp(h, vr_t, s_t, out=v)


def _lif_infer(x, tau, vth, v_reset, decay_input):
    """LIF forward without autograd bookkeeping. x: [T, ...] -> S: [T, ...]."""
    k, decay, c, c0 = _lif_coeffs(tau, v_reset, decay_input)
    s = torch.empty_like(x)
    h = torch.empty_like(x[0])
    v = torch.empty_like(x[0]) if x.shape[0] > 1 else None
    vr_t = x.new_tensor(0.0 if v_reset is None else v_reset)
    T = x.shape[0]
    for t in range(T):
        _lif_charge(h, x[t], None if t == 0 else v, k, decay, c0 if t == 0 else c)
        torch.ge(h, vth, out=s[t])
        if t + 1 < T:
            _lif_reset(v, h, s[t], vth, v_reset, vr_t)
    return s


class _LIFFunction(torch.autograd.Function):
    """Multi-step LIF with a hand-written BPTT backward. x: [T, ...] -> S: [T, ...].

    Saves the charged potential H of every step (T = 1: saves only x, H is recomputed).
    ``smooth=True`` (tests only) fires the surrogate's primitive ``p(H - Vth)`` instead of the
    step; every other line is shared, so ``gradcheck`` on it verifies this very backward.
    """

    @staticmethod
    def forward(ctx, x, tau, vth, v_reset, decay_input, detach_reset, kind, alpha, smooth=False):  # type: ignore[override]
        k, decay, c, c0 = _lif_coeffs(tau, v_reset, decay_input)
        T = x.shape[0]
        s = torch.empty_like(x)
        v = torch.empty_like(x[0]) if T > 1 else None
        vr_t = x.new_tensor(0.0 if v_reset is None else v_reset)
        hs = []  # per-step tensors: cheap heap allocations on CPU, unlike one [T, ...] tensor
        for t in range(T):
            h = _lif_charge(torch.empty_like(x[0]), x[t], None if t == 0 else v, k, decay, c0 if t == 0 else c)
            if smooth:
                s[t] = surrogate_primitive(h - vth, kind, alpha)
            else:
                torch.ge(h, vth, out=s[t])
            if t + 1 < T:
                _lif_reset(v, h, s[t], vth, v_reset, vr_t)
            hs.append(h)
        ctx.fast = T == 1
        ctx.save_for_backward(*((x,) if T == 1 else hs))
        ctx.params = (k, decay, c0, vth, v_reset, detach_reset, kind, alpha, smooth)
        return s

    @staticmethod
    @once_differentiable
    def backward(ctx, gs):  # type: ignore[override]
        k, decay, c0, vth, v_reset, detach_reset, kind, alpha, smooth = ctx.params
        T = gs.shape[0]
        if ctx.fast:
            (x,) = ctx.saved_tensors
            hs = [_lif_charge(torch.empty_like(x[0]), x[0], None, k, decay, c0)]
        else:
            hs = ctx.saved_tensors
        gx = torch.empty_like(gs)
        sg = torch.empty_like(gs[0])
        gv = torch.empty_like(gs[0]) if T > 1 else None  # dL/dV[t]
        for t in range(T - 1, -1, -1):
            h, gh = hs[t], gx[t]  # dL/dH[t] is built in place in gx[t]
            surrogate_grad_(torch.sub(h, vth, out=sg), kind, alpha)
            if t == T - 1:  # V[T-1] is not used
                torch.mul(gs[t], sg, out=gh)
            elif v_reset is None:  # V = H - Vth S:  dV/dH = 1 - Vth g  (1 if detached)
                if detach_reset:
                    torch.addcmul(gv, gs[t], sg, out=gh)
                else:  # gs g + gv (1 - Vth g) = gv + g (gs - Vth gv)
                    torch.add(gs[t], gv, alpha=-vth, out=gh).mul_(sg).add_(gv)
            else:  # V = H (1 - S) + V_reset S:  dV/dH = (1 - S) + (V_reset - H) g  ((1 - S) if detached)
                if detach_reset:
                    torch.mul(gs[t], sg, out=gh)
                else:  # g (gs + gv (V_reset - H))
                    torch.addcmul(gs[t], gv, h, value=-1.0, out=gh)
                    if v_reset != 0.0:
                        gh.add_(gv, alpha=v_reset)
                    gh.mul_(sg)
                if smooth:  # 1 - S
                    sg.copy_(1.0 - surrogate_primitive(h - vth, kind, alpha))
                else:
                    torch.lt(h, vth, out=sg)
                gh.addcmul_(gv, sg)
            if t > 0:
                torch.mul(gh, decay, out=gv)
            if k != 1.0:
                gh.mul_(k)
        return gx, None, None, None, None, None, None, None, None


class LIF(SpikingNeuron):
    """Leaky integrate-and-fire neuron (spikingjelly ``LIFNode`` equations, multi-step).

    Args:
        tau: membrane time constant (>= 1).
        vth: firing threshold (fires when ``H >= vth``).
        v_reset: hard-reset potential, or ``None`` for soft reset (subtract ``vth``).
        decay_input: whether the input is divided by ``tau`` too.
        detach_reset: no gradient through the spike in the reset.
        surrogate: ``"rectangular"``, ``"sigmoid"`` or ``"atan"``.
        alpha: surrogate parameter (None: the kind's default, see
            :mod:`spikelight.nn.surrogate`).

    Shape: ``[T, B, ...] -> [T, B, ...]`` 0/1 spikes.
    """

    max_spike = 1

    def __init__(
        self,
        *,
        tau: float = 2.0,
        vth: float = 1.0,
        v_reset: float | None = 0.0,
        decay_input: bool = True,
        detach_reset: bool = False,
        surrogate: str = "atan",
        alpha: float | None = None,
    ) -> None:
        super().__init__()
        if not tau >= 1.0:
            raise ValueError(f"LIF tau must be >= 1, got {tau}")
        self.tau, self.vth = float(tau), float(vth)
        self.v_reset = None if v_reset is None else float(v_reset)
        self.decay_input, self.detach_reset = bool(decay_input), bool(detach_reset)
        self.surrogate = surrogate
        self.alpha = _check(surrogate, alpha)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_seq(x, "LIF")
        if torch.is_grad_enabled() and x.requires_grad:
            return _LIFFunction.apply(
                x, self.tau, self.vth, self.v_reset, self.decay_input, self.detach_reset,
                self.surrogate, self.alpha, False,
            )
        return _lif_infer(x.detach(), self.tau, self.vth, self.v_reset, self.decay_input)

    def extra_repr(self) -> str:
        return (
            f"tau={self.tau}, vth={self.vth}, v_reset={self.v_reset}, decay_input={self.decay_input}, "
            f"detach_reset={self.detach_reset}, surrogate={self.surrogate!r}, alpha={self.alpha}"
        )
