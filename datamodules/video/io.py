"""Video decoding with PyAV: probe, frame sampling, decoding only the frames needed, and a small writer.

* :func:`probe_video` reads the container and stream headers (duration, fps, frame count, size, codec)
  without decoding a frame.
* :func:`uniform_indices` / :func:`fps_indices` / :func:`sample_indices` choose frame indices (dense uniform
  sampling of ``M`` frames, or ``fps`` frames per second), :func:`decode_frames` decodes exactly those
  frames and returns them with their timestamps (:class:`VideoClip`), :func:`read_video` does all three.
* :func:`write_video` writes real mp4 / avi / mkv files from uint8 frames (tests, the synthetic LVC data).

Frame index and time. A frame's time is its presentation timestamp in seconds (``pts * time_base``, the
clock subtitles use); its index is its position in a full sequential decode. :func:`frame_times` reads
the time of every frame by demuxing the packets (no decoding; cached per file, size and mtime), which
gives the exact frame count (some containers, e.g. WebM, store none) and maps every decoded frame, also
after a seek, to its index. A truncated file is found there, before any decoding: fewer packets than the
header's frame count (or than its duration). Files that store packed B-frames (old DivX / Xvid AVIs) get
out-of-order pts labels although the decoder returns frames in display order; the decoder output is
relabelled with the sorted pts over a few frames, so such files index like any other.

Decoding strategy (``strategy=``): ``"sequential"`` decodes from the start and stops after the last needed
frame; ``"seek"`` seeks to the keyframe before each needed frame that is not the next one and decodes
forward only as far as that frame; ``"auto"`` (default) seeks only when a keyframe lies more than
``seek_min_skip`` frames beyond the current position and at or before the next needed frame (the keyframes
are known from the demux of :func:`frame_times`), i.e. when seeking decodes fewer frames than going on:
dense sampling and files with rare keyframes decode sequentially, sparse frames of a long video seek. Decoding is threaded (``thread_type =
"AUTO"``). Every failure is a :class:`VideoError` (a :class:`~spikelight.datamodules.base.DataError`,
``"<file>: <problem>"``): unreadable file, no video stream, truncated stream, decoder error.
"""

from __future__ import annotations

import functools
import heapq
import math
import os
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from spikelight.datamodules.base import DataError

__all__ = [
    "VideoError",
    "VideoInfo",
    "VideoClip",
    "probe_video",
    "frame_times",
    "keyframe_indices",
    "uniform_indices",
    "fps_indices",
    "sample_indices",
    "decode_frames",
    "read_video",
    "write_video",
    "available_encoders",
]

PathLike = str | os.PathLike


class VideoError(DataError):
    """An unreadable, truncated or undecodable video: ``"<file>: <problem>"`` (a ``ValueError``)."""


def _av():
    try:
        import av
    except ImportError as e:  # pragma: no cover - av is in the [lvc] extra
        raise ImportError("video decoding needs PyAV: pip install 'spikelight[lvc]'") from e
    return av


@dataclass(frozen=True)
class VideoInfo:
    """Header facts of a video file (nothing decoded).

    ``num_frames`` is the stream's frame count when the container stores one, else ``round(duration * fps)``
    (``num_frames_exact`` says which). ``start_time`` is the first presentation time in seconds."""

    path: str
    duration: float
    fps: float
    num_frames: int
    width: int
    height: int
    codec: str
    start_time: float = 0.0
    num_frames_exact: bool = True
    has_audio: bool = False


def _open(path: PathLike):
    av = _av()
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: video file not found")
    try:
        container = av.open(str(p))
    except (av.FFmpegError, OSError, ValueError) as e:
        raise VideoError(p, f"cannot open the video ({type(e).__name__}: {e})") from e
    if not container.streams.video:
        container.close()
        raise VideoError(p, "the file has no video stream")
    return container


def _info(container, path: PathLike) -> VideoInfo:
    stream = container.streams.video[0]
    tb = stream.time_base
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    duration = None
    if stream.duration and tb:
        duration = float(stream.duration * tb)
    elif container.duration:
        duration = container.duration / 1_000_000  # AV_TIME_BASE
    frames = int(stream.frames or 0)
    if not rate and duration and frames:
        rate = frames / duration
    if not rate or not duration or duration <= 0:
        raise VideoError(path, f"cannot read the frame rate / duration from the header (fps={rate}, "
                               f"duration={duration})")
    fps = float(rate)
    exact = frames > 0
    if not exact:
        frames = max(1, int(round(duration * fps)))
    start = float(stream.start_time * tb) if stream.start_time is not None and tb else 0.0
    ctx = stream.codec_context
    return VideoInfo(path=str(path), duration=duration, fps=fps, num_frames=frames, width=int(ctx.width),
                     height=int(ctx.height), codec=str(ctx.name), start_time=start, num_frames_exact=exact,
                     has_audio=bool(container.streams.audio))


