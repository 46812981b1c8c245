"""Multiple-choice video QA (MLVU, Video-MME, synthetic sets): one normalised item type and its DataModule.

:class:`MCQItem` is what every MCQ reader returns: the question, the option texts (no "A." prefixes), the
index of the right option, the task type and the video's duration (seconds) or duration class. A JSONL file
of ``MCQItem.to_json()`` objects (``format="mcq"``) is the generic form (e.g. the synthetic LVC sets);
:func:`read_mcq` reads any supported format, :class:`VideoMCQDataModule` serves them.

Batches (:func:`~spikelight.datamodules.video.base.collate_video`): ``frames``, ``frames_mask``,
``timestamps``, ``frame_indices``, ``video``, ``question``, ``options`` (list of lists), ``answer_index``
int64 ``[B]``, ``answer`` (the right option's text), ``task_type``, ``duration`` float32 ``[B]`` (NaN when
only a class is known), ``duration_class``, ``qid``, ``skipped`` (+ ``subtitles`` with ``subtitles=True``).
"""

from __future__ import annotations

import json
import string
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from spikelight.datamodules.base import DataError
from spikelight.datamodules.video.base import POLICIES, VideoDataModule
from spikelight.datamodules.video.pairs import read_jsonl, read_pairs_jsonl, resolve_video

__all__ = ["LETTERS", "MCQItem", "read_mcq_jsonl", "write_mcq_jsonl", "read_mcq", "detect_format",
           "VideoMCQDataModule", "bad_record"]

LETTERS = string.ascii_uppercase


@dataclass(frozen=True)
class MCQItem:
    """One multiple-choice question about a video (every benchmark is normalised to this)."""

    video: str
    question: str
    options: tuple[str, ...]
    answer_index: int
    task_type: str = ""
    duration: float | None = None
    duration_class: str = ""
    qid: str = ""
    domain: str = ""
    sub_category: str = ""
    subtitles: str | None = None
    source: str = ""
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "options", tuple(str(o) for o in self.options))
        if len(self.options) < 2:
            raise ValueError(f"MCQItem {self.qid or self.question[:40]!r}: needs at least 2 options")
        if not 0 <= int(self.answer_index) < len(self.options):
            raise ValueError(f"MCQItem {self.qid or self.question[:40]!r}: answer_index {self.answer_index} is "
                             f"not one of the {len(self.options)} options")

    @property
    def answer(self) -> str:
        return self.options[self.answer_index]

    @property
    def answer_letter(self) -> str:
        return LETTERS[self.answer_index]

    def fields(self) -> dict[str, Any]:
        """The text fields of a sample (see the module docstring)."""
        return {"question": self.question, "options": list(self.options), "answer_index": int(self.answer_index),
                "answer": self.answer, "task_type": self.task_type, "duration": self.duration,
                "duration_class": self.duration_class, "qid": self.qid}

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["options"] = list(self.options)
        return d

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> MCQItem:
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in obj.items() if k in known})


def bad_record(source: Path, where: str, problem: str, policy: str, skipped: list[str]) -> None:
    """Raise a DataError for a bad annotation record (``policy="error"``) or count it in ``skipped``."""
    if policy not in POLICIES:
        raise ValueError(f"on_bad_record must be one of {POLICIES}, got {policy!r}")
    if policy == "error":
        raise DataError(source, f"{where}: {problem} (on_bad_record: skip drops such records)")
    skipped.append(f"{where}: {problem}")


def read_json_list(path: Path) -> list:
    """A JSON file holding a list of records; errors name the file."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(path, f"not JSON ({e.msg})") from None
    if not isinstance(data, list):
        raise DataError(path, f"expected a JSON list of records, got {type(data).__name__}")
    return data


def warn_skipped(source: Path, skipped: list[str], what: str = "bad records") -> None:
    if skipped:
        warnings.warn(f"{source}: skipped {len(skipped)} {what}; first: {'; '.join(skipped[:3])}", stacklevel=3)


def read_mcq_jsonl(path: str | Path, *, video_root: str | Path | None = None, on_bad_record: str = "error",
                   limit: int | None = None) -> list[MCQItem]:
    """Items of a JSONL file of :meth:`MCQItem.to_json` objects (``video`` relative to ``video_root`` or the
    file's folder)."""
    path, items, skipped = Path(path), [], []
    for n, obj in read_jsonl(path):
        try:
            obj = {**obj, "video": resolve_video(str(obj["video"]), path, video_root)}
            if obj.get("subtitles"):
                obj["subtitles"] = resolve_video(str(obj["subtitles"]), path, video_root)
            items.append(MCQItem.from_json({"source": path.stem, "qid": f"{path.stem}:{n}", **obj}))
        except (KeyError, TypeError, ValueError) as e:
            bad_record(path, f"line {n}", f"not an MCQ item ({e})", on_bad_record, skipped)
        if limit is not None and len(items) >= limit:
            break
    warn_skipped(path, skipped)
    return items


def write_mcq_jsonl(path: str | Path, items: list[MCQItem], *, relative_to: str | Path | None = None) -> Path:
    """Write items as JSONL (``video`` made relative to ``relative_to`` when it lies below it)."""
    from spikelight.datamodules.video.pairs import write_jsonl

    recs = []
    for it in items:
        d = it.to_json()
        if relative_to is not None:
            try:
                d["video"] = str(Path(d["video"]).relative_to(relative_to))
            except ValueError:
                pass
        recs.append(d)
    return write_jsonl(path, recs)


def detect_format(path: str | Path) -> str:
    """``"mlvu"`` / ``"videomme"`` / ``"mcq"`` / ``"pairs"`` from the keys of the first record of a file (a
    folder: its first ``*.json``)."""
    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("*.json")) + sorted(path.glob("*.jsonl"))
        if not files:
            raise FileNotFoundError(f"{path}: no .json / .jsonl annotation files")
        path = files[0]
    if path.suffix == ".parquet":
        return "videomme"
    if path.suffix == ".jsonl":
        rows = read_jsonl(path)
        first = rows[0][1] if rows else {}
    else:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise DataError(path, f"not JSON ({e.msg})") from None
        first = data[0] if isinstance(data, list) and data else {}
    keys = set(first)
    if "candidates" in keys or "question_type" in keys:
        return "mlvu"
    if "video_id" in keys or "videoID" in keys:
        return "videomme"
    if "answer_index" in keys and "options" in keys:
        return "mcq"
    if {"video", "answer"} <= keys and ("prompt" in keys or "question" in keys):
        return "pairs"
    raise DataError(path, f"cannot tell the annotation format from the keys {sorted(keys)}; set format=")


