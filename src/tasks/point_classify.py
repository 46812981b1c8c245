"""``PointClassify``: fine-tune a spiking 3D encoder with a classification head (SVL downstream).

Batches (``spikelight.datamodules``)::

    {"points": float32 [B, N, F],      # point clouds (ModelNet40, ScanObjectNN, Synthetic3D ... DataModules)
               float32 [B, T, N, F],   # or T windows of event points (DVS DataModules, representation=points)
     "label":  int64 [B]}

A 4-D ``points`` batch is read as ``[B, T, N, F]`` and handed to the encoder as ``[T, B, N, F]`` (the
multi-timestep layout every spiking 3D encoder accepts). One step::

    points --encoder (mean over T)--> x [B, C] --(L2-normalise, optional)--> dropout --> Linear(C, K) --> logits

Initialisation (:mod:`spikelight.models.pretrained`):

* ``pretrained: null`` - the encoder from scratch (the baseline; one config switch away);
* ``pretrained: <SVL .ckpt>`` - the encoder's weights loaded exactly from an SVL pretraining checkpoint (a
  clear ``ValueError`` names the file and the mismatching keys otherwise); the head is random;
* ``pretrained: <Rep-VLI deploy folder>`` - encoder weights from the deploy model, and with
  ``head_init: deploy`` its ``K x C`` text-derived class matrix initialises the head (bias 0). The deploy
  matrix has the logit scale folded in and was built for L2-normalised embeddings, so
  ``normalize_embedding`` defaults to true then: at step 0 the task's logits equal the full SVL model's
  zero-shot logits (argmax = the deploy model's prediction). When the DataModule names its classes and they
  are the deploy model's in another order, the rows are permuted to the DataModule's order at ``fit`` start;
  other names raise ``ValueError``.

``encoder: null`` takes the encoder spec recorded in ``pretrained`` (``encoder_overrides`` then changes
arguments that do not change the weights, e.g. ``timesteps: 6`` for DVS). A checkpoint of this task
records the resolved spec and drops ``pretrained`` from its hyper-parameters (the weights are in the
checkpoint), so ``PointClassify.load_from_checkpoint`` never needs the pretrained file again.

Training recipe (E-3DSNN fine-tuning, REFERENCE section 1 "Downstream"): SGD lr 0.1, momentum 0.9,
weight decay 1e-3, Nesterov (:func:`default_finetune_sgd`), ``scheduler: multistep`` dividing the LR by 10
(``gamma``) at 60% and 80% of the training steps (``milestones``, fractions of
``trainer.estimated_stepping_batches``; optional linear warmup), label smoothing 0.2, 300 epochs (trainer).
``scheduler: cosine`` / ``constant`` are the base class's.

Logs: ``train/loss``, ``train/top1``; ``val/loss``, ``val/top1``, ``val/mean_class_acc`` (class-mean
accuracy, ScanObjectNN's mAcc) and the same under ``test/``. Only the first evaluation dataloader is scored
(its labels index the training classes; e.g. Synthetic3D's second set, held-out categories, is skipped).
The confusion matrix of each scored epoch is kept in ``self.confusion_matrices`` (drawn by
:class:`spikelight.callbacks.ConfusionMatrixPlot`). Energy: ``SpikeEnergy(module="encoder")``.

From Python (benchmarks)::

    task = PointClassify(encoder={"name": "spike_pointnet_test", "embed_dim": 32}, num_classes=10,
                         pretrained="runs/svl/checkpoints/last.ckpt")       # or None: from scratch
    trainer.fit(task, datamodule=dm)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Optional

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import OptimizerCallable
from torch import Tensor, nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix

from spikelight.models import ModelConfig, build_model
from spikelight.tasks.base import ConfusionResult, SpikelightTask

__all__ = ["PointClassify", "default_finetune_sgd", "multistep_lambda"]

HEAD_INITS = ("random", "deploy")


def default_finetune_sgd(params) -> torch.optim.Optimizer:
    """E-3DSNN fine-tuning optimiser: SGD(lr=0.1, momentum=0.9, weight_decay=1e-3, nesterov=True)."""
    return torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=1e-3, nesterov=True)


def multistep_lambda(*, total_steps: int, milestones: Sequence[float], gamma: float, warmup_steps: int = 0,
                     warmup_start_factor: float = 0.0):
    """LR factor per step: linear warmup from ``warmup_start_factor`` over ``warmup_steps``, then times
    ``gamma`` at each milestone (fractions of ``total_steps``; step ``s`` has passed milestone ``m`` when
    ``s >= round(m * total_steps)``)."""
    marks = sorted(int(round(float(m) * total_steps)) for m in milestones)

    def factor(step: int) -> float:
        f = gamma ** sum(step >= m for m in marks)
        if warmup_steps > 0 and step < warmup_steps:
            f *= warmup_start_factor + (1.0 - warmup_start_factor) * step / warmup_steps
        return f

    return factor


def _norm_name(name: str) -> str:
    return " ".join(str(name).replace("_", " ").lower().split())


class PointClassify(SpikelightTask):
    """Classify ``batch["points"]`` into ``batch["label"]`` with a spiking 3D encoder + linear head.

    Args:
        encoder: the encoder's model spec (:func:`spikelight.models.build_model`: a registered name,
            ``{name: ..., <kwargs>}`` or ``{class_path: ..., init_args: ...}``); ``None``: the spec recorded
            in ``pretrained``.
        encoder_overrides: keyword arguments applied on top of the spec (e.g. ``{timesteps: 6}``).
        num_classes: ``K``; ``None``: the deploy model's class count (``head_init: deploy``).
        pretrained: an SVL (or PointClassify) checkpoint, a Rep-VLI deploy folder, or a state_dict file whose
            encoder weights initialise the encoder exactly; ``None``: from scratch.
        pretrained_prefix: key prefix of the encoder in ``pretrained`` (``None``: found).
        head_init: ``"random"`` (``nn.Linear`` default) or ``"deploy"`` (the deploy model's class matrix).
        normalize_embedding: L2-normalise the embedding before the head; ``None``: true with
            ``head_init: deploy``, else false.
        class_names: names of the ``K`` classes (confusion matrices); default: the DataModule's.
        label_smoothing: cross-entropy label smoothing (0.2 in the recipe).
        dropout: dropout before the head.
        freeze_encoder: train the head only (linear probe); the encoder stays in eval mode.
        scheduler: ``"multistep"`` (recipe), ``"cosine"`` or ``"constant"``.
        milestones, gamma: multistep schedule (fractions of the total optimiser steps, LR factor).
        optimizer, kwargs (warmup_epochs, warmup_start_lr, min_lr): see
            :class:`~spikelight.tasks.base.SpikelightTask`.
    """

    def __init__(
        self,
        *,
        encoder: Optional[ModelConfig] = "spike_pointnet",
        encoder_overrides: Optional[dict[str, Any]] = None,
        num_classes: Optional[int] = None,
        pretrained: Optional[str] = None,
        pretrained_prefix: Optional[str] = None,
        head_init: str = "random",
        normalize_embedding: Optional[bool] = None,
        class_names: Optional[list[str]] = None,
        label_smoothing: float = 0.2,
        dropout: float = 0.0,
        freeze_encoder: bool = False,
        scheduler: str = "multistep",
        milestones: Sequence[float] = (0.6, 0.8),
        gamma: float = 0.1,
        optimizer: OptimizerCallable = default_finetune_sgd,
        **kwargs: Any,
    ) -> None:
        if scheduler not in ("multistep", "cosine", "constant"):
            raise ValueError(f"scheduler must be 'multistep', 'cosine' or 'constant', got {scheduler!r}")
        super().__init__(optimizer=optimizer, scheduler="constant" if scheduler == "multistep" else scheduler,
                         **kwargs)
        self.scheduler_kind = scheduler
        if head_init not in HEAD_INITS:
            raise ValueError(f"head_init must be one of {HEAD_INITS}, got {head_init!r}")
        if not 0.0 <= float(label_smoothing) < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        if not all(0.0 < float(m) <= 1.0 for m in milestones):
            raise ValueError(f"milestones are fractions of the training in (0, 1], got {list(milestones)}")
        if head_init == "deploy" and pretrained is None:
            raise ValueError("head_init='deploy' needs pretrained=<Rep-VLI deploy folder>")
        if encoder is None and pretrained is None:
            raise ValueError("give an encoder spec, or encoder=None with a pretrained source that records one")
        built = isinstance(encoder, nn.Module)  # Python API only: saved in the state dict, not in hparams
        self.save_hyperparameters(ignore=["optimizer", "encoder"] if built else ["optimizer"])

        from spikelight.models.pretrained import (
            load_deploy_head,
            load_pretrained_encoder,
            pretrained_encoder_spec,
        )

        self.encoder_spec: Optional[dict[str, Any]] = None
        if built:
            if encoder_overrides:
                raise ValueError("encoder_overrides cannot be applied to an already built encoder")
            self.encoder = encoder
        else:
            spec = pretrained_encoder_spec(pretrained) if encoder is None else encoder
            spec = {"name": spec} if isinstance(spec, str) else dict(spec)
            if encoder_overrides:
                if "class_path" in spec:
                    spec["init_args"] = {**dict(spec.get("init_args") or {}), **encoder_overrides}
                else:
                    spec.update(encoder_overrides)
            self.encoder_spec = spec
            self.encoder = build_model(spec)
        self.pretrained_report: Optional[dict] = None
        if pretrained is not None:
            self.pretrained_report = load_pretrained_encoder(self.encoder, pretrained, prefix=pretrained_prefix)

        head_weight, deploy_names = None, None
        if head_init == "deploy":
            head_weight, deploy_names = load_deploy_head(pretrained)
            if num_classes is not None and int(num_classes) != head_weight.shape[0]:
                raise ValueError(f"{pretrained}: the deploy model has {head_weight.shape[0]} classes "
                                 f"({deploy_names[:5]} ...), the task num_classes={num_classes}")
            num_classes = head_weight.shape[0]
        if num_classes is None or int(num_classes) < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        self.num_classes = int(num_classes)
        self.embed_dim = int(getattr(self.encoder, "embed_dim", 0)) or self._probe_dim()
        self.normalize_embedding = bool(head_init == "deploy" if normalize_embedding is None else normalize_embedding)
        self.dropout = nn.Dropout(float(dropout)) if dropout else nn.Identity()
        self.head = nn.Linear(self.embed_dim, self.num_classes)
        if head_weight is not None:
            if head_weight.shape[1] != self.embed_dim:
                raise ValueError(f"{pretrained}: the deploy class matrix is {tuple(head_weight.shape)}, the "
                                 f"encoder gives {self.embed_dim}-d embeddings")
            with torch.no_grad():
                self.head.weight.copy_(head_weight)
                self.head.bias.zero_()
        self.deploy_class_names: Optional[list[str]] = deploy_names
        if class_names is not None and len(class_names) != self.num_classes:
            raise ValueError(f"{len(class_names)} class_names for num_classes={self.num_classes}")
        self.class_names: list[str] = list(class_names or deploy_names or [str(i) for i in range(self.num_classes)])
        self.freeze_encoder = bool(freeze_encoder)
        if self.freeze_encoder:
            self.encoder.requires_grad_(False)
        self.label_smoothing = float(label_smoothing)

        K = self.num_classes

        def scores() -> MetricCollection:
            # compute_groups=False: keep top-1 and class-mean states apart (see ZeroShotScores)
            return MetricCollection({"top1": MulticlassAccuracy(num_classes=K, average="micro"),
                                     "mean_class_acc": MulticlassAccuracy(num_classes=K, average="macro")},
                                    compute_groups=False)

        self.train_top1 = MulticlassAccuracy(num_classes=K, average="micro")
        self.val_scores, self.test_scores = scores(), scores()
        self.val_confmat = MulticlassConfusionMatrix(num_classes=K)
        self.test_confmat = MulticlassConfusionMatrix(num_classes=K)

    def _probe_dim(self) -> int:
        """Embedding size of an encoder without an ``embed_dim`` attribute (one tiny forward)."""
        was = self.encoder.training
        self.encoder.eval()
        with torch.no_grad():
            out = self.encoder(torch.rand(2, 64, int(getattr(self.encoder, "in_channels", 6))))
        self.encoder.train(was)
        return int(out.shape[-1])

    # ------------------------------------------------------------------ class names
    def setup(self, stage: str) -> None:
        dm = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        names = getattr(dm, "class_names", None) if dm is not None else None
        if names is None or self.hparams.class_names is not None:
            return
        names = [str(n) for n in names]
        if len(names) != self.num_classes:
            raise ValueError(f"{type(dm).__name__} has {len(names)} classes, PointClassify num_classes="
                             f"{self.num_classes}")
        if self.deploy_class_names is not None and stage == "fit":
            self._align_deploy_rows(names)
        self.class_names = names

    def _align_deploy_rows(self, names: list[str]) -> None:
        """Permute the deploy-initialised head rows to the DataModule's class order (same names)."""
        have = [_norm_name(n) for n in self.deploy_class_names or []]
        want = [_norm_name(n) for n in names]
        if have == want:
            return
        if sorted(have) != sorted(want):
            diff = sorted(set(want) - set(have))[:5]
            raise ValueError(f"{self.hparams.pretrained}: the deploy model's classes differ from the DataModule's "
                             f"(DataModule names not in the deploy model: {diff}); export the deploy model for "
                             "these classes (`spikelight export --classes ...`) or use head_init: random")
        order = torch.tensor([have.index(n) for n in want])
        with torch.no_grad():
            self.head.weight.copy_(self.head.weight[order].clone())
            self.head.bias.copy_(self.head.bias[order].clone())
        self.deploy_class_names = list(names)

    # ------------------------------------------------------------------ model
    @staticmethod
    def encoder_input(points: Tensor) -> Tensor:
        """``[B, N, F]`` as is; ``[B, T, N, F]`` (event DataModules) -> ``[T, B, N, F]``."""
        if points.dim() == 4:
            return points.transpose(0, 1)
        if points.dim() != 3:
            raise ValueError(f"points must be [B, N, F] or [B, T, N, F], got shape {tuple(points.shape)}")
        return points

    def embed(self, points: Tensor) -> Tensor:
        """Encoder embedding ``[B, C]`` (mean over T; L2-normalised with ``normalize_embedding``)."""
        x = self.encoder(self.encoder_input(points))
        x = x.mean(0) if x.dim() == 3 else x
        return F.normalize(x, dim=-1) if self.normalize_embedding else x

    def forward(self, points: Tensor) -> Tensor:
        """Logits ``[B, K]`` of ``points [B, N, F]`` or ``[B, T, N, F]``."""
        return self.head(self.dropout(self.embed(points)))

    def infer(self, batch: dict) -> Tensor:
        """Logits ``[B, K]`` of ``batch["points"]`` (no loss, no logging; for energy / benchmark tools)."""
        if not isinstance(batch, dict) or "points" not in batch:
            keys = sorted(batch) if isinstance(batch, dict) else type(batch).__name__
            raise KeyError(f"PointClassify expects batch['points']; the batch has {keys}")
        return self(batch["points"])

    def train(self, mode: bool = True) -> PointClassify:
        super().train(mode)
        if getattr(self, "freeze_encoder", False):
            self.encoder.eval()
        return self

    # ------------------------------------------------------------------ steps
    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        logits, y = self.infer(batch), batch["label"]
        loss = F.cross_entropy(logits, y, label_smoothing=self.label_smoothing)
        self.check_finite(loss)
        bs = int(y.shape[0])
        self.train_top1(logits.detach(), y)
        self.log("train/loss", loss, prog_bar=True, batch_size=bs)
        self.log("train/top1", self.train_top1, on_step=True, on_epoch=False, batch_size=bs)
        return loss

    def _eval_step(self, stage: str, batch: dict, dataloader_idx: int) -> Optional[Tensor]:
        if dataloader_idx != 0:  # other sets' labels index other class lists (see the module docstring)
            return None
        logits, y = self.infer(batch), batch["label"]
        valid = y >= 0
        logits, y = logits[valid], y[valid]
        if y.numel() == 0:
            return None
        bs = int(y.shape[0])
        getattr(self, f"{stage}_scores").update(logits, y)
        getattr(self, f"{stage}_confmat").update(logits.argmax(-1), y)
        self.log_mean(f"{stage}/loss", F.cross_entropy(logits, y), bs, add_dataloader_idx=False)
        return logits

    def _eval_epoch_end(self, stage: str) -> None:
        scores, confmat = getattr(self, f"{stage}_scores"), getattr(self, f"{stage}_confmat")
        if not getattr(scores["top1"], "_update_count", 1):
            return
        for k, v in scores.compute().items():
            self.log(f"{stage}/{k}", v, prog_bar=(k == "top1"), add_dataloader_idx=False)
        self.confusion_matrices[stage] = ConfusionResult(stage, tuple(self.class_names), confmat.compute().cpu(),
                                                         int(self.current_epoch))
        scores.reset()
        confmat.reset()

    def validation_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> Optional[Tensor]:
        return self._eval_step("val", batch, dataloader_idx)

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val")

    def test_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> Optional[Tensor]:
        return self._eval_step("test", batch, dataloader_idx)

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")

    def predict_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> dict[str, Any]:
        logits = self.infer(batch)
        pred = logits.argmax(-1)
        return {"logits": logits, "pred": pred, "names": [self.class_names[int(i)] for i in pred],
                "label": batch.get("label")}

    # ------------------------------------------------------------------ optimisation
    def parameters_to_optimize(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def configure_optimizers(self) -> Any:
        if self.scheduler_kind != "multistep":
            return super().configure_optimizers()
        optimizer = self.optimizer_fn(self.parameters_to_optimize())
        total = max(1, int(self.trainer.estimated_stepping_batches))
        max_epochs = self.trainer.max_epochs if self.trainer.max_epochs and self.trainer.max_epochs > 0 else 1
        warmup = int(round(self.warmup_epochs * max(1, total // max_epochs)))
        lambdas = []
        for group in optimizer.param_groups:
            base = float(group["lr"])
            start = self.warmup_start_lr / base if base > 0 else 0.0
            lambdas.append(multistep_lambda(total_steps=total, milestones=self.hparams.milestones,
                                            gamma=float(self.hparams.gamma), warmup_steps=warmup,
                                            warmup_start_factor=start))
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambdas)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """The checkpoint rebuilds the task without the pretrained file: resolved encoder spec, no
        ``pretrained`` (its weights are in the state dict), a random head init (overwritten by the state)."""
        super().on_save_checkpoint(checkpoint)
        hp = checkpoint.get("hyper_parameters")
        if isinstance(hp, dict):
            if self.encoder_spec is not None:
                hp.update(encoder=dict(self.encoder_spec), encoder_overrides=None)
            hp.update(pretrained=None,
                      pretrained_prefix=None, head_init="random", num_classes=self.num_classes,
                      normalize_embedding=self.normalize_embedding)
        if self.pretrained_report is not None:
            checkpoint["pretrained_from"] = dict(self.pretrained_report)
