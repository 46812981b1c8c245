"""``PartSegment``: 3D part segmentation with a spiking encoder (SVL downstream; ShapeNetPart, synthetic parts).

Batches (``spikelight.datamodules``: :class:`~spikelight.datamodules.pointcloud.ShapeNetPartDataModule`,
:class:`~spikelight.datamodules.pointcloud.SyntheticPartsDataModule`)::

    {"points": float32 [B, N, F], "part": int64 [B, N] (global part ids), "label": int64 [B] (category)}

Wiring only: the network is :class:`~spikelight.models.segmentation.PartSegmentationModel` (an encoder spec +
per-point features + category one-hot + spiking head); the categories and their parts are a
:class:`~spikelight.datamodules.pointcloud.PartTable` (``part_table``: ``"shapenetpart"`` (16 categories / 50
parts), ``"synthetic"`` (the default synthetic categories), ``{"synthetic": [names]}``, or
``{"category_names": [...], "parts": [[...], ...]}``), checked against the DataModule's ``part_table`` at setup.

* loss: cross-entropy over all ``P`` parts per point (as PointNet / PointNet++ train), optional label smoothing;
* evaluation: the argmax over the parts of the shape's category; instance mIoU, class mIoU and per-category
  mIoU (:class:`~spikelight.metrics.PartSegmentationIoU`, synced over DDP ranks) and point accuracy, logged as
  ``val/instance_miou``, ``val/class_miou``, ``val/acc``, ``val/miou/<category>``, with ``val/loss``
  (``test/...`` in ``test``);
* ``pretrained``: an SVL checkpoint (or a Rep-VLI deploy folder, a state dict) whose encoder weights
  :func:`~spikelight.models.pretrained.load_pretrained_encoder` copies into ``model.encoder`` when ``fit``
  starts from scratch (a resumed fit restores its own checkpoint instead); ``freeze_encoder`` trains the head
  only (encoder in eval mode).

From Python (e.g. a benchmark comparing SVL-pretrained and scratch encoders at equal steps)::

    task = PartSegment(encoder={"name": "spike_pointnet", "embed_dim": 128, ...}, part_table="synthetic",
                       pretrained="runs/svl_synthetic/checkpoints/last.ckpt")   # or None
    dm = SyntheticPartsDataModule(num_points=512, batch_size=16)
    pl.Trainer(max_steps=300, ...).fit(task, dm)
    scores = task.evaluate(dm.val_dataloader())   # {"instance_miou", "class_miou", "acc", "miou/<cat>" ...}
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Optional, Union

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import OptimizerCallable
from torch import Tensor
from torchmetrics.classification import MulticlassAccuracy

from spikelight.datamodules.pointcloud.shapenetpart import SHAPENETPART, PartTable
from spikelight.metrics import PartSegmentationIoU, restrict_to_category
from spikelight.models import ModelConfig
from spikelight.models.segmentation import PartSegmentationModel
from spikelight.tasks.base import SpikelightTask, default_adamw

__all__ = ["PartSegment", "resolve_part_table"]


def resolve_part_table(spec: Union[str, dict, PartTable]) -> PartTable:
    """A :class:`PartTable` from ``"shapenetpart"``, ``"synthetic"``, ``{"synthetic": [categories]}`` or
    ``{"category_names": [...], "parts": [[...], ...], "part_names": [...] (optional)}``."""
    if isinstance(spec, PartTable):
        return spec
    if isinstance(spec, str):
        if spec == "shapenetpart":
            return SHAPENETPART
        if spec == "synthetic":
            from spikelight.datamodules.pointcloud.synthetic_parts import synthetic_part_table

            return synthetic_part_table()
        raise ValueError(f"part_table must be 'shapenetpart', 'synthetic' or a mapping, got {spec!r}")
    if isinstance(spec, dict):
        if set(spec) == {"synthetic"}:
            from spikelight.datamodules.pointcloud.synthetic_parts import synthetic_part_table

            return synthetic_part_table(spec["synthetic"])
        if {"category_names", "parts"} <= set(spec) <= {"category_names", "parts", "part_names"}:
            return PartTable(tuple(spec["category_names"]), tuple(tuple(p) for p in spec["parts"]),
                             tuple(spec.get("part_names") or ()))
    raise ValueError("part_table must be 'shapenetpart', 'synthetic', {'synthetic': [categories]} or "
                     f"{{'category_names': [...], 'parts': [[...]]}}, got {spec!r}")


class PartSegment(SpikelightTask):
    """Part segmentation task (see the module docstring).

    Args:
        encoder: the 3D encoder's model spec (Spike PointNet, E-3DSNN or Spike-driven PointFormer variants).
        part_table: categories and parts (see :func:`resolve_part_table`).
        head, dropout, interp_k: :class:`~spikelight.models.segmentation.PartSegmentationModel`.
        use_category: feed the category one-hot to the head (standard on ShapeNetPart).
        pretrained: encoder weights to start from (see the module docstring); ``None``: from scratch.
        freeze_encoder: train the head only.
        label_smoothing: of the cross-entropy.
        log_per_category: also log ``<stage>/miou/<category>``.
        optimizer, kwargs (warmup_epochs, warmup_start_lr, min_lr, scheduler): :class:`SpikelightTask`.
    """

    def __init__(
        self,
        *,
        encoder: ModelConfig = "spike_pointnet",
        part_table: Union[str, dict[str, Any]] = "shapenetpart",
        head: Sequence[int] = (256, 128),
        dropout: float = 0.0,
        interp_k: int = 3,
        use_category: bool = True,
        pretrained: Optional[str] = None,
        freeze_encoder: bool = False,
        label_smoothing: float = 0.0,
        log_per_category: bool = True,
        optimizer: OptimizerCallable = default_adamw,
        **kwargs: Any,
    ) -> None:
        super().__init__(optimizer=optimizer, **kwargs)
        self.save_hyperparameters(ignore=["optimizer"])
        self.table = resolve_part_table(part_table)
        self.model = PartSegmentationModel(
            encoder=encoder, num_parts=self.table.num_parts,
            num_categories=self.table.num_categories if use_category else 0,
            head=list(head), dropout=dropout, interp_k=interp_k,
        )  # fmt: skip
        self.register_buffer("part_mask", self.table.mask(), persistent=False)
        P, names, parts = self.table.num_parts, self.table.category_names, self.table.as_lists()
        self.val_iou = PartSegmentationIoU(parts, names)
        self.test_iou = PartSegmentationIoU(parts, names)
        self.val_acc = MulticlassAccuracy(num_classes=P, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes=P, average="micro")
        self.train_acc = MulticlassAccuracy(num_classes=P, average="micro")
        self.pretrained_report: Optional[dict] = None
        if freeze_encoder:
            self.model.encoder.requires_grad_(False)

    # ------------------------------------------------------------------ setup, pretrained weights
    def setup(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        theirs = getattr(dm, "part_table", None)
        if isinstance(theirs, PartTable) and (theirs.category_names, theirs.parts) != (
                self.table.category_names, self.table.parts):
            raise ValueError(
                f"PartSegment: the data's part table ({theirs.num_categories} categories {list(theirs.category_names)[:4]}"
                f"..., {theirs.num_parts} parts) differs from the task's part_table={self.hparams.part_table!r} "
                f"({self.table.num_categories} categories, {self.table.num_parts} parts); set model.init_args."
                "part_table to match the data")
        resuming = self._trainer is not None and getattr(self.trainer, "ckpt_path", None)
        if stage == "fit" and self.hparams.pretrained and not resuming and self.pretrained_report is None:
            self.load_pretrained()

    def load_pretrained(self, path: Optional[str] = None) -> dict:
        """Copy the encoder weights of ``path`` (default: ``pretrained``) into ``model.encoder``; returns the
        report of :func:`~spikelight.models.pretrained.load_pretrained_encoder`."""
        from spikelight.models.pretrained import load_pretrained_encoder

        path = path or self.hparams.pretrained
        if not path:
            raise ValueError("PartSegment.load_pretrained: no path (pretrained is None)")
        self.pretrained_report = load_pretrained_encoder(self.model.encoder, path)
        return self.pretrained_report

    def train(self, mode: bool = True) -> PartSegment:
        super().train(mode)
        if self.hparams.get("freeze_encoder") and hasattr(self, "model"):
            self.model.encoder.eval()  # frozen BatchNorm statistics too
        return self

    # ------------------------------------------------------------------ forward
    def forward(self, points: Tensor, category: Optional[Tensor] = None) -> Tensor:
        """Part logits ``[B, N, P]``."""
        return self.model(points, category if self.hparams.use_category else None)

    def infer(self, batch: dict) -> Tensor:
        return self(batch["points"], batch.get("label"))

    def predict_parts(self, logits: Tensor, category: Tensor) -> Tensor:
        """Per-point part ``[B, N]``: the argmax over the parts of each shape's category."""
        return restrict_to_category(logits, category, self.part_mask)

    def _loss(self, logits: Tensor, part: Tensor) -> Tensor:
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), part.reshape(-1).long(),
                               label_smoothing=self.hparams.label_smoothing)

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        logits = self.infer(batch)
        loss = self._loss(logits, batch["part"])
        self.check_finite(loss)
        bs = int(batch["points"].shape[0])
        self.train_acc(logits.detach().argmax(-1).reshape(-1), batch["part"].reshape(-1))
        self.log("train/loss", loss, prog_bar=True, batch_size=bs)
        self.log("train/acc", self.train_acc, on_step=True, on_epoch=False, batch_size=bs)
        return loss

    def _eval_step(self, batch: dict, stage: str) -> None:
        logits = self.infer(batch)
        bs = int(batch["points"].shape[0])
        self.log_mean(f"{stage}/loss", self._loss(logits, batch["part"]), bs)
        pred = self.predict_parts(logits, batch["label"])
        getattr(self, f"{stage}_iou").update(pred, batch["part"], batch["label"])
        getattr(self, f"{stage}_acc").update(pred.reshape(-1), batch["part"].reshape(-1))

    def _eval_epoch_end(self, stage: str) -> None:
        iou, acc = getattr(self, f"{stage}_iou"), getattr(self, f"{stage}_acc")
        if not bool(iou.shapes.sum() > 0) and not self.trainer.world_size > 1:
            return
        scores = iou.compute()
        for k, v in scores.items():
            if k.startswith("miou/") and not self.hparams.log_per_category:
                continue
            self.log(f"{stage}/{k}", v, prog_bar=k == "instance_miou")
        self.log(f"{stage}/acc", acc.compute())
        iou.reset()
        acc.reset()

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")

    def predict_step(self, batch: dict, batch_idx: int) -> dict:
        logits = self.infer(batch)
        return {"part": self.predict_parts(logits, batch["label"]), "label": batch["label"]}

    # ------------------------------------------------------------------ Python evaluation (no Trainer)
    @torch.no_grad()
    def evaluate(self, loader, *, max_batches: Optional[int] = None) -> dict[str, float]:
        """Scores of this model on ``loader`` (eval mode, no Trainer): ``instance_miou``, ``class_miou``,
        ``acc`` (point accuracy) and ``miou/<category>``; the training mode is restored afterwards."""
        was_training = self.training
        self.eval()
        iou = PartSegmentationIoU(self.table.as_lists(), self.table.category_names).to(self.device)
        correct = total = 0
        try:
            for i, batch in enumerate(loader):
                if max_batches is not None and i >= max_batches:
                    break
                batch = {k: v.to(self.device) if torch.is_tensor(v) else v for k, v in batch.items()}
                pred = self.predict_parts(self.infer(batch), batch["label"])
                iou.update(pred, batch["part"], batch["label"])
                correct += int((pred == batch["part"]).sum())
                total += int(batch["part"].numel())
        finally:
            self.train(was_training)
        out = {k: float(v) for k, v in iou.compute().items()}
        out["acc"] = correct / max(total, 1)
        return out
