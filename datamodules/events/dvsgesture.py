"""DVS128 Gesture (11 classes, 128x128) in tonic's preprocessed folder layout: dataset and DataModule.

It never downloads: missing files raise ``FileNotFoundError`` in ``setup()`` naming the path.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from torch.utils.data import Dataset

from spikelight.datamodules.base import DataError
from spikelight.datamodules.events.base import EventDataModule
from spikelight.datamodules.events.io import (
    DVSGESTURE_CLASSES,
    DVSGESTURE_SENSOR_SIZE,
    PathLike,
    SensorSize,
    read_dvsgesture_npy,
)
from spikelight.datamodules.events.transforms import sample_rng

__all__ = ["DVSGESTURE_LAYOUT", "find_dvsgesture_root", "DVSGestureDataset", "DVSGestureDataModule"]

DVSGESTURE_LAYOUT = (
    "Expected tonic's preprocessed DVS128 Gesture layout (it is never downloaded here):\n"
    "  <data_dir>/DVSGesture/ibmGestureTrain/userXX_<lighting>/<label>.npy   e.g. user01_fluorescent/0.npy\n"
    "  <data_dir>/DVSGesture/ibmGestureTest/userXX_<lighting>/<label>.npy\n"
    "where <label> is the class index 0..10 and each .npy holds an (N, 4) array with columns x, y, p, t "
    "(t in milliseconds). Unpack ibmGestureTrain.tar.gz / ibmGestureTest.tar.gz (tonic's figshare "
    "archives) into <data_dir>/DVSGesture/."
)



_USER_DIR_RE = re.compile(r"^user(\d+)_(.+)$")


def find_dvsgesture_root(data_dir: PathLike) -> Path:
    """The folder holding ``ibmGestureTrain`` / ``ibmGestureTest``: ``<data_dir>/DVSGesture`` or ``<data_dir>``."""
    d = Path(data_dir)
    for cand in (d / "DVSGesture", d):
        if (cand / "ibmGestureTrain").is_dir() or (cand / "ibmGestureTest").is_dir():
            return cand
    return d / "DVSGesture"


def _npy_header_problem(path: Path) -> Optional[str]:
    """Cheap check of a .npy header (no data read): None when it looks like an (N, 4) numeric array."""
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as e:  # noqa: BLE001
        return f"cannot be read as a .npy array ({type(e).__name__}: {e})"
    if arr.ndim != 2 or arr.shape[1] != 4:
        return f"expected an (N, 4) array with columns x, y, p, t[ms], got shape {arr.shape}"
    if arr.shape[0] == 0:
        return "contains no events"
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        return f"expected a numeric array, got dtype {arr.dtype}"
    return None


class DVSGestureDataset(Dataset):
    """DVS128 Gesture samples from tonic's preprocessed layout (``<root>/ibmGesture{Train,Test}/userXX_<light>/<label>.npy``).

    Each item: ``{"events" | "points": tensor (see :class:`EventRepresentation`), "label": int64 scalar}``;
    with ``transform=None`` the item is ``{"raw": events structured array, "label": int}``.

    Args:
        root: folder holding ``ibmGestureTrain`` / ``ibmGestureTest`` (or its parent, see
            :func:`find_dvsgesture_root`).
        train: ``ibmGestureTrain`` or ``ibmGestureTest``.
        transform: an :class:`EventRepresentation` (or any ``(events, rng) -> dict``).
        skip_bad: skip (and count in ``num_skipped``) files whose header / name is invalid instead of
            raising ValueError; a file that fails while loading is replaced by the next sample (warned).
        seed: evaluation sampling seed.

    Attributes: ``files``, ``labels``, ``users``, ``lighting`` (lists), ``num_skipped``, ``skipped``.
    """

    def __init__(self, *, root: PathLike, train: bool = True, transform: Optional[Callable] = None,
                 skip_bad: bool = False, seed: int = 0,
                 sensor_size: SensorSize = DVSGESTURE_SENSOR_SIZE, num_classes: int = len(DVSGESTURE_CLASSES)) -> None:
        self.root = find_dvsgesture_root(root)
        self.split_dir = self.root / ("ibmGestureTrain" if train else "ibmGestureTest")
        self.train, self.transform, self.skip_bad, self.seed = train, transform, skip_bad, seed
        self.sensor_size = tuple(sensor_size)
        if not self.split_dir.is_dir():
            raise FileNotFoundError(f"DVS Gesture split folder not found: '{self.split_dir}'.\n{DVSGESTURE_LAYOUT}")
        self.files: list[Path] = []
        self.labels: list[int] = []
        self.users: list[int] = []
        self.lighting: list[str] = []
        self.skipped: list[tuple[Path, str]] = []
        user_dirs = sorted(p for p in self.split_dir.iterdir() if p.is_dir())
        for ud in user_dirs:
            m = _USER_DIR_RE.match(ud.name)
            if m is None:
                self._bad(ud, "folder name is not 'userXX_<lighting>'")
                continue
            for f in sorted(ud.glob("*.npy"), key=lambda q: (len(q.stem), q.stem)):
                if not f.stem.isdigit() or not 0 <= int(f.stem) < num_classes:
                    self._bad(f, f"file name must be '<label>.npy' with label 0..{num_classes - 1}")
                    continue
                problem = _npy_header_problem(f)
                if problem is not None:
                    self._bad(f, problem)
                    continue
                self.files.append(f)
                self.labels.append(int(f.stem))
                self.users.append(int(m.group(1)))
                self.lighting.append(m.group(2))
        if not self.files:
            raise FileNotFoundError(f"no usable '<label>.npy' samples under '{self.split_dir}'"
                                    f"{f' ({len(self.skipped)} skipped as bad)' if self.skipped else ''}.\n"
                                    f"{DVSGESTURE_LAYOUT}")
        if self.skipped:
            warnings.warn(f"DVS Gesture: skipped {len(self.skipped)} bad file(s) under '{self.split_dir}', "
                          f"e.g. {self.skipped[0][0]}: {self.skipped[0][1]}", stacklevel=2)

    def _bad(self, path: Path, problem: str) -> None:
        if not self.skip_bad:
            raise DataError(path, f"{problem} (expected ibmGesture{{Train,Test}}/userXX_<lighting>/<label>.npy, "
                                  "each an (N, 4) array x, y, p, t[ms]; skip_bad=True skips such files)")
        self.skipped.append((path, problem))

    @property
    def num_skipped(self) -> int:
        return len(self.skipped)

    def __len__(self) -> int:
        return len(self.files)

    def load(self, index: int) -> np.ndarray:
        return read_dvsgesture_npy(self.files[index], sensor_size=self.sensor_size)

    def __getitem__(self, index: int) -> dict[str, Any]:
        tries = min(len(self), 8) if self.skip_bad else 1
        for k in range(tries):
            i = (index + k) % len(self)
            try:
                item = self._read(i)
            except DataError as e:
                if not self.skip_bad:
                    raise
                warnings.warn(f"skip_bad: replacing unreadable sample ({e})", stacklevel=2)
                continue
            return item
        raise DataError(self.split_dir, f"skip_bad: {tries} unreadable samples in a row from index {index}")

    def _read(self, i: int) -> dict[str, Any]:
        """Sample ``i`` read and transformed; any ``ValueError`` becomes a :class:`DataError` naming its file."""
        try:
            ev = self.load(i)
            if self.transform is None:
                return {"raw": ev, "label": self.labels[i]}
            item = dict(self.transform(ev, sample_rng(self.train, self.seed, i)))
        except DataError:
            raise
        except ValueError as e:
            raise DataError(self.files[i], str(e)) from e
        item["label"] = torch.tensor(self.labels[i], dtype=torch.int64)
        return item



class DVSGestureDataModule(EventDataModule):
    """DVS128 Gesture (11 classes, 128x128x2) from tonic's preprocessed ``.npy`` layout; never downloads.

    Train = ``ibmGestureTrain`` (1077 samples in the full set), val = test = ``ibmGestureTest`` (264).
    Batches: ``{"events": float32 [B, timesteps * frames_per_step, 2, 128/k, 128/k], "label": int64 [B]}``
    or with ``representation="points"`` ``{"points": float32 [B, timesteps, num_points, 3|4], "label"}``.

    Args:
        data_dir: folder holding ``DVSGesture/ibmGestureTrain`` (or ``ibmGestureTrain`` directly).
        skip_bad: skip-and-count invalid files instead of raising ValueError naming the file.
        seed: evaluation sampling seed.
        **kwargs: the representation and loaders (:class:`EventDataModule`).
    """

    def __init__(self, *, data_dir: str = "data", sensor_size: Sequence[int] = DVSGESTURE_SENSOR_SIZE,
                 skip_bad: bool = False, seed: int = 0, **kwargs: Any) -> None:
        super().__init__(sensor_size=sensor_size, **kwargs)
        self.save_hyperparameters()
        self.data_dir = Path(data_dir)
        self.skip_bad, self.seed = bool(skip_bad), int(seed)
        self.class_names = list(DVSGESTURE_CLASSES)
        self.num_classes = len(self.class_names)

    @property
    def num_skipped(self) -> int:
        """Files skipped as bad (``skip_bad=True``) by the datasets built so far."""
        return sum(ds.num_skipped for ds in {id(d): d for d in (self.train_set, self.val_set) if d}.values())

    def setup(self, stage: Optional[str] = None) -> None:
        root = find_dvsgesture_root(self.data_dir)
        needed = ["ibmGestureTest"] if stage in ("validate", "test", "predict") else ["ibmGestureTrain", "ibmGestureTest"]
        for name in needed:
            if not (root / name).is_dir():
                raise FileNotFoundError(f"DVS128 Gesture folder not found: '{root / name}' (data_dir="
                                        f"'{self.data_dir}'). Nothing is downloaded.\n{DVSGESTURE_LAYOUT}")
        kw = dict(root=root, skip_bad=self.skip_bad, seed=self.seed, sensor_size=self.sensor_size)
        if "ibmGestureTrain" in needed and self.train_set is None:
            self.train_set = DVSGestureDataset(train=True, transform=self.train_transform, **kw)
        if self.val_set is None:
            self.val_set = DVSGestureDataset(train=False, transform=self.eval_transform, **kw)
        self.test_set = self.val_set
