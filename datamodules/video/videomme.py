"""Video-MME annotations -> :class:`~spikelight.datamodules.video.mcq.MCQItem`, with optional subtitles.

Records (JSON list, JSONL, or the release's parquet when ``pyarrow`` is installed): ``video_id`` (the
benchmark's number, e.g. ``"001"``), ``videoID`` (the file name stem, a YouTube id, in the current release),
``duration`` (the class ``short`` / ``medium`` / ``long``), ``domain``, ``sub_category``, ``question_id``,
``task_type``, ``question``, ``options`` (``["A. ...", "B. ...", ...]``) and ``answer`` (a letter).

The video is ``<video_root>/<videoID or video_id>.<mp4|mkv|webm|avi>`` (the first that exists; ``.mp4``
when none does, so the missing file is reported). Subtitles: ``<subtitles_dir>/<stem>.srt`` or the ``.srt``
next to the video; the dataset keeps the cues within the sampled time range (``subtitles=True``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from spikelight.datamodules.video.mcq import LETTERS, MCQItem, bad_record, read_json_list, warn_skipped
from spikelight.datamodules.video.pairs import read_jsonl
from spikelight.datamodules.video.subtitles import find_subtitles

__all__ = ["read_videomme", "parse_options", "VIDEO_EXTENSIONS"]

VIDEO_EXTENSIONS = (".mp4", ".mkv", ".webm", ".avi")
_OPTION = re.compile(r"^\s*\(?([A-Z])[.):]\s*(.*)$", re.S)


def parse_options(options: list[str]) -> list[str]:
    """``["A. x", "B. y"]`` -> ``["x", "y"]``; the letters must run A, B, C ... (ValueError otherwise)."""
    texts = []
    for i, o in enumerate(options):
        m = _OPTION.match(str(o))
        if m is None or m.group(1) != LETTERS[i]:
            raise ValueError(f"option {i} {o!r} does not start with '{LETTERS[i]}.'")
        texts.append(m.group(2).strip())
    return texts


def _records(path: Path) -> list[tuple[str, dict[str, Any]]]:
    if path.suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError as e:
            raise ImportError(f"{path}: reading parquet needs pyarrow (pip install pyarrow), or convert the "
                              "annotations to JSON") from e
        return [(f"row {i}", r) for i, r in enumerate(pq.read_table(path).to_pylist())]
    if path.suffix == ".jsonl":
        return [(f"line {n}", r) for n, r in read_jsonl(path)]
    return [(f"record {i}", r) for i, r in enumerate(read_json_list(path))]


def _video_path(stem: str, root: Path) -> str:
    cands = [root / f"{stem}{ext}" for ext in VIDEO_EXTENSIONS]
    return str(next((c for c in cands if c.is_file()), cands[0]))


def read_videomme(path: str | Path, *, video_root: str | Path | None = None,
                  subtitles_dir: str | Path | None = None, on_bad_record: str = "skip") -> list[MCQItem]:
    """MCQ items of a Video-MME annotation file (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: Video-MME annotation file not found")
    root = Path(video_root).expanduser() if video_root else path.parent
    items, skipped = [], []
    for where, r in _records(path):
        need = [k for k in ("question", "options", "answer") if k not in r] + \
            ([] if ("videoID" in r or "video_id" in r) else ["video_id"])
        if need:
            bad_record(path, where, f"missing key(s) {need}", on_bad_record, skipped)
            continue
        try:
            options = parse_options(list(r["options"]))
        except (TypeError, ValueError) as e:
            bad_record(path, where, str(e), on_bad_record, skipped)
            continue
        letter = str(r["answer"]).strip().upper()
        if len(letter) != 1 or letter not in LETTERS[: len(options)]:
            bad_record(path, where, f"answer {r['answer']!r} is not one of the letters "
                                    f"{LETTERS[: len(options)]}", on_bad_record, skipped)
            continue
        video = _video_path(str(r.get("videoID") or r["video_id"]), root)
        srt = find_subtitles(video, subtitles_dir)
        items.append(MCQItem(video=video, question=str(r["question"]), options=tuple(options),
                             answer_index=LETTERS.index(letter), task_type=str(r.get("task_type", "")),
                             duration_class=str(r.get("duration", "")), qid=str(r.get("question_id", where)),
                             domain=str(r.get("domain", "")), sub_category=str(r.get("sub_category", "")),
                             subtitles=None if srt is None else str(srt), source="videomme"))
    warn_skipped(path, skipped)
    return items
