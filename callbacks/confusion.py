"""Confusion-matrix plots of the evaluation sets a task scored.

The task computes the matrices (``pl_module.confusion_matrices``: set name ->
:class:`~spikelight.tasks.base.ConfusionResult`); this callback only draws them: a row-normalised PNG
in the run directory always (``confusion_<set>.png`` after ``fit``, ``confusion_test_<set>.png`` after
``test``), and where the logger is a ``WandbLogger`` also an interactive W&B confusion matrix
(``plots/confusion_<set>``) and the PNG (``plots/confusion_<set>_png``)::

    trainer:
      callbacks:
        - class_path: spikelight.callbacks.ConfusionMatrixPlot
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor

__all__ = ["ConfusionMatrixPlot", "save_confusion_png"]


def save_confusion_png(cm: Tensor, class_names: Sequence[str], path: str | Path, *, title: str = "") -> Path:
    """Row-normalised confusion matrix ``cm [K, K]`` (rows = true class) as a PNG (Agg canvas, no display)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cm = cm.float()
    norm = (cm / cm.sum(dim=1, keepdim=True).clamp_min(1)).numpy()
    K = len(class_names)
    size = max(4.0, 0.32 * K + 2.0)
    fig = Figure(figsize=(size + 1.0, size))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(norm, vmin=0.0, vmax=1.0, cmap="Blues")
    ax.set_xticks(range(K))
    ax.set_yticks(range(K))
    ax.set_xticklabels(class_names, rotation=90, fontsize=7)
    ax.set_yticklabels(class_names, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    acc = float(cm.diag().sum() / cm.sum().clamp_min(1))
    ax.set_title(f"{title}\ntop-1 {100 * acc:.1f}% (chance {100 / max(K, 1):.1f}%)", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def _labels_from_counts(cm: Tensor) -> tuple[list[int], list[int]]:
    """``(y_true, preds)`` lists with ``cm[i, j]`` copies of ``(i, j)`` (what W&B's chart takes)."""
    y_true: list[int] = []
    preds: list[int] = []
    for (i, j), n in zip(cm.nonzero().tolist(), cm[cm > 0].tolist()):
        y_true += [i] * int(n)
        preds += [j] * int(n)
    return y_true, preds


class ConfusionMatrixPlot(Callback):
    """Draw the task's confusion matrices at the end of ``fit`` and ``test`` (rank 0).

    Args:
        sets: names of the evaluation sets to draw; default: the first set the task scored.
        wandb: with a ``WandbLogger``, also log the interactive confusion matrix and the PNG.
    """

    def __init__(self, *, sets: Optional[list[str]] = None, wandb: bool = True) -> None:
        super().__init__()
        self.sets = list(sets) if sets is not None else None
        self.wandb = wandb
        self.written: list[Path] = []

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._draw(trainer, pl_module, "")

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._draw(trainer, pl_module, "test_")

    def _draw(self, trainer: Trainer, pl_module: LightningModule, prefix: str) -> None:
        results = dict(getattr(pl_module, "confusion_matrices", None) or {})
        if not trainer.is_global_zero or not results:
            return
        names = self.sets if self.sets is not None else list(results)[:1]
        for name in names:
            res = results.get(name)
            if res is None:
                rank_zero_warn(f"ConfusionMatrixPlot: no confusion matrix for set {name!r} ({sorted(results)})")
                continue
            cm = res.matrix.detach().cpu()
            path = Path(trainer.default_root_dir) / f"confusion_{prefix}{name}.png"
            save_confusion_png(cm, res.class_names, path, title=f"zero-shot confusion: {name} (epoch {res.epoch})")
            self.written.append(path)
            rank_zero_info(f"ConfusionMatrixPlot: wrote {path}")
            if self.wandb:
                for logger in trainer.loggers:
                    self._log_wandb(logger, f"plots/confusion_{prefix}{name}", cm, res.class_names, path, trainer)

    @staticmethod
    def _log_wandb(logger: Any, key: str, cm: Tensor, class_names: Sequence[str], png: Path, trainer: Trainer) -> None:
        from lightning.pytorch.loggers import WandbLogger

        if not isinstance(logger, WandbLogger):
            return
        try:
            import wandb

            y_true, preds = _labels_from_counts(cm)
            chart = wandb.plot.confusion_matrix(y_true=y_true, preds=preds, class_names=list(class_names), title=key)
            logger.log_metrics({key: chart}, step=trainer.global_step)
            logger.log_image(key=f"{key}_png", images=[str(png)], step=trainer.global_step)
        except Exception as e:  # noqa: BLE001 - a plot upload must never fail the run
            rank_zero_warn(f"ConfusionMatrixPlot: could not log {key} to W&B: {e}")
