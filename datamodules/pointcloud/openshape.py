"""OpenShape-style triplets with precomputed CLIP features: dataset and pretraining DataModule.

Shape records are read without unpickling (:func:`~spikelight.datamodules.pointcloud.io.read_shape_record`):
a pickled ``<uid>.npy`` record is refused with an error naming the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from spikelight.datamodules.pointcloud.base import PointCloudDataset, recipe
from spikelight.datamodules.pointcloud.io import bad, check_finite, read_shape_record, require_dir
from spikelight.datamodules.pointcloud.labels import humanize, read_list_file
from spikelight.datamodules.pointcloud.triplets import TripletDataModule

__all__ = ["OpenShapeTripletDataset", "OpenShapeTripletDataModule"]


class OpenShapeTripletDataset(PointCloudDataset):
    """OpenShape-style triplets with precomputed CLIP features.

    Layout::

        <root>/<split>.txt          one uid per line (may contain sub folders, e.g. "objaverse/000-001/abc");
                                    if absent and split == "all": every *.npy / *.npz under <root>
        <root>/<uid>.npz            named arrays (np.savez; never unpickled, see read_shape_record) with keys:
            xyz         float [M, 3]                     (required)
            rgb         float [M, 3] in [0, 1] or 0-255  (optional; 0.4 when absent)
            image_feat  float [D] or [V, D]              (required; one row per rendered view)
            text_feat   float [D] or [K, D]              (required; one row per caption)
            text        str or list[str] of K captions   (optional; else a template with `name`)
            name        str class / object name          (optional)
            label       int                              (optional; -1 when absent)
        <root>/class_names.txt      (optional) names for `label`

    In training (``augment=True``) a random view row of ``image_feat`` and a random caption row of
    ``text_feat`` (with the matching ``text``) are used; otherwise row 0. All feature rows must have the
    same ``D`` within a dataset (checked per sample against the first one loaded).
    """

    def __init__(
        self,
        *,
        root: str | Path,
        split: str = "train",
        num_points: int | None = 10000,
        sampling: str = "random",
        augment: bool = True,
        **kwargs: Any,
    ) -> None:
        """``**kwargs``: ``transform``, ``caption_templates``, ``skip_bad`` (see :func:`recipe`)."""
        super().__init__(**recipe(num_points=num_points, sampling=sampling, augment=augment, **kwargs))
        root = require_dir(
            root, "an OpenShape-style triplet directory (<uid>.npy / <uid>.npz + <split>.txt)"
        )
        self.root, self.split, self.augment = root, split, augment
        list_file = root / f"{split}.txt"
        if list_file.is_file():
            uids = read_list_file(list_file)
        elif split == "all":
            uids = sorted(str(p.relative_to(root).with_suffix("")) for p in root.rglob("*.np[yz]"))
        else:
            raise FileNotFoundError(
                f"{list_file}: split list not found (one uid per line; or use split='all')"
            )
        self.items: list[Path] = []
        for uid in uids:
            f = next(
                (root / f"{uid}{ext}" for ext in (".npy", ".npz") if (root / f"{uid}{ext}").is_file()), None
            )
            if f is None:
                raise FileNotFoundError(
                    f"{root / uid}.npy: shape record listed in {list_file.name} not found"
                )
            self.items.append(f)
        names = root / "class_names.txt"
        self.class_names = [humanize(n) for n in read_list_file(names)] if names.is_file() else []
        self.feat_dim: int | None = None

    def __len__(self) -> int:
        return len(self.items)

    def _pick_row(self, arr: Any, what: str, f: Path) -> tuple[np.ndarray, int]:
        a = np.asarray(arr, dtype=np.float32)
        if a.ndim == 1:
            a = a[None]
        if a.ndim != 2 or a.shape[0] == 0:
            raise bad(f, f"{what!r} must be (D,) or (K, D), got {np.shape(arr)}")
        check_finite(a, f, what)
        if self.feat_dim is None:
            self.feat_dim = a.shape[1]
        elif a.shape[1] != self.feat_dim:
            raise bad(f, f"{what!r} has dim {a.shape[1]}, expected {self.feat_dim} like the other shapes")
        k = int(torch.randint(a.shape[0], (1,), generator=self.generator)) if self.augment else 0
        return a[k], k

    def source(self, i: int) -> str:
        return str(self.items[i])

    def _load(self, i: int) -> dict[str, Any]:
        f = self.items[i]
        d = read_shape_record(f)
        check_finite(d["xyz"], f, "xyz")
        for k in ("image_feat", "text_feat"):
            if d.get(k) is None:
                raise bad(f, f"missing {k!r}")
        img, _ = self._pick_row(d["image_feat"], "image_feat", f)
        txt, k = self._pick_row(d["text_feat"], "text_feat", f)
        text = d.get("text")
        if isinstance(text, np.ndarray):
            text = text.tolist()
        if isinstance(text, list | tuple):
            text = str(text[k]) if k < len(text) else str(text[0])
        pts = d["xyz"] if d.get("rgb") is None else np.concatenate([d["xyz"], d["rgb"]], 1)
        label = int(d["label"]) if d.get("label") is not None else -1
        name = (
            str(d["name"])
            if d.get("name") is not None
            else (self.class_names[label] if 0 <= label < len(self.class_names) else "object")
        )
        return {
            "points": pts,
            "label": label,
            "name": name,
            "text": text,
            "image_feat": img,
            "text_feat": txt,
        }


class OpenShapeTripletDataModule(TripletDataModule):
    """OpenShape-style triplets with precomputed CLIP features (``points``, ``text``, ``label``,
    ``image_feat``, ``text_feat``); layout in :class:`OpenShapeTripletDataset`. Validation: zero-shot sets
    from other roots (``zero_shot_modelnet40``, ``zero_shot_scanobjectnn``)."""

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None and stage in (None, "fit"):
            self.train_set = OpenShapeTripletDataset(
                root=self.data_dir, split=self.train_split, num_points=self.num_points, augment=self.augment,
                caption_templates=self.prompt_templates, skip_bad=self.skip_bad,
            )  # fmt: skip
        if self.val_set is None:
            self.val_set = self.zero_shot_sets()
