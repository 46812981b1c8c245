"""A tiny classifier for the toy experiment: tests the spine before real models exist.

``spiking=True`` turns it into a toy SNN (I-LIF neurons, ``timesteps`` steps, input repeated over
time, logits averaged over time) so the energy and memory callbacks have something to measure.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from spikelight.tasks.base import SpikelightTask


class ToyMLP(nn.Module):
    """MLP ``in -> hidden x depth -> classes``; spiking variant uses I-LIF between layers.

    Input ``[B, F]``; output ``[B, K]``. In the spiking variant the first linear layer sees the real
    input (MAC) and later layers see integer spikes (AC).
    """

    def __init__(self, *, in_features: int, num_classes: int, hidden: int = 64, depth: int = 2,
                 spiking: bool = False, timesteps: int = 1) -> None:
        super().__init__()
        self.spiking = spiking
        self.timesteps = int(timesteps)
        layers: list[nn.Module] = []
        dims = [in_features] + [hidden] * depth
        for a, b in zip(dims[:-1], dims[1:]):
            layers.append(nn.Linear(a, b))
            layers.append(nn.BatchNorm1d(b))
            if spiking:
                from spikelight.nn.neurons import ILIF

                layers.append(ILIF())
            else:
                layers.append(nn.ReLU())
        self.body = nn.ModuleList(layers)
        self.head = nn.Linear(dims[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.spiking:
            for layer in self.body:
                x = layer(x)
            return self.head(x)
        T, B = self.timesteps, x.shape[0]
        h = x.unsqueeze(0).expand(T, *x.shape)  # [T, B, F]
        for layer in self.body:
            if isinstance(layer, (nn.Linear, nn.BatchNorm1d)):
                h = layer(h.reshape(T * B, -1)).reshape(T, B, -1)
            else:
                h = layer(h)
        return self.head(h.reshape(T * B, -1)).reshape(T, B, -1).mean(0)


class ToyClassifier(SpikelightTask):
    """Classify ``batch["x"]`` into ``batch["label"]`` with a ToyMLP; logs ``train/loss``, ``val/top1``."""

    def __init__(self, *, in_features: int = 16, num_classes: int = 4, hidden: int = 64, depth: int = 2,
                 spiking: bool = False, timesteps: int = 1, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.save_hyperparameters(ignore=["optimizer"])
        self.model = ToyMLP(in_features=in_features, num_classes=num_classes, hidden=hidden, depth=depth,
                            spiking=spiking, timesteps=timesteps)
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
        self.log("val/loss", loss, batch_size=len(batch["label"]), sync_dist=True)
        self.log("val/top1", self.val_acc, prog_bar=True, batch_size=len(batch["label"]))

    def test_step(self, batch: dict, batch_idx: int) -> None:
        logits = self.model(batch["x"])
        self.test_acc(logits, batch["label"])
        self.log("test/top1", self.test_acc, batch_size=len(batch["label"]))

    def predict_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        return self.model(batch["x"]).argmax(-1)
