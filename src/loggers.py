"""Loggers with spikelight's defaults (names of their own, so they never shadow Lightning's classes).

``OfflineWandbLogger`` is Lightning's W&B logger that is *offline unless the user opts in*: it never blocks
or asks for an API key on a machine without network. Set ``WANDB_MODE=online`` (and be logged in) to
sync live; ``WANDB_MODE=disabled`` turns W&B off entirely. Offline runs can be uploaded later with
``wandb sync <run_dir>/wandb/offline-run-*``.

One W&B run per training: the CLI gives the run id kept in ``<run_dir>/wandb_id`` (``resume="allow"``), so a
resume or a SLURM requeue continues the same curves; ``group`` is the run name and ``job_type`` the
subcommand. Nothing is created before the first metric or hyper-parameter is logged (a launch that fails
early leaves no W&B run), the resolved config goes into the run's config once, and the summary keeps the best
value of every ``val*`` metric (``best/<key>``: max, min for losses) next to the last one.
"""

from __future__ import annotations

import os
from typing import Any, Optional

from lightning.pytorch.loggers import CSVLogger as _LightningCSVLogger
from lightning.pytorch.loggers import TensorBoardLogger as _LightningTBLogger
from lightning.pytorch.loggers import WandbLogger as _LightningWandbLogger
from lightning.pytorch.utilities import rank_zero_only

__all__ = ["OfflineWandbLogger", "RunCSVLogger", "RunTensorBoardLogger", "is_wandb", "wandb_offline_default"]


def wandb_offline_default(offline: Optional[bool]) -> bool:
    """Resolve the offline flag: explicit value wins, otherwise online only if WANDB_MODE=online."""
    if offline is not None:
        return bool(offline)
    return os.environ.get("WANDB_MODE", "offline").lower() != "online"


def is_wandb(logger: Any) -> bool:
    """Whether ``logger`` is Lightning's ``WandbLogger`` (or a subclass such as :class:`OfflineWandbLogger`)."""
    return isinstance(logger, _LightningWandbLogger)


def _better(key: str, new: float, old: Optional[float]) -> bool:
    if old is None:
        return True
    lower_is_better = "loss" in key or "error" in key or key.endswith("/mj_per_sample")
    return new < old if lower_is_better else new > old


class OfflineWandbLogger(_LightningWandbLogger):
    """W&B logger, offline by default (see module docstring).

    Args:
        name: run name (the CLI sets it to the experiment name).
        save_dir: where the ``wandb/`` folder goes (the CLI sets it to the run directory).
        project: W&B project.
        offline: ``None`` = offline unless ``WANDB_MODE=online``.
        log_model: upload checkpoints as artifacts (only when online; offline + log_model raises in
            Lightning, so it is switched off when offline).
        id, group, job_type: W&B run id (reused on resume), group and job type (the CLI sets them).
        config: the resolved config, stored in the W&B run config when the run starts.
        kwargs: passed on to ``lightning.pytorch.loggers.WandbLogger`` / ``wandb.init``.
    """

    def __init__(
        self,
        *,
        name: Optional[str] = None,
        save_dir: str = ".",
        project: str = "spikelight",
        offline: Optional[bool] = None,
        log_model: bool = False,
        id: Optional[str] = None,  # noqa: A002 - W&B's name
        group: Optional[str] = None,
        job_type: Optional[str] = None,
        config: Optional[dict] = None,
        **kwargs: Any,
    ) -> None:
        if os.environ.get("WANDB_MODE", "").lower() == "disabled":
            # respect an explicit "disabled" (Lightning would otherwise force "dryrun" when offline)
            offline = False
            kwargs["mode"] = "disabled"
        else:
            offline = wandb_offline_default(offline)
        if offline:
            log_model = False
        if kwargs.get("settings", "unset") is None:
            kwargs.pop("settings")
        if id is not None:
            kwargs.setdefault("resume", "allow")
        for k, v in (("group", group), ("job_type", job_type), ("config", config)):
            if v is not None:
                kwargs[k] = v
        super().__init__(
            name=name, save_dir=save_dir, project=project, offline=offline, log_model=log_model, id=id, **kwargs
        )
        # Lightning passes anonymous=None, which recent wandb versions warn about
        self._wandb_init.pop("anonymous", None)
        self._best: dict[str, float] = {}

    @property
    def experiment(self):  # noqa: D102 - Lightning's, plus the folder made only when a run starts
        if self._experiment is None:
            os.makedirs(self.save_dir or ".", exist_ok=True)
        return super().experiment

    def set_config(self, config: dict) -> None:
        """Record the resolved config: in ``wandb.init`` if the run has not started, else in its config."""
        if self._experiment is None:
            self._wandb_init["config"] = config
        else:
            self.experiment.config.update(config, allow_val_change=True)

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, Any], step: Optional[int] = None) -> None:
        super().log_metrics(metrics, step)
        best = {}
        for k, v in metrics.items():
            if not k.startswith("val") or k == "trainer/global_step":
                continue
            try:
                v = float(v)
            except (TypeError, ValueError):
                continue
            if _better(k, v, self._best.get(k)):
                self._best[k] = v
                best[f"best/{k}"] = v
        if best and self.experiment is not None:
            try:
                self.experiment.summary.update(best)
            except (AttributeError, TypeError):  # disabled mode: a dummy run
                pass


class RunCSVLogger(_LightningCSVLogger):
    """Lightning's CSV logger with a default ``save_dir`` (the CLI sets it to the run directory), so
    ``--trainer.logger RunCSVLogger`` works without more options. Metrics land in
    ``<run_dir>/logs/version_<n>/metrics.csv``."""

    def __init__(self, *, save_dir: str = ".", name: str = "logs", version: Optional[int | str] = None,
                 **kwargs: Any) -> None:
        super().__init__(save_dir=save_dir, name=name, version=version, **kwargs)


class RunTensorBoardLogger(_LightningTBLogger):
    """Lightning's TensorBoard logger with a default ``save_dir`` (the CLI sets it to the run directory)."""

    def __init__(self, *, save_dir: str = ".", name: str = "logs", version: Optional[int | str] = None,
                 **kwargs: Any) -> None:
        super().__init__(save_dir=save_dir, name=name, version=version, **kwargs)