def probe_video(path: PathLike) -> VideoInfo:
    """Duration, fps, frame count, size and codec of a video, from its headers only."""
    container = _open(path)
    try:
        return _info(container, path)
    finally:
        container.close()


def frame_times(path: PathLike, *, info: VideoInfo | None = None, tolerance: int | None = None) -> np.ndarray:
    """Presentation time (s) of every frame of the video, sorted (index = frame index), read by demuxing the
    packets without decoding them; cached per (path, size, mtime). Raises :class:`VideoError` when the file
    is truncated: fewer frames than the header says (beyond ``tolerance`` frames, default ``max(2, 1%)``),
    or, without a header count, frames ending more than ``max(1 s, 5%)`` before the header's duration."""
    p = Path(path)
    try:
        st = p.stat()
    except FileNotFoundError:
        raise FileNotFoundError(f"{p}: video file not found") from None
    times, _, header = _frame_times(str(p.resolve()), st.st_size, st.st_mtime_ns)
    info = info or header
    n = times.size
    tol = max(2, int(round(0.01 * info.num_frames))) if tolerance is None else int(tolerance)
    if info.num_frames_exact and n < info.num_frames - tol:
        raise VideoError(p, f"truncated video: the header says {info.num_frames} frames ({info.duration:.2f} s), "
                            f"the file holds {n} (up to {times[-1] if n else 0.0:.2f} s)")
    end = info.start_time + info.duration
    if not info.num_frames_exact and (n == 0 or times[-1] + 1.0 / info.fps < end - max(1.0, 0.05 * info.duration)):
        raise VideoError(p, f"truncated video: the header says {info.duration:.2f} s, the frames end at "
                            f"{times[-1] if n else 0.0:.2f} s")
    return times


def keyframe_indices(path: PathLike) -> np.ndarray:
    """Indices of the keyframes (where decoding can start after a seek), from the same cached demux as
    :func:`frame_times`."""
    p = Path(path)
    frame_times(p)
    st = p.stat()
    return _frame_times(str(p.resolve()), st.st_size, st.st_mtime_ns)[1]


@functools.lru_cache(maxsize=256)
def _frame_times(path: str, size: int, mtime_ns: int) -> tuple[np.ndarray, np.ndarray, VideoInfo]:
    av = _av()
    container = _open(path)
    try:
        info = _info(container, path)
        stream = container.streams.video[0]
        tb = float(stream.time_base)
        pts, key = [], []
        try:
            for packet in container.demux(stream):
                if packet.size and packet.pts is not None:
                    pts.append(packet.pts)
                    if packet.is_keyframe:
                        key.append(packet.pts)
        except av.FFmpegError as e:
            raise VideoError(path, f"reading the packets failed after {len(pts)} frames ({type(e).__name__}: "
                                   f"{e}); the file is corrupt or truncated") from e
    finally:
        container.close()
    if not pts:
        raise VideoError(path, "the video stream holds no frames")
    ticks = np.sort(np.asarray(pts, dtype=np.float64))
    keys = np.unique(np.searchsorted(ticks, np.asarray(key or [ticks[0]], dtype=np.float64)))
    times = ticks * tb
    times.setflags(write=False)
    keys.setflags(write=False)
    return times, keys, info


# -- sampling ------------------------------------------------------------------------------------------
def uniform_indices(total: int, num: int, *, unique: bool = True) -> np.ndarray:
    """``num`` frame indices spread uniformly over ``total`` frames: the centre of each of ``num`` equal
    segments, ``floor((i + 0.5) * total / num)`` (InternVL's video sampling). With ``num > total`` the
    indices repeat, or (``unique``) every frame is returned once."""
    if total <= 0 or num <= 0:
        raise ValueError(f"uniform_indices needs total > 0 and num > 0, got total={total}, num={num}")
    idx = np.floor((np.arange(num) + 0.5) * total / num).astype(np.int64)
    idx = np.clip(idx, 0, total - 1)
    return np.unique(idx) if unique else idx


