"""The toy DataModule: a small synthetic classification problem (Gaussian class clusters).

Deterministic by ``seed``; no files. Batches: ``{"x": float32 [B, F], "label": int64 [B]}``.
"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from spikelight.datamodules.base import SpikelightDataModule


class _TensorDictDataset(Dataset):
    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> dict:
        return {"x": self.x[i], "label": self.y[i]}


def make_blobs(*, n: int, num_features: int, num_classes: int, noise: float, seed: int,
               centers_seed: int = 1234) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` samples from ``num_classes`` Gaussian clusters; the centres are shared across splits."""
    gc = torch.Generator().manual_seed(centers_seed)
    centers = torch.randn(num_classes, num_features, generator=gc) * 2.0
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, num_classes, (n,), generator=g)
    x = centers[y] + noise * torch.randn(n, num_features, generator=g)
    return x.float(), y.long()


class ToyDataModule(SpikelightDataModule):
    """Gaussian-cluster classification (``num_classes`` clusters in ``num_features`` dims)."""

    def __init__(self, *, num_features: int = 16, num_classes: int = 4, train_size: int = 1024,
                 val_size: int = 256, noise: float = 1.0, batch_size: int = 32, num_workers: int = 0,
                 seed: int = 0) -> None:
        super().__init__(batch_size=batch_size, num_workers=num_workers)
        if train_size <= 0 or val_size <= 0:
            raise ValueError(f"train_size and val_size must be positive, got {train_size}, {val_size}")
        self.save_hyperparameters()
        self.num_classes = num_classes
        self.class_names = [f"class_{i}" for i in range(num_classes)]

    def setup(self, stage: str | None = None) -> None:
        h = self.hparams
        self.train_set = _TensorDictDataset(*make_blobs(n=h.train_size, num_features=h.num_features,
                                                        num_classes=h.num_classes, noise=h.noise, seed=h.seed))
        self.val_set = _TensorDictDataset(*make_blobs(n=h.val_size, num_features=h.num_features,
                                                      num_classes=h.num_classes, noise=h.noise, seed=h.seed + 1))
