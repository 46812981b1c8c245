"""Synthetic part segmentation from the procedural objects (:mod:`.procedural`): no download.

Every object is a category builder's assembly of primitives; the *part* of a surface point is the builder
statement that placed the primitive it lies on (:func:`~.procedural.part_names`: a chair has legs / seat /
back, a table top / pedestal / base / legs ..., whatever the random proportions). Parts are numbered globally,
category after category (as ShapeNetPart's 50 parts are): :func:`synthetic_part_table`.

Samples follow :mod:`.shapenetpart`'s convention: ``points [N, 6]`` (xyz on the unit sphere + the part's
albedo rgb, or 0.4 with ``rgb=False``), ``normals [N, 3]``, ``part [N]`` (global part id), ``label``
(category index into ``categories``). Object ``k`` of category ``c`` in split ``s`` is drawn from
``numpy.random.default_rng([seed, 7, s, c, k])`` (``c`` = index in :data:`~.procedural.CATEGORIES`); splits are
generated in memory at ``setup`` (about a millisecond per object).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from spikelight.datamodules.base import EvalSet, SpikelightDataModule, collate_dict
from spikelight.datamodules.pointcloud.procedural import CATEGORIES, make_object, part_names, sample_object
from spikelight.datamodules.pointcloud.shapenetpart import PartTable, part_seg_augment

__all__ = [
    "DEFAULT_PART_CATEGORIES", "synthetic_part_table", "generate_part_split", "SyntheticPartsDataset",
    "SyntheticPartsDataModule",
]

#: the procedural categories with more than one part (single-primitive ones are trivial to segment)
DEFAULT_PART_CATEGORIES: tuple[str, ...] = tuple(c for c in CATEGORIES if len(part_names(c)) > 1)


def _check(categories: Sequence[str]) -> list[str]:
    cats = list(categories)
    unknown = [c for c in cats if c not in CATEGORIES]
    if unknown:
        raise ValueError(f"unknown synthetic categories {unknown}; available: {list(CATEGORIES)}")
    if len(set(cats)) != len(cats) or not cats:
        raise ValueError(f"categories must be non-empty and distinct, got {cats}")
    return cats


def synthetic_part_table(categories: Sequence[str] = DEFAULT_PART_CATEGORIES) -> PartTable:
    """The :class:`~.shapenetpart.PartTable` of ``categories``: each category's :func:`~.procedural.part_names`,
    numbered globally in order."""
    cats = _check(categories)
    parts, names, p = [], [], 0
    for c in cats:
        n = part_names(c)
        parts.append(tuple(range(p, p + len(n))))
        names += [f"{c}/{k}: {t}" for k, t in enumerate(n)]
        p += len(n)
    return PartTable(tuple(cats), tuple(parts), tuple(names))


def generate_part_split(categories: Sequence[str], per_class: int, *, split_id: int, seed: int, num_points: int,
                        rgb: bool = True) -> dict[str, np.ndarray]:
    """``per_class`` objects of each category: ``points [S, N, 6]`` float32 (unit sphere), ``normals [S, N, 3]``,
    ``part [S, N]`` int64 (global ids of :func:`synthetic_part_table` ``(categories)``), ``label [S]``."""
    cats = _check(categories)
    table = synthetic_part_table(cats)
    all_names = list(CATEGORIES)
    S = len(cats) * per_class
    points = np.empty((S, num_points, 6), np.float32)
    normals = np.empty((S, num_points, 3), np.float32)
    part = np.empty((S, num_points), np.int64)
    label = np.empty(S, np.int64)
    s = 0
    for li, name in enumerate(cats):
        ci = all_names.index(name)
        for k in range(per_class):
            rng = np.random.default_rng([seed, 7, split_id, ci, k])
            v, f, col, _, ids = make_object(name, rng, with_parts=True)
            xyz, nrm, alb, pid = sample_object(v, f, col, num_points, rng, face_ids=ids.part)
            xyz = xyz - xyz.mean(0)
            xyz /= max(float(np.linalg.norm(xyz, axis=1).max()), 1e-9)
            points[s, :, :3] = xyz
            points[s, :, 3:] = alb if rgb else 0.4
            normals[s], part[s], label[s] = nrm, table.parts[li][0] + pid, li
            s += 1
    return {"points": points, "normals": normals, "part": part, "label": label}


class SyntheticPartsDataset(Dataset):
    """One generated split (arrays of :func:`generate_part_split`); ``augment``: random scale / shift
    (:func:`~.shapenetpart.part_seg_augment`)."""

    def __init__(self, arrays: dict[str, np.ndarray], table: PartTable, *, augment: bool = False) -> None:
        self.arrays, self.table, self.augment = arrays, table, augment
        self.generator: torch.Generator | None = None

    @property
    def class_names(self) -> list[str]:
        return list(self.table.category_names)

    def __len__(self) -> int:
        return len(self.arrays["label"])

    def __getitem__(self, i: int) -> dict[str, Any]:
        pts = torch.from_numpy(self.arrays["points"][i].copy())
        if self.augment:
            pts[:, :3] = part_seg_augment(pts[:, :3], self.generator)
        return {"points": pts, "normals": torch.from_numpy(self.arrays["normals"][i]),
                "part": torch.from_numpy(self.arrays["part"][i]),
                "label": torch.tensor(int(self.arrays["label"][i]), dtype=torch.int64)}


class SyntheticPartsDataModule(SpikelightDataModule):
    """Synthetic part segmentation (the embedded default of part segmentation).

    Args:
        categories: procedural categories (default :data:`DEFAULT_PART_CATEGORIES`, the 20 with more than one
            part); ``part_table`` = :func:`synthetic_part_table` of them.
        num_points: surface samples per object.
        train_per_class, val_per_class, test_per_class: objects per category of each split (test defaults to
            val's size; val and test are different objects).
        rgb: channels 3:6 are the part's albedo (as in the SVL synthetic triplets), else the constant 0.4.
        augment: random scale / shift of the training clouds.
        seed: generation seed.
    """

    collate_fn = staticmethod(collate_dict)

    def __init__(self, *, categories: Sequence[str] | None = None, num_points: int = 1024,
                 train_per_class: int = 64, val_per_class: int = 16, test_per_class: int | None = None,
                 rgb: bool = True, augment: bool = True, seed: int = 0, batch_size: int = 16, num_workers: int = 0,
                 pin_memory: bool = False) -> None:
        super().__init__(batch_size=batch_size, num_workers=num_workers, pin_memory=pin_memory, drop_last=True)
        self.save_hyperparameters(logger=False)
        self.categories = _check(categories if categories is not None else DEFAULT_PART_CATEGORIES)
        self.part_table = synthetic_part_table(self.categories)

    def _split(self, split_id: int, per_class: int, augment: bool) -> SyntheticPartsDataset:
        h = self.hparams
        arrays = generate_part_split(self.categories, per_class, split_id=split_id, seed=h.seed,
                                     num_points=h.num_points, rgb=h.rgb)
        return SyntheticPartsDataset(arrays, self.part_table, augment=augment)

    def setup(self, stage: str | None = None) -> None:
        h = self.hparams
        if stage in (None, "fit") and self.train_set is None:
            self.train_set = self._split(0, h.train_per_class, h.augment)
        if stage in (None, "fit", "validate") and self.val_set is None:
            self.val_set = self._split(1, h.val_per_class, False)
        if stage in (None, "test", "predict") and self.test_set is None:
            per = h.test_per_class if h.test_per_class is not None else h.val_per_class
            self.test_set = self._split(2, per, False)

    def test_dataloader(self):
        return self._loaders(self._data("test_set", "test"))

    @property
    def class_names(self) -> list[str]:
        return list(self.part_table.category_names)

    def eval_sets(self) -> list[EvalSet]:
        return [EvalSet("val", self.class_names)]
