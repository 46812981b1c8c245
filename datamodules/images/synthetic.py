"""Procedurally drawn synthetic shapes and textures (circle, square, triangle, stripes ...): drawn on the fly
from the sample index, no files, deterministic by seed, learnable by a tiny CNN in seconds on CPU. The
embedded default of the T-RevSNN experiments.

Batches: ``{"image": float32 [B, 3, H, W] normalised with SYNTHETIC_MEAN / STD, "label": int64 [B]}``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Optional

import numpy as np
import torch
from torch.utils.data import Dataset

from spikelight.datamodules.base import SpikelightDataModule

#: class names, in label order; ``num_classes=k`` uses the first k.
SYNTHETIC_CLASSES: tuple[str, ...] = (
    "circle", "square", "triangle", "cross", "ring", "stripes_horizontal", "stripes_vertical",
    "checkerboard", "dots", "stripes_diagonal", "x_cross", "frame", "diamond", "grid",
)
_TEXTURES = {"stripes_horizontal", "stripes_vertical", "checkerboard", "dots", "stripes_diagonal", "grid"}
#: per-channel mean / std of the rendered images scaled to [0, 1] (measured over 8192 samples of
#: 10 classes at 32 px: mean 0.498 / 0.504 / 0.502, std 0.303 / 0.306 / 0.302)
SYNTHETIC_MEAN: tuple[float, float, float] = (0.5, 0.5, 0.5)
SYNTHETIC_STD: tuple[float, float, float] = (0.3, 0.3, 0.3)


@functools.lru_cache(maxsize=8)
def _pixel_grid(img_size: int) -> tuple[np.ndarray, np.ndarray]:
    """``(yy, xx)`` float32 ``[H, W]`` pixel-centre coordinates (read-only, shared)."""
    yy, xx = np.mgrid[0:img_size, 0:img_size].astype(np.float32)
    yy.setflags(write=False)
    xx.setflags(write=False)
    return yy, xx


def shape_mask(kind: str, *, img_size: int, cx: float, cy: float, size: float, period: float = 4.0,
               phase: float = 0.0) -> np.ndarray:
    """Binary float32 mask ``[H, W]`` (H = W = img_size) of one shape / texture patch.

    Pixel centres are at integer coordinates ``x, y`` in ``[0, img_size)``; ``(cx, cy)`` is the centre,
    ``size`` the half-extent in pixels (circle radius, half the side of a square patch ...).
    Textures fill the square patch ``max(|x-cx|, |y-cy|) <= size`` with a pattern of period ``period``
    pixels shifted by ``phase`` (in periods).
    """
    if kind not in SYNTHETIC_CLASSES:
        raise ValueError(f"unknown synthetic class {kind!r}; choose from {SYNTHETIC_CLASSES}")
    yy, xx = _pixel_grid(img_size)
    dx, dy = xx - cx, yy - cy
    r2 = dx * dx + dy * dy
    s = float(size)
    cheb = np.maximum(np.abs(dx), np.abs(dy))
    if kind == "circle":
        m = r2 <= s * s
    elif kind == "ring":
        m = (r2 <= s * s) & (r2 >= (0.6 * s) ** 2)
    elif kind == "square":
        m = cheb <= 0.85 * s
    elif kind == "frame":
        m = (cheb <= s) & (cheb >= 0.65 * s)
    elif kind == "diamond":
        m = np.abs(dx) + np.abs(dy) <= 1.1 * s
    elif kind == "triangle":  # apex up at cy - s, base at cy + s with half-width s
        m = (dy >= -s) & (dy <= s) & (np.abs(dx) <= (dy + s) / 2.0)
    elif kind in ("cross", "x_cross"):
        u, v = (dx, dy) if kind == "cross" else ((dx + dy) / math.sqrt(2), (dx - dy) / math.sqrt(2))
        w = 0.3 * s
        m = ((np.abs(u) <= w) & (np.abs(v) <= s)) | ((np.abs(v) <= w) & (np.abs(u) <= s))
    else:  # textures in a square patch
        p = float(period)
        patch = cheb <= s
        if kind == "stripes_horizontal":
            t = np.mod(yy / p + phase, 1.0) < 0.5
        elif kind == "stripes_vertical":
            t = np.mod(xx / p + phase, 1.0) < 0.5
        elif kind == "stripes_diagonal":
            t = np.mod((xx + yy) / (p * math.sqrt(2)) + phase, 1.0) < 0.5
        elif kind == "checkerboard":
            t = (np.floor(xx / (p / 2) + phase) + np.floor(yy / (p / 2) + phase)) % 2 == 0
        elif kind == "grid":
            t = (np.mod(xx / p + phase, 1.0) < 0.3) | (np.mod(yy / p + phase, 1.0) < 0.3)
        else:  # dots
            fx, fy = np.mod(xx / p + phase, 1.0) - 0.5, np.mod(yy / p + phase, 1.0) - 0.5
            t = fx * fx + fy * fy <= 0.3 ** 2
        m = patch & t
    return m.astype(np.float32)


def render_synthetic_image(label: int, *, rng: np.random.Generator, img_size: int = 32) -> np.ndarray:
    """Draw one sample of class ``SYNTHETIC_CLASSES[label]``: uint8 ``[3, H, W]`` (RGB).

    Random: position, size (20-38 % of the image side for shapes, 28-45 % for texture patches),
    texture period and phase, background and foreground colours (kept at least 0.35 apart on average
    over channels), a smooth background gradient and Gaussian pixel noise (sigma 0.02-0.10).
    """
    kind = SYNTHETIC_CLASSES[label]
    n = float(img_size)
    if kind in _TEXTURES:
        size = rng.uniform(0.28, 0.45) * n
    else:
        size = rng.uniform(0.20, 0.38) * n
    margin = 0.8 * size
    cx, cy = rng.uniform(margin, n - 1 - margin, size=2)
    period = rng.uniform(0.12, 0.2) * n
    phase = rng.uniform(0.0, 1.0)
    mask = shape_mask(kind, img_size=img_size, cx=cx, cy=cy, size=size, period=period, phase=phase)
    bg = rng.uniform(0.0, 1.0, size=3)
    fg = rng.uniform(0.0, 1.0, size=3)
    if np.abs(fg - bg).mean() < 0.35:
        fg = np.where(bg > 0.5, rng.uniform(0.0, 0.3, size=3), rng.uniform(0.7, 1.0, size=3))
    grad_dir = rng.normal(size=2)
    grad_dir /= np.linalg.norm(grad_dir) + 1e-8
    yy, xx = _pixel_grid(img_size)
    ramp = rng.uniform(0.0, 0.15) * (grad_dir[0] * (xx / n - 0.5) + grad_dir[1] * (yy / n - 0.5))
    img = bg[:, None, None] * (1.0 - mask) + fg[:, None, None] * mask + ramp[None]
    img = img + rng.normal(0.0, rng.uniform(0.02, 0.10), size=img.shape)
    return np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)


class SyntheticImageDataset(Dataset):
    """Procedural shapes / textures, drawn from the index: ``{"image": float32 [3, H, W], "label": int}``.

    Sample ``i`` has label ``i % num_classes`` and is drawn with ``np.random.default_rng([seed, split, i])``,
    so it is the same in any process, worker or access order. ``cache=True`` renders everything once
    (uint8, ``size * 3 * H * W`` bytes) on first use; the values are identical either way.
    Images are normalised with ``mean`` / ``std``.
    """

    def __init__(self, *, size: int, num_classes: int = 10, img_size: int = 32, seed: int = 0, split: int = 0,
                 mean: Sequence[float] = SYNTHETIC_MEAN, std: Sequence[float] = SYNTHETIC_STD,
                 cache: bool = True) -> None:
        if not 2 <= num_classes <= len(SYNTHETIC_CLASSES):
            raise ValueError(f"num_classes must be in [2, {len(SYNTHETIC_CLASSES)}], got {num_classes}")
        if size <= 0:
            raise ValueError(f"size must be positive, got {size}")
        if img_size < 16:
            raise ValueError(f"img_size must be >= 16, got {img_size}")
        self.size, self.num_classes, self.img_size = int(size), int(num_classes), int(img_size)
        self.seed, self.split, self.cache = int(seed), int(split), cache
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
        self._cached: Optional[torch.Tensor] = None

    def __len__(self) -> int:
        return self.size

    def label_of(self, index: int) -> int:
        return index % self.num_classes

    def materialize(self) -> None:
        """Render every sample into the in-memory cache now (no-op without ``cache`` or when done).

        The DataModule calls this before building a DataLoader, so workers share one cache."""
        if self.cache and self._cached is None:
            self._cached = torch.stack([self._render(i) for i in range(self.size)])

    def raw(self, index: int) -> torch.Tensor:
        """uint8 ``[3, H, W]`` image of sample ``index`` (before normalisation)."""
        if not 0 <= index < self.size:
            raise IndexError(f"index {index} out of range for {self.size} samples")
        if self.cache:
            self.materialize()
            return self._cached[index]
        return self._render(index)

    def _render(self, index: int) -> torch.Tensor:
        rng = np.random.default_rng([self.seed, self.split, index])
        return torch.from_numpy(render_synthetic_image(self.label_of(index), rng=rng, img_size=self.img_size))

    def __getitem__(self, index: int) -> dict:
        img = self.raw(index).float().div_(255.0)
        return {"image": (img - self.mean) / self.std, "label": self.label_of(index)}


class SyntheticImageDataModule(SpikelightDataModule):
    """Embedded synthetic image classification: procedural shapes and textures, no files.

    Classes (label order): ``SYNTHETIC_CLASSES[:num_classes]`` -- circle, square, triangle, cross,
    ring, stripes_horizontal, stripes_vertical, checkerboard, dots, stripes_diagonal, x_cross, frame,
    diamond, grid. Each sample has a random position, size, colours, background gradient and noise.
    Deterministic by ``seed``; train / val / test use different random streams.
    Batches: ``{"image": float32 [B, 3, img_size, img_size] (normalised), "label": int64 [B]}``.

    Args:
        num_classes: 2-14.
        img_size: image side in pixels (32 or 64 are typical; >= 16).
        train_size, val_size, test_size: number of samples (``test_size=None``: same as ``val_size``).
        batch_size: per-device batch.
        num_workers: DataLoader workers (persistent when > 0).
        seed: generator seed.
        cache: render each split once into memory (uint8) instead of on every access.
    """

    def __init__(self, *, num_classes: int = 10, img_size: int = 32, train_size: int = 4096, val_size: int = 512,
                 test_size: Optional[int] = None, batch_size: int = 64, num_workers: int = 0, seed: int = 0,
                 cache: bool = True) -> None:
        super().__init__(batch_size=batch_size, num_workers=num_workers, pin_memory=None)
        if not 2 <= num_classes <= len(SYNTHETIC_CLASSES):
            raise ValueError(f"num_classes must be in [2, {len(SYNTHETIC_CLASSES)}], got {num_classes}")
        self.save_hyperparameters()
        self.num_classes = int(num_classes)
        self.class_names = list(SYNTHETIC_CLASSES[:num_classes])
        self.img_size = int(img_size)
        self.mean, self.std = SYNTHETIC_MEAN, SYNTHETIC_STD
        self._sizes = {0: train_size, 1: val_size, 2: val_size if test_size is None else test_size}
        self._sets: dict[int, SyntheticImageDataset] = {}

    def _dataset(self, split: int) -> SyntheticImageDataset:
        if split not in self._sets:
            self._sets[split] = SyntheticImageDataset(
                size=self._sizes[split], num_classes=self.num_classes, img_size=self.img_size,
                seed=self.hparams.seed, split=split, cache=self.hparams.cache)
        return self._sets[split]

    def setup(self, stage: Optional[str] = None) -> None:
        """Datasets are created here, samples rendered lazily (once per split, before its first loader)."""
        self.train_set, self.val_set, self.test_set = self._dataset(0), self._dataset(1), self._dataset(2)

    def prepare_dataset(self, ds: SyntheticImageDataset) -> None:
        ds.materialize()
