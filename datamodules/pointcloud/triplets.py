"""What the pretraining-triplet DataModules share: training data from one root, zero-shot evaluation sets
from other datasets' roots (ModelNet40, ScanObjectNN)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from spikelight.datamodules.pointcloud.base import PointCloudDataModule
from spikelight.datamodules.pointcloud.modelnet40 import ModelNet40Dataset
from spikelight.datamodules.pointcloud.scanobjectnn import ScanObjectNNDataset

__all__ = ["TripletDataModule"]


class TripletDataModule(PointCloudDataModule):
    """Triplets (``points``, ``text`` and ``image`` or precomputed CLIP features) for SVL pretraining.

    Validation: zero-shot sets from other datasets' roots (``zero_shot_modelnet40``,
    ``zero_shot_scanobjectnn``), in that order (:meth:`zero_shot_sets`), with ``eval_num_points`` points
    (default ``num_points``). ``**kwargs``: :class:`PointCloudDataModule` (batch size, workers, templates).
    """

    def __init__(
        self,
        *,
        data_dir: str | Path,
        train_split: str = "train",
        num_points: int = 10000,
        eval_num_points: int | None = None,
        augment: bool = True,
        zero_shot_modelnet40: str | Path | None = None,
        zero_shot_modelnet40_format: str = "txt",
        zero_shot_scanobjectnn: str | Path | None = None,
        zero_shot_scanobjectnn_variant: str = "hardest",
        skip_bad: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.save_hyperparameters(logger=False)
        self.data_dir, self.train_split, self.augment, self.skip_bad = data_dir, train_split, augment, skip_bad
        self.num_points, self.eval_num_points = num_points, eval_num_points or num_points
        self.zero_shot_modelnet40, self.zero_shot_modelnet40_format = zero_shot_modelnet40, zero_shot_modelnet40_format
        self.zero_shot_scanobjectnn = zero_shot_scanobjectnn
        self.zero_shot_scanobjectnn_variant = zero_shot_scanobjectnn_variant

    def zero_shot_sets(self) -> dict[str, Dataset]:
        """``{"modelnet40": ..., "scanobjectnn": ...}`` test splits of the roots that are set."""
        out: dict[str, Dataset] = {}
        kw = dict(split="test", num_points=self.eval_num_points, caption_templates=self.prompt_templates,
                  skip_bad=self.skip_bad)
        if self.zero_shot_modelnet40 is not None:
            out["modelnet40"] = ModelNet40Dataset(root=self.zero_shot_modelnet40,
                                                  format=self.zero_shot_modelnet40_format, **kw)
        if self.zero_shot_scanobjectnn is not None:
            out["scanobjectnn"] = ScanObjectNNDataset(root=self.zero_shot_scanobjectnn,
                                                      variant=self.zero_shot_scanobjectnn_variant, **kw)
        return out
