"""ModelNet40 (``normal_resampled`` text or ``ply_hdf5_2048`` h5): dataset and zero-shot / fine-tuning
DataModule."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor

from spikelight.datamodules.pointcloud.base import (
    H5PointCloudDataset,
    PointCloudDataModule,
    PointCloudDataset,
    find_dir_with,
    pick_transform,
)
from spikelight.datamodules.pointcloud.io import bad, read_modelnet_txt_cached, require_dir, require_file
from spikelight.datamodules.pointcloud.labels import humanize, load_labels, read_list_file

__all__ = ["ModelNet40Dataset", "ModelNet40DataModule"]


class ModelNet40Dataset(PointCloudDataset):
    """ModelNet40 in the ``normal_resampled`` text format or the ``ply_hdf5_2048`` h5 format.

    ``format="txt"``: ``root`` is (or contains) ``modelnet40_normal_resampled/`` with
    ``modelnet40_shape_names.txt``, ``modelnet40_{split}.txt`` (ids like ``airplane_0126``) and
    ``<class>/<id>.txt``. ``format="h5"``: ``root`` is (or contains) ``modelnet40_ply_hdf5_2048/`` with
    ``ply_data_{split}*.h5`` and ``shape_names.txt`` (or ``modelnet40_shape_names.txt``).

    Labels are line indices in the shape-names file; ``class_names`` are those names with spaces. Samples
    have ``points [N, 6]`` (normals dropped, rgb = 0.4), ``text`` (a prompt with the class name) and
    ``label``. ``preload=True`` parses every text file at construction (exact ``num_skipped``; keeps the
    raw xyz in memory). ``memoize`` (default: on for deterministic evaluation, i.e. no augmentation and
    ``sampling`` "fps" / "first") keeps each sampled cloud after its first use.
    """

    def __init__(
        self,
        *,
        root: str | Path,
        split: str = "test",
        format: str = "txt",
        num_points: int | None = 1024,
        sampling: str = "fps",
        augment: bool = False,
        transform: Callable[..., Tensor] | None = None,
        caption_templates: Sequence[str] | None = None,
        preload: bool = False,
        skip_bad: bool = False,
        memoize: bool | None = None,
        cache_dir: str | Path | None = None,
    ) -> None:
        if memoize is None:
            memoize = transform is None and not augment and sampling != "random"
        self.cache_dir = cache_dir
        super().__init__(
            memoize=memoize if format == "txt" else False,
            transform=pick_transform(transform, num_points, sampling, augment),
            caption_templates=caption_templates,
            random_caption=augment,
            skip_bad=skip_bad,
        )
        if format not in ("txt", "h5"):
            raise ValueError(f"ModelNet40Dataset: format must be 'txt' or 'h5', got {format!r}")
        self.format = format
        self.split = split
        root = require_dir(root, "the ModelNet40 data directory")
        if format == "txt":
            d = find_dir_with(root, "modelnet40_shape_names.txt", ["modelnet40_normal_resampled"])
            if d is None:
                raise FileNotFoundError(
                    f"{root}: no modelnet40_shape_names.txt here or in modelnet40_normal_resampled/ "
                    "(expected the ModelNet40 normal_resampled release)"
                )
            self.root = d
            self.shape_names = read_list_file(d / "modelnet40_shape_names.txt")
            list_file = require_file(d / f"modelnet40_{split}.txt", f"the {split} id list (one id per line)")
            ids = read_list_file(list_file)
            index = {n: i for i, n in enumerate(self.shape_names)}
            self.items: list[tuple[Path, int]] = []
            for sid in ids:
                cls = sid.rsplit("_", 1)[0]
                if cls not in index:
                    raise bad(list_file, f"id {sid!r} has class {cls!r} not in modelnet40_shape_names.txt")
                f = d / cls / f"{sid}.txt"
                if not f.is_file():
                    raise FileNotFoundError(f"{f}: point file listed in {list_file.name} not found")
                self.items.append((f, index[cls]))
            self._cache: dict[int, np.ndarray] | None = None
            if preload:
                self.validate()
        else:
            d = None
            for cand in [root, root / "modelnet40_ply_hdf5_2048"]:
                if sorted(cand.glob(f"ply_data_{split}*.h5")):
                    d = cand
                    break
            if d is None:
                raise FileNotFoundError(
                    f"{root}: no ply_data_{split}*.h5 here or in modelnet40_ply_hdf5_2048/ "
                    "(expected the ModelNet40 ply_hdf5_2048 release)"
                )
            self.root = d
            names_file = d / "shape_names.txt"
            if not names_file.is_file():
                names_file = d / "modelnet40_shape_names.txt"
            self.shape_names = read_list_file(require_file(names_file, "40 class names, one per line"))
            self._h5 = H5PointCloudDataset(
                files=sorted(d.glob(f"ply_data_{split}*.h5")),
                class_names=[humanize(n) for n in self.shape_names],
                transform=self.transform,
                caption_templates=self.caption_templates,
                random_caption=augment,
                skip_bad=skip_bad,
                memoize=memoize,
            )
        self.class_names = [humanize(n) for n in self.shape_names]

    @property
    def num_skipped(self) -> int:
        if self.format == "h5":
            return self._h5.num_skipped
        return super().num_skipped

    def __len__(self) -> int:
        return len(self._h5) if self.format == "h5" else len(self.items)

    def source(self, i: int) -> str:
        return self._h5.source(i) if self.format == "h5" else str(self.items[i][0])

    def _load(self, i: int) -> dict[str, Any]:
        if self.format == "h5":
            return self._h5._load(i)
        f, label = self.items[i]
        if self._cache is not None and i in self._cache:
            pts = self._cache[i]
        else:
            pts = read_modelnet_txt_cached(f, self.cache_dir)[:, :3]
        return {"points": pts, "label": label, "name": self.class_names[label]}

    def validate(self) -> int:
        if self.format == "h5":
            return self._h5.num_skipped
        cache: dict[int, np.ndarray] = {}
        good: list[tuple[Path, int]] = []
        from tqdm.auto import tqdm

        for f, label in tqdm(
            self.items, desc=f"ModelNet40 {self.split}", leave=False, disable=len(self.items) < 200
        ):
            try:
                pts = read_modelnet_txt_cached(f, self.cache_dir)[:, :3]
            except ValueError:
                if not self.skip_bad:
                    raise
                self._pre_skipped = getattr(self, "_pre_skipped", 0) + 1
                continue
            cache[len(good)] = pts
            good.append((f, label))
        self.items = good
        self._cache = cache
        self._warn_skipped()
        return self.num_skipped

    def __getitem__(self, i: int) -> dict[str, Any]:
        if self.format == "h5":
            return self._h5[i]
        return super().__getitem__(i)


class ModelNet40DataModule(PointCloudDataModule):
    """ModelNet40 zero-shot evaluation (val = test = the test split) and optional fine-tuning
    (``with_train=True``: the train split with SVL augmentation).

    ``labels_file`` (ULIP ``labels.json``, key ``labels_key``) overrides the class names taken from the
    shape-names file; ``templates_file`` (ULIP ``templates.json``, key ``templates_key``) overrides
    :data:`PROMPT_TEMPLATES`. ``class_names`` / ``eval_sets()`` read the names file lazily, so building the
    module does not need the data. ``cache_dir`` (e.g. ``~/.cache/spikelight/modelnet40``) stores each parsed
    text file as ``.npy`` on first read, so later epochs and runs are not parse-bound (txt format only).
    """

    def __init__(
        self,
        *,
        data_dir: str | Path,
        format: str = "txt",
        num_points: int = 1024,
        sampling: str = "fps",
        with_train: bool = False,
        augment: bool = True,
        preload: bool = False,
        skip_bad: bool = False,
        cache_dir: str | None = None,
        labels_file: str | Path | None = None,
        labels_key: str | None = "modelnet40",
        templates_key: str | None = "modelnet40_64",
        **kwargs: Any,
    ) -> None:
        """``**kwargs``: :class:`PointCloudDataModule` (batch size, workers, prompt templates)."""
        super().__init__(templates_key=templates_key, **kwargs)
        self.save_hyperparameters(logger=False)
        self.data_dir, self.format, self.num_points, self.sampling = data_dir, format, num_points, sampling
        self.with_train, self.augment, self.preload, self.skip_bad = with_train, augment, preload, skip_bad
        self.labels_file, self.labels_key = labels_file, labels_key
        self.cache_dir = cache_dir

    def _apply_labels(self, ds: ModelNet40Dataset) -> None:
        if self.labels_file is not None:
            names = load_labels(self.labels_file, self.labels_key)
            if len(names) != len(ds.class_names):
                raise ValueError(
                    f"{self.labels_file}: {len(names)} labels but the dataset has {len(ds.class_names)} classes"
                )
            ds.class_names = names

    def setup(self, stage: str | None = None) -> None:
        if self.val_set is None:
            ds = ModelNet40Dataset(
                root=self.data_dir, split="test", format=self.format, num_points=self.num_points,
                sampling=self.sampling, caption_templates=self.prompt_templates, preload=self.preload,
                skip_bad=self.skip_bad, cache_dir=self.cache_dir,
            )  # fmt: skip
            self._apply_labels(ds)
            self.val_set = {"modelnet40": ds}
        if self.with_train and self.train_set is None and stage in (None, "fit"):
            ds = ModelNet40Dataset(
                root=self.data_dir, split="train", format=self.format, num_points=self.num_points,
                sampling="random" if self.augment else self.sampling, augment=self.augment,
                caption_templates=self.prompt_templates, preload=self.preload, skip_bad=self.skip_bad,
                cache_dir=self.cache_dir,
            )  # fmt: skip
            self._apply_labels(ds)
            self.train_set = ds
