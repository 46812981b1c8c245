"""ShapeNetPart (the ``shapenetcore_partanno_segmentation_benchmark_v0_normal`` release): part segmentation.

Layout (as released)::

    <root>/synsetoffset2category.txt                   "Airplane\\t02691156" per line
    <root>/<synset>/<model_id>.txt                      one point per line: x y z nx ny nz part_label
    <root>/train_test_split/shuffled_{train,val,test}_file_list.json
                                                        JSON list of "shape_data/<synset>/<model_id>"

The category of a shape is its folder (synset); part labels use the global 50-part numbering of
:data:`SHAPENETPART` (16 categories, parts numbered category after category: Airplane 0-3, ..., Table 47-49).

Samples (batch convention of :mod:`spikelight.datamodules.pointcloud.base`, plus the part fields):

=============  =========================  ==============================================================
``points``     float32 ``[N, 6]``         xyz (centred, unit sphere; scaled / shifted when augmenting) +
                                          rgb 0.4 (no colour in ShapeNetPart), or the normals with
                                          ``normals=True``
``normals``    float32 ``[N, 3]``         the file's normals
``part``       int64 ``[N]``              global part label (index into ``part_table.part_names``)
``label``      int64 scalar               category index into ``part_table.category_names``
``shape_id``   ``str``                    ``"<synset>/<model_id>"``
=============  =========================  ==============================================================

Split lists naming files that are not on disk: ``on_missing="error"`` (default) stops at ``setup`` with one
:class:`~spikelight.datamodules.base.DataError` naming the list, how many are missing and the first ones;
``on_missing="skip"`` leaves them out with one warning. Bad files (wrong columns, non-finite values, a label
outside its category's parts) raise a ``DataError`` naming the file.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from spikelight.datamodules.base import DataError, EvalSet, SpikelightDataModule, collate_dict

__all__ = [
    "PartTable", "SHAPENETPART", "SHAPENETPART_SYNSETS", "ShapeNetPartDataset", "ShapeNetPartDataModule",
    "part_seg_augment",
]


@dataclass(frozen=True)
class PartTable:
    """Categories and their parts: ``parts[c]`` are the global part ids of category ``c`` (every part belongs
    to one category). ``part_names`` (optional) name the global parts."""

    category_names: tuple[str, ...]
    parts: tuple[tuple[int, ...], ...]
    part_names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        cats = tuple(str(c) for c in self.category_names)
        parts = tuple(tuple(int(p) for p in ps) for ps in self.parts)
        if len(cats) != len(parts):
            raise ValueError(f"PartTable: {len(cats)} categories but {len(parts)} part lists")
        flat = sorted(p for ps in parts for p in ps)
        if flat != list(range(len(flat))) or any(not ps for ps in parts):
            raise ValueError("PartTable: parts must number 0..P-1, each once, and every category needs a part")
        names = tuple(str(n) for n in self.part_names) or tuple(f"part{p}" for p in range(len(flat)))
        if len(names) != len(flat):
            raise ValueError(f"PartTable: {len(names)} part names for {len(flat)} parts")
        object.__setattr__(self, "category_names", cats)
        object.__setattr__(self, "parts", parts)
        object.__setattr__(self, "part_names", names)

    @property
    def num_categories(self) -> int:
        return len(self.category_names)

    @property
    def num_parts(self) -> int:
        return len(self.part_names)

    def category_of_part(self) -> np.ndarray:
        """``[P]`` int64: the category of each global part."""
        out = np.empty(self.num_parts, np.int64)
        for c, ps in enumerate(self.parts):
            out[list(ps)] = c
        return out

    def mask(self) -> torch.Tensor:
        """``[K, P]`` bool: ``mask[c, p]`` = part ``p`` belongs to category ``c``."""
        m = torch.zeros(self.num_categories, self.num_parts, dtype=torch.bool)
        for c, ps in enumerate(self.parts):
            m[c, list(ps)] = True
        return m

    def as_lists(self) -> list[list[int]]:
        return [list(ps) for ps in self.parts]


def _table(spec: Sequence[tuple[str, str, Sequence[str]]]) -> tuple[PartTable, dict[str, str]]:
    cats, parts, names, synsets, p = [], [], [], {}, 0
    for name, synset, part_names in spec:
        cats.append(name)
        parts.append(tuple(range(p, p + len(part_names))))
        names += [f"{name}/{n}" for n in part_names]
        synsets[synset] = name
        p += len(part_names)
    return PartTable(tuple(cats), tuple(parts), tuple(names)), synsets


#: the 16 ShapeNetPart categories (synset, part names): 50 parts, numbered in this order
SHAPENETPART, SHAPENETPART_SYNSETS = _table([
    ("Airplane", "02691156", ("body", "wing", "tail", "engine")),
    ("Bag", "02773838", ("handle", "body")),
    ("Cap", "02954340", ("panels", "peak")),
    ("Car", "02958343", ("roof", "hood", "wheel", "body")),
    ("Chair", "03001627", ("back", "seat", "leg", "arm")),
    ("Earphone", "03261776", ("earcup", "headband", "data_wire")),
    ("Guitar", "03467517", ("head", "neck", "body")),
    ("Knife", "03624134", ("blade", "handle")),
    ("Lamp", "03636649", ("base", "lampshade", "canopy", "tube")),
    ("Laptop", "03642806", ("keyboard", "screen")),
    ("Motorbike", "03790512", ("gas_tank", "seat", "wheel", "handle", "light", "body")),
    ("Mug", "03797390", ("handle", "cup")),
    ("Pistol", "03948459", ("barrel", "handle", "trigger")),
    ("Rocket", "04099429", ("body", "fin", "nose")),
    ("Skateboard", "04225987", ("wheel", "deck", "belt")),
    ("Table", "04379243", ("desktop", "leg", "support")),
])  # fmt: skip


def part_seg_augment(xyz: torch.Tensor, generator: torch.Generator | None = None, *, scale=(0.8, 1.25),
                     shift: float = 0.1) -> torch.Tensor:
    """PointNet++'s part-segmentation augmentation: anisotropic scale in ``scale`` and a shift in
    ``[-shift, shift]`` per axis (point order and labels unchanged)."""
    s = torch.empty(3).uniform_(*scale, generator=generator)
    t = torch.empty(3).uniform_(-shift, shift, generator=generator)
    return xyz * s + t


def _normalise(xyz: np.ndarray) -> np.ndarray:
    xyz = xyz - xyz.mean(0)
    r = float(np.linalg.norm(xyz, axis=1).max()) if len(xyz) else 0.0
    return xyz / r if r > 1e-12 else xyz


def _find_root(root: Path) -> Path:
    for cand in (root, root / "shapenetcore_partanno_segmentation_benchmark_v0_normal"):
        if (cand / "synsetoffset2category.txt").is_file():
            return cand
    raise FileNotFoundError(f"{root}: no synsetoffset2category.txt here or in "
                            "shapenetcore_partanno_segmentation_benchmark_v0_normal/ (expected the ShapeNetPart "
                            "normal release)")


def read_synset_file(path: Path) -> dict[str, str]:
    """``synsetoffset2category.txt`` -> ``{synset: category name}`` (checked against :data:`SHAPENETPART`)."""
    out = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split()
        if len(fields) != 2:
            raise DataError(path, f"line {n}: expected '<Category>\\t<synset>', got {line!r}")
        name, synset = fields
        if SHAPENETPART_SYNSETS.get(synset) != name:
            raise DataError(path, f"line {n}: {name} {synset} is not one of the 16 ShapeNetPart categories "
                                  f"({', '.join(f'{v} {k}' for k, v in SHAPENETPART_SYNSETS.items())})")
        out[synset] = name
    return out


def read_part_file(path: Path, parts: Sequence[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One ShapeNetPart point file -> ``xyz [N, 3]``, ``normals [N, 3]`` float32, ``labels [N]`` int64;
    ``DataError`` when it is not ``N x 7`` numbers, has NaN/inf, or a label outside ``parts``."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # loadtxt warns on an empty file; the check below says it
            a = np.loadtxt(path, dtype=np.float64, ndmin=2)
    except (ValueError, OSError) as e:
        raise DataError(path, f"not a ShapeNetPart point file (x y z nx ny nz part per line): {e}") from e
    if a.shape[0] == 0 or a.shape[1] != 7:
        raise DataError(path, f"expected N x 7 columns (x y z nx ny nz part), got shape {a.shape}")
    if not np.isfinite(a).all():
        raise DataError(path, f"{int((~np.isfinite(a).all(1)).sum())} row(s) with NaN/inf")
    lab = a[:, 6]
    if not np.array_equal(lab, np.round(lab)):
        raise DataError(path, "part labels (column 7) are not integers")
    lab = lab.astype(np.int64)
    bad = ~np.isin(lab, np.asarray(parts))
    if bad.any():
        raise DataError(path, f"part label(s) {sorted(set(lab[bad].tolist()))[:5]} are not parts of this "
                              f"category (expected {list(parts)})")
    return a[:, :3].astype(np.float32), a[:, 3:6].astype(np.float32), lab


class ShapeNetPartDataset(Dataset):
    """One split of ShapeNetPart (see the module docstring).

    Args:
        root: the release folder (or its parent).
        split: ``"train" | "val" | "test"`` (the list ``train_test_split/shuffled_<split>_file_list.json``);
            ``"trainval"`` joins train and val.
        num_points: points per sample (random without replacement, with replacement for smaller shapes);
            ``None`` keeps every point (batch size 1 then, shapes differ).
        categories: keep only these category names (labels stay global).
        normals: channels 3:6 of ``points`` are the normals (else rgb 0.4, the SVL convention).
        augment: random scale / shift (:func:`part_seg_augment`) and fresh random sampling per access;
            without it each shape gets the same points every time (sampling seeded by ``seed`` and index).
        on_missing: ``"error"`` or ``"skip"`` for listed shapes whose file is absent.
        cache: keep parsed files in memory (per DataLoader worker).
    """

    def __init__(self, *, root: str | Path, split: str = "train", num_points: int | None = 2048,
                 categories: Sequence[str] | None = None, normals: bool = False, augment: bool = False,
                 on_missing: str = "error", seed: int = 0, cache: bool = True) -> None:
        if on_missing not in ("error", "skip"):
            raise ValueError(f"on_missing must be 'error' or 'skip', got {on_missing!r}")
        self.root = _find_root(Path(root).expanduser())
        self.table = SHAPENETPART
        self.synsets = read_synset_file(self.root / "synsetoffset2category.txt")
        names = list(self.table.category_names)
        if categories is not None:
            unknown = [c for c in categories if c not in names]
            if unknown:
                raise ValueError(f"unknown ShapeNetPart categories {unknown}; choose from {names}")
        keep = set(categories) if categories is not None else set(names)
        self.split, self.num_points, self.normals, self.augment = split, num_points, normals, augment
        self.seed, self.cache = int(seed), cache
        self._memo: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        self.generator: torch.Generator | None = None
        self.items: list[tuple[Path, int, str]] = []
        self.missing: list[str] = []
        for sp in (("train", "val") if split == "trainval" else (split,)):
            list_file = self.root / "train_test_split" / f"shuffled_{sp}_file_list.json"
            if not list_file.is_file():
                raise FileNotFoundError(f"{list_file}: split list not found (expected a JSON list of "
                                        "'shape_data/<synset>/<model_id>')")
            self._read_list(list_file, keep, on_missing)
        if not self.items:
            raise DataError(self.root / "train_test_split", f"split {split!r}: no shape of "
                            f"{sorted(keep) if categories is not None else 'any category'} is present "
                            f"({len(self.missing)} listed shape(s) missing)")

    def _read_list(self, list_file: Path, keep: set[str], on_missing: str) -> None:
        try:
            entries = json.loads(list_file.read_text())
        except (ValueError, OSError) as e:
            raise DataError(list_file, f"not a JSON list: {e}") from e
        if not isinstance(entries, list) or not all(isinstance(e, str) for e in entries):
            raise DataError(list_file, "expected a JSON list of 'shape_data/<synset>/<model_id>' strings")
        cat_index = {n: i for i, n in enumerate(self.table.category_names)}
        missing = []
        for entry in entries:
            parts = entry.strip("/").split("/")
            if len(parts) < 2:
                raise DataError(list_file, f"entry {entry!r} is not '.../<synset>/<model_id>'")
            synset, model_id = parts[-2], parts[-1]
            name = self.synsets.get(synset)
            if name is None:
                raise DataError(list_file, f"entry {entry!r}: synset {synset} is not in synsetoffset2category.txt")
            if name not in keep:
                continue
            f = self.root / synset / f"{model_id}.txt"
            if not f.is_file():
                missing.append(f"{synset}/{model_id}")
                continue
            self.items.append((f, cat_index[name], f"{synset}/{model_id}"))
        if missing:
            self.missing += missing
            msg = (f"{len(missing)} of {len(entries)} listed shape(s) have no file under {self.root} "
                   f"(first: {', '.join(missing[:3])})")
            if on_missing == "error":
                raise DataError(list_file, f"{msg}; pass on_missing='skip' to leave them out")
            warnings.warn(f"{list_file}: {msg}; skipped (on_missing='skip')", RuntimeWarning, stacklevel=3)

    @property
    def class_names(self) -> list[str]:
        return list(self.table.category_names)

    def __len__(self) -> int:
        return len(self.items)

    def _read(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if i in self._memo:
            return self._memo[i]
        f, cat, _ = self.items[i]
        out = read_part_file(f, self.table.parts[cat])
        if self.cache:
            self._memo[i] = out
        return out

    def __getitem__(self, i: int) -> dict[str, Any]:
        xyz, nrm, lab = self._read(i)
        f, cat, sid = self.items[i]
        n = self.num_points
        if n is not None:
            gen = self.generator if self.augment else torch.Generator().manual_seed(self.seed * 1_000_003 + i)
            m = len(xyz)
            sel = torch.randperm(m, generator=gen)[:n] if m >= n else torch.randint(m, (n,), generator=gen)
            sel = sel.numpy()
            xyz, nrm, lab = xyz[sel], nrm[sel], lab[sel]
        pts = torch.from_numpy(_normalise(xyz.astype(np.float32)).astype(np.float32))
        if self.augment:
            pts = part_seg_augment(pts, self.generator)
        nrm_t = torch.from_numpy(np.ascontiguousarray(nrm))
        extra = nrm_t if self.normals else torch.full_like(pts, 0.4)
        return {"points": torch.cat([pts, extra], 1).float(), "normals": nrm_t.float(),
                "part": torch.from_numpy(np.ascontiguousarray(lab)), "label": torch.tensor(cat, dtype=torch.int64),
                "shape_id": sid}


class ShapeNetPartDataModule(SpikelightDataModule):
    """ShapeNetPart part segmentation: ``train_split`` (augmented) for training, ``val_split`` for validation,
    ``test_split`` for ``test`` (see :class:`ShapeNetPartDataset` for the arguments). ``part_table`` is
    :data:`SHAPENETPART` (16 categories, 50 parts; labels stay global with a ``categories`` subset).

    The official lists: train 12,137 / val 1,870 / test 2,874 shapes; papers train on train+val
    (``train_split="trainval"``) and report the test split."""

    collate_fn = staticmethod(collate_dict)

    def __init__(self, *, data_dir: str | Path, num_points: int = 2048, normals: bool = False,
                 categories: Sequence[str] | None = None, augment: bool = True, on_missing: str = "error",
                 train_split: str = "train", val_split: str = "val", test_split: str = "test", seed: int = 0,
                 batch_size: int = 16, num_workers: int = 0, pin_memory: bool = False) -> None:
        super().__init__(batch_size=batch_size, num_workers=num_workers, pin_memory=pin_memory, drop_last=True)
        self.save_hyperparameters(logger=False)
        if on_missing not in ("error", "skip"):
            raise ValueError(f"on_missing must be 'error' or 'skip', got {on_missing!r}")
        self.part_table = SHAPENETPART

    def _dataset(self, split: str, augment: bool) -> ShapeNetPartDataset:
        h = self.hparams
        return ShapeNetPartDataset(root=h.data_dir, split=split, num_points=h.num_points, categories=h.categories,
                                   normals=h.normals, augment=augment, on_missing=h.on_missing, seed=h.seed)

    def setup(self, stage: str | None = None) -> None:
        h = self.hparams
        if stage in (None, "fit") and self.train_set is None:
            self.train_set = self._dataset(h.train_split, h.augment)
        if stage in (None, "fit", "validate") and self.val_set is None:
            self.val_set = self._dataset(h.val_split, False)
        if stage in (None, "test", "predict") and self.test_set is None:
            self.test_set = self._dataset(h.test_split, False)

    def test_dataloader(self):
        return self._loaders(self._data("test_set", "test"))

    @property
    def class_names(self) -> list[str]:
        return list(self.part_table.category_names)

    def eval_sets(self) -> list[EvalSet]:
        return [EvalSet("val", self.class_names)]
