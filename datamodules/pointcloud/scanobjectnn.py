"""ScanObjectNN (h5, 15 classes): dataset and zero-shot / fine-tuning DataModule."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from torch import Tensor

from spikelight.datamodules.pointcloud.base import H5PointCloudDataset, PointCloudDataModule, pick_transform
from spikelight.datamodules.pointcloud.io import require_dir
from spikelight.datamodules.pointcloud.labels import SCANOBJECTNN_CLASSES

__all__ = ["ScanObjectNNDataset", "ScanObjectNNDataModule"]

_SCANOBJECTNN_VARIANTS = {
    # name: (sub folder, file stem)  -> <sub>/{training,test}_<stem>.h5
    "hardest": ("main_split", "objectdataset_augmentedrot_scale75"),  # PB_T50_RS
    "obj_bg": ("main_split", "objectdataset"),
    "obj_only": ("main_split_nobg", "objectdataset"),
}


class ScanObjectNNDataset(H5PointCloudDataset):
    """ScanObjectNN h5 files (``data (N, 2048, 3)``, ``label (N,)``), 15 classes.

    ``root`` holds ``<sub>/{training,test}_<stem>.h5`` (or the file directly); ``variant`` picks the
    standard file: ``"hardest"`` (PB_T50_RS, ``main_split/*_objectdataset_augmentedrot_scale75.h5``),
    ``"obj_bg"`` (``main_split/*_objectdataset.h5``) or ``"obj_only"`` (``main_split_nobg/...``). ``file``
    overrides the search with an explicit path.
    """

    def __init__(
        self,
        *,
        root: str | Path,
        split: str = "test",
        variant: str = "hardest",
        file: str | Path | None = None,
        num_points: int | None = 1024,
        sampling: str = "fps",
        augment: bool = False,
        transform: Callable[..., Tensor] | None = None,
        caption_templates: Sequence[str] | None = None,
        class_names: Sequence[str] | None = None,
        skip_bad: bool = False,
        memoize: bool | None = None,
    ) -> None:
        if memoize is None:
            memoize = transform is None and not augment and sampling != "random"
        if file is None:
            root = require_dir(root, "the ScanObjectNN h5_files directory")
            if variant not in _SCANOBJECTNN_VARIANTS:
                raise ValueError(
                    f"unknown ScanObjectNN variant {variant!r}; choose from {sorted(_SCANOBJECTNN_VARIANTS)}"
                )
            sub, stem = _SCANOBJECTNN_VARIANTS[variant]
            name = f"{'training' if split == 'train' else 'test'}_{stem}.h5"
            cands = [root / sub / name, root / "h5_files" / sub / name, root / name]
            file = next((c for c in cands if c.is_file()), None)
            if file is None:
                raise FileNotFoundError(
                    f"{cands[0]}: ScanObjectNN file not found (also looked for {cands[1]}, {cands[2]})"
                )
        transform = pick_transform(transform, num_points, sampling, augment)
        super().__init__(
            files=[file],
            class_names=list(class_names) if class_names else list(SCANOBJECTNN_CLASSES),
            transform=transform,
            caption_templates=caption_templates,
            random_caption=augment,
            skip_bad=skip_bad,
            memoize=memoize,
        )
        self.split = split


class ScanObjectNNDataModule(PointCloudDataModule):
    """ScanObjectNN (15 classes) zero-shot evaluation (val = test split) and optional fine-tuning."""

    def __init__(
        self,
        *,
        data_dir: str | Path,
        variant: str = "hardest",
        train_file: str | Path | None = None,
        test_file: str | Path | None = None,
        num_points: int = 1024,
        sampling: str = "fps",
        with_train: bool = False,
        augment: bool = True,
        skip_bad: bool = False,
        **kwargs: Any,
    ) -> None:
        """``**kwargs``: :class:`PointCloudDataModule` (batch size, workers, prompt templates)."""
        super().__init__(**kwargs)
        self.save_hyperparameters(logger=False)
        self.data_dir, self.variant, self.train_file, self.test_file = data_dir, variant, train_file, test_file
        self.num_points, self.sampling, self.with_train, self.augment = num_points, sampling, with_train, augment
        self.skip_bad = skip_bad

    def setup(self, stage: str | None = None) -> None:
        if self.val_set is None:
            ds = ScanObjectNNDataset(
                root=self.data_dir, split="test", variant=self.variant, file=self.test_file,
                num_points=self.num_points, sampling=self.sampling, caption_templates=self.prompt_templates,
                skip_bad=self.skip_bad,
            )  # fmt: skip
            self.val_set = {"scanobjectnn": ds}
        if self.with_train and self.train_set is None and stage in (None, "fit"):
            self.train_set = ScanObjectNNDataset(
                root=self.data_dir, split="train", variant=self.variant, file=self.train_file,
                num_points=self.num_points, sampling="random" if self.augment else self.sampling,
                augment=self.augment, caption_templates=self.prompt_templates, skip_bad=self.skip_bad,
            )  # fmt: skip

    @property
    def class_names(self) -> list[str]:  # known without reading data
        return list(SCANOBJECTNN_CLASSES)
