"""MLVU (dev set) annotations -> :class:`~spikelight.datamodules.video.mcq.MCQItem`.

Each ``<n>_<task>.json`` is a JSON list of records. Multiple-choice records have ``video`` (file name, e.g.
``"count_126.mp4"``), ``duration`` (seconds), ``question``, ``candidates`` (option texts) and ``answer``
(the right candidate's *text*, not a letter), ``question_type``. The open-ended tasks (``8_sub_scene``:
``subPlot``, ``9_summary``: ``summary``) have no candidates; they are not MCQ and are skipped (counted in a
warning). Real-data quirk: two ``2_needle.json`` records have an answer that is none of their candidates;
they are skipped and counted (``on_bad_record="skip"``) or raise an error naming the file and record.

Videos are looked up as ``<video_root>/<json stem>/<video>`` (the release's ``video/<n>_<task>/`` folders),
then ``<video_root>/<video>``; ``video_root`` defaults to the annotation file's folder.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from spikelight.datamodules.video.mcq import MCQItem, bad_record, read_json_list, warn_skipped

__all__ = ["read_mlvu", "mlvu_video_path"]


def mlvu_video_path(video: str, annotation: Path, video_root: str | Path | None) -> str:
    root = Path(video_root).expanduser() if video_root else annotation.parent
    cands = [root / annotation.stem / video, root / video]
    return str(next((c for c in cands if c.is_file()), cands[0]))


def read_mlvu(path: str | Path, *, video_root: str | Path | None = None, on_bad_record: str = "skip") -> list[MCQItem]:
    """MCQ items of one MLVU annotation file, or of every ``*.json`` of a folder (in name order)."""
    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("*.json"))
        if not files:
            raise FileNotFoundError(f"{path}: no MLVU *.json annotation files")
        return [it for f in files for it in read_mlvu(f, video_root=video_root, on_bad_record=on_bad_record)]
    if not path.is_file():
        raise FileNotFoundError(f"{path}: MLVU annotation file not found")
    records = read_json_list(path)
    items, skipped, open_ended = [], [], 0
    for i, r in enumerate(records):
        where = f"record {i} ({r.get('video', '?') if isinstance(r, dict) else '?'})"
        if not isinstance(r, dict) or not {"video", "question", "answer"} <= set(r):
            bad_record(path, where, "needs video, question, answer", on_bad_record, skipped)
            continue
        cands = r.get("candidates")
        if not cands:
            open_ended += 1
            continue
        cands = [str(c) for c in cands]
        if str(r["answer"]) not in cands:
            bad_record(path, where, f"answer {r['answer']!r} is none of the candidates {cands}", on_bad_record, skipped)
            continue
        dur = r.get("duration")
        items.append(MCQItem(video=mlvu_video_path(str(r["video"]), path, video_root), question=str(r["question"]),
                             options=tuple(cands), answer_index=cands.index(str(r["answer"])),
                             task_type=str(r.get("question_type", path.stem)),
                             duration=None if dur is None else float(dur), qid=f"{path.stem}:{i}", source="mlvu"))
    warn_skipped(path, skipped)
    if open_ended:
        warnings.warn(f"{path}: {open_ended} open-ended records (no candidates) are not multiple choice; skipped",
                      stacklevel=2)
    return items
