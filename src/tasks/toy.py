"""A tiny classifier for the toy experiment: tests the spine before real models exist.

The network is a config value (``network:``): by default the ReLU ``toy_mlp``; ``toy_snn`` is the toy
SNN (I-LIF neurons, input repeated over time, logits averaged over time) that gives the energy and memory
callbacks something to measure (see :mod:`spikelight.models.toy_snn`).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from spikelight.models import ModelConfig, build_model
from spikelight.tasks.base import SpikelightTask


class ToyClassifier(SpikelightTask):
    """Classify ``batch["x"]`` into ``batch["label"]``; logs ``train/loss``, ``val/top1``.

    Args:
        network: model spec (:func:`spikelight.models.build_model`), e.g. ``toy_snn`` or
            ``{name: toy_snn, hidden: 64, timesteps: 2}``.
        in_features, num_classes: input and output sizes (the DataModule's ``num_features`` /
            ``num_classes``), passed into the spec.
        **kwargs: optimizer and schedule, see :class:`~spikelight.tasks.base.SpikelightTask`.
    """

    def __init__(
        self, *, network: ModelConfig = "toy_mlp", in_features: int = 16, num_classes: int = 4, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        built = isinstance(network, nn.Module)  # Python API only: saved in the state dict, not in hparams
        self.save_hyperparameters(ignore=["optimizer", "network"] if built else ["optimizer"])
        sizes = {} if built else {"in_features": in_features, "num_classes": num_classes}
        self.model = build_model(network, **sizes)
        self.val_acc = MulticlassAccuracy(num_classes=num_classes)
        self.test_acc = MulticlassAccuracy(num_classes=num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def infer(self, batch: dict) -> torch.Tensor:
        return self.model(batch["x"])

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        logits = self.model(batch["x"])
        loss = F.cross_entropy(logits, batch["label"])
        self.check_finite(loss)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["label"]))
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        logits = self.model(batch["x"])
        loss = F.cross_entropy(logits, batch["label"])
        self.val_acc(logits, batch["label"])
        self.log_mean("val/loss", loss, len(batch["label"]))
        self.log("val/top1", self.val_acc, prog_bar=True, batch_size=len(batch["label"]))

    def test_step(self, batch: dict, batch_idx: int) -> None:
        logits = self.model(batch["x"])
        self.test_acc(logits, batch["label"])
        self.log("test/top1", self.test_acc, batch_size=len(batch["label"]))

    def predict_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        return self.model(batch["x"]).argmax(-1)
