"""Spike-energy accounting for any ``nn.Module``, through hooks (no code inside models).

Convention (SNN papers; Horowitz 2014, 45 nm):

    E = E_MAC * FLOPs(layers fed real values) + E_AC * sum_{layers fed spikes} rate_in * FLOPs

with ``E_MAC = 4.6 pJ``, ``E_AC = 0.9 pJ`` (configurable). FLOPs here are the
multiply-accumulates (MACs) of the *dense* op: a layer fed spikes performs one addition per
non-zero input spike and synapse, i.e. ``rate_in * FLOPs`` additions ("ops") when ``rate_in``
is the mean input value; integer spikes count their value (a 3 is three additions). The ANN
baseline is ``E_MAC * FLOPs`` of every layer. Reported per sample, in mJ.

How it works
------------
:class:`EnergyMeter` pushes a ``TorchDispatchMode`` that sees every aten op, and registers
forward pre/post hooks on every module of the measured (sub)model to know which module runs.
Counted ops are the dense products (convolutions, ``mm``/``bmm``/``mv``/``dot`` and their
``add*`` forms - ``nn.Linear``, ``@``, ``einsum`` and gather-matmul sparse convolutions all end up
there - and fused attention), with the MAC formulas of :mod:`spikelight.profiling.flops`; bias adds,
norms, neurons and other elementwise work are not counted, as in the papers.

Composite ops (``linear``, ``conv2d``, ``matmul`` ..., which reach the mode undecomposed under
``torch.inference_mode``) are decomposed first, so each product is counted exactly once.
Backward ops are never counted.

MAC or AC (the classification rule)
-----------------------------------
For each counted op, the operands that are *weights* are set aside: parameters and buffers of
the model (matched by storage, so ``weight.t()`` and other views count as weights) and any
tensor computed only from weights inside the meter (autocast copies, weight standardisation,
folded classifiers). Of the remaining *activation* operands, the first one that is
**spike-valued** - every value is a non-negative integer not larger than ``spike_max`` - makes
the op an **AC** op whose input firing rate is that operand's mean value (integers count their
value); otherwise the op is a **MAC** op. A product of two spike tensors (``q @ k^T`` in
spike-driven attention) uses the rate of its left operand. ``spike_max="auto"`` (default) is the
largest ``max_spike`` of the model's spiking neurons (so raw 0..255 pixels are not spikes), or
no bound if the model has none. Module names listed in ``mac_layers`` (exact names,
``fnmatch`` patterns, or a prefix naming a whole subtree) are forced to MAC.

Rows
----
One row per (module, k-th counted op inside one call of that module): e.g. a spiking attention
module with ``q @ k^T`` and ``attn @ v`` gives rows ``enc.attn`` and ``enc.attn#1``. A module
called several times (per timestep, weight sharing) accumulates into the same rows. Ops outside
any hooked module count under ``(root)`` when the whole model is measured and are ignored when
a ``module`` restriction is set (e.g. ``module="encoder"`` leaves out frozen CLIP towers).

Firing rates
------------
Forward hooks on :class:`~spikelight.nn.neurons.SpikingNeuron` modules (plus ``neuron_types``)
record ``sum(output) / numel(input)``: the mean spike count per neuron per timestep (for
``ILIF(spike_driven=True)``, whose output is ``[D, T, B, ...]``, this is still the mean count).

Samples
-------
Inputs ``[T, B, ...]`` are usually folded into the batch dim inside models, so the counted
FLOPs already include ``T``; dividing by the number of *samples* ``B`` (``add_samples``) gives
per-sample numbers. Several batches accumulate: ops are summed and divided by the total.

Kernels outside the dispatcher
------------------------------
Ops run outside PyTorch's dispatcher (custom CUDA/cupy kernels, compiled graphs) are not seen.
spconv's kernels are such ops, so the meter never lets them run unseen: while it is active, every
:mod:`spikelight.nn.sparse_conv` layer of the measured model runs the pure-PyTorch backend
(``sparse_backend="torch"``, default; same sites and values, counted like any gather-matmul-scatter)
and the layers' backends are restored afterwards; ``sparse_backend="refuse"`` raises instead when a
layer would run spconv. Convolutions of the ``spconv`` package itself (not ours) cannot be switched:
on CPU spconv runs its products as ``aten.mm`` (counted like ours); a spconv convolution that runs on
sites while no product reaches the meter (its CUDA kernels) makes the meter raise with a message.

Not counted: bias additions and the spikingjelly-style memory-access term.
The report (rows, totals, formatting) is :mod:`spikelight.profiling.energy_report`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from fnmatch import fnmatch
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map
from torch.utils.weak import WeakTensorKeyDictionary

from spikelight.datamodules.base import batch_size_of
from spikelight.nn import sparse_conv
from spikelight.nn.neurons import SpikingNeuron
from spikelight.profiling.energy_report import (
    ROOT_NAME,
    EnergyReport,
    LayerRow,
    NeuronRow,
    OpCounts,
    build_report,
    format_report,
)
from spikelight.profiling.flops import FORMULAS, registry_formula

__all__ = [
    "E_AC_PJ",
    "E_MAC_PJ",
    "ROOT_NAME",
    "EnergyMeter",
    "EnergyReport",
    "LayerRow",
    "NeuronRow",
    "format_report",
    "measure_energy",
]

E_MAC_PJ = 4.6
E_AC_PJ = 0.9
_SPARSE_POLICIES = ("torch", "refuse")


_FACTORY_LIKE = ("new_", "empty", "zeros", "ones", "full", "rand", "normal", "bernoulli")


# ---------------------------------------------------------------------------------------------
# The meter
# ---------------------------------------------------------------------------------------------


class _Frame:
    __slots__ = ("name", "type", "count")

    def __init__(self, name: str, type_: str) -> None:
        self.name, self.type, self.count = name, type_, 0


class _CountingMode(TorchDispatchMode):
    def __init__(self, meter: EnergyMeter) -> None:
        super().__init__()
        self.meter = meter

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        packet = func.overloadpacket
        formula = FORMULAS.get(packet)
        if formula is None:
            formula = self.meter._fallback(packet)
        if formula is None:
            with self:  # composite ops (linear, matmul, conv2d ...) -> their counted parts
                r = func.decompose(*args, **kwargs)
            if r is not NotImplemented:
                return r
        out = func(*args, **kwargs)
        self.meter._after_op(func, args, kwargs, out, formula)
        return out


class EnergyMeter:
    """Count dense FLOPs, spike (AC) operations and firing rates of a model while it runs.

    Args:
        model: the root module (a plain model or a LightningModule).
        module: dotted name of a submodule to restrict the accounting to (``"encoder"``);
            ``None`` measures ``model`` as a whole.
        e_mac_pj / e_ac_pj: energy of one multiply-accumulate / one addition, in pJ.
        mac_layers: module names forced to MAC (exact, ``fnmatch`` pattern, or subtree prefix;
            names are relative to ``model``, e.g. ``"encoder.stem.0"``).
        neuron_types: extra neuron classes whose output firing rates are recorded (besides
            :class:`SpikingNeuron`), e.g. spikingjelly's ``BaseNode``.
        spike_max: an activation counts as spikes only if its values are integers in
            ``0..spike_max``; ``"auto"``: the largest ``max_spike`` of the model's neurons
            (no bound when there are none); ``None``: no bound.
        sparse_backend: what to do with sparse convolutions that would run spconv's kernels
            (invisible to the meter): ``"torch"`` runs them on the pure-PyTorch backend while
            the meter is active (restored on ``stop``); ``"refuse"`` raises when one would run
            spconv.

    Use::

        meter = EnergyMeter(model, module="encoder")
        with meter, torch.no_grad():      # may be entered many times; counts accumulate
            model(batch)
        meter.add_samples(batch_size)
        print(format_report(meter.report()))

    ``start()`` / ``stop()`` do the same as entering / leaving (for callbacks).
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        module: str | None = None,
        e_mac_pj: float = E_MAC_PJ,
        e_ac_pj: float = E_AC_PJ,
        mac_layers: Sequence[str] = (),
        neuron_types: Sequence[type] | None = None,
        spike_max: float | str | None = "auto",
        sparse_backend: str = "torch",
    ) -> None:
        if sparse_backend not in _SPARSE_POLICIES:
            raise ValueError(f"sparse_backend must be one of {_SPARSE_POLICIES}, got {sparse_backend!r}")
        self.sparse_backend = sparse_backend
        self.model = model
        self.module = module or None
        self.target = model.get_submodule(module) if module else model
        self.e_mac_pj, self.e_ac_pj = float(e_mac_pj), float(e_ac_pj)
        self.mac_layers = [str(m) for m in mac_layers]
        self.neuron_types = (SpikingNeuron, *tuple(neuron_types or ()))
        if spike_max == "auto":
            caps = [
                float(getattr(m, "max_spike", 1) or 1)
                for m in self.target.modules()
                if isinstance(m, self.neuron_types)
            ]
            self.spike_max = max(caps) if caps else None
        else:
            self.spike_max = None if spike_max is None else float(spike_max)
        self._prefix = f"{module}." if module else ""
        self._mode: _CountingMode | None = None
        self._handles: list = []
        self._stack: list[_Frame] = []
        self._fallbacks: dict = {}
        self._weight_ptrs: set[int] = set()
        self._derived = WeakTensorKeyDictionary()
        self._saved_backends: dict[nn.Module, str] = {}
        self._products = 0  # counted products so far (to notice modules whose kernels bypass the meter)
        self.reset()

    # -- public -------------------------------------------------------------------------------

    def reset(self) -> None:
        """Forget all counts and samples."""
        self._rows: dict[tuple[str, int], OpCounts] = {}
        self._neurons: dict[str, list] = {}  # name -> [type, max_spike, spike_sum, numel]
        self.samples = 0

    def add_samples(self, n: int) -> None:
        """Declare that ``n`` more samples were run (the batch size ``B``, not ``T * B``)."""
        self.samples += int(n)

    @property
    def active(self) -> bool:
        return self._mode is not None

    def start(self) -> None:
        """Install hooks and the dispatch mode (no-op if already active)."""
        if self._mode is not None:
            return
        if self.sparse_backend == "torch":
            self._saved_backends = sparse_conv.set_backend(self.target, "torch")
        self._weight_ptrs = {
            t.untyped_storage().data_ptr()
            for t in (*self.model.parameters(), *self.model.buffers())
            if t.numel() > 0
        }
        self._weight_ptrs.discard(0)
        self._stack = []
        for name, mod in self.target.named_modules():
            full = self._prefix + name if name else (self.module or "")
            self._handles.append(mod.register_forward_pre_hook(self._pre_hook(full)))
            self._handles.append(mod.register_forward_hook(self._post_hook(full), always_call=True))
            if isinstance(mod, self.neuron_types):
                self._handles.append(mod.register_forward_hook(self._neuron_hook(full)))
            if isinstance(mod, (sparse_conv.SubMConv3d, sparse_conv.SparseConv3d)):
                self._handles.append(mod.register_forward_pre_hook(self._sparse_hook(full)))
            elif _is_spconv_conv(mod):
                self._handles += self._spconv_hooks(mod, full)
        self._mode = _CountingMode(self)
        self._mode.__enter__()

    def stop(self) -> None:
        """Remove hooks and the dispatch mode (no-op if not active)."""
        if self._mode is None:
            return
        mode, self._mode = self._mode, None
        try:
            mode.__exit__(None, None, None)
        finally:
            for h in self._handles:
                h.remove()
            self._handles.clear()
            self._stack.clear()
            self._derived = WeakTensorKeyDictionary()
            for layer, backend in self._saved_backends.items():
                layer.backend = backend
            self._saved_backends = {}

    def __enter__(self) -> EnergyMeter:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def report(self) -> EnergyReport:
        """Totals and rows per sample over everything counted since the last ``reset``."""
        return build_report(self._rows, self._neurons, self.samples, self.e_mac_pj, self.e_ac_pj, self.module)

    # -- hooks --------------------------------------------------------------------------------

    def _spconv_hooks(self, mod: nn.Module, name: str) -> list:
        """A module of the spconv package (cannot be switched to our backend): fail if it ran on sites
        but not one of its products reached the dispatcher (spconv's CUDA kernels; its CPU path runs
        ``aten.mm`` and is counted)."""
        seen = []

        def pre(m, args):
            seen.append(self._products)

        def post(m, args, out):
            before = seen.pop() if seen else self._products
            feats = getattr(args[0], "features", None) if args else None
            if self._products == before and isinstance(feats, torch.Tensor) and feats.numel() > 0:
                raise RuntimeError(
                    f"EnergyMeter: spconv module {name!r} ({type(m).__qualname__}) ran kernels outside "
                    "PyTorch's dispatcher (spconv on CUDA), so its operations cannot be counted. Build the "
                    "model with spikelight.nn.sparse_conv.SubMConv3d / SparseConv3d (same KRSC weights, see "
                    "weight_from_spconv), which the meter runs on their pure-PyTorch backend, or measure on CPU."
                )

        return [mod.register_forward_pre_hook(pre), mod.register_forward_hook(post)]

    def _sparse_hook(self, name: str):
        def hook(mod, args):
            if args and mod.uses_spconv(args[0]):  # only reachable with sparse_backend="refuse"
                raise RuntimeError(
                    f"EnergyMeter(sparse_backend='refuse'): sparse convolution {name!r} would run spconv's "
                    f"kernels (backend={mod.backend!r}), which bypass PyTorch's dispatcher, so its operations "
                    "would not be counted. Use sparse_backend='torch' (counts the same convolution on the "
                    "pure-PyTorch backend) or set the layer's backend to 'torch'."
                )

        return hook

    def _pre_hook(self, name: str):
        def hook(mod, args):
            self._stack.append(_Frame(name, type(mod).__name__))

        return hook

    def _post_hook(self, name: str):
        def hook(mod, args, out):
            # pop up to and including this module's frame (robust to exceptions deeper down)
            while self._stack:
                if self._stack.pop().name == name:
                    break

        return hook

    def _neuron_hook(self, name: str):
        def hook(mod, args, out):
            o = out[0] if isinstance(out, (tuple, list)) else out
            if not isinstance(o, torch.Tensor) or o.numel() == 0:
                return
            x = args[0] if args and isinstance(args[0], torch.Tensor) else o
            with torch.no_grad():
                s = float(o.detach().sum(dtype=torch.float64))
            rec = self._neurons.setdefault(
                name, [type(mod).__name__, getattr(mod, "max_spike", None), 0.0, 0]
            )
            rec[2] += s
            rec[3] += x.numel()

        return hook

    # -- op accounting ------------------------------------------------------------------------

    def _fallback(self, packet):
        if packet not in self._fallbacks:
            self._fallbacks[packet] = registry_formula(packet)
        return self._fallbacks[packet]

    def _is_weight(self, t: torch.Tensor) -> bool:
        if isinstance(t, nn.Parameter) or t in self._derived:
            return True
        try:
            return t.untyped_storage().data_ptr() in self._weight_ptrs
        except (RuntimeError, NotImplementedError):
            return False

    def _spike_stats(self, t: torch.Tensor) -> tuple[float, int] | None:
        """(sum, numel) if ``t`` holds spikes (non-negative integers <= spike_max), else None."""
        if t.numel() == 0 or t.is_complex():
            return None
        x = t.detach()
        if x.dtype == torch.bool:
            return float(x.sum()), x.numel()
        if x.is_floating_point():
            nonint = (x != torch.round(x)).any()
        else:
            nonint = torch.zeros((), dtype=torch.bool, device=x.device)
        lo, hi = torch.aminmax(x)
        lo, hi, bad = float(lo), float(hi), bool(nonint)
        if bad or lo < 0 or (self.spike_max is not None and hi > self.spike_max):
            return None
        return float(x.sum(dtype=torch.float64)), x.numel()

    def _forced_mac(self, name: str) -> bool:
        return any(name == p or name.startswith(p + ".") or fnmatch(name, p) for p in self.mac_layers)

    def _after_op(self, func, args, kwargs, out, formula) -> None:
        if formula is None:
            self._track_weights(func, args, kwargs, out)
            return
        if "backward" in func.__name__:
            return
        if self._stack:
            frame = self._stack[-1]
        elif self.module is None:
            frame = None
        else:
            return  # outside the measured submodule
        flops, operands = formula(args, kwargs, out)
        self._products += 1
        name = frame.name if frame is not None else ""
        if frame is not None:
            k = frame.count
            frame.count += 1
            type_ = frame.type
        else:
            k, type_ = 0, type(self.model).__name__
        acc = self._rows.get((name, k))
        if acc is None:
            acc = self._rows[(name, k)] = OpCounts(type=type_, op=func.overloadpacket.__name__)
        acc.calls += 1
        stats = None
        if not self._forced_mac(name):
            for t in operands:
                if isinstance(t, torch.Tensor) and not self._is_weight(t):
                    stats = self._spike_stats(t)
                    if stats is not None:
                        break
        if stats is None:
            acc.mac_flops += flops
        else:
            s, numel = stats
            acc.ac_flops += flops
            acc.ac_ops += flops * s / numel
            acc.spike_sum += s
            acc.spike_numel += numel
        # products of weights only (e.g. folding) keep their result a weight
        self._track_weights(func, args, kwargs, out)

    def _track_weights(self, func, args, kwargs, out) -> None:
        """Propagate "weight-ness": outputs computed only from weights are weights too."""
        flat, _ = tree_flatten((args, kwargs))
        tensors = [t for t in flat if isinstance(t, torch.Tensor)]
        if not tensors:
            return
        all_w = all(self._is_weight(t) for t in tensors)
        schema = func._schema
        mutated = []
        for i, a in enumerate(schema.arguments):
            if a.alias_info is not None and a.alias_info.is_write:
                v = args[i] if i < len(args) else kwargs.get(a.name)
                if isinstance(v, torch.Tensor):
                    mutated.append(v)
        for t in mutated:  # in-place / out= writes
            if all_w:
                self._derived[t] = True
            elif t in self._derived:
                del self._derived[t]
        if not all_w or mutated:
            return
        if any(s in func.__name__ for s in _FACTORY_LIKE) or func.__name__.endswith("_like"):
            return
        outs, _ = tree_flatten(out)
        for o in outs:
            if isinstance(o, torch.Tensor):
                self._derived[o] = True


