"""Synthetic DVS recordings: a disc moving right / left / down / up / diagonally, orbiting clockwise /
anticlockwise, growing, shrinking or flickering, plus Poisson background noise; deterministic by seed,
learnable, no files. Same batch layout as the DVS128 Gesture DataModule; for CPU CI runs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Optional

import numpy as np
import torch
from torch.utils.data import Dataset

from spikelight.datamodules.events.base import EventDataModule
from spikelight.datamodules.events.io import EVENT_DTYPE, SensorSize
from spikelight.datamodules.events.transforms import sample_rng

__all__ = ["SYNTHETIC_DVS_CLASSES", "synthetic_dvs_events", "SyntheticDVSDataset", "SyntheticDVSDataModule"]

#: Synthetic classes (label = index): a bright disc that ...
SYNTHETIC_DVS_CLASSES: list[str] = [
    "moves right", "moves left", "moves down", "moves up", "orbits clockwise", "orbits anticlockwise",
    "moves down-right", "moves up-right", "grows", "shrinks", "flickers in place",
]


def _trajectory(label: int, u: np.ndarray, jitter: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Centre ``c(u)``, velocity ``c'(u)`` ([n, 2], unit square coords, u in [0, 1)), radius, radius rate."""
    n = len(u)
    c = np.zeros((n, 2))
    v = np.zeros((n, 2))
    r = np.full(n, 0.12)
    dr = np.zeros(n)
    straight = {0: (1, 0), 1: (-1, 0), 2: (0, 1), 3: (0, -1), 6: (1, 1), 7: (1, -1)}
    if label in straight:
        d = np.asarray(straight[label], float) * 0.5
        start = 0.5 - d / 2 + jitter
        c = start + u[:, None] * d
        v[:] = d
    elif label in (4, 5):  # orbit; y points down so "clockwise" on screen is increasing angle
        w = 2 * np.pi * (1 if label == 4 else -1)
        ang = w * u + jitter[0] * 10
        R = 0.25
        c = 0.5 + jitter * 0.3 + R * np.stack([np.cos(ang), np.sin(ang)], 1)
        v = R * w * np.stack([-np.sin(ang), np.cos(ang)], 1)
    elif label in (8, 9):
        c[:] = 0.5 + jitter
        r = 0.06 + 0.24 * (u if label == 8 else 1 - u)
        dr[:] = 0.24 if label == 8 else -0.24
    else:  # flicker: static disc, brightness alternating at 4 cycles per recording
        c[:] = 0.5 + jitter
    return c, v, r, dr


def synthetic_dvs_events(*, label: int, rng: np.random.Generator, sensor_size: SensorSize = (32, 32, 2),
                         duration_us: int = 1_000_000, num_events: int = 3000, noise_fraction: float = 0.1) -> np.ndarray:
    """One synthetic recording: events on the rim of a disc following class ``label``'s motion.

    The disc rim point at angle ``a`` has outward normal ``n``; its polarity is ON where the rim moves
    outwards (``n . (c' + r' n) > 0``, the bright disc covers dark background) and OFF otherwise; the
    flicker class alternates ON / OFF in time. Positions get 0.6 px Gaussian jitter. Background noise:
    Poisson(``noise_fraction * num_events``) uniform events with random polarity.

    Returns :data:`EVENT_DTYPE` events sorted by ``t`` (``t`` in ``[0, duration_us)``).
    """
    W, H = int(sensor_size[0]), int(sensor_size[1])
    n = int(rng.poisson(num_events))
    u = np.sort(rng.random(n))
    jitter = rng.uniform(-0.08, 0.08, size=2)
    c, v, r, dr = _trajectory(int(label), u, jitter)
    ang = rng.uniform(0, 2 * np.pi, n)
    nrm = np.stack([np.cos(ang), np.sin(ang)], 1)
    pos = c + r[:, None] * nrm
    if label == 10:
        pol = (np.floor(u * 8) % 2) == 0
    else:
        pol = ((v * nrm).sum(1) + dr) > 0
    xs = pos[:, 0] * (W - 1) + rng.normal(0, 0.6, n)
    ys = pos[:, 1] * (H - 1) + rng.normal(0, 0.6, n)
    xs, ys = np.rint(xs).astype(np.int64), np.rint(ys).astype(np.int64)
    inside = (xs >= 0) & (xs < W) & (ys >= 0) & (ys < H)
    m = int(rng.poisson(noise_fraction * num_events))
    ev = np.empty(int(inside.sum()) + m, EVENT_DTYPE)
    k = int(inside.sum())
    ev["x"][:k], ev["y"][:k], ev["p"][:k] = xs[inside], ys[inside], pol[inside]
    ev["t"][:k] = (u[inside] * duration_us).astype(np.int64)
    ev["x"][k:], ev["y"][k:] = rng.integers(0, W, m), rng.integers(0, H, m)
    ev["p"][k:], ev["t"][k:] = rng.random(m) < 0.5, rng.integers(0, duration_us, m)
    return ev[np.argsort(ev["t"], kind="stable")]