def fps_indices(times: np.ndarray, fps: float, *, max_frames: int | None = None,
                start_s: float | None = None, end_s: float | None = None) -> np.ndarray:
    """Frames at ``fps`` per second over ``[start_s, end_s]`` seconds from the first frame (default: the whole
    video), from the frame times of :func:`frame_times`: the frame on screen at the centre of each
    ``1 / fps`` interval. With ``max_frames``, at most that many, spread uniformly over the same range."""
    times = np.asarray(times, dtype=np.float64)
    if fps <= 0 or times.size == 0:
        raise ValueError(f"fps_indices needs fps > 0 and at least one frame, got fps={fps}, {times.size} frames")
    step = float(np.median(np.diff(times))) if times.size > 1 else 0.0
    first, end = float(times[0]), float(times[-1]) + step
    t0 = first + (0.0 if start_s is None else max(0.0, float(start_s)))
    t1 = end if end_s is None else min(end, first + float(end_s))
    if t1 <= t0:
        raise ValueError(f"empty time range [{t0 - first}, {t1 - first}] s (the video lasts {end - first:.2f} s)")
    n = max(1, int(math.floor((t1 - t0) * fps + 1e-9)))
    if max_frames is not None:
        n = min(n, int(max_frames))
    centres = t0 + (np.arange(n) + 0.5) * (t1 - t0) / n
    idx = np.searchsorted(times, centres + 1e-9, side="right") - 1
    return np.unique(np.clip(idx, 0, times.size - 1))


def sample_indices(times: np.ndarray, *, num_frames: int | None = None, fps: float | None = None,
                   max_frames: int | None = None) -> np.ndarray:
    """Indices of ``num_frames`` uniform frames, or of ``fps`` frames per second (capped at ``max_frames``),
    of a video whose frame times are ``times`` (:func:`frame_times`)."""
    if (num_frames is None) == (fps is None):
        raise ValueError("give exactly one of num_frames (uniform) and fps")
    if fps is not None:
        return fps_indices(times, fps, max_frames=max_frames)
    return uniform_indices(len(times), int(num_frames))