# ---------------------------------------------------------------------------------------------
# Convenience
# ---------------------------------------------------------------------------------------------


def _is_spconv_conv(mod: nn.Module) -> bool:
    return type(mod).__module__.split(".")[0] == "spconv" and any(
        "Conv" in c.__name__ for c in type(mod).__mro__
    )


def _default_forward(model: nn.Module, batch: Any) -> Any:
    if isinstance(batch, (list, tuple)):
        return model(*batch)
    return model(batch)


def measure_energy(
    model: nn.Module,
    inputs: Iterable[Any] | torch.Tensor,
    *,
    forward: Callable[[nn.Module, Any], Any] | None = None,
    max_batches: int | None = None,
    batch_size_fn: Callable[[Any], int] | None = None,
    device: torch.device | str | None = None,
    eval_mode: bool = True,
    **meter_kwargs: Any,
) -> EnergyReport:
    """Run ``model`` on up to ``max_batches`` batches under an :class:`EnergyMeter`.

    Args:
        model: any module.
        inputs: an iterable of batches (a DataLoader), or a single tensor batch.
        forward: ``forward(model, batch)``; default ``model(*batch)`` for tuples/lists, else
            ``model(batch)``.
        max_batches: stop after this many batches (``None``: all).
        batch_size_fn: samples per batch; default :func:`spikelight.datamodules.base.batch_size_of`
            (first dim - pass ``lambda x: x.shape[1]`` for raw ``[T, B, ...]`` inputs).
        device: move batches there (default: the model's parameter device).
        eval_mode: run in ``eval()`` (restored afterwards), as at deployment.
        **meter_kwargs: :class:`EnergyMeter` options (``module``, ``e_mac_pj``, ``mac_layers`` ...).
    """
    forward = forward or _default_forward
    batch_size_fn = batch_size_fn or batch_size_of
    if isinstance(inputs, torch.Tensor):
        inputs = [inputs]
    if device is None:
        p = next(iter(model.parameters()), None)
        device = p.device if p is not None else torch.device("cpu")
    modes = {m: m.training for m in model.modules()}
    if eval_mode:
        model.eval()
    meter = EnergyMeter(model, **meter_kwargs)
    try:
        with torch.no_grad():
            for i, batch in enumerate(inputs):
                if max_batches is not None and i >= max_batches:
                    break
                batch = tree_map(lambda v: v.to(device) if isinstance(v, torch.Tensor) else v, batch)
                with meter:
                    forward(model, batch)
                meter.add_samples(batch_size_fn(batch))
    finally:
        for m, tr in modes.items():
            m.training = tr
    return meter.report()