class SyntheticDVSDataset(Dataset):
    """``num_samples`` synthetic recordings; sample ``i`` has label ``i % num_classes`` and its events are
    generated from ``np.random.default_rng([seed, i])`` (deterministic, nothing stored).

    Item layout as :class:`DVSGestureDataset`."""

    def __init__(self, *, num_samples: int, num_classes: int = 11, sensor_size: SensorSize = (32, 32, 2),
                 duration_us: int = 1_000_000, num_events: int = 3000, noise_fraction: float = 0.1, seed: int = 0,
                 transform: Optional[Callable] = None, train: bool = False) -> None:
        if not 2 <= num_classes <= len(SYNTHETIC_DVS_CLASSES):
            raise ValueError(f"num_classes must be in 2..{len(SYNTHETIC_DVS_CLASSES)}, got {num_classes}")
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        self.num_samples, self.num_classes = int(num_samples), int(num_classes)
        self.sensor_size = tuple(int(s) for s in sensor_size)
        self.duration_us, self.num_events, self.noise_fraction = int(duration_us), int(num_events), float(noise_fraction)
        self.seed, self.transform, self.train = int(seed), transform, bool(train)

    def __len__(self) -> int:
        return self.num_samples

    def label_of(self, index: int) -> int:
        return index % self.num_classes

    def load(self, index: int) -> np.ndarray:
        return synthetic_dvs_events(label=self.label_of(index), rng=np.random.default_rng([self.seed, index]),
                                    sensor_size=self.sensor_size, duration_us=self.duration_us,
                                    num_events=self.num_events, noise_fraction=self.noise_fraction)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < self.num_samples:
            raise IndexError(index)
        ev = self.load(index)
        y = self.label_of(index)
        if self.transform is None:
            return {"raw": ev, "label": y}
        item = dict(self.transform(ev, sample_rng(self.train, self.seed, index)))
        item["label"] = torch.tensor(y, dtype=torch.int64)
        return item



class SyntheticDVSDataModule(EventDataModule):
    """Synthetic DVS recordings (see :func:`synthetic_dvs_events`): deterministic by ``seed``, learnable,
    no files; same batch layout as :class:`DVSGestureDataModule`. Default sensor 32x32x2 for fast CPU runs.

    Val / test use seed ``seed + 1`` (other recordings of the same classes).
    """

    def __init__(self, *, num_classes: int = 11, train_size: int = 256, val_size: int = 64, split_by: str = "time",
                 sensor_size: Sequence[int] = (32, 32, 2), num_points: int = 256, duration_us: int = 1_000_000,
                 num_events: int = 3000, noise_fraction: float = 0.1, seed: int = 0, **kwargs: Any) -> None:
        """``**kwargs``: the representation and loaders (:class:`EventDataModule`)."""
        super().__init__(split_by=split_by, sensor_size=sensor_size, num_points=num_points, **kwargs)
        if not 2 <= num_classes <= len(SYNTHETIC_DVS_CLASSES):
            raise ValueError(f"num_classes must be in 2..{len(SYNTHETIC_DVS_CLASSES)}, got {num_classes}")
        self.save_hyperparameters()
        self.num_classes = int(num_classes)
        self.class_names = SYNTHETIC_DVS_CLASSES[: self.num_classes]

    def _dataset(self, *, n: int, seed: int, train: bool) -> SyntheticDVSDataset:
        h = self.hparams
        return SyntheticDVSDataset(num_samples=n, num_classes=self.num_classes, sensor_size=self.sensor_size,
                                   duration_us=h.duration_us, num_events=h.num_events,
                                   noise_fraction=h.noise_fraction, seed=seed,
                                   transform=self.train_transform if train else self.eval_transform, train=train)

    def setup(self, stage: Optional[str] = None) -> None:
        h = self.hparams
        self.train_set = self._dataset(n=h.train_size, seed=h.seed, train=True)
        self.val_set = self._dataset(n=h.val_size, seed=h.seed + 1, train=False)
        self.test_set = self.val_set
