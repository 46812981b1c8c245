"""3D question answering data: (points, question, answer) records from JSONL files or generated procedurally.

Batch convention (a ``dict``; :func:`~spikelight.datamodules.base.collate_dict` stacks the samples)
=============  =========================  ==============================================================
key            type / layout              meaning
=============  =========================  ==============================================================
``points``     float32 ``[B, N, 6]``      xyz + rgb in ``[0, 1]`` (0.4 where the file has no colour)
``question``   ``list[str]``              the question text (no prompt template: the task adds it)
``answer``     ``list[str]``              the reference answer
``qtype``      ``list[str]``              question type (``category``, ``colour``, ``size``, ``count``,
                                          or what the JSONL's ``type`` says; ``""`` if none)
``qid``        ``list[str]``              the record's id (JSONL ``qid``, else ``<file stem>-<line>``)
=============  =========================  ==============================================================

JSONL format (one object per line; blank lines skipped)::

    {"points": "scenes/0001.npy", "question": "what colour is the object ?", "answer": "red",
     "qid": "0001-colour", "type": "colour"}

``points``: a file :func:`~spikelight.datamodules.pointcloud.io.load_point_cloud` reads (``.npy`` ``[M, 3|6]``,
``.npz``, ``.ply``, ``.txt``, ``.off``), relative to ``points_root`` (default: the JSONL's folder).
``qid`` and ``type`` are optional. Every line and every points file is checked when the DataModule is set up
(before training): a bad line or a missing file raises :class:`~spikelight.datamodules.base.DataError`
naming the JSONL, the line and the missing file.

Synthetic QA (no download): scenes of the procedural objects (:mod:`.procedural`). A record asks about one
scene; its type cycles through ``category``, ``colour``, ``size``, ``count``:

* ``category`` / ``colour`` / ``size``: a scene with ONE object (a random category of ``categories``, the
  colour :func:`~.procedural.make_object` draws, a size class ``small`` / ``medium`` / ``large`` = bounding
  radius 0.3-0.4 / 0.5-0.6 / 0.75-0.9 in the scene frame);
* ``count``: 1 to ``max_objects`` objects (random categories and colours, radius 0.25-0.35) at evenly
  spaced places on a circle of radius 0.6 about the up axis.

Points are NOT normalised to the unit sphere (that would erase the size): the scene frame is fixed. Record
``i`` of split ``s`` uses ``numpy.random.default_rng([seed, s, i])``: the ``val`` split (``s = 1``) holds
new objects (own proportions, colours, yaw, placement), never seen in training. :func:`export_synthetic_qa`
writes a split in the JSONL format (``.npy`` points).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from torch.utils.data import Dataset

from spikelight.datamodules.base import DataError, EvalSet, SpikelightDataModule, collate_dict
from spikelight.datamodules.pointcloud.transforms import PointCloudTransform

__all__ = [
    "COUNT_WORDS",
    "DEFAULT_QA_CATEGORIES",
    "QA_TYPES",
    "QUESTIONS",
    "SIZE_RADII",
    "PointQADataset",
    "PointQAJsonlDataModule",
    "SyntheticPointQADataModule",
    "export_synthetic_qa",
    "make_qa_record",
    "qa_words",
    "read_qa_jsonl",
    "write_qa_jsonl",
]

QA_TYPES = ("category", "colour", "size", "count")
#: question templates by type (the tiny tokenizer splits on spaces: punctuation is its own word)
QUESTIONS: dict[str, tuple[str, ...]] = {
    "category": ("what is the object ?", "what kind of object is this ?"),
    "colour": ("what colour is the object ?", "what is the colour of the object ?"),
    "size": ("how big is the object ?", "what size is the object ?"),
    "count": ("how many objects are there ?", "how many objects are in the scene ?"),
}
#: bounding radius (scene units) of each size class
SIZE_RADII: dict[str, tuple[float, float]] = {"small": (0.3, 0.4), "medium": (0.5, 0.6), "large": (0.75, 0.9)}
COUNT_WORDS = ("one", "two", "three", "four", "five")
#: default categories of the synthetic QA (distinct shapes)
DEFAULT_QA_CATEGORIES = ("chair", "table", "car", "airplane", "tree", "mug", "lamp", "bottle")


def qa_words(categories: Sequence[str]) -> list[str]:
    """Every word of the synthetic questions and answers (for a word-level tokenizer)."""
    from spikelight.datamodules.pointcloud.procedural import COLOUR_NAMES

    words: list[str] = []
    for qs in QUESTIONS.values():
        for q in qs:
            words += q.split()
    words += [*categories, *COLOUR_NAMES, *SIZE_RADII, *COUNT_WORDS, "scene", "kind", "big", "size", "colour"]
    return list(dict.fromkeys(words))


# ============================================================================ synthetic scenes
def _place(xyz: np.ndarray, radius: float, centre: Sequence[float]) -> np.ndarray:
    """Object points centred on their bounding-sphere-ish centre (mean), scaled to ``radius``, moved."""
    c = xyz.mean(0)
    r = max(float(np.linalg.norm(xyz - c, axis=1).max()), 1e-9)
    return (xyz - c) * (radius / r) + np.asarray(centre)


def make_qa_record(rng: np.random.Generator, qtype: str, *, categories: Sequence[str], num_points: int,
                   max_objects: int = 3) -> dict[str, Any]:
    """One synthetic record (module docstring): ``points`` float32 ``[num_points, 6]``, ``question``,
    ``answer``, ``qtype``, the scene's ``objects`` (category, colour, radius each) and its attribute
    ``labels`` (``{category, colour, size, count}`` class indices, ``-1`` where not applicable)."""
    from spikelight.datamodules.pointcloud.procedural import COLOUR_NAMES, make_object, sample_object

    if qtype not in QA_TYPES:
        raise ValueError(f"unknown question type {qtype!r}; choose from {QA_TYPES}")
    if not 1 <= max_objects <= len(COUNT_WORDS):
        raise ValueError(f"max_objects must be in 1..{len(COUNT_WORDS)}, got {max_objects}")
    if qtype == "count":
        n = int(rng.integers(1, max_objects + 1))
        radii = [float(rng.uniform(0.25, 0.35)) for _ in range(n)]
        start = float(rng.uniform(0, 2 * math.pi))
        ring = 0.0 if n == 1 else 0.6
        centres = [(ring * math.cos(start + 2 * math.pi * j / n), 0.0, ring * math.sin(start + 2 * math.pi * j / n))
                   for j in range(n)]  # fmt: skip
        size = None
    else:
        n = 1
        size = list(SIZE_RADII)[int(rng.integers(len(SIZE_RADII)))]
        radii = [float(rng.uniform(*SIZE_RADII[size]))]
        centres = [tuple(rng.uniform(-0.05, 0.05, 3))]
    counts = [num_points // n + (1 if j < num_points % n else 0) for j in range(n)]
    parts, objects = [], []
    for j in range(n):
        cat = categories[int(rng.integers(len(categories)))]
        v, f, fc, colour = make_object(cat, rng)
        xyz, _, albedo = sample_object(v, f, fc, counts[j], rng)
        parts.append(np.concatenate([_place(xyz, radii[j], centres[j]), albedo], 1))
        objects.append({"category": cat, "colour": colour, "radius": radii[j]})
    points = np.concatenate(parts, 0).astype(np.float32)
    points = points[rng.permutation(len(points))]
    question = QUESTIONS[qtype][int(rng.integers(len(QUESTIONS[qtype])))]
    answer = {"category": objects[0]["category"], "colour": objects[0]["colour"], "size": size,
              "count": COUNT_WORDS[n - 1]}[qtype]  # fmt: skip
    one = n == 1  # attribute labels of the scene (-1: not applicable), for the base encoder's training
    labels = {"category": list(categories).index(objects[0]["category"]) if one else -1,
              "colour": COLOUR_NAMES.index(objects[0]["colour"]) if one else -1,
              "size": list(SIZE_RADII).index(size) if size is not None else -1, "count": n - 1}  # fmt: skip
    return {"points": points, "question": question, "answer": answer, "qtype": qtype, "objects": objects,
            "labels": labels}


def generate_qa_split(num: int, *, split_id: int, seed: int, categories: Sequence[str], num_points: int,
                      max_objects: int = 3, types: Sequence[str] = QA_TYPES) -> list[dict[str, Any]]:
    """``num`` records; record ``i`` asks a ``types[i % len(types)]`` question, drawn from
    ``default_rng([seed, split_id, i])``; ``qid`` = ``"s<split_id>-<i>"``."""
    out = []
    for i in range(num):
        rec = make_qa_record(np.random.default_rng([seed, split_id, i]), types[i % len(types)],
                             categories=categories, num_points=num_points, max_objects=max_objects)  # fmt: skip
        rec["qid"] = f"s{split_id}-{i}"
        out.append(rec)
    return out


# ============================================================================ JSONL
def read_qa_jsonl(path: str | Path, *, points_root: str | Path | None = None, check_files: bool = True
                  ) -> list[dict[str, Any]]:
    """The records of a QA JSONL file (module docstring): ``points`` (resolved path), ``question``,
    ``answer``, ``qtype``, ``qid``. Raises :class:`DataError` naming the file and line for a bad line, and
    the missing points file (``check_files``)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(path, "QA JSONL file not found")
    root = Path(points_root).expanduser() if points_root is not None else path.parent
    records = []
    with path.open(encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(path, f"line {n}: not valid JSON ({e.msg})") from None
            if not isinstance(obj, dict):
                raise DataError(path, f"line {n}: expected a JSON object, got {type(obj).__name__}")
            missing = [k for k in ("points", "question", "answer") if k not in obj]
            if missing:
                raise DataError(path, f"line {n}: missing key(s) {missing} (need points, question, answer)")
            bad = [k for k in ("points", "question", "answer") if not isinstance(obj[k], str) or not obj[k].strip()]
            if bad:
                raise DataError(path, f"line {n}: {bad} must be non-empty strings")
            pts = Path(obj["points"]).expanduser()
            pts = pts if pts.is_absolute() else root / pts
            if check_files and not pts.is_file():
                raise DataError(path, f"line {n}: points file not found: {pts}")
            records.append({"points": str(pts), "question": obj["question"], "answer": obj["answer"],
                            "qtype": str(obj.get("type") or ""), "qid": str(obj.get("qid") or f"{path.stem}-{n}")})
    if not records:
        raise DataError(path, "no QA records (empty file)")
    return records


def write_qa_jsonl(path: str | Path, records: Sequence[Mapping[str, Any]], *, points_dir: str | Path | None = None
                   ) -> Path:
    """Write records as a QA JSONL file. A record whose ``points`` is an array is saved as
    ``<points_dir>/<qid>.npy`` (default ``points_dir``: ``<jsonl folder>/points``) and referenced relative to
    the JSONL's folder; a string ``points`` is written as is."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pdir = Path(points_dir) if points_dir is not None else path.parent / "points"
    lines = []
    for i, r in enumerate(records):
        qid = str(r.get("qid") or f"{i:06d}")
        pts = r["points"]
        if not isinstance(pts, (str, Path)):
            pdir.mkdir(parents=True, exist_ok=True)
            f = pdir / f"{qid}.npy"
            np.save(f, np.asarray(pts, dtype=np.float32))
            try:
                pts = str(f.resolve().relative_to(path.parent.resolve()))
            except ValueError:
                pts = str(f.resolve())
        obj = {"points": str(pts), "question": r["question"], "answer": r["answer"], "qid": qid}
        if r.get("qtype"):
            obj["type"] = r["qtype"]
        lines.append(json.dumps(obj))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def export_synthetic_qa(out_dir: str | Path, *, num_train: int = 64, num_val: int = 16, seed: int = 0,
                        categories: Sequence[str] = DEFAULT_QA_CATEGORIES, num_points: int = 512,
                        max_objects: int = 3) -> dict[str, Path]:
    """Write the synthetic splits as ``<out_dir>/train.jsonl`` and ``<out_dir>/val.jsonl`` (+ ``points/``)."""
    out = Path(out_dir)
    files = {}
    for name, num, sid in (("train", num_train, 0), ("val", num_val, 1)):
        recs = generate_qa_split(num, split_id=sid, seed=seed, categories=categories, num_points=num_points,
                                 max_objects=max_objects)  # fmt: skip
        files[name] = write_qa_jsonl(out / f"{name}.jsonl", recs, points_dir=out / "points")
    return files


# ============================================================================ dataset
class PointQADataset(Dataset):
    """QA records -> samples of the batch convention. ``points`` of a record is an array or a file path
    (read with :func:`~spikelight.datamodules.pointcloud.io.load_point_cloud`; errors name the file)."""

    def __init__(self, records: Sequence[Mapping[str, Any]], *, transform: Any = None) -> None:
        self.records = list(records)
        self.transform = transform
        self.generator: torch.Generator | None = None

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> dict[str, Any]:
        r = self.records[i]
        pts = r["points"]
        if isinstance(pts, (str, Path)):
            from spikelight.datamodules.pointcloud.io import load_point_cloud

            try:
                pts = load_point_cloud(pts)
            except FileNotFoundError as e:
                raise DataError(pts, "points file not found") from e
        pts = torch.as_tensor(np.asarray(pts, dtype=np.float32))
        if self.transform is not None:
            pts = self.transform(pts, generator=self.generator)
        if not torch.isfinite(pts).all():
            raise DataError(str(r["points"]) if isinstance(r["points"], (str, Path)) else f"record {r.get('qid', i)}",
                            "non-finite point values")  # fmt: skip
        return {"points": pts.float(), "question": str(r["question"]), "answer": str(r["answer"]),
                "qtype": str(r.get("qtype") or ""), "qid": str(r.get("qid") or i)}  # fmt: skip


class _QADataModule(SpikelightDataModule):
    """Shared: collate, transforms, evaluation sets named by a ``{name: dataset}`` ``val_set``."""

    collate_fn = staticmethod(collate_dict)

    def __init__(self, *, num_points: Optional[int] = 512, normalize: bool = False, augment: bool = False,
                 sampling: str = "random", batch_size: int = 16, num_workers: int = 0, **kwargs: Any) -> None:
        super().__init__(batch_size=batch_size, num_workers=num_workers, **kwargs)
        self.num_points, self.normalize, self.augment, self.sampling = num_points, normalize, augment, sampling

    def transform(self, train: bool) -> PointCloudTransform:
        # the training augmentation keeps sizes and colours (the answers): no scale / shift, no rgb drop
        return PointCloudTransform(num_points=self.num_points, sampling=self.sampling, normalize=self.normalize,
                                   augment=train and self.augment, dropout_max=0.0, scale=None, jitter_sigma=0.0,
                                   rgb_drop_p=0.0)  # fmt: skip

    def eval_sets(self) -> list[EvalSet]:
        data = self._data("val_set", "validate")
        names = list(data) if isinstance(data, Mapping) else ["val"]
        return [EvalSet(n, ()) for n in names]


class PointQAJsonlDataModule(_QADataModule):
    """(points, question, answer) records from JSONL files (format in the module docstring).

    Args:
        train: the training JSONL (``None``: evaluation only).
        val: one JSONL or ``{name: jsonl}`` (evaluated per set: ``val/...`` for the first, ``val_<name>/...``).
        test: like ``val`` (default: the validation sets).
        points_root: folder relative ``points`` paths start from (default: each JSONL's folder).
        num_points: points sampled per cloud (``None``: all; every cloud of a batch must then match).
        normalize: centre + scale each cloud to the unit sphere (off by default: size questions need the
            scene's scale). augment: random rotation about the up axis in training.
        batch_size, num_workers, ...: :class:`~spikelight.datamodules.base.SpikelightDataModule`.
    """

    def __init__(self, *, train: Optional[str] = None, val: str | dict[str, str] | None = None,
                 test: str | dict[str, str] | None = None, points_root: Optional[str] = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if train is None and val is None and test is None:
            raise ValueError("PointQAJsonlDataModule: give train, val or test JSONL files")
        self.train_file, self.val_files, self.test_files, self.points_root = train, val, test, points_root

    def _sets(self, files: str | dict[str, str]) -> dict[str, PointQADataset]:
        files = {"val": files} if isinstance(files, (str, Path)) else dict(files)
        return {name: PointQADataset(read_qa_jsonl(f, points_root=self.points_root), transform=self.transform(False))
                for name, f in files.items()}  # fmt: skip

    def setup(self, stage: str | None = None) -> None:
        """Read and check every JSONL and points file the stage needs (DataError before any step)."""
        if self.train_file is not None and self.train_set is None and stage in (None, "fit"):
            self.train_set = PointQADataset(read_qa_jsonl(self.train_file, points_root=self.points_root),
                                            transform=self.transform(True))  # fmt: skip
        if self.val_files is not None and self.val_set is None:
            self.val_set = self._sets(self.val_files)
        if self.test_files is not None and self.test_set is None and stage in (None, "test", "predict"):
            self.test_set = self._sets(self.test_files)


class SyntheticPointQADataModule(_QADataModule):
    """Embedded 3D QA default (module docstring): ``num_train`` training records and ``num_val`` held-out
    records (new objects, split 1), generated in memory; ``eval_train`` > 0 also scores the first
    ``eval_train`` training records as the set ``train_seen`` (logged ``val_train_seen/...``; seen in
    training, for comparison only).

    Args:
        base_model: a folder for the synthetic default's base model: ``prepare_data`` trains encoder +
            projector + a tiny LM whole on the training records, or reuses the folder when its settings match
            (:func:`spikelight.models.point_llm.ensure_base_point_llm`); point the task's ``lm`` at
            ``<base_model>/lm`` and ``encoder_weights`` at ``<base_model>/encoder.ckpt``.
        base_encoder: the encoder spec of the base model (the task's ``encoder`` must be the same).
        base_steps / base_options: the LM stage's training steps (``0``: random weights, smoke tests) and
            options (``encoder_steps``: the encoder stage's steps, ``batch_size``, ``lr``, ``num_tokens``,
            ``seed``, ``lm_options`` of :func:`~spikelight.models.point_llm.build_tiny_lm`).
    """

    def __init__(self, *, num_train: int = 2048, num_val: int = 256, eval_train: int = 0, seed: int = 0,
                 categories: Sequence[str] = DEFAULT_QA_CATEGORIES, max_objects: int = 3,
                 base_model: Optional[str] = None, base_encoder: Any = None, base_steps: int = 600,
                 base_options: Optional[dict[str, Any]] = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        from spikelight.datamodules.pointcloud.procedural import CATEGORIES

        unknown = [c for c in categories if c not in CATEGORIES]
        if unknown:
            raise ValueError(f"unknown synthetic categories {unknown}; available: {list(CATEGORIES)}")
        if base_model is not None and base_encoder is None:
            raise ValueError("SyntheticPointQADataModule: base_model needs base_encoder (the encoder spec)")
        self.num_train, self.num_val, self.eval_train, self.seed = int(num_train), int(num_val), int(eval_train), seed
        self.categories, self.max_objects = list(categories), int(max_objects)
        self.base_model, self.base_encoder, self.base_steps = base_model, base_encoder, int(base_steps)
        self.base_options = dict(base_options or {})
        self._records: dict[str, list[dict[str, Any]]] = {}

    @property
    def words(self) -> list[str]:
        return qa_words(self.categories)

    def records(self, split: str) -> list[dict[str, Any]]:
        """The generated records of ``"train"`` or ``"val"`` (cached in memory)."""
        if split not in self._records:
            num, sid = {"train": (self.num_train, 0), "val": (self.num_val, 1)}[split]
            self._records[split] = generate_qa_split(num, split_id=sid, seed=self.seed, categories=self.categories,
                                                     num_points=self.num_points or 1024,
                                                     max_objects=self.max_objects)  # fmt: skip
        return self._records[split]

    def data_stamp(self) -> dict[str, Any]:
        return {"kind": "synthetic_point_qa", "num_train": self.num_train, "seed": self.seed,
                "categories": self.categories, "max_objects": self.max_objects, "num_points": self.num_points,
                "normalize": self.normalize}  # fmt: skip

    def prepare_data(self) -> None:
        """With ``base_model``: train (or reuse) the base model on the training records."""
        if self.base_model is None:
            return
        from spikelight.datamodules.pointcloud.procedural import COLOUR_NAMES
        from spikelight.models.point_llm import ensure_base_point_llm

        sizes = {"category": len(self.categories), "colour": len(COLOUR_NAMES), "size": len(SIZE_RADII),
                 "count": self.max_objects}  # fmt: skip
        ensure_base_point_llm(self.base_model, PointQADataset(self.records("train"), transform=self.transform(True)),
                              encoder=self.base_encoder, words=self.words, label_sizes=sizes, steps=self.base_steps,
                              data_stamp=self.data_stamp(), **self.base_options)  # fmt: skip

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None:
            self.train_set = PointQADataset(self.records("train"), transform=self.transform(True))
        if self.val_set is None:
            sets = {"heldout": PointQADataset(self.records("val"), transform=self.transform(False))}
            if self.eval_train > 0:
                sets["train_seen"] = PointQADataset(self.records("train")[: self.eval_train],
                                                    transform=self.transform(False))  # fmt: skip
            self.val_set = sets

    def eval_sets(self) -> list[EvalSet]:  # known without generating the data
        names = ["heldout"] + (["train_seen"] if self.eval_train > 0 else [])
        return [EvalSet(n, ()) for n in names]
