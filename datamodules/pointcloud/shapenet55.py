"""ULIP ShapeNet-55 triplets (point cloud + rendered view + caption): dataset and pretraining DataModule."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from spikelight.datamodules.pointcloud.base import PointCloudDataset, recipe
from spikelight.datamodules.pointcloud.io import bad, load_image, read_npy_points, require_dir, require_file
from spikelight.datamodules.pointcloud.labels import humanize, load_shapenet_taxonomy, read_list_file
from spikelight.datamodules.pointcloud.triplets import TripletDataModule

__all__ = ["ShapeNet55TripletDataset", "ShapeNet55TripletDataModule"]


class ShapeNet55TripletDataset(PointCloudDataset):
    """ULIP ShapeNet-55 triplets: point cloud + one rendered view + caption.

    Layout (ULIP)::

        <root>/shapenet_pc/<synset>-<model>.npy      (8192, 3) or (8192, 6) float ("shapenet_pc/" optional)
        <root>/rendered_images/<synset>-<model>_r_<deg>[_depth0001].png
               (or rendered_images/<synset>-<model>/<...>_r_<deg>*.png; "rendered_images/" = image_dir)
        <root>/taxonomy.json                        list of {"synsetId", "name"} (or shapenet_synset_dict.json)
        <root>/ShapeNet-55/{train,test}.txt         lines "<synset>-<model>.npy"
               (or <root>/ShapeNet-55_{split}.txt, <root>/{split}.txt; or split_file=)

    Labels index the sorted synset ids of the taxonomy; ``class_names`` are the first synonyms. In
    training (``augment=True``) a random view, a random synonym and a random caption template are used;
    otherwise view 0 (sorted by degree), the first synonym and the first template. ``with_images=False``
    drops the ``image`` key (e.g. for zero-shot evaluation on ShapeNet-55).
    """

    def __init__(
        self,
        *,
        root: str | Path,
        split: str = "train",
        split_file: str | Path | None = None,
        pc_dir: str | Path | None = None,
        image_dir: str | Path | None = None,
        taxonomy_file: str | Path | None = None,
        with_images: bool = True,
        image_size: int = 224,
        num_points: int | None = 8192,
        sampling: str = "random",
        augment: bool = True,
        **kwargs: Any,
    ) -> None:
        """``**kwargs``: ``transform``, ``caption_templates``, ``skip_bad`` (see :func:`recipe`)."""
        super().__init__(**recipe(num_points=num_points, sampling=sampling, augment=augment, **kwargs))
        root = require_dir(root, "the ULIP ShapeNet-55 directory (shapenet_pc/, rendered_images/, taxonomy)")
        self.root, self.split, self.augment, self.image_size = root, split, augment, image_size
        # split list
        if split_file is None:
            cands = [
                root / "ShapeNet-55" / f"{split}.txt",
                root / f"ShapeNet-55_{split}.txt",
                root / f"{split}.txt",
            ]
            split_file = next((c for c in cands if c.is_file()), None)
            if split_file is None:
                raise FileNotFoundError(
                    f"{cands[0]}: ShapeNet-55 split list not found (also tried {cands[1].name}, {cands[2].name})"
                )
        split_file = require_file(split_file, "lines '<synset>-<model>.npy'")
        # taxonomy
        if taxonomy_file is None:
            cands = [
                root / "taxonomy.json",
                root / "shapenet_synset_dict.json",
                root / "ShapeNet-55" / "taxonomy.json",
            ]
            taxonomy_file = next((c for c in cands if c.is_file()), None)
            if taxonomy_file is None:
                raise FileNotFoundError(f"{cands[0]}: ShapeNet taxonomy not found (or {cands[1].name})")
        tax = load_shapenet_taxonomy(taxonomy_file)
        self.synsets = sorted(tax)
        self.synonyms = [[humanize(s) for s in tax[k].split(",") if s.strip()] for k in self.synsets]
        self.class_names = [syn[0] for syn in self.synonyms]
        syn_index = {s: i for i, s in enumerate(self.synsets)}
        self.pc_dir = (
            Path(pc_dir) if pc_dir else (root / "shapenet_pc" if (root / "shapenet_pc").is_dir() else root)
        )
        require_dir(self.pc_dir, "ShapeNet-55 point files <synset>-<model>.npy")
        self.with_images = with_images
        self.image_dir = Path(image_dir) if image_dir else root / "rendered_images"
        views: dict[str, list[Path]] = {}
        if with_images:
            require_dir(self.image_dir, "rendered views <synset>-<model>_r_<deg>.png")
            pat = re.compile(r"^(\d+-[0-9A-Za-z]+)_r_(\d+)")
            for f in sorted(self.image_dir.rglob("*_r_*.png")):
                m = pat.match(f.name)
                if m:
                    views.setdefault(m.group(1), []).append((int(m.group(2)), f))
            views = {k: [f for _, f in sorted(v)] for k, v in views.items()}
        self.items: list[tuple[Path, int, list[Path]]] = []
        skipped = 0
        for line in read_list_file(split_file):
            sid = line[:-4] if line.endswith(".npy") else line
            synset = sid.split("-", 1)[0]
            if synset not in syn_index:
                raise bad(split_file, f"synset {synset!r} of {line!r} not in the taxonomy")
            f = self.pc_dir / f"{sid}.npy"
            v = views.get(sid, [])
            problem = None
            if not f.is_file():
                problem = FileNotFoundError(f"{f}: point file listed in {split_file.name} not found")
            elif with_images and not v:
                problem = FileNotFoundError(
                    f"{self.image_dir}: no rendered view {sid}_r_<deg>*.png for {sid}"
                )
            if problem is not None:
                if not self.skip_bad:
                    raise problem
                skipped += 1
                continue
            self.items.append((f, syn_index[synset], v))
        self._pre_skipped = skipped
        self._warn_skipped()

    def __len__(self) -> int:
        return len(self.items)

    def source(self, i: int) -> str:
        return str(self.items[i][0])

    def _load(self, i: int) -> dict[str, Any]:
        f, label, views = self.items[i]
        pts = read_npy_points(f)
        syn = self.synonyms[label]
        if self.augment:
            name = syn[int(torch.randint(len(syn), (1,), generator=self.generator))]
        else:
            name = syn[0]
        out: dict[str, Any] = {"points": pts, "label": label, "name": name}
        if self.with_images:
            k = int(torch.randint(len(views), (1,), generator=self.generator)) if self.augment else 0
            out["image"] = load_image(views[k], self.image_size)
        return out


class ShapeNet55TripletDataModule(TripletDataModule):
    """ULIP ShapeNet-55 pretraining triplets (``points``, ``image``, ``text``, ``label``).

    Validation: zero-shot sets from other datasets' roots (``zero_shot_modelnet40``,
    ``zero_shot_scanobjectnn``) in that order, then (``val_split``, e.g. ``"test"``) ShapeNet-55's own
    split as a 55-way zero-shot set without images. ``eval_sets()`` lists them in ``val_dataloader()`` order.
    """

    def __init__(
        self,
        *,
        data_dir: str | Path,
        val_split: str | None = None,
        taxonomy_file: str | Path | None = None,
        image_dir: str | Path | None = None,
        image_size: int = 224,
        num_points: int = 8192,
        caption_templates: Sequence[str] | None = None,
        **kwargs: Any,
    ) -> None:
        """``**kwargs``: :class:`TripletDataModule` (train split, zero-shot roots, batch size, templates)."""
        super().__init__(data_dir=data_dir, num_points=num_points, **kwargs)
        self.val_split, self.taxonomy_file, self.image_dir, self.image_size = val_split, taxonomy_file, image_dir, image_size
        self.caption_templates = caption_templates

    def setup(self, stage: str | None = None) -> None:
        kw = dict(root=self.data_dir, taxonomy_file=self.taxonomy_file, skip_bad=self.skip_bad)
        if self.train_set is None and stage in (None, "fit"):
            self.train_set = ShapeNet55TripletDataset(
                split=self.train_split, image_dir=self.image_dir, image_size=self.image_size,
                num_points=self.num_points, augment=self.augment,
                caption_templates=self.caption_templates or self.prompt_templates, **kw,
            )  # fmt: skip
        if self.val_set is None:
            sets = self.zero_shot_sets()
            if self.val_split:
                sets["shapenet55"] = ShapeNet55TripletDataset(
                    split=self.val_split, with_images=False, num_points=self.eval_num_points, sampling="fps",
                    augment=False, caption_templates=self.prompt_templates, **kw,
                )  # fmt: skip
            self.val_set = sets
