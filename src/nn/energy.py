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
Counted ops (the dense products; bias adds, norms, neurons and other elementwise work are not
counted, as in the papers):

* ``convolution`` (any dims, groups, transposed): ``N * prod(out_spatial) * weight.numel()``
  (transposed: ``prod(in_spatial)``);
* ``mm`` / ``addmm`` ``[n,k]x[k,m]``: ``n*k*m``; ``bmm`` / ``baddbmm``: ``b*n*k*m``;
  ``mv`` / ``addmv``: ``n*k``; ``dot``: ``k`` (``nn.Linear``, ``@``, ``einsum`` and gather-matmul
  sparse convolutions all end up here);
* fused attention (``_scaled_dot_product_*``): ``B*H*L*S*(E + Ev)``; other forward ops known to
  ``torch.utils.flop_counter`` count half its FLOP figure (its FLOPs are 2 per MAC).

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

Limits: ops run outside PyTorch's dispatcher (custom CUDA/cupy kernels, compiled graphs) are
not seen; bias additions and the spikingjelly-style memory-access term are not counted.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from fnmatch import fnmatch
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map
from torch.utils.weak import WeakTensorKeyDictionary

from spikelight.nn.neurons import SpikingNeuron

__all__ = [
    "E_AC_PJ",
    "E_MAC_PJ",
    "EnergyMeter",
    "EnergyReport",
    "LayerRow",
    "NeuronRow",
    "format_report",
    "infer_batch_size",
    "measure_energy",
]

E_MAC_PJ = 4.6
E_AC_PJ = 0.9
ROOT_NAME = "(root)"

aten = torch.ops.aten


# ---------------------------------------------------------------------------------------------
# FLOP formulas (multiply-accumulates) and the operands each op multiplies
# ---------------------------------------------------------------------------------------------


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


