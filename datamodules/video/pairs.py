"""Short video-text pairs for alignment tuning: a JSONL manifest, one ``{"video", "prompt", "answer"}``
object per line (``question`` is accepted for ``prompt``; extra keys are ignored).

``video`` paths are relative to ``video_root`` when given, else to the manifest's folder (absolute paths
are kept). Batches (:func:`~spikelight.datamodules.video.base.collate_video`): ``frames``, ``frames_mask``,
``timestamps``, ``frame_indices``, ``video``, ``prompt``, ``answer``, ``skipped``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spikelight.datamodules.base import DataError
from spikelight.datamodules.video.base import VideoDataModule

__all__ = ["VideoTextItem", "read_pairs_jsonl", "write_jsonl", "resolve_video", "VideoTextDataModule"]


@dataclass(frozen=True)
class VideoTextItem:
    """One training pair: the video file, the prompt (instruction / question) and the answer text."""

    video: str
    prompt: str
    answer: str

    def fields(self) -> dict[str, Any]:
        return {"prompt": self.prompt, "answer": self.answer}


def resolve_video(name: str, manifest: Path, video_root: str | Path | None) -> str:
    """``name`` made absolute against ``video_root`` (or the manifest's folder)."""
    p = Path(name).expanduser()
    if p.is_absolute():
        return str(p)
    return str((Path(video_root).expanduser() if video_root else manifest.parent) / p)


def read_jsonl(path: str | Path) -> list[tuple[int, dict[str, Any]]]:
    """``(line number, object)`` of every non-blank line; a bad line is a DataError naming file and line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: manifest not found")
    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(path, f"line {n}: not JSON ({e.msg})") from None
        if not isinstance(obj, dict):
            raise DataError(path, f"line {n}: expected a JSON object, got {type(obj).__name__}")
        out.append((n, obj))
    return out


def write_jsonl(path: str | Path, records: list[dict[str, Any]]) -> Path:
    """Write one JSON object per line (UTF-8); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def read_pairs_jsonl(path: str | Path, *, video_root: str | Path | None = None,
                     limit: int | None = None) -> list[VideoTextItem]:
    """The pairs of a JSONL manifest (see the module docstring)."""
    path = Path(path)
    items = []
    for n, obj in read_jsonl(path):
        prompt = obj.get("prompt", obj.get("question"))
        missing = [k for k, v in (("video", obj.get("video")), ("prompt", prompt), ("answer", obj.get("answer")))
                   if v is None]
        if missing:
            raise DataError(path, f"line {n}: missing key(s) {missing}; a pair needs video, prompt, answer")
        items.append(VideoTextItem(resolve_video(str(obj["video"]), path, video_root), str(prompt), str(obj["answer"])))
        if limit is not None and len(items) >= limit:
            break
    return items


class VideoTextDataModule(VideoDataModule):
    """Video-text pairs from JSONL manifests: ``train_manifest`` (fit) and optional ``val_manifest`` /
    ``test_manifest``. ``kwargs``: :class:`~spikelight.datamodules.video.base.VideoDataModule` (sampling,
    processor, bad / missing video policies, batch size, workers)."""

    def __init__(self, *, train_manifest: str | None = None, val_manifest: str | None = None,
                 test_manifest: str | None = None, video_root: str | None = None, limit: int | None = None,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.manifests = {"train": train_manifest, "val": val_manifest, "test": test_manifest}
        self.video_root, self.limit = video_root, limit

    def split_items(self, split: str):
        path = self.manifests.get(split)
        if path is None:
            return None
        return {split: (read_pairs_jsonl(path, video_root=self.video_root, limit=self.limit), str(path))}
