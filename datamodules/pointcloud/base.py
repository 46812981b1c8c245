"""What the point-cloud datasets share: :class:`PointCloudDataset` (per-item loading, corrupt-item
handling, transforms, captions), :class:`H5PointCloudDataset` (h5 files held in memory) and
:class:`PointCloudDataModule` (the SVL batch convention on top of :class:`SpikelightDataModule`).

Batch convention (a ``dict`` with stable keys, shared by every point-cloud DataModule of spikelight)
--------------------------------------------------------------------------------------------------
=============  =========================  ==============================================================
key            type / layout              meaning
=============  =========================  ==============================================================
``points``     float32 ``[B, N, 6]``      xyz (normalised to the unit sphere, then augmented in
                                          training) + rgb in ``[0, 1]``; rgb is the constant 0.4 where a
                                          format has no colour (SVL recipe).
``image``      float32 ``[B, 3, H, W]``   one rendered view in ``[0, 1]`` (no CLIP normalisation: the
                                          task applies it). Triplet datasets only.
``text``       ``list[str]``              one caption per sample (for evaluation sets: a prompt with the
                                          class name).
``label``      int64 ``[B]``              class index into the dataset's ``class_names`` (-1: unknown).
``image_feat`` float32 ``[B, D]``         precomputed CLIP image feature (OpenShape-style data only).
``text_feat``  float32 ``[B, D]``         precomputed CLIP text feature (OpenShape-style data only).
=============  =========================  ==============================================================

Every dataset returns one such dict per sample (unbatched: ``points [N, 6]``, ``image [3, H, W]``,
``label`` int64 scalar tensor ...); :func:`~spikelight.datamodules.base.collate_dict` stacks them.

A DataModule used for zero-shot evaluation keeps its evaluation sets as a ``{name: dataset}`` dict in
``val_set`` and exposes them through ``eval_sets()`` (:class:`~spikelight.datamodules.base.EvalSet`: name,
human-readable class names, prompt templates), aligned with the list returned by ``val_dataloader()``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from spikelight.datamodules.base import DataError, SpikelightDataModule, collate_dict
from spikelight.datamodules.pointcloud.io import bad, read_h5_pointclouds
from spikelight.datamodules.pointcloud.labels import PROMPT_TEMPLATES, load_templates
from spikelight.datamodules.pointcloud.transforms import PointCloudTransform

__all__ = [
    "PointCloudDataset", "H5PointCloudDataset", "PointCloudDataModule", "pick_transform", "recipe", "find_dir_with",
]


class PointCloudDataset(Dataset):
    """Base class: per-item loading with corrupt-item handling, transforms and captions.

    Subclasses implement ``__len__``, ``_load(i) -> dict`` (raw sample; ``points`` float32 ``[M, 3|6]``
    numpy/tensor, ``label`` int, optional ``name`` (class name for the caption), ``image``, ``image_feat``,
    ``text_feat``, ``text``) which raises ``ValueError`` for a corrupt item.

    ``memoize=True`` keeps every assembled sample in memory (for deterministic evaluation transforms,
    e.g. farthest point sampling, which then runs once per shape instead of once per epoch).

    ``skip_bad=True``: a corrupt item is skipped (the next valid item is returned instead), counted in
    ``num_skipped`` and reported with one warning. Items are read lazily, so ``num_skipped`` grows as bad
    items are met; ``validate()`` reads every item once up front and makes it exact.
    """

    def __init__(
        self,
        *,
        transform: Callable[..., Tensor] | None,
        caption_templates: Sequence[str] | None = None,
        random_caption: bool = False,
        skip_bad: bool = False,
        memoize: bool = False,
    ) -> None:
        self.transform = transform
        self.memoize = memoize
        self._memo: dict[int, dict[str, Any]] = {}
        self.caption_templates = list(caption_templates) if caption_templates else list(PROMPT_TEMPLATES)
        self.random_caption = random_caption
        self.skip_bad = skip_bad
        self._bad: set[int] = set()
        self._warned = False
        self.generator: torch.Generator | None = None  # set for reproducible tests; None = global RNG

    # -- subclass API
    def __len__(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def _load(self, i: int) -> dict[str, Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    # -- bad-item bookkeeping
    @property
    def num_skipped(self) -> int:
        return len(self._bad) + getattr(self, "_pre_skipped", 0)

    def _notebad(self, i: int, err: Exception) -> None:
        self._bad.add(i)
        if not self._warned:
            self._warned = True
            warnings.warn(
                f"{type(self).__name__}: skipping corrupt item(s) (skip_bad=True); "
                f"{self.num_skipped} skipped so far, first: {err}",
                RuntimeWarning,
                stacklevel=3,
            )

    def _warn_skipped(self) -> None:
        if self.num_skipped and not self._warned:
            self._warned = True
            warnings.warn(
                f"{type(self).__name__}: skipped {self.num_skipped} corrupt item(s) (skip_bad=True)",
                RuntimeWarning,
                stacklevel=3,
            )

    def validate(self) -> int:
        """Load every item once: raise on the first corrupt one, or with ``skip_bad`` mark every corrupt
        one (never returned afterwards) and return the exact ``num_skipped``."""
        for i in range(len(self)):
            if i in self._bad:
                continue
            try:
                self._load(i)
            except ValueError:
                if not self.skip_bad:
                    raise
                self._bad.add(i)
        self._warn_skipped()
        return self.num_skipped

    # -- sample assembly
    def _caption(self, name: str) -> str:
        if self.random_caption and len(self.caption_templates) > 1:
            j = int(torch.randint(len(self.caption_templates), (1,), generator=self.generator))
        else:
            j = 0
        return self.caption_templates[j].format(name)

    def __getitem__(self, i: int) -> dict[str, Any]:
        n = len(self)
        if n == 0:
            raise IndexError("empty dataset")
        for attempt in range(n):
            j = (i + attempt) % n
            if j in self._bad:
                continue
            if j in self._memo:
                return dict(self._memo[j])
            try:
                out = self._read(j)
            except DataError as e:
                if not self.skip_bad:
                    raise
                self._notebad(j, e)
                continue
            if self.memoize:
                self._memo[j] = out
                out = dict(out)
            return out
        raise RuntimeError(f"{type(self).__name__}: every item is corrupt ({self.num_skipped} skipped)")

    def source(self, i: int) -> str:
        """The file item ``i`` comes from (named in errors); subclasses with files override it."""
        return f"{type(self).__name__} item {i}"

    def _read(self, i: int) -> dict[str, Any]:
        """Item ``i`` loaded and assembled; any ``ValueError`` becomes a :class:`DataError` naming its file."""
        try:
            return self._assemble(self._load(i))
        except DataError:
            raise
        except ValueError as e:
            raise DataError(self.source(i), str(e)) from e

    def _assemble(self, raw: dict[str, Any]) -> dict[str, Any]:
        pts = torch.as_tensor(np.asarray(raw["points"], dtype=np.float32))
        if self.transform is not None:
            pts = self.transform(pts, generator=self.generator)
        out: dict[str, Any] = {"points": pts.float()}
        if "image" in raw and raw["image"] is not None:
            out["image"] = raw["image"]
        if "text" in raw and raw["text"] is not None:
            out["text"] = raw["text"]
        else:
            out["text"] = self._caption(raw.get("name", "object"))
        out["label"] = torch.tensor(int(raw.get("label", -1)), dtype=torch.int64)
        for k in ("image_feat", "text_feat"):
            if k in raw and raw[k] is not None:
                out[k] = torch.as_tensor(raw[k], dtype=torch.float32)
        if not torch.isfinite(out["points"]).all():  # never return NaN
            raise ValueError("non-finite points after transform")
        return out


def find_dir_with(root: Path, filename: str, subdirs: Iterable[str]) -> Path | None:
    for cand in [root, *[root / s for s in subdirs]]:
        if (cand / filename).is_file():
            return cand
    return None


def recipe(
    *, num_points: int | None, sampling: str, augment: bool, transform: Callable[..., Tensor] | None = None,
    caption_templates: Sequence[str] | None = None, skip_bad: bool = False,
) -> dict[str, Any]:
    """:class:`PointCloudDataset` arguments of a dataset built with the SVL recipe: :func:`pick_transform`,
    random captions when augmenting."""
    return dict(transform=pick_transform(transform, num_points, sampling, augment),
                caption_templates=caption_templates, random_caption=augment, skip_bad=skip_bad)


def pick_transform(
    transform: Callable[..., Tensor] | None, num_points: int | None, sampling: str, augment: bool
) -> Callable[..., Tensor]:
    """The given transform, else the SVL training recipe (``augment``) or the evaluation transform."""
    if transform is not None:
        return transform
    return PointCloudTransform(num_points=num_points, sampling=sampling, augment=augment)


class H5PointCloudDataset(PointCloudDataset):
    """Point clouds from one or more h5 files (``data (N, P, 3)``, ``label (N,)`` or ``(N, 1)``), all loaded
    into memory. Unreadable files and samples with non-finite values raise ``ValueError`` naming the file,
    or are skipped and counted (``num_skipped``) with ``skip_bad=True``."""

    def __init__(
        self,
        *,
        files: Sequence[str | Path],
        class_names: Sequence[str],
        transform: Callable[..., Tensor] | None,
        caption_templates: Sequence[str] | None = None,
        random_caption: bool = False,
        skip_bad: bool = False,
        memoize: bool = False,
        data_key: str = "data",
        label_key: str = "label",
    ) -> None:
        super().__init__(
            transform=transform,
            caption_templates=caption_templates,
            random_caption=random_caption,
            skip_bad=skip_bad,
            memoize=memoize,
        )
        self.class_names = list(class_names)
        self.files = [Path(f) for f in files]
        datas, labels, srcs = [], [], []
        skipped = 0
        for f in self.files:
            if not f.is_file():
                raise FileNotFoundError(f"{f}: h5 point-cloud file not found")
            try:
                data, label = read_h5_pointclouds(f, data_key=data_key, label_key=label_key)
                if label.size and (label.min() < 0 or label.max() >= len(self.class_names)):
                    raise bad(f, f"labels outside [0, {len(self.class_names)})")
            except ValueError:
                if not skip_bad:
                    raise
                skipped += 1
                continue
            finite = np.isfinite(data).all(axis=(1, 2))
            if not finite.all():
                if not skip_bad:
                    raise bad(
                        f,
                        f"{int((~finite).sum())} sample(s) with NaN/inf values (first: {int(np.argmin(finite))})",
                    )
                skipped += int((~finite).sum())
                data, label = data[finite], label[finite]
            datas.append(data[..., :3])
            labels.append(label)
            srcs.extend((f, k) for k in np.nonzero(finite)[0].tolist())
        self._pre_skipped = skipped
        self.data = np.concatenate(datas, 0) if datas else np.zeros((0, 1, 3), np.float32)
        self.labels = np.concatenate(labels, 0) if labels else np.zeros((0,), np.int64)
        self._src = srcs
        self._warn_skipped()

    def __len__(self) -> int:
        return len(self.data)

    def source(self, i: int) -> str:
        f, k = self._src[i]
        return f"{f} (sample {k})"

    def _load(self, i: int) -> dict[str, Any]:
        label = int(self.labels[i])
        return {"points": self.data[i], "label": label, "name": self.class_names[label]}


class PointCloudDataModule(SpikelightDataModule):
    """A point-cloud DataModule: batches collated by :func:`collate_dict`, evaluation sets in ``val_set``
    (``{name: dataset}``), zero-shot prompt templates given, read from a ULIP ``templates.json``
    (``templates_file`` / ``templates_key``) or :data:`PROMPT_TEMPLATES`. ``class_names`` are the first
    evaluation set's. Training batches drop the last incomplete batch (unless the set is smaller)."""

    collate_fn = staticmethod(collate_dict)

    def __init__(
        self,
        *,
        batch_size: int = 32,
        num_workers: int = 0,
        pin_memory: bool = False,
        prompt_templates: Sequence[str] | None = None,
        templates_file: str | Path | None = None,
        templates_key: str | None = None,
    ) -> None:
        super().__init__(batch_size=batch_size, num_workers=num_workers, pin_memory=pin_memory, drop_last=True)
        self._prompt_templates = list(prompt_templates) if prompt_templates else None
        self.templates_file = templates_file
        self.templates_key = templates_key

    @property
    def prompt_templates(self) -> list[str]:
        if self._prompt_templates is None:
            if self.templates_file is not None:
                self._prompt_templates = load_templates(self.templates_file, self.templates_key)
            else:
                self._prompt_templates = list(PROMPT_TEMPLATES)
        return self._prompt_templates

    def train_dataloader(self):
        if getattr(self, "with_train", True) is False:
            raise RuntimeError(
                f"{type(self).__name__}(with_train=False) is evaluation-only; set with_train=True to fine-tune"
            )
        return super().train_dataloader()

    @property
    def class_names(self) -> list[str]:
        sets = self.eval_sets()
        return list(sets[0].class_names) if sets else []
