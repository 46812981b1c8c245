"""``TRevSNNClassify``: image (or DVS event) classification with T-RevSNN, the paper's ImageNet recipe.

Batches (``spikelight.datamodules``)::

    {"image":  float32 [B, 3, H, W],          # images (ImageNetDataModule, SyntheticImageDataModule)
     "events": float32 [B, T_in, 2, H, W],    # or event frames (DVS; model built with dvs=True)
     "label":  int64   [B]}

Training (REFERENCE.md section 2, "ImageNet recipe"):

* network: a :class:`~spikelight.models.trevsnn.TRevSNN` given as a config value (``network:``, a
  registered name such as ``trevsnn_tiny`` plus its keyword arguments, or a ``class_path``), in
  ``mode="reversible"`` (memory flat in T) or ``"bptt"`` (the baseline; same maths), logits ``[T, B, K]``
  from one head per timestep;
* loss :func:`~spikelight.losses.trevsnn_loss`: ``sum_t w_t CE_t`` with
  ``w = 0.25, 0.5, 0.75, 2.0`` and label smoothing (0.1 in the recipe);
* optimizer: any ``params -> Optimizer`` callable (YAML ``class_path``); the default is timm's LAMB
  (``lr 8e-3``, ``weight_decay 0.01``, its own global grad-norm clipping ``max_grad_norm 1.0``). Parameters
  are passed as two groups, as timm's ``create_optimizer_v2`` does: weights with the optimizer's weight
  decay, and 1-D tensors (biases, norm affine, layer scales, leaks) with ``weight_decay 0`` (LAMB then
  skips its trust ratio on them);
* adaptive gradient clipping (timm ``adaptive_clip_grad``, ``agc_clip 0.02``) after the backward (and after
  AMP unscaling and the DDP all-reduce), in :meth:`configure_gradient_clipping`; the heads' classifier
  layers are excluded by default, as timm's ``--clip-mode agc`` excludes the head;
* linear warmup from ``warmup_start_lr`` then cosine to ``min_lr``, stepped per optimizer step (base class);
* EMA of the weights (timm ``ModelEmaV3``, ``ema_decay 0.9992``; ``None`` turns it off), updated after
  every optimizer step. It is a registered sub-module (``model_ema.module``) whose parameters do not
  require grad: it is saved in and restored from checkpoints with the rest of the state dict, moved to the
  device with the model, ignored by the optimizer and by DDP's gradient reduction.

Validation / test: the raw model and the EMA model each give ``[B, K]`` logits (last head); top-1 / top-5
(``torchmetrics`` ``MulticlassAccuracy(average="micro")``, synchronised across ranks at epoch end) are logged
as ``val/top1``, ``val/top5``, ``val_ema/top1``, ``val_ema/top5`` (``test/...``, ``test_ema/...``), with
``val/loss`` (cross-entropy of the last head). Training logs ``train/loss`` (weighted sum over heads),
``train/loss_final`` (last head's CE), ``train/top1`` (last head) and ``train/leak_l{0..3}`` (mean leak).

Energy / memory: use the callbacks with ``module: model`` for SpikeEnergy (so the EMA copy, which runs in
the same validation step, is not counted twice); MemoryMonitor needs nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Optional

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import OptimizerCallable
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from spikelight.losses import trevsnn_loss
from spikelight.models import ModelConfig, build_model
from spikelight.models.trevsnn import TRevSNN
from spikelight.tasks.base import SpikelightTask

__all__ = ["TRevSNNClassify", "default_lamb"]

EMA_PREFIX = "model_ema.module."


def default_lamb(params) -> torch.optim.Optimizer:
    """Default optimizer: timm LAMB(lr=8e-3, weight_decay=0.01, max_grad_norm=1.0) (the paper's recipe)."""
    from timm.optim import Lamb

    return Lamb(params, lr=8e-3, weight_decay=0.01, max_grad_norm=1.0)


class TRevSNNClassify(SpikelightTask):
    """Classify ``batch["image"]`` (or ``batch["events"]``) into ``batch["label"]`` with T-RevSNN.

    Args (model):
        network: the T-RevSNN as a model spec (:func:`spikelight.models.build_model`): a registered name
            (``trevsnn_tiny``, ``trevsnn_small``, ``trevsnn_test``), ``{name: ..., <TRevSNN arguments>}``
            (``timesteps``, ``mode``, ``dvs``, ``in_chans``, ``channels``, ``drop_path_rate`` ...) or
            ``{class_path: ..., init_args: ...}``. Kept as plain data in the hyper-parameters, so a
            checkpoint rebuilds the network by itself.
        num_classes: number of classes (also known by the DataModule); passed into the spec, overriding
            its own value. ``None``: the network's.
    Args (training):
        loss_weights: per-head weights (``loss_weights()`` of the model module extends them to any T).
        label_smoothing: cross-entropy label smoothing of every head.
        agc_clip: adaptive gradient clipping factor (``None`` or 0: off).
        agc_exclude_heads: leave the heads' classifier (``Linear``) parameters out of AGC.
        no_weight_decay_1d: put 1-D parameters in a ``weight_decay=0`` group.
        ema_decay: EMA decay (``None`` or 0: no EMA).
        ema_warmup: use ModelEmaV3's decay warmup (``1 - (1 + step) ** -2/3`` capped at ``ema_decay``).
        ema_validate: validate / test the EMA model alongside the raw one.
        input_key: batch key of the model input; default ``"events"`` when the network is built with
            ``dvs=True``, else ``"image"``.
        optimizer, kwargs (warmup_epochs, warmup_start_lr, min_lr, scheduler): see
            :class:`~spikelight.tasks.base.SpikelightTask`.
    """

    def __init__(
        self,
        *,
        network: ModelConfig = "trevsnn_tiny",
        num_classes: Optional[int] = None,
        loss_weights: Sequence[float] = (0.25, 0.5, 0.75, 2.0),
        label_smoothing: float = 0.1,
        agc_clip: Optional[float] = 0.02,
        agc_exclude_heads: bool = True,
        no_weight_decay_1d: bool = True,
        ema_decay: Optional[float] = 0.9992,
        ema_warmup: bool = False,
        ema_validate: bool = True,
        input_key: Optional[str] = None,
        optimizer: OptimizerCallable = default_lamb,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            optimizer=optimizer,
            **kwargs,
        )
        if ema_decay is not None and not 0.0 <= float(ema_decay) < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1) or None, got {ema_decay}")
        if agc_clip is not None and float(agc_clip) < 0:
            raise ValueError(f"agc_clip must be >= 0 or None, got {agc_clip}")
        if not 0.0 <= float(label_smoothing) < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        built = isinstance(network, nn.Module)  # Python API only: saved in the state dict, not in hparams
        self.save_hyperparameters(ignore=["optimizer", "network"] if built else ["optimizer"])
        overrides = {} if num_classes is None else {"num_classes": int(num_classes)}
        self.model: TRevSNN = build_model(network, **overrides)
        self.loss_weights = tuple(float(w) for w in loss_weights)
        self.label_smoothing = float(label_smoothing)
        self.agc_clip = float(agc_clip) if agc_clip else 0.0
        self.agc_exclude_heads = bool(agc_exclude_heads)
        self.no_weight_decay_1d = bool(no_weight_decay_1d)
        self.input_key = input_key or ("events" if getattr(self.model, "dvs", False) else "image")
        self.ema_validate = bool(ema_validate)

        self.model_ema = None
        if ema_decay:
            from timm.utils import ModelEmaV3

            self.model_ema = ModelEmaV3(self.model, decay=float(ema_decay), use_warmup=bool(ema_warmup))
            for p in self.model_ema.parameters():
                p.requires_grad_(False)

        k = int(self.model.num_classes)
        top5 = min(5, k)

        def acc(top_k: int) -> MulticlassAccuracy:
            return MulticlassAccuracy(num_classes=k, top_k=top_k, average="micro")

        self.train_top1 = acc(1)
        self.val_top1, self.val_top5 = acc(1), acc(top5)
        self.val_ema_top1, self.val_ema_top5 = acc(1), acc(top5)
        self.test_top1, self.test_top5 = acc(1), acc(top5)
        self.test_ema_top1, self.test_ema_top5 = acc(1), acc(top5)

    # ------------------------------------------------------------------ model I/O
    @property
    def ema_model(self) -> Optional[TRevSNN]:
        """The EMA copy of the model (``None`` without EMA)."""
        return None if self.model_ema is None else self.model_ema.module

    def model_input(self, batch: dict) -> torch.Tensor:
        """The model input of a batch: ``batch[input_key]`` (clear error when missing)."""
        if not isinstance(batch, dict) or self.input_key not in batch:
            keys = sorted(batch) if isinstance(batch, dict) else type(batch).__name__
            raise KeyError(
                f"TRevSNNClassify expects the model input under batch[{self.input_key!r}] "
                f"(set input_key=...); the batch has {keys}"
            )
        return batch[self.input_key]

    def forward(self, x: torch.Tensor, *, all_heads: Optional[bool] = None) -> torch.Tensor:
        """``[B, C, H, W]`` (or ``[B, T_in, 2, H, W]``) -> ``[T, B, K]`` (training) / ``[B, K]`` (eval)."""
        return self.model(x, all_heads=all_heads)

    def infer(self, batch: dict, *, ema: bool = False) -> torch.Tensor:
        """Logits ``[B, K]`` of the last head (the inference network), raw or EMA weights."""
        model = self.ema_model if (ema and self.ema_model is not None) else self.model
        return model(self.model_input(batch), all_heads=False)

    # ------------------------------------------------------------------ optimisation
    def parameters_to_optimize(self):
        """Two groups (as timm's ``create_optimizer_v2``): weights, and 1-D params with ``weight_decay=0``."""
        params = [p for p in self.model.parameters() if p.requires_grad]
        if not self.no_weight_decay_1d:
            return params
        decay = [p for p in params if p.ndim > 1]
        no_decay = [p for p in params if p.ndim <= 1]
        groups = [{"params": decay}]
        if no_decay:
            groups.append({"params": no_decay, "weight_decay": 0.0})
        return groups

    def agc_parameters(self) -> list[torch.nn.Parameter]:
        """Parameters AGC clips: the model's, minus the heads' ``Linear`` layers when ``agc_exclude_heads``."""
        skip: set[int] = set()
        if self.agc_exclude_heads:
            skip = {id(p) for head in self.model.heads for p in head.fc.parameters()}
        return [p for p in self.model.parameters() if p.requires_grad and id(p) not in skip]

    def configure_gradient_clipping(
        self,
        optimizer: torch.optim.Optimizer,
        gradient_clip_val: Optional[float] = None,
        gradient_clip_algorithm: Optional[str] = None,
    ) -> None:
        """AGC (``agc_clip``), then Lightning's own clipping if ``trainer.gradient_clip_val`` is set."""
        if self.agc_clip > 0:
            from timm.utils import adaptive_clip_grad

            adaptive_clip_grad(self.agc_parameters(), clip_factor=self.agc_clip, eps=1e-3)
        if gradient_clip_val:
            self.clip_gradients(
                optimizer,
                gradient_clip_val=gradient_clip_val,
                gradient_clip_algorithm=gradient_clip_algorithm,
            )

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        super().optimizer_step(*args, **kwargs)
        self.update_ema()

    @torch.no_grad()
    def update_ema(self) -> None:
        """One EMA step from the current weights, called right after optimizer step ``k`` (1-based).

        ModelEmaV3's decay for ``step=k`` is 0 at ``k = 1`` (the EMA starts as a copy of the weights after
        the first step) and ``ema_decay`` afterwards (or its warmup value). Lightning increments
        ``global_step`` only after ``optimizer_step`` returns, hence ``k = global_step + 1``.
        """
        if self.model_ema is not None:
            self.model_ema.update(self.model, step=int(self.global_step) + 1)

    # ------------------------------------------------------------------ steps
    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        x, y = self.model_input(batch), batch["label"]
        logits = self.model(x, all_heads=True)  # [T, B, K]
        loss = trevsnn_loss(logits, y, weights=self.loss_weights, label_smoothing=self.label_smoothing)
        self.check_finite(loss)
        bsz = int(y.shape[0])
        final = logits[-1].detach()
        self.train_top1(final, y)
        self.log("train/loss", loss, prog_bar=True, batch_size=bsz)
        self.log("train/loss_final", F.cross_entropy(final, y), batch_size=bsz)
        self.log("train/top1", self.train_top1, on_step=True, on_epoch=False, batch_size=bsz)
        for lvl, a in enumerate(self.model.leaks):
            self.log(f"train/leak_l{lvl}", a.detach().mean(), on_step=True, on_epoch=False, batch_size=bsz)
        return loss

    def _eval_step(self, batch: dict, stage: str) -> None:
        x, y = self.model_input(batch), batch["label"]
        bsz = int(y.shape[0])
        logits = self.model(x, all_heads=False)  # [B, K]
        top1, top5 = getattr(self, f"{stage}_top1"), getattr(self, f"{stage}_top5")
        top1(logits, y)
        top5(logits, y)
        self.log_mean(f"{stage}/loss", F.cross_entropy(logits, y), bsz)
        self.log(f"{stage}/top1", top1, prog_bar=True, batch_size=bsz)
        self.log(f"{stage}/top5", top5, batch_size=bsz)
        if self.ema_model is not None and self.ema_validate:
            ema_logits = self.ema_model(x, all_heads=False)
            e1, e5 = getattr(self, f"{stage}_ema_top1"), getattr(self, f"{stage}_ema_top5")
            e1(ema_logits, y)
            e5(ema_logits, y)
            self.log_mean(f"{stage}_ema/loss", F.cross_entropy(ema_logits, y), bsz)
            self.log(f"{stage}_ema/top1", e1, prog_bar=True, batch_size=bsz)
            self.log(f"{stage}_ema/top5", e5, batch_size=bsz)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def predict_step(self, batch: dict, batch_idx: int) -> dict:
        """``{"pred": [B], "logits": [B, K]}`` of the raw model, plus ``pred_ema`` / ``logits_ema``."""
        logits = self.infer(batch)
        out = {"pred": logits.argmax(-1), "logits": logits}
        if self.ema_model is not None:
            ema_logits = self.infer(batch, ema=True)
            out.update(pred_ema=ema_logits.argmax(-1), logits_ema=ema_logits)
        return out

    # ------------------------------------------------------------------ checkpoints
    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Make checkpoints load across EMA on/off: a checkpoint without EMA weights seeds the EMA from its
        model weights; EMA weights in a checkpoint are dropped when this task has no EMA."""
        state = checkpoint.get("state_dict")
        if not isinstance(state, dict):
            return
        has_ema = any(k.startswith(EMA_PREFIX) for k in state)
        if self.model_ema is not None and not has_ema:
            for k in list(state):
                if k.startswith("model."):
                    state[EMA_PREFIX + k[len("model.") :]] = state[k].clone()
        elif self.model_ema is None and has_ema:
            for k in [k for k in state if k.startswith("model_ema.")]:
                del state[k]