def read_mcq(path: str | Path, *, format: str = "auto", video_root: str | Path | None = None,
             subtitles_dir: str | Path | None = None, question_types: list[str] | None = None,
             on_bad_record: str = "skip", limit: int | None = None) -> list[MCQItem]:
    """MCQ items of an annotation file or folder in any supported ``format`` (``"auto"``: :func:`detect_format`).
    ``question_types`` keeps only those task types."""
    fmt = detect_format(path) if format == "auto" else format
    if fmt == "mlvu":
        from spikelight.datamodules.video.mlvu import read_mlvu

        items = read_mlvu(path, video_root=video_root, on_bad_record=on_bad_record)
    elif fmt == "videomme":
        from spikelight.datamodules.video.videomme import read_videomme

        items = read_videomme(path, video_root=video_root, subtitles_dir=subtitles_dir, on_bad_record=on_bad_record)
    elif fmt == "mcq":
        items = read_mcq_jsonl(path, video_root=video_root, on_bad_record=on_bad_record)
    else:
        raise ValueError(f"{path}: format must be auto, mlvu, videomme or mcq for MCQ items, got {fmt!r}")
    if question_types:
        keep = set(question_types)
        items = [it for it in items if it.task_type in keep]
    return items[:limit] if limit is not None else items


class VideoMCQDataModule(VideoDataModule):
    """Multiple-choice video QA for evaluation (``validate`` / ``test``), optionally with training pairs.

    Args:
        annotations: an annotation file or folder, a list of them, or ``{set name: path}``; each set becomes
            one validation / test loader (``eval_sets()`` names them).
        format: ``"auto"`` | ``"mlvu"`` | ``"videomme"`` | ``"mcq"`` (see :func:`read_mcq`).
        video_root / subtitles_dir: where the videos / ``.srt`` files are (default: next to the annotations).
        question_types: keep only these task types; limit: at most this many questions per set.
        on_bad_record: ``"skip"`` (default; counted in a warning) or ``"error"`` for records that cannot be
            scored (e.g. an MLVU answer that is none of the candidates).
        train_manifest: JSONL video-text pairs for ``fit`` (alignment tuning with MCQ validation).
        kwargs: :class:`~spikelight.datamodules.video.base.VideoDataModule`.
    """

    def __init__(self, *, annotations: str | list[str] | dict[str, str], format: str = "auto",
                 video_root: str | None = None, subtitles_dir: str | None = None,
                 question_types: list[str] | None = None, limit: int | None = None, on_bad_record: str = "skip",
                 train_manifest: str | None = None, train_video_root: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if isinstance(annotations, (str, Path)):
            annotations = {Path(annotations).stem or "val": str(annotations)}
        elif isinstance(annotations, (list, tuple)):
            annotations = {Path(a).stem: str(a) for a in annotations}
        self.annotations = dict(annotations)
        self.format, self.video_root, self.subtitles_dir = format, video_root, subtitles_dir
        self.question_types, self.limit, self.on_bad_record = question_types, limit, on_bad_record
        self.train_manifest, self.train_video_root = train_manifest, train_video_root

    def split_items(self, split: str):
        if split == "train":
            if self.train_manifest is None:
                return None
            return {"train": (read_pairs_jsonl(self.train_manifest, video_root=self.train_video_root),
                              str(self.train_manifest))}
        return {name: (read_mcq(path, format=self.format, video_root=self.video_root,
                                subtitles_dir=self.subtitles_dir, question_types=self.question_types,
                                on_bad_record=self.on_bad_record, limit=self.limit), str(path))
                for name, path in self.annotations.items()}
