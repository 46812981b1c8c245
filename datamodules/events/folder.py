"""Event recordings in class folders, any supported file format: dataset and DataModule.

Layout (e.g. DVS Action, N-CARS, N-MNIST or your own recordings)::

    <data_dir>/<split>/<class name>/<recording>.<npy | bin | dat | aedat4 | aedat>

Each file is read by the reader of its suffix (:func:`spikelight.datamodules.events.io.read_events`; ``.npy``
is tonic's preprocessed (N, 4) x, y, p, t[ms] layout), checked against ``sensor_size`` and turned into frames
or event points by the DataModule's :class:`~spikelight.datamodules.events.transforms.EventRepresentation`.
Labels index ``class_names`` (default: the sorted class folder names of the training split). Nothing is
downloaded; a missing folder raises ``FileNotFoundError`` naming it, a bad file a
:class:`~spikelight.datamodules.base.DataError` naming the file when it is read.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from torch.utils.data import Dataset

from spikelight.datamodules.base import DataError
from spikelight.datamodules.events.base import EventDataModule
from spikelight.datamodules.events.io import PathLike, SensorSize, read_dvsgesture_npy, read_events
from spikelight.datamodules.events.transforms import sample_rng

__all__ = ["EVENT_SUFFIXES", "EventFolderDataset", "EventFolderDataModule"]

#: file suffixes read by :func:`~spikelight.datamodules.events.io.read_events`
EVENT_SUFFIXES = (".npy", ".bin", ".dat", ".aedat4", ".aedat")


def _class_dirs(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


class EventFolderDataset(Dataset):
    """Recordings under ``root/<class>/<file>`` (see the module docstring).

    Args:
        root: the split folder holding one sub-folder per class.
        class_names: class folder names in label order; default: the sorted sub-folders of ``root``.
            Folders not listed are ignored; a listed class without a folder has no samples.
        sensor_size: ``(W, H, P)``; every event must lie inside ``W x H``.
        transform: an :class:`EventRepresentation` (or any ``(events, rng) -> dict``); ``None``: items are
            ``{"raw": events, "label": int}``.
        train: random sampling in the transform (training) or fixed by ``(seed, index)`` (evaluation).
        seed: evaluation sampling seed.
    """

    def __init__(self, *, root: PathLike, sensor_size: SensorSize, class_names: Optional[Sequence[str]] = None,
                 transform: Optional[Callable] = None, train: bool = False, seed: int = 0) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"event folder not found: '{self.root}' (expected <split>/<class>/<recording>"
                                    f" with suffixes {', '.join(EVENT_SUFFIXES)})")
        self.sensor_size = tuple(int(s) for s in sensor_size)
        self.class_names = list(class_names) if class_names is not None else [p.name for p in _class_dirs(self.root)]
        if not self.class_names:
            raise FileNotFoundError(f"no class folders under '{self.root}' (expected <class>/<recording> files)")
        self.transform, self.train, self.seed = transform, bool(train), int(seed)
        self.files: list[Path] = []
        self.labels: list[int] = []
        for label, name in enumerate(self.class_names):
            d = self.root / name
            if not d.is_dir():
                continue
            for f in sorted(d.iterdir()):
                if f.is_file() and f.suffix.lower() in EVENT_SUFFIXES:
                    self.files.append(f)
                    self.labels.append(label)
        if not self.files:
            raise FileNotFoundError(f"no event recordings ({', '.join(EVENT_SUFFIXES)}) in the class folders of "
                                    f"'{self.root}' (classes: {self.class_names[:8]})")

    def __len__(self) -> int:
        return len(self.files)

    def load(self, index: int) -> np.ndarray:
        """Events of recording ``index`` (:data:`EVENT_DTYPE`, t in us), checked against ``sensor_size``."""
        f = self.files[index]
        if f.suffix.lower() == ".npy":
            return read_dvsgesture_npy(f, sensor_size=self.sensor_size)
        ev = read_events(f)
        W, H = self.sensor_size[0], self.sensor_size[1]
        if int(ev["x"].max()) >= W or int(ev["y"].max()) >= H or int(ev["x"].min()) < 0 or int(ev["y"].min()) < 0:
            raise DataError(f, f"events reach x {int(ev['x'].max())}, y {int(ev['y'].max())}: outside the "
                               f"configured sensor_size {W}x{H}")
        return ev

    def __getitem__(self, index: int) -> dict[str, Any]:
        try:
            ev = self.load(index)
            if self.transform is None:
                return {"raw": ev, "label": self.labels[index]}
            item = dict(self.transform(ev, sample_rng(self.train, self.seed, index)))
        except DataError:
            raise
        except ValueError as e:
            raise DataError(self.files[index], str(e)) from e
        item["label"] = torch.tensor(self.labels[index], dtype=torch.int64)
        return item


class EventFolderDataModule(EventDataModule):
    """Event recordings in ``<data_dir>/<split>/<class>/`` folders (any supported format; see the module
    docstring); frames or points like :class:`~spikelight.datamodules.events.DVSGestureDataModule`.

    Args:
        data_dir: the folder holding the split folders.
        sensor_size: ``(W, H, P)`` of the recordings (e.g. DAVIS346 ``(346, 260, 2)``).
        train_split, val_split: split folder names (val = test).
        class_names: class folder names in label order; default: the sorted folders of the training split
            (of ``val_split`` when only evaluating).
        seed: evaluation sampling seed.
        **kwargs: the representation and loaders (:class:`EventDataModule`).
    """

    def __init__(self, *, data_dir: str, sensor_size: Sequence[int], train_split: str = "train",
                 val_split: str = "test", class_names: Optional[list[str]] = None, seed: int = 0,
                 **kwargs: Any) -> None:
        super().__init__(sensor_size=sensor_size, **kwargs)
        self.save_hyperparameters()
        self.data_dir = Path(data_dir)
        self.train_split, self.val_split, self.seed = train_split, val_split, int(seed)
        self._class_names = list(class_names) if class_names is not None else None

    @property
    def class_names(self) -> list[str]:
        """Class names in label order (the class folders of the training split unless given)."""
        if self._class_names is None:
            for split in (self.train_split, self.val_split):
                d = self.data_dir / split
                if d.is_dir() and _class_dirs(d):
                    self._class_names = [p.name for p in _class_dirs(d)]
                    break
            else:
                raise FileNotFoundError(f"no class folders under '{self.data_dir / self.train_split}' or "
                                        f"'{self.data_dir / self.val_split}'")
        return list(self._class_names)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def setup(self, stage: Optional[str] = None) -> None:
        kw = dict(sensor_size=self.sensor_size, class_names=self.class_names, seed=self.seed)
        if stage in (None, "fit") and self.train_set is None:
            self.train_set = EventFolderDataset(root=self.data_dir / self.train_split, transform=self.train_transform,
                                                train=True, **kw)
        if self.val_set is None:
            self.val_set = EventFolderDataset(root=self.data_dir / self.val_split, transform=self.eval_transform,
                                              train=False, **kw)
        self.test_set = self.val_set
