"""T-RevSNN's reversible backward: memory flat in the number of timesteps T.

The model (:class:`~spikelight.models.trevsnn.TRevSNN`) calls :class:`ReversibleTime` from its
``forward_features`` in ``mode="reversible"`` when gradients are needed.

Reversible backward (``mode="reversible"``)
-------------------------------------------
A custom ``torch.autograd.Function`` runs all timesteps under ``no_grad`` and saves only the stem
output(s) and the final states ``c0..c3[T]``; it outputs ``c3[t]`` for **every** ``t`` (the heads'
inputs), so a loss on all ``T`` heads back-propagates. Backward walks ``t = T..1`` and, per level,
deepest first, recomputes ``L_l`` with grad enabled and rebuilds the previous state by inverting
the leak, ``c_l[t-1] = (c_l[t] - L_l(...)) / a_l``; it then takes the vector-Jacobian product of
``c_l[t] = a_l * c_l[t-1] + L_l`` with the state's accumulated adjoint. At most one level's graph
is alive at a time, so activation memory does not grow with ``T``.

* Parameters are explicit inputs of the Function and their gradients are *returned* by its
  backward (``torch.autograd.grad`` inside, no side-effect accumulation): every parameter's
  ``AccumulateGrad`` fires exactly once per backward, shared modules included (DDP-friendly),
  and ``torch.autograd.grad(loss, params)`` works too. No double backward.
* RNG: when the model is stochastic (``drop_path_rate > 0`` in training), the CPU (and CUDA)
  RNG state is saved before every ``L_l[t]`` of the forward and restored for its recompute (as
  ``torch.utils.checkpoint`` does); the caller's RNG stream is left as it was. Autocast: the
  forward's autocast state (device type, enabled, dtype) is re-entered for the recompute.
* BatchNorm: running statistics are updated once, by the real forward. During recompute each BN
  of the level gets ``track_running_stats=False`` temporarily: in training mode it then
  normalises with the same batch statistics and touches neither the running buffers nor
  ``num_batches_tracked``.
* States are kept in the leak parameters' dtype (float32 under fp16/bf16 autocast).
* Precision: the inversion is exact up to rounding, ``~eps * |c| / |a|`` per step; in float64 the
  reversible and BPTT gradients agree to ~1e-10 relative or better. In float32 it drifts
  slightly (measured ~1e-6 relative on the tiny variant at T=4) and a spike whose
  membrane sits within rounding of the threshold can flip in the recompute (inherent to the
  method). ``|a| >= 1e-3`` bounds the amplification.
* Forward hooks on the sub-network modules fire again during the recompute (as with activation
  checkpointing): count energy/firing rates in eval or ``no_grad``, where the plain loop runs.

``mode="bptt"`` runs the same loop with ordinary autograd (every activation of every timestep
is kept). Without grad (eval, ``torch.no_grad``) both modes run the plain loop, keeping only the
current states (O(1) in T).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.autograd.function import once_differentiable

if TYPE_CHECKING:
    from spikelight.models.trevsnn import TRevSNN

__all__ = ["ReversibleTime", "get_rng"]


# ---------------------------------------------------------------------------------------------
# RNG / recompute helpers
# ---------------------------------------------------------------------------------------------


def get_rng(device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return torch.get_rng_state(), cuda


def _set_rng(state: tuple[torch.Tensor, torch.Tensor | None], device: torch.device) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


@contextlib.contextmanager
def _keep_rng(device: torch.device, enabled: bool) -> Iterator[None]:
    """Restore the caller's RNG state on exit (the recompute reseeds it)."""
    if not enabled:
        yield
        return
    state = get_rng(device)
    try:
        yield
    finally:
        _set_rng(state, device)


@contextlib.contextmanager
def _frozen_bn_stats(bns: Sequence[nn.modules.batchnorm._BatchNorm]) -> Iterator[None]:
    """Normalise as before but update no running statistics (training-mode recompute)."""
    old = [bn.track_running_stats for bn in bns]
    try:
        for bn in bns:
            bn.track_running_stats = False
        yield
    finally:
        for bn, o in zip(bns, old):
            bn.track_running_stats = o


def _acc(a: torch.Tensor | None, b: torch.Tensor | None) -> torch.Tensor | None:
    if b is None:
        return a
    return b if a is None else a + b


# ---------------------------------------------------------------------------------------------
# reversible autograd Function
# ---------------------------------------------------------------------------------------------


