"""Shared pieces of every spikelight LightningModule.

``SpikelightTask`` gives each job the same optimiser / schedule handling (optimizer class from the
config, linear warmup + per-step cosine), a guard that stops the run with a clear message when the
loss is not finite, and ``batch_size_of`` used by callbacks.
"""

from __future__ import annotations

from typing import Any, Optional

import lightning.pytorch as pl
import torch
from lightning.pytorch.cli import OptimizerCallable

from spikelight.optim import build_warmup_cosine


def default_adamw(params) -> torch.optim.Optimizer:
    """Default optimizer: AdamW(lr=1e-3, weight_decay=0.01)."""
    return torch.optim.AdamW(params, lr=1e-3, weight_decay=0.01)


def batch_size_of(batch: Any) -> int:
    """Number of samples in a batch (dict: first tensor; tuple/list: first tensor; tensor: len)."""
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0])
    if isinstance(batch, dict):
        for key in ("label", "points", "image", "events", "frames"):
            v = batch.get(key)
            if isinstance(v, torch.Tensor):
                return int(v.shape[0])
        values = batch.values()
    elif isinstance(batch, (list, tuple)):
        values = batch
    else:
        return 1
    for v in values:
        if isinstance(v, torch.Tensor) and v.dim() > 0:
            return int(v.shape[0])
        if isinstance(v, (list, tuple)):
            return len(v)
    return 1


class SpikelightTask(pl.LightningModule):
    """Base LightningModule: optimizer + warmup/cosine schedule + finite-loss guard.

    Args:
        optimizer: a callable ``params -> Optimizer`` (in YAML: ``class_path: torch.optim.AdamW`` with
            ``init_args``).
        warmup_epochs: linear warmup length in epochs (fractions allowed); converted to steps.
        warmup_start_lr: LR at step 0 of the warmup.
        min_lr: final LR of the cosine decay.
        scheduler: ``"cosine"`` (per-step warmup + cosine) or ``"constant"``.
    """

    def __init__(
        self,
        *,
        optimizer: OptimizerCallable = default_adamw,
        warmup_epochs: float = 0.0,
        warmup_start_lr: float = 0.0,
        min_lr: float = 0.0,
        scheduler: str = "cosine",
    ) -> None:
        super().__init__()
        if scheduler not in ("cosine", "constant"):
            raise ValueError(f"scheduler must be 'cosine' or 'constant', got {scheduler!r}")
        self.optimizer_fn = optimizer
        self.warmup_epochs = float(warmup_epochs)
        self.warmup_start_lr = float(warmup_start_lr)
        self.min_lr = float(min_lr)
        self.scheduler_kind = scheduler

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def batch_size_of(batch: Any) -> int:
        return batch_size_of(batch)

    def check_finite(self, loss: torch.Tensor, what: str = "loss") -> None:
        """Stop the run with a clear message when the loss is NaN/inf (nothing silently trains on garbage)."""
        if not torch.isfinite(loss).all():
            raise FloatingPointError(
                f"{what} is not finite ({loss.detach().float().cpu().tolist()}) at epoch {self.current_epoch}, "
                f"global step {self.global_step}. Lower the learning rate, check the input data for NaN/inf, "
                "or resume from the last good checkpoint with --ckpt_path last."
            )

    def parameters_to_optimize(self):
        """Parameters given to the optimizer (override to exclude frozen towers or set groups)."""
        return [p for p in self.parameters() if p.requires_grad]

    # -------------------------------------------------------------- optimizers
    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_fn(self.parameters_to_optimize())
        if self.scheduler_kind == "constant":
            return optimizer
        total_steps = int(self.trainer.estimated_stepping_batches)
        max_epochs = self.trainer.max_epochs if self.trainer.max_epochs and self.trainer.max_epochs > 0 else 1
        steps_per_epoch = max(1, total_steps // max_epochs)
        warmup_steps = int(round(self.warmup_epochs * steps_per_epoch))
        scheduler = build_warmup_cosine(
            optimizer,
            warmup_steps=warmup_steps,
            total_steps=total_steps,
            min_lr=self.min_lr,
            warmup_start_lr=self.warmup_start_lr,
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def infer(self, batch: Any) -> Optional[torch.Tensor]:  # pragma: no cover - overridden
        """Model forward on a batch dict, no loss and no logging (used by energy/export tools)."""
        raise NotImplementedError