_FORMULAS: dict[Any, Callable[[tuple, dict, Any], tuple[int, list]]] = {
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
        _FORMULAS[getattr(aten, _name)] = _sdpa


def _torch_registry_formula(packet) -> Callable | None:
    """Fallback: a forward op known to ``torch.utils.flop_counter`` (FLOPs there are 2 per MAC)."""
    if "backward" in str(packet):
        return None
    try:
        from torch.utils.flop_counter import flop_registry
    except ImportError:  # pragma: no cover - older torch
        return None
    fn = flop_registry.get(packet)
    if fn is None:
        return None

    def formula(args, kwargs, out):
        tensors = [a for a in args[:3] if isinstance(a, torch.Tensor)]
        return int(fn(*args, **kwargs, out_val=out)) // 2, tensors

    return formula


_FACTORY_LIKE = ("new_", "empty", "zeros", "ones", "full", "rand", "normal", "bernoulli")


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------


@dataclass
class LayerRow:
    """One counted product: all numbers are **per sample**.

    ``kind`` is ``MAC``, ``AC`` or ``mixed`` (some calls fed spikes, some real values);
    ``flops`` dense MACs, ``ops`` the operations actually charged (MAC FLOPs + AC additions),
    ``firing_rate_in`` the mean spike input of the AC calls (``None`` for pure MAC rows).
    """

    name: str
    type: str
    op: str
    kind: str
    flops: float
    firing_rate_in: float | None
    ops: float
    energy_mj: float
    ann_energy_mj: float
    calls: int


@dataclass
class NeuronRow:
    """Firing rate of one spiking-neuron module: mean spike count per neuron per timestep."""

    name: str
    type: str
    firing_rate: float
    max_spike: float | None
    neurons: int  # neuron-timesteps seen in total (all samples)


@dataclass
class EnergyReport:
    """Energy estimate; every ``*_per_sample`` total and every row value is per sample."""

    samples: int
    e_mac_pj: float
    e_ac_pj: float
    module: str | None
    flops_per_sample: float
    mac_flops_per_sample: float
    ac_flops_per_sample: float
    ac_ops_per_sample: float
    energy_mj_per_sample: float
    ann_energy_mj_per_sample: float
    mean_firing_rate: float | None
    layers: list[LayerRow] = field(default_factory=list)
    neurons: list[NeuronRow] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable dict (rows as lists of dicts)."""
        return asdict(self)

    def layers_csv(self) -> str:
        """The per-layer table as CSV text (header + one line per row)."""
        buf = io.StringIO()
        cols = list(LayerRow.__dataclass_fields__)
        w = csv.writer(buf)
        w.writerow(cols)
        for r in self.layers:
            w.writerow([getattr(r, c) for c in cols])
        return buf.getvalue()


def _fmt_num(x: float | None) -> str:
    if x is None:
        return "-"
    ax = abs(x)
    for div, suf in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if ax >= div:
            return f"{x / div:.3g}{suf}"
    return f"{x:.4g}"


def format_report(report: EnergyReport, *, max_rows: int | None = 60) -> str:
    """A readable terminal table: per-layer rows, neuron firing rates, then the totals."""
    lines = []
    head = f"{'layer':<40} {'type':<16} {'kind':<5} {'FLOPs':>9} {'rate_in':>8} {'ops':>9} {'mJ':>10}"
    lines += [head, "-" * len(head)]
    rows = report.layers if max_rows is None else report.layers[:max_rows]
    for r in rows:
        rate = "-" if r.firing_rate_in is None else f"{r.firing_rate_in:.4f}"
        lines.append(
            f"{r.name[:40]:<40} {r.type[:16]:<16} {r.kind:<5} {_fmt_num(r.flops):>9} {rate:>8} "
            f"{_fmt_num(r.ops):>9} {r.energy_mj:>10.4g}"
        )
    if max_rows is not None and len(report.layers) > max_rows:
        lines.append(f"... {len(report.layers) - max_rows} more rows")
    if report.neurons:
        lines += ["", f"{'neuron layer':<40} {'type':<16} {'firing rate':>11}"]
        for n in report.neurons:
            lines.append(f"{n.name[:40]:<40} {n.type[:16]:<16} {n.firing_rate:>11.4f}")
    mfr = "-" if report.mean_firing_rate is None else f"{report.mean_firing_rate:.4f}"
    ratio = (
        f"{report.ann_energy_mj_per_sample / report.energy_mj_per_sample:.2f}x"
        if report.energy_mj_per_sample > 0
        else "-"
    )
    lines += [
        "",
        f"samples {report.samples}  E_MAC {report.e_mac_pj} pJ  E_AC {report.e_ac_pj} pJ"
        + (f"  module {report.module}" if report.module else ""),
        f"per sample: FLOPs {_fmt_num(report.flops_per_sample)} (MAC {_fmt_num(report.mac_flops_per_sample)}, "
        f"AC {_fmt_num(report.ac_flops_per_sample)} -> {_fmt_num(report.ac_ops_per_sample)} ops)  "
        f"mean firing rate {mfr}",
        f"energy {report.energy_mj_per_sample:.4g} mJ/sample   ANN equivalent "
        f"{report.ann_energy_mj_per_sample:.4g} mJ/sample   ({ratio} lower)",
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# The meter
# ---------------------------------------------------------------------------------------------


@dataclass
class _Acc:
    type: str
    op: str
    mac_flops: int = 0
    ac_flops: int = 0
    ac_ops: float = 0.0
    spike_sum: float = 0.0
    spike_numel: int = 0
    calls: int = 0


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
        formula = _FORMULAS.get(packet)
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
    ) -> None:
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
        self.reset()

    # -- public -------------------------------------------------------------------------------

    def reset(self) -> None:
        """Forget all counts and samples."""
        self._rows: dict[tuple[str, int], _Acc] = {}
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

    def __enter__(self) -> EnergyMeter:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def report(self) -> EnergyReport:
        """Totals and rows per sample over everything counted since the last ``reset``."""
        if self.samples <= 0:
            raise ValueError("EnergyMeter.report(): no samples declared; call add_samples(batch_size)")
        n = float(self.samples)
        e_mac_mj, e_ac_mj = self.e_mac_pj * 1e-9, self.e_ac_pj * 1e-9
        layers = []
        for (name, k), a in self._rows.items():
            flops = a.mac_flops + a.ac_flops
            kind = "AC" if a.mac_flops == 0 and a.ac_flops > 0 else ("MAC" if a.ac_flops == 0 else "mixed")
            if flops == 0 and a.calls:
                kind = "AC" if a.spike_numel else "MAC"
            layers.append(
                LayerRow(
                    name=(name or ROOT_NAME) + (f"#{k}" if k else ""),
                    type=a.type,
                    op=a.op,
                    kind=kind,
                    flops=flops / n,
                    firing_rate_in=(a.spike_sum / a.spike_numel) if a.spike_numel else None,
                    ops=(a.mac_flops + a.ac_ops) / n,
                    energy_mj=(e_mac_mj * a.mac_flops + e_ac_mj * a.ac_ops) / n,
                    ann_energy_mj=e_mac_mj * flops / n,
                    calls=a.calls,
                )
            )
        neurons = [
            NeuronRow(
                name=name or ROOT_NAME, type=t, firing_rate=(s / c) if c else 0.0, max_spike=ms, neurons=c
            )
            for name, (t, ms, s, c) in self._neurons.items()
        ]
        tot_spikes = sum(v[2] for v in self._neurons.values())
        tot_neurons = sum(v[3] for v in self._neurons.values())
        mac = sum(a.mac_flops for a in self._rows.values())
        acf = sum(a.ac_flops for a in self._rows.values())
        aco = sum(a.ac_ops for a in self._rows.values())
        return EnergyReport(
            samples=self.samples,
            e_mac_pj=self.e_mac_pj,
            e_ac_pj=self.e_ac_pj,
            module=self.module,
            flops_per_sample=(mac + acf) / n,
            mac_flops_per_sample=mac / n,
            ac_flops_per_sample=acf / n,
            ac_ops_per_sample=aco / n,
            energy_mj_per_sample=(e_mac_mj * mac + e_ac_mj * aco) / n,
            ann_energy_mj_per_sample=e_mac_mj * (mac + acf) / n,
            mean_firing_rate=(tot_spikes / tot_neurons) if tot_neurons else None,
            layers=layers,
            neurons=neurons,
        )

    # -- hooks --------------------------------------------------------------------------------

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
            self._fallbacks[packet] = _torch_registry_formula(packet)
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
        name = frame.name if frame is not None else ""
        if frame is not None:
            k = frame.count
            frame.count += 1
            type_ = frame.type
        else:
            k, type_ = 0, type(self.model).__name__
        acc = self._rows.get((name, k))
        if acc is None:
            acc = self._rows[(name, k)] = _Acc(type=type_, op=func.overloadpacket.__name__)
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

_BATCH_KEYS = ("label", "image_feat", "text_feat", "image", "frames", "events", "points")


def infer_batch_size(batch: Any) -> int:
    """Number of samples in a batch: a tensor's first dim; for a dict batch the first of
    ``label``, ``image_feat``, ``text_feat``, ``image``, ``frames``, ``events``, ``points`` present
    (tensor: first dim; list of per-sample items: its length); else Lightning's extraction."""
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0]) if batch.dim() else 1
    if isinstance(batch, Mapping):
        for k in _BATCH_KEYS:
            v = batch.get(k)
            if isinstance(v, torch.Tensor) and v.dim():
                return int(v.shape[0])
            if isinstance(v, (list, tuple)) and v:
                return len(v)
    if isinstance(batch, (list, tuple)) and batch and isinstance(batch[0], torch.Tensor):
        return int(batch[0].shape[0])
    from lightning.pytorch.utilities.data import extract_batch_size

    return int(extract_batch_size(batch))


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
        batch_size_fn: samples per batch; default :func:`infer_batch_size` (first dim - pass
            ``lambda x: x.shape[1]`` for raw ``[T, B, ...]`` inputs).
        device: move batches there (default: the model's parameter device).
        eval_mode: run in ``eval()`` (restored afterwards), as at deployment.
        **meter_kwargs: :class:`EnergyMeter` options (``module``, ``e_mac_pj``, ``mac_layers`` ...).
    """
    forward = forward or _default_forward
    batch_size_fn = batch_size_fn or infer_batch_size
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
