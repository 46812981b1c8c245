"""Loggers with spikelight's defaults.

``WandbLogger`` is Lightning's W&B logger that is *offline unless the user opts in*: it never blocks
or asks for an API key on a machine without network. Set ``WANDB_MODE=online`` (and be logged in) to
sync live; ``WANDB_MODE=disabled`` turns W&B off entirely. Offline runs can be uploaded later with
``wandb sync <run_dir>/wandb/offline-run-*``.
"""

from __future__ import annotations

import os
from typing import Any, Optional

from lightning.pytorch.loggers import CSVLogger as _LightningCSVLogger
from lightning.pytorch.loggers import TensorBoardLogger as _LightningTBLogger
from lightning.pytorch.loggers import WandbLogger as _LightningWandbLogger


def wandb_offline_default(offline: Optional[bool]) -> bool:
    """Resolve the offline flag: explicit value wins, otherwise online only if WANDB_MODE=online."""
    if offline is not None:
        return bool(offline)
    return os.environ.get("WANDB_MODE", "offline").lower() != "online"


class WandbLogger(_LightningWandbLogger):
    """W&B logger, offline by default (see module docstring).

    Args:
        name: run name (the CLI sets it to the experiment name).
        save_dir: where the ``wandb/`` folder goes (the CLI sets it to the run directory).
        project: W&B project.
        offline: ``None`` = offline unless ``WANDB_MODE=online``.
        log_model: upload checkpoints as artifacts (only when online; offline + log_model raises in
            Lightning, so it is switched off with a note when offline).
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
        os.makedirs(save_dir, exist_ok=True)
        kwargs.setdefault("settings", None)
        if kwargs["settings"] is None:
            kwargs.pop("settings")
        super().__init__(
            name=name, save_dir=save_dir, project=project, offline=offline, log_model=log_model, **kwargs
        )
        # Lightning passes anonymous=None, which recent wandb versions warn about
        self._wandb_init.pop("anonymous", None)


class CSVLogger(_LightningCSVLogger):
    """Lightning's CSV logger with a default ``save_dir`` (the CLI sets it to the run directory), so
    ``--trainer.logger spikelight.loggers.CSVLogger`` works without more options. Metrics land in
    ``<run_dir>/logs/version_<n>/metrics.csv``."""

    def __init__(self, *, save_dir: str = ".", name: str = "logs", version: Optional[int | str] = None,
                 **kwargs: Any) -> None:
        super().__init__(save_dir=save_dir, name=name, version=version, **kwargs)


class TensorBoardLogger(_LightningTBLogger):
    """Lightning's TensorBoard logger with a default ``save_dir`` (the CLI sets it to the run directory)."""

    def __init__(self, *, save_dir: str = ".", name: str = "logs", version: Optional[int | str] = None,
                 **kwargs: Any) -> None:
        super().__init__(save_dir=save_dir, name=name, version=version, **kwargs)
