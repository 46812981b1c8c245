"""Shared pieces of every spikelight LightningModule.

``SpikelightTask`` gives each job the same optimiser / schedule handling (optimizer class from the
config, linear warmup + per-step cosine), a guard that stops the run with a clear message when the
loss is not finite, and the rule for frozen, rebuildable parts.

Frozen parts by rule: a task declares each frozen submodule that can be rebuilt from its
hyper-parameters (CLIP towers, a VLM's vision tower and LLM) once, with a builder::

    self.declare_frozen("towers", lambda: ClipTowers(...), seed=0)
    towers = self.frozen("towers")          # built on first use, on the task's device, eval, no grad

A declared part is built lazily (instantiating a config builds and downloads nothing), never
trained (``requires_grad=False``, always in eval mode), and is not a registered submodule: it is
not in ``state_dict()`` or checkpoints, not wrapped by DDP, not counted by energy meters. A
checkpoint records what it left out (``checkpoint["frozen_modules"]``: name -> description); the
task that loads it re-declares the parts from the same hyper-parameters and rebuilds them on first
use. ``seed`` builds a part under a fixed RNG seed (without touching the global RNG), so parts with
random weights (e.g. a tower with no pretrained checkpoint) come back identical after a load.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Optional

import lightning.pytorch as pl
import torch
from lightning.pytorch.cli import OptimizerCallable
from torch import Tensor, nn

from spikelight.optim import build_warmup_cosine

__all__ = ["ConfusionResult", "SpikelightTask", "default_adamw"]


def default_adamw(params) -> torch.optim.Optimizer:
    """Default optimizer: AdamW(lr=1e-3, weight_decay=0.01)."""
    return torch.optim.AdamW(params, lr=1e-3, weight_decay=0.01)


@dataclass(frozen=True)
class ConfusionResult:
    """A confusion matrix a task computed on one evaluation set (read by
    :class:`spikelight.callbacks.ConfusionMatrixPlot`).

    Attributes:
        name: the evaluation set's name.
        class_names: ``K`` names (row / column order).
        matrix: ``[K, K]`` int64 counts, rows = true class, columns = predicted class.
        epoch: the epoch it was computed in.
    """

    name: str
    class_names: tuple[str, ...]
    matrix: Tensor
    epoch: int


class _Frozen:
    """One declared frozen part: its builder, seed, description and (once built) the module."""

    def __init__(self, build: Callable[[], nn.Module], seed: Optional[int], describe: Any) -> None:
        self.build, self.seed, self.describe = build, seed, describe
        self.module: Optional[nn.Module] = None


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
        self._mean_metrics = nn.ModuleDict()  # log_mean's per-key epoch means (no persistent state)
        self.warmup_epochs = float(warmup_epochs)
        self.warmup_start_lr = float(warmup_start_lr)
        self.min_lr = float(min_lr)
        self.scheduler_kind = scheduler
        self._frozen: dict[str, _Frozen] = {}  # a plain dict: its modules stay out of the module tree
        #: confusion matrices of the last scored evaluation epoch, by set name
        self.confusion_matrices: dict[str, ConfusionResult] = {}

    # ------------------------------------------------------------------ frozen, rebuildable parts
    def declare_frozen(
        self, name: str, build: Callable[[], nn.Module], *, seed: Optional[int] = None, describe: Any = None
    ) -> None:
        """Declare the frozen part ``name``, built by ``build()`` on first use (see the module docstring).

        ``describe``: what a checkpoint records about the part (JSON-able, e.g. the hparams that rebuild it).
        """
        if name in self._frozen:
            raise ValueError(f"{type(self).__name__}: frozen part {name!r} is already declared")
        if name in dict(self.named_children()):
            raise ValueError(f"{type(self).__name__}: {name!r} is already a trainable submodule")
        self._frozen[name] = _Frozen(build, seed, describe if describe is not None else name)

    def frozen(self, name: str) -> nn.Module:
        """The frozen part ``name``, built on first use and kept on the task's device, in eval mode."""
        try:
            part = self._frozen[name]
        except KeyError:
            raise KeyError(f"{type(self).__name__} declares no frozen part {name!r}: {sorted(self._frozen)}") from None
        if part.module is None:
            if part.seed is None:
                module = part.build()
            else:
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(part.seed)
                    module = part.build()
            module.requires_grad_(False)
            part.module = module.eval()
        module = part.module
        p = next(iter(module.parameters()), None)
        p = next(iter(module.buffers()), None) if p is None else p
        if p is not None and p.device != self.device:
            module.to(self.device)
        return module

    def frozen_is_built(self, name: str) -> bool:
        return name in self._frozen and self._frozen[name].module is not None

    @property
    def frozen_names(self) -> list[str]:
        return list(self._frozen)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Record the frozen parts a checkpoint leaves out (they are rebuilt from the hparams)."""
        if self._frozen:
            checkpoint["frozen_modules"] = {n: f.describe for n, f in self._frozen.items()}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Drop weights of frozen parts from checkpoints written before the rule (they are rebuilt)."""
        state = checkpoint.get("state_dict")
        if state and self._frozen:
            for key in [k for k in state if k.split(".", 1)[0] in self._frozen]:
                del state[key]

    # ------------------------------------------------------------------ helpers

    def log_mean(self, name: str, value: Tensor, batch_size: int, **kwargs: Any) -> None:
        """Log the sample-weighted epoch mean of ``value`` (e.g. ``val/loss``), exact across DDP ranks.

        ``self.log(..., sync_dist=True)`` averages the ranks' means with a truncated integer sample count when
        the ranks hold different numbers of samples (an uneven, unpadded validation set); a torchmetrics
        ``MeanMetric`` sums values and weights over ranks instead."""
        from torchmetrics import MeanMetric

        key = name.replace("/", "__").replace(".", "_")
        if key not in self._mean_metrics:
            self._mean_metrics[key] = MeanMetric().to(self.device)
        metric = self._mean_metrics[key]
        metric.update(value.detach().float(), weight=batch_size)
        self.log(name, metric, on_step=False, on_epoch=True, batch_size=batch_size,
                 metric_attribute=f"_mean_metrics.{key}", **kwargs)

    def check_finite(self, loss: torch.Tensor, what: str = "loss") -> None:
        """Stop the run with a clear message when the loss is NaN/inf (nothing silently trains on garbage)."""
        if not torch.isfinite(loss).all():
            raise FloatingPointError(
                f"{what} is not finite ({loss.detach().float().cpu().tolist()}) at epoch {self.current_epoch}, "
                f"global step {self.global_step}. Lower the learning rate, check the input data for NaN/inf, "
                "or resume from the last good checkpoint with --ckpt_path last."
            )

    def parameters_to_optimize(self):
        """Parameters given to the optimizer (override to set groups); frozen parts are never among them."""
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
