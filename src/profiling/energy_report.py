"""The energy report: per-sample rows and totals built from :class:`~spikelight.profiling.energy.EnergyMeter`
counts, their JSON/CSV forms and a terminal table (:func:`format_report`).

Every ``*_per_sample`` total and every row value is per sample; energies are in mJ
(``E_MAC`` / ``E_AC`` in pJ, 1 pJ = 1e-9 mJ).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["ROOT_NAME", "EnergyReport", "LayerRow", "NeuronRow", "OpCounts", "build_report", "format_report"]

ROOT_NAME = "(root)"
"""Row name of the ops run outside any hooked module (whole-model measurements only)."""


@dataclass
class OpCounts:
    """Raw counts of one row (module, k-th counted op of a call), summed over every call and sample."""

    type: str
    op: str
    mac_flops: int = 0
    ac_flops: int = 0
    ac_ops: float = 0.0
    spike_sum: float = 0.0
    spike_numel: int = 0
    calls: int = 0


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


def _kind(a: OpCounts) -> str:
    if a.mac_flops + a.ac_flops == 0:  # zero-sized products: classified by what fed them
        return "AC" if a.spike_numel else "MAC"
    if a.ac_flops == 0:
        return "MAC"
    return "AC" if a.mac_flops == 0 else "mixed"


def build_report(
    rows: Mapping[tuple[str, int], OpCounts],
    neurons: Mapping[str, list],
    samples: int,
    e_mac_pj: float,
    e_ac_pj: float,
    module: str | None,
) -> EnergyReport:
    """Per-sample report from raw counts.

    Args:
        rows: ``(module name, k) -> OpCounts``; ``k`` is the k-th counted op inside one call of the
            module (rows ``name``, ``name#1`` ...).
        neurons: ``name -> [type, max_spike, spike_sum, neuron_timesteps]``.
        samples: samples run (> 0).
    """
    if samples <= 0:
        raise ValueError("EnergyMeter.report(): no samples declared; call add_samples(batch_size)")
    n = float(samples)
    e_mac_mj, e_ac_mj = e_mac_pj * 1e-9, e_ac_pj * 1e-9
    layers = [
        LayerRow(
            name=(name or ROOT_NAME) + (f"#{k}" if k else ""),
            type=a.type,
            op=a.op,
            kind=_kind(a),
            flops=(a.mac_flops + a.ac_flops) / n,
            firing_rate_in=(a.spike_sum / a.spike_numel) if a.spike_numel else None,
            ops=(a.mac_flops + a.ac_ops) / n,
            energy_mj=(e_mac_mj * a.mac_flops + e_ac_mj * a.ac_ops) / n,
            ann_energy_mj=e_mac_mj * (a.mac_flops + a.ac_flops) / n,
            calls=a.calls,
        )
        for (name, k), a in rows.items()
    ]
    neuron_rows = [
        NeuronRow(name=name or ROOT_NAME, type=t, firing_rate=(s / c) if c else 0.0, max_spike=ms, neurons=c)
        for name, (t, ms, s, c) in neurons.items()
    ]
    tot_spikes = sum(v[2] for v in neurons.values())
    tot_neurons = sum(v[3] for v in neurons.values())
    mac = sum(a.mac_flops for a in rows.values())
    acf = sum(a.ac_flops for a in rows.values())
    aco = sum(a.ac_ops for a in rows.values())
    return EnergyReport(
        samples=int(samples),
        e_mac_pj=e_mac_pj,
        e_ac_pj=e_ac_pj,
        module=module,
        flops_per_sample=(mac + acf) / n,
        mac_flops_per_sample=mac / n,
        ac_flops_per_sample=acf / n,
        ac_ops_per_sample=aco / n,
        energy_mj_per_sample=(e_mac_mj * mac + e_ac_mj * aco) / n,
        ann_energy_mj_per_sample=e_mac_mj * (mac + acf) / n,
        mean_firing_rate=(tot_spikes / tot_neurons) if tot_neurons else None,
        layers=layers,
        neurons=neuron_rows,
    )


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