# -- decoding -------------------------------------------------------------------------------------------
@dataclass
class VideoClip:
    """Decoded frames: ``frames`` uint8 ``[M, H, W, 3]`` (RGB), ``timestamps`` float64 ``[M]`` seconds,
    ``indices`` int64 ``[M]`` (the frame index of each frame), ``info`` the file's :class:`VideoInfo`."""

    frames: np.ndarray
    timestamps: np.ndarray
    indices: np.ndarray
    info: VideoInfo

    def __len__(self) -> int:
        return int(self.frames.shape[0])

    def to_tensor(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """``[M, 3, H, W]``: uint8 as stored, or a float dtype scaled to ``[0, 1]``."""
        t = torch.from_numpy(np.ascontiguousarray(self.frames)).permute(0, 3, 1, 2)
        return t.contiguous() if dtype == torch.uint8 else t.to(dtype).div_(255.0)


@dataclass
class _Frame:
    time: float
    index: int
    frame: Any


class _Cursor:
    """Frames of the video stream in display order with their times and indices; restartable by seeking."""

    REORDER = 4  # frames over which out-of-order pts labels are sorted (packed B-frames)

    def __init__(self, container, info: VideoInfo, times: np.ndarray, threads: int) -> None:
        self.container = container
        self.stream = container.streams.video[0]
        self.stream.thread_type = "AUTO"
        self.stream.codec_context.thread_count = int(threads)
        self.info, self.times = info, times
        self.it: Iterator[_Frame] | None = None
        self.decoded = 0  # frames decoded (cost counter)
        self.seeks = 0

    def index_of(self, t: float) -> int:
        """Index of the frame whose time is nearest to ``t``."""
        j = int(np.searchsorted(self.times, t))
        if j >= self.times.size or (j > 0 and t - self.times[j - 1] < self.times[j] - t):
            j -= 1
        return j

    def _gen(self) -> Iterator[_Frame]:
        av, info = _av(), self.info
        heap: list[float] = []
        fifo: deque = deque()
        last = None
        try:
            for frame in self.container.decode(self.stream):
                self.decoded += 1
                t = float(frame.time) if frame.pts is not None else (
                    (last + 1.0 / info.fps) if last is not None else float(self.times[0]))
                last = t if last is None else max(last, t)
                heapq.heappush(heap, t)
                fifo.append(frame)
                if len(fifo) > self.REORDER:
                    t0 = heapq.heappop(heap)
                    yield _Frame(t0, self.index_of(t0), fifo.popleft())
        except av.FFmpegError as e:
            raise VideoError(info.path, f"decoding failed after {self.decoded} frames "
                                        f"({type(e).__name__}: {e}); the file is corrupt or truncated") from e
        while fifo:
            t0 = heapq.heappop(heap)
            yield _Frame(t0, self.index_of(t0), fifo.popleft())

    def start(self) -> None:
        self.it = self._gen()

    def seek(self, index: int, back_s: float) -> None:
        """Seek to the keyframe at or before frame ``index``'s time minus ``back_s`` seconds."""
        t = max(float(self.times[0]), float(self.times[index]) - back_s)
        self.container.seek(int(math.floor(t / self.stream.time_base)), stream=self.stream, backward=True)
        self.seeks += 1
        self.it = self._gen()

    def next(self) -> _Frame | None:
        return next(self.it, None)


def decode_frames(path: PathLike, indices: Sequence[int] | np.ndarray, *, info: VideoInfo | None = None,
                  strategy: str = "auto", seek_min_skip: int = 8, size: tuple[int, int] | None = None,
                  threads: int = 0, stats: dict | None = None) -> VideoClip:
    """Decode the frames ``indices`` (any order, duplicates allowed; returned sorted and unique) of a video.

    Args:
        strategy: ``"auto"`` | ``"seek"`` | ``"sequential"`` (see the module docstring).
        seek_min_skip: ``"auto"`` seeks when that skips decoding more than this many frames.
        size: ``(height, width)`` to resize to while converting to RGB (swscale, bilinear); ``None``: native.
        threads: decoder threads (0: FFmpeg's choice).
        stats: a dict that receives ``decoded`` (frames decoded) and ``seeks``.
    """
    if strategy not in ("auto", "seek", "sequential"):
        raise ValueError(f"strategy must be 'auto', 'seek' or 'sequential', got {strategy!r}")
    targets = np.unique(np.asarray(indices, dtype=np.int64))
    if targets.size == 0:
        raise ValueError(f"{path}: no frame indices to decode")
    times = frame_times(path, info=info)
    if targets[0] < 0 or targets[-1] >= times.size:
        raise ValueError(f"{path}: frame indices must lie in [0, {times.size - 1}] (the file has {times.size} "
                         f"frames), got {int(targets[0])}..{int(targets[-1])}")
    container = _open(path)
    try:
        info = info or _info(container, path)
        keys = keyframe_indices(path)
        cur = _Cursor(container, info, times, threads)
        picked: list[_Frame] = []
        prev: _Frame | None = None
        pending: _Frame | None = None
        for k in targets.tolist():
            pos = pending.index if pending is not None else (prev.index if prev is not None else -1)
            if strategy == "seek":
                jump = k - pos > 1
            elif strategy == "auto":
                jump = int(keys[np.searchsorted(keys, k, side="right") - 1]) - pos > seek_min_skip
            else:
                jump = False
            if cur.it is None or (jump and pending is not None and pending.index < k):
                prev, pending = None, _seek_or_start(cur, k, jump)
            while pending is not None and pending.index < k:
                prev, pending = pending, cur.next()
            if pending is None:  # the decoder stopped before frame k
                last = "no frame" if prev is None else f"the last one is frame {prev.index} ({prev.time:.2f} s)"
                raise VideoError(info.path, f"truncated or corrupt video: frame {k} ({times[k]:.2f} s) of "
                                            f"{times.size} could not be decoded; {last}")
            picked.append(pending if pending.index == k or prev is None else prev)
        frames = np.stack([_rgb(p.frame, size, info) for p in picked])
    finally:
        container.close()
    if stats is not None:
        stats.update(decoded=cur.decoded, seeks=cur.seeks)
    return VideoClip(frames=frames, timestamps=np.array([p.time for p in picked], dtype=np.float64),
                     indices=np.array([p.index for p in picked], dtype=np.int64), info=info)


def _seek_or_start(cur: _Cursor, k: int, seek: bool) -> _Frame | None:
    """First frame at or before ``k``: decode from the start, or seek (moving the seek point back when a
    demuxer lands after the target)."""
    if not seek or k == 0:
        cur.start()
        return cur.next()
    for back_s in (0.0, 2.0, 10.0):
        cur.seek(k, back_s)
        first = cur.next()
        if first is not None and first.index <= k:
            return first
    cur.seek(0, 0.0)
    return cur.next()


def _rgb(frame: Any, size: tuple[int, int] | None, info: VideoInfo) -> np.ndarray:
    try:
        if size is None:
            return frame.to_ndarray(format="rgb24")
        h, w = int(size[0]), int(size[1])
        return frame.to_ndarray(format="rgb24", width=w, height=h, interpolation="BILINEAR")
    except (ValueError, _av().FFmpegError) as e:
        raise VideoError(info.path, f"cannot convert a frame to RGB ({e})") from e


def read_video(path: PathLike, *, num_frames: int | None = None, fps: float | None = None,
               max_frames: int | None = None, indices: Sequence[int] | None = None,
               **decode_kwargs: Any) -> VideoClip:
    """Probe, sample (``num_frames`` uniform, ``fps`` per second, or explicit ``indices``; every frame when
    none is given) and decode: ``read_video("a.mp4", num_frames=64).frames`` is uint8 ``[64, H, W, 3]``."""
    info = probe_video(path)
    if indices is None:
        total = frame_times(path, info=info).size
        if num_frames is None and fps is None:
            indices = np.arange(total)
            decode_kwargs.setdefault("strategy", "sequential")
        else:
            indices = sample_indices(frame_times(path, info=info), num_frames=num_frames, fps=fps,
                                     max_frames=max_frames)
    return decode_frames(path, indices, info=info, **decode_kwargs)


# -- writing --------------------------------------------------------------------------------------------
def available_encoders() -> list[str]:
    """Video encoders of the installed PyAV wheel among the ones :func:`write_video` can use."""
    av = _av()
    out = []
    for name in ("libx264", "h264", "mpeg4", "libvpx-vp9", "mjpeg"):
        try:
            av.codec.Codec(name, "w")
            out.append(name)
        except (av.FFmpegError, ValueError):
            continue
    return out


def write_video(path: PathLike, frames: np.ndarray | torch.Tensor, fps: float = 8.0, *,
                codec: str | None = None, crf: int = 18, gop_size: int | None = None,
                faststart: bool = False) -> Path:
    """Write uint8 RGB frames ``[T, H, W, 3]`` (even ``H``, ``W``) as a real video file with PyAV.

    ``codec``: default ``libx264`` (H.264, yuv420p) for ``.mp4`` / ``.mkv`` / ``.mov`` when the wheel has it,
    ``mpeg4`` otherwise (also for ``.avi``); ``crf`` sets the H.264 quality (0 = lossless luma); ``gop_size``:
    frames between keyframes (default: FFmpeg's, 250 for x264); ``faststart``: the mp4 index goes before the
    data (a truncated file still opens). Returns the path."""
    av = _av()
    arr = frames.detach().cpu().numpy() if isinstance(frames, torch.Tensor) else np.asarray(frames)
    if arr.ndim != 4 or arr.shape[-1] != 3 or arr.dtype != np.uint8:
        raise ValueError(f"write_video expects uint8 frames [T, H, W, 3], got {arr.dtype} {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] % 2 or arr.shape[2] % 2:
        raise ValueError(f"write_video needs at least one frame and even height / width, got {arr.shape}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if codec is None:
        codec = "libx264" if path.suffix.lower() in (".mp4", ".mkv", ".mov") and "libx264" in \
            available_encoders() else "mpeg4"
    from fractions import Fraction

    rate = Fraction(fps).limit_denominator(1001)
    options = {"movflags": "+faststart"} if faststart else {}
    with av.open(str(path), mode="w", options=options) as out:
        stream = out.add_stream(codec, rate=rate)
        stream.width, stream.height = int(arr.shape[2]), int(arr.shape[1])
        stream.pix_fmt = "yuv420p"
        if codec == "libx264":
            stream.options = {"crf": str(int(crf)), "preset": "veryfast"}
        elif codec == "mpeg4":
            stream.bit_rate = max(1_000_000, int(arr.shape[1] * arr.shape[2] * float(fps) * 2))
        if gop_size is not None:
            stream.codec_context.gop_size = int(gop_size)
        for img in arr:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path