class ReversibleTime(torch.autograd.Function):
    """Inputs: ``net, n_x, *xs (n_x stem outputs), *params``; outputs: ``c3[t]`` for ``t = 1..T``."""

    @staticmethod
    def forward(ctx, net: TRevSNN, n_x: int, *inputs: torch.Tensor):  # type: ignore[override]
        xs = inputs[:n_x]
        device = xs[0].device
        dev_type = device.type
        ctx.net, ctx.n_x, ctx.n_params = net, n_x, len(inputs) - n_x
        ctx.autocast = (dev_type, torch.is_autocast_enabled(dev_type), torch.get_autocast_dtype(dev_type))
        ctx.rng = {} if net._stochastic() else None
        states, outs = net._run(xs, rng=ctx.rng, keep_all=True)
        ctx.save_for_backward(*xs, *states)
        ctx.set_materialize_grads(False)
        return tuple(outs)

    @staticmethod
    @once_differentiable
    def backward(ctx, *g_outs: torch.Tensor | None):  # type: ignore[override]
        net: TRevSNN = ctx.net
        n_x = ctx.n_x
        saved = ctx.saved_tensors
        xs, c = saved[:n_x], list(saved[n_x:])
        params = net._rev_params()
        if len(params) != ctx.n_params:
            raise RuntimeError(
                "TRevSNN: the set of trainable parameters changed between forward and backward"
            )
        x_needs = ctx.needs_input_grad[2 : 2 + n_x]
        device = xs[0].device
        dev_type, ac_enabled, ac_dtype = ctx.autocast
        rec = net._recorder
        T = len(g_outs)

        pgrads: dict[int, torch.Tensor] = {}
        gx: list[torch.Tensor | None] = [None] * n_x
        gc: list[torch.Tensor | None] = [None] * 4  # adjoint of c_l[t]

        with _keep_rng(device, ctx.rng is not None):
            for t in reversed(range(T)):  # 0-based: this is timestep t+1
                gc[3] = _acc(gc[3], g_outs[t])
                gprev: list[torch.Tensor | None] = [None] * 4  # adjoint of c_l[t-1]
                xi = t if n_x > 1 else 0
                for lvl in (3, 2, 1, 0):
                    level = net.columns[t].levels[lvl]
                    leak = net.leaks[lvl]
                    need_u = lvl > 0 or x_needs[xi]
                    u = (xs[xi] if lvl == 0 else c[lvl - 1]).detach().requires_grad_(need_u)
                    v = c[lvl + 1].detach().requires_grad_(True) if (lvl < 3 and t > 0) else None
                    with contextlib.ExitStack() as stack:
                        stack.enter_context(torch.enable_grad())
                        stack.enter_context(torch.autocast(dev_type, dtype=ac_dtype, enabled=ac_enabled))
                        if net.training:
                            stack.enter_context(_frozen_bn_stats(level.batchnorms()))
                        if ctx.rng is not None:
                            _set_rng(ctx.rng[(t, lvl)], device)
                        L = level(u, v)
                        if t > 0:
                            with torch.no_grad():
                                c_prev = net._leak_invert(lvl, c[lvl], L)
                            out = net._leak_update(lvl, c_prev, L)
                        else:
                            c_prev = None
                            out = net._leak_update(lvl, None, L)
                    g_out = gc[lvl] if gc[lvl] is not None else torch.zeros_like(out)
                    lp = level.grad_params()
                    use_leak = t > 0 and leak.requires_grad
                    inputs = ([u] if need_u else []) + ([v] if v is not None else [])
                    inputs += ([leak] if use_leak else []) + lp
                    grads = list(torch.autograd.grad(out, inputs, g_out, allow_unused=True))
                    del L, out
                    if need_u:
                        g_u = grads.pop(0)
                        if lvl == 0:
                            gx[xi] = _acc(gx[xi], g_u)
                        else:
                            gc[lvl - 1] = _acc(gc[lvl - 1], g_u)
                    if v is not None:
                        gprev[lvl + 1] = _acc(gprev[lvl + 1], grads.pop(0))
                    if use_leak:
                        g_a = grads.pop(0)
                        if g_a is not None:
                            pgrads[id(leak)] = _acc(pgrads.get(id(leak)), g_a)
                    for p, g in zip(lp, grads):
                        if g is not None:
                            pgrads[id(p)] = _acc(pgrads.get(id(p)), g)
                    if t > 0:
                        a = net._leak(lvl).detach()
                        gprev[lvl] = _acc(gprev[lvl], a * g_out)
                        c[lvl] = c_prev
                        if rec is not None:
                            rec.reconstructed[(t, lvl)] = c_prev.detach().clone()
                gc = gprev

        out_gx = [g if need else None for g, need in zip(gx, x_needs)]
        out_gp = [pgrads.get(id(p)) for p in params]
        return (None, None, *out_gx, *out_gp)
