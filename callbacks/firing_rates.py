"""Firing-rate plots of an :class:`~spikelight.profiling.energy_report.EnergyReport` (used by
:class:`~spikelight.callbacks.energy.SpikeEnergy`): a PNG bar chart always, and in W&B an interactive bar
chart, the per-layer table and the PNG.
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch.utilities import rank_zero_warn

from spikelight.profiling.energy_report import EnergyReport

__all__ = ["log_to_wandb", "plot_firing_rates"]

_LAYER_COLUMNS = ["name", "type", "op", "kind", "flops", "firing_rate_in", "ops", "energy_mj"]


def plot_firing_rates(report: EnergyReport, path: str) -> None:
    """Bar chart of per-neuron-layer firing rates written to ``path`` (Agg canvas, no pyplot state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = [n.name for n in report.neurons]
    rates = [n.firing_rate for n in report.neurons]
    fig = Figure(figsize=(max(4.0, 0.35 * len(names) + 1.5), 3.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.bar(range(len(names)), rates, color="tab:blue")
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=90, fontsize=7)
    ax.set_ylabel("mean spikes / neuron / timestep")
    ax.set_title(_title(report), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def _title(report: EnergyReport) -> str:
    mfr = report.mean_firing_rate
    return f"firing rates ({report.energy_mj_per_sample:.3g} mJ/sample" + (
        f", mean {mfr:.3f})" if mfr is not None else ")"
    )


def log_to_wandb(logger: Any, report: EnergyReport, *, step: int, png: str | None = None) -> None:
    """Log to a W&B logger: ``energy/layers`` (per-layer table), ``energy/firing_rates`` (the PNG) and
    ``energy/firing_rates_chart`` (interactive bar chart, one bar per neuron layer). A failure only warns."""
    _try(
        "the layer table",
        lambda: logger.log_table(
            key="energy/layers",
            columns=_LAYER_COLUMNS,
            data=[[getattr(r, c) for c in _LAYER_COLUMNS] for r in report.layers],
        ),
    )
    if png is not None:
        _try("the firing-rate plot", lambda: logger.log_image(key="energy/firing_rates", images=[png]))
    if report.neurons:
        _try("the firing-rate chart", lambda: _log_chart(logger, report, step))


def _log_chart(logger: Any, report: EnergyReport, step: int) -> None:
    import wandb

    table = wandb.Table(
        columns=["layer", "firing_rate"], data=[[n.name, n.firing_rate] for n in report.neurons]
    )
    chart = wandb.plot.bar(table, "layer", "firing_rate", title=_title(report))
    logger.log_metrics({"energy/firing_rates_chart": chart}, step=step)


def _try(what: str, fn) -> None:
    try:
        fn()
    except Exception as e:  # never let a logging hiccup kill the run
        rank_zero_warn(f"SpikeEnergy: could not log {what} to W&B: {e}")
