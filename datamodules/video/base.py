"""What the video datasets share: frame sampling settings, the dataset (decode -> transform -> sample dict),
the padding collate, the missing-video check and the DataModule base.

Sample (one video)::

    {"frames": float32 [M, 3, S, S] (uint8 [M, 3, H, W] without a transform), "timestamps": float32 [M] s,
     "frame_indices": int64 [M], "video": str, "skipped": [paths of bad videos skipped for this sample],
     ...the item's text fields (VideoTextItem: prompt, answer; MCQItem: question, options, answer_index ...)}

:func:`collate_video` pads the frames to the longest video of the batch: ``frames [B, M, 3, S, S]`` with
zeros, ``frames_mask [B, M]`` bool (True = a real frame), ``timestamps [B, M]`` (0 padded),
``frame_indices [B, M]`` (-1 padded); ``answer_index`` int64 ``[B]``; ``duration`` float32 ``[B]`` (NaN
unknown); strings and option lists stay lists; ``skipped`` is the flat list of the batch.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from spikelight.datamodules.base import DataError, SpikelightDataModule
from spikelight.datamodules.video.io import VideoError, decode_frames, frame_times
from spikelight.datamodules.video.subtitles import read_srt, subtitles_in_range
from spikelight.datamodules.video.transforms import IMAGENET_MEAN, IMAGENET_STD, make_frame_transform

__all__ = ["VideoSampling", "VideoDataset", "collate_video", "check_videos", "VideoDataModule", "POLICIES"]

POLICIES = ("error", "skip")


@dataclass(frozen=True)
class VideoSampling:
    """Which frames of a video are decoded: ``num_frames`` uniform frames (dense: 64, 128 ...), or, when
    ``fps`` is set, ``fps`` frames per second capped at ``max_frames``. ``size`` ``(h, w)`` resizes while
    decoding (before the transform; saves memory on large videos); ``strategy`` / ``seek_min_skip``: see
    :func:`~spikelight.datamodules.video.io.decode_frames`."""

    num_frames: int | None = 16
    fps: float | None = None
    max_frames: int | None = None
    size: tuple[int, int] | None = None
    strategy: str = "auto"
    seek_min_skip: int = 8

    def __post_init__(self) -> None:
        if self.fps is None and (self.num_frames is None or self.num_frames <= 0):
            raise ValueError(f"VideoSampling needs num_frames > 0 or fps, got num_frames={self.num_frames}")
        if self.fps is not None and self.fps <= 0:
            raise ValueError(f"VideoSampling fps must be positive, got {self.fps}")
        if self.size is not None:
            object.__setattr__(self, "size", (int(self.size[0]), int(self.size[1])))

    def indices(self, times: np.ndarray) -> np.ndarray:
        from spikelight.datamodules.video.io import sample_indices

        if self.fps is not None:
            return sample_indices(times, fps=self.fps, max_frames=self.max_frames)
        return sample_indices(times, num_frames=self.num_frames)

    def cache_key(self) -> dict[str, Any]:
        """What decides the decoded frames (for feature-cache keys; the decode strategy does not)."""
        return {"num_frames": None if self.fps is not None else self.num_frames, "fps": self.fps,
                "max_frames": self.max_frames if self.fps is not None else None,
                "size": list(self.size) if self.size else None}

    def decode(self, path: str | Path):
        """The sampled :class:`~spikelight.datamodules.video.io.VideoClip` of ``path``."""
        idx = self.indices(frame_times(path))
        return decode_frames(path, idx, strategy=self.strategy, seek_min_skip=self.seek_min_skip,
                             size=self.size)


class VideoDataset(Dataset):
    """Videos of ``items`` (objects with a ``video`` path and ``fields() -> dict``) decoded with ``sampling``
    and transformed by ``transform`` (uint8 ``[M, H, W, 3]`` -> ``[M, 3, S, S]``; ``None``: uint8 frames).

    ``on_bad_video="skip"``: an unreadable or truncated video is skipped (warned once, its path added to
    :attr:`bad_videos` of this process and to the sample's ``skipped`` list) and the next item is returned in
    its place; ``"error"``: the :class:`~spikelight.datamodules.video.io.VideoError` names the file.
    ``subtitles``: items with a ``subtitles`` path get ``"subtitles"``: the cues shown between the first and
    the last sampled frame, one per line (at most ``max_subtitle_lines``).
    """

    def __init__(self, items: Sequence[Any], *, sampling: VideoSampling | None = None,
                 transform: Callable[[np.ndarray], torch.Tensor] | None = None, on_bad_video: str = "error",
                 subtitles: bool = False, max_subtitle_lines: int | None = None, name: str = "video") -> None:
        if on_bad_video not in POLICIES:
            raise ValueError(f"on_bad_video must be one of {POLICIES}, got {on_bad_video!r}")
        self.items = list(items)
        self.sampling = sampling or VideoSampling()
        self.transform, self.on_bad_video, self.name = transform, on_bad_video, name
        self.subtitles, self.max_subtitle_lines = bool(subtitles), max_subtitle_lines
        self.bad_videos: list[str] = []

    def __len__(self) -> int:
        return len(self.items)

    def load(self, item: Any) -> dict[str, Any]:
        clip = self.sampling.decode(item.video)
        frames = self.transform(clip.frames) if self.transform is not None else clip.to_tensor(torch.uint8)
        sample = {"frames": frames, "timestamps": torch.from_numpy(clip.timestamps.astype(np.float32)),
                  "frame_indices": torch.from_numpy(clip.indices), "video": str(item.video), **item.fields()}
        if self.subtitles:
            path = getattr(item, "subtitles", None)
            lines = subtitles_in_range(read_srt(path), float(clip.timestamps[0]), float(clip.timestamps[-1]),
                                       max_lines=self.max_subtitle_lines) if path else []
            sample["subtitles"] = "\n".join(lines)
        return sample

    def __getitem__(self, i: int) -> dict[str, Any]:
        skipped: list[str] = []
        for attempt in range(len(self.items)):
            item = self.items[(i + attempt) % len(self.items)]
            try:
                sample = self.load(item)
            except VideoError as e:
                if self.on_bad_video == "error":
                    raise
                if str(item.video) not in self.bad_videos:
                    self.bad_videos.append(str(item.video))
                    warnings.warn(f"skipping a bad video ({e})", stacklevel=2)
                skipped.append(str(item.video))
                continue
            sample["skipped"] = skipped
            return sample
        raise DataError(self.name, f"every one of the {len(self.items)} videos is unreadable")


def collate_video(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Pad and stack video samples (see the module docstring for the batch layout)."""
    if not samples:
        raise ValueError("collate_video: empty batch")
    lengths = [int(s["frames"].shape[0]) for s in samples]
    m = max(lengths)
    f0 = samples[0]["frames"]
    frames = f0.new_zeros((len(samples), m, *f0.shape[1:]))
    mask = torch.zeros(len(samples), m, dtype=torch.bool)
    times = torch.zeros(len(samples), m, dtype=torch.float32)
    fidx = torch.full((len(samples), m), -1, dtype=torch.int64)
    for b, (s, n) in enumerate(zip(samples, lengths)):
        frames[b, :n], mask[b, :n], times[b, :n], fidx[b, :n] = s["frames"], True, s["timestamps"], s["frame_indices"]
    out: dict[str, Any] = {"frames": frames, "frames_mask": mask, "timestamps": times, "frame_indices": fidx}
    for k in samples[0]:
        if k in out:
            continue
        vals = [s[k] for s in samples]
        if k == "answer_index":
            out[k] = torch.as_tensor(vals, dtype=torch.int64)
        elif k == "duration":
            out[k] = torch.as_tensor([math.nan if v is None else float(v) for v in vals], dtype=torch.float32)
        elif k == "skipped":
            out[k] = [p for v in vals for p in v]
        else:
            out[k] = list(vals)
    return out


def check_videos(items: Sequence[Any], *, source: str | Path, on_missing: str = "error", show: int = 5) -> list[Any]:
    """Items whose video file exists. Missing ones raise :class:`~spikelight.datamodules.base.DataError`
    naming ``source``, the count and the first ``show`` paths (``on_missing="error"``), or are dropped with a
    warning saying the same (``"skip"``)."""
    if on_missing not in POLICIES:
        raise ValueError(f"on_missing_video must be one of {POLICIES}, got {on_missing!r}")
    present, missing = [], []
    for it in items:
        (present if Path(it.video).is_file() else missing).append(it)
    if missing:
        paths = list(dict.fromkeys(str(it.video) for it in missing))
        msg = (f"{len(missing)} of {len(items)} entries name a missing video ({len(paths)} files); first: "
               f"{', '.join(paths[:show])}")
        if on_missing == "error":
            raise DataError(source, msg + " (on_missing_video: skip drops them)")
        warnings.warn(f"{source}: skipping {msg}", stacklevel=2)
    return present


class VideoDataModule(SpikelightDataModule):
    """Shared settings of the video DataModules; a subclass lists its splits in :meth:`split_items`.

    Args:
        num_frames / fps / max_frames / decode_size / strategy: :class:`VideoSampling` (``decode_size`` =
            ``(h, w)`` at decode time).
        processor: a local VLM folder whose processor resizes / normalises the frames
            (:class:`~spikelight.datamodules.video.transforms.HFFrameProcessor`); ``None``: the torch
            fallback with ``image_size``, ``mean``, ``std``.
        on_missing_video: ``"error"`` (default: missing files are reported in ``setup``, before training,
            with their count and first paths) or ``"skip"`` (dropped, with the same report as a warning).
        on_bad_video: ``"error"`` (default) or ``"skip"`` (unreadable / truncated videos skipped and counted).
        subtitles / max_subtitle_lines: add ``"subtitles"`` to samples whose item has a subtitle file.
        kwargs: :class:`~spikelight.datamodules.base.SpikelightDataModule` (batch size, workers ...).
    """

    collate_fn = staticmethod(collate_video)

    def __init__(self, *, num_frames: int | None = 16, fps: float | None = None, max_frames: int | None = None,
                 decode_size: tuple[int, int] | None = None, strategy: str = "auto", processor: str | None = None,
                 image_size: int = 448, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                 on_missing_video: str = "error", on_bad_video: str = "error", subtitles: bool = False,
                 max_subtitle_lines: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        for name, v in (("on_missing_video", on_missing_video), ("on_bad_video", on_bad_video)):
            if v not in POLICIES:
                raise ValueError(f"{name} must be one of {POLICIES}, got {v!r}")
        self.sampling = VideoSampling(num_frames=num_frames, fps=fps, max_frames=max_frames,
                                      size=tuple(decode_size) if decode_size else None, strategy=strategy)
        self.processor, self.image_size, self.mean, self.std = processor, int(image_size), tuple(mean), tuple(std)
        self.on_missing_video, self.on_bad_video = on_missing_video, on_bad_video
        self.subtitles, self.max_subtitle_lines = bool(subtitles), max_subtitle_lines
        self._transform = None

    @property
    def transform(self):
        """The frame transform (built on first use: loading a processor is not free)."""
        if self._transform is None:
            self._transform = make_frame_transform(self.processor, image_size=self.image_size, mean=self.mean,
                                                   std=self.std)
        return self._transform

    def split_items(self, split: str) -> dict[str, tuple[list[Any], str]] | None:
        """``{set name: (items, source file)}`` of ``split`` ("train" / "val" / "test"), or ``None``."""
        raise NotImplementedError

    def _datasets(self, split: str):
        sets = self.split_items(split)
        if not sets:
            return None
        out = {}
        for name, (items, source) in sets.items():
            items = check_videos(items, source=source, on_missing=self.on_missing_video)
            out[name] = VideoDataset(items, sampling=self.sampling, transform=self.transform,
                                     on_bad_video=self.on_bad_video, subtitles=self.subtitles,
                                     max_subtitle_lines=self.max_subtitle_lines, name=str(source))
        return out if len(out) > 1 else next(iter(out.values()))

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit") and self.train_set is None:
            self.train_set = self._datasets("train")
        if stage in (None, "fit", "validate") and self.val_set is None:
            self.val_set = self._datasets("val")
        if stage in (None, "test", "predict") and self.test_set is None:
            self.test_set = self._datasets("test")

    def bad_videos(self) -> list[str]:
        """Bad videos skipped so far by this process's datasets (workers count their own)."""
        out: list[str] = []
        for data in (self.train_set, self.val_set, self.test_set):
            for ds in (data.values() if isinstance(data, dict) else [data]):
                out.extend(getattr(ds, "bad_videos", []) or [])
        return list(dict.fromkeys(out))

    def eval_sets(self):
        """One :class:`~spikelight.datamodules.base.EvalSet` per validation set (names only; MCQ sets have no
        class names), aligned with ``val_dataloader()``."""
        from spikelight.datamodules.base import EvalSet

        data = self._data("val_set", "validate")
        names = list(data) if isinstance(data, dict) else ["val"]
        return [EvalSet(n, ()) for n in names]
