"""Event transforms (numpy in, numpy out): time windows, count-preserving frames, events as points, denoise;
:class:`EventRepresentation` is the per-sample transform of the event DataModules."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional, Union

import numpy as np
import torch

from spikelight.datamodules.events.io import (
    DVSGESTURE_SENSOR_SIZE,
    EVENT_DTYPE,
    SensorSize,
    import_tonic,
)

__all__ = ["time_window", "events_to_frames", "events_to_points", "point_features", "POINT_FEATURES",
           "DEFAULT_POLARITY_COLORS", "denoise", "EventRepresentation", "sample_rng"]

#: per-point feature layouts of event point clouds (see :func:`point_features`)
POINT_FEATURES = ("xyz", "xyzp", "xyzrgb")
#: polarity -> colour for ``"xyzrgb"``: OFF black, ON white (grey levels: every colour channel carries it)
DEFAULT_POLARITY_COLORS = ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))


def _t_range(ev: np.ndarray, t_start: Optional[int], t_end: Optional[int]) -> tuple[int, int]:
    t0 = int(ev["t"].min()) if t_start is None else int(t_start)
    t1 = int(ev["t"].max()) if t_end is None else int(t_end)
    if t1 < t0:
        raise ValueError(f"empty time range: t_end {t1} < t_start {t0}")
    return t0, t1


def time_window(events: np.ndarray, *, window_us: Optional[float], start: Union[None, str, float] = "center",
                rng: Optional[np.random.Generator] = None) -> np.ndarray:
    """Crop the events to ``[t_s, t_s + window_us)``.

    ``start``: ``"center"`` (window centred in the recording), ``"first"`` (from the first event),
    ``"random"`` (uniform over the recording, needs ``rng``) or an absolute time in us.
    ``window_us=None`` or a window longer than the recording returns the events unchanged.
    """
    if window_us is None or len(events) == 0:
        return events
    t = events["t"]
    t_first, t_last = int(t.min()), int(t.max())
    span = t_last - t_first + 1
    w = int(round(window_us))
    if w <= 0:
        raise ValueError(f"window_us must be positive, got {window_us}")
    if w >= span and not isinstance(start, (int, float)):
        return events
    if start == "center":
        ts = t_first + (span - w) // 2
    elif start == "first":
        ts = t_first
    elif start == "random":
        if rng is None:
            raise ValueError("start='random' needs rng")
        ts = t_first + int(rng.integers(0, span - w + 1))
    elif isinstance(start, (int, float)):
        ts = int(start)
    else:
        raise ValueError(f"start must be 'center', 'first', 'random' or a time, got {start!r}")
    return events[(t >= ts) & (t < ts + w)]


def events_to_frames(events: np.ndarray, *, sensor_size: SensorSize, n_frames: int, split_by: str = "count",
                     downsample: int = 1, t_start: Optional[int] = None, t_end: Optional[int] = None,
                     backend: str = "numpy") -> np.ndarray:
    """Accumulate events into ``n_frames`` count frames.

    Args:
        events: :data:`EVENT_DTYPE`-like structured array (fields x, y, p, t).
        sensor_size: ``(W, H, P)`` of the sensor (``P = 1`` merges polarities).
        n_frames: ``T``.
        split_by: ``"time"``: frame ``k`` holds events with
            ``floor((t - t_start) * T / (t_end - t_start + 1)) == k`` (equal windows over the inclusive
            integer range ``[t_start, t_end]``, default first / last event); events outside are dropped.
            ``"count"``: events sorted by ``t`` (stable), the ``i``-th goes to frame ``floor(i * T / N)``.
        downsample: integer factor ``k``; pixel ``(x, y)`` goes to ``(x // k, y // k)`` and the frame is
            ``ceil(H / k) x ceil(W / k)`` (sum pooling: counts are preserved).
        backend: ``"numpy"`` (above) or ``"tonic"`` (``tonic.transforms.ToFrame`` with ``n_time_bins`` /
            ``n_event_bins``; drops events, see the module doc; ``t_start`` / ``t_end`` not supported).

    Returns:
        float32 ``[T, P, ceil(H/k), ceil(W/k)]``; channel ``c`` counts events with ``p == c`` (P = 2).
    """
    W, H, P = (int(s) for s in sensor_size)
    if n_frames < 1:
        raise ValueError(f"n_frames must be >= 1, got {n_frames}")
    if split_by not in ("time", "count"):
        raise ValueError(f"split_by must be 'time' or 'count', got {split_by!r}")
    k = int(downsample)
    if k < 1:
        raise ValueError(f"downsample must be a positive integer, got {downsample}")
    if P not in (1, 2):
        raise ValueError(f"sensor_size[2] (polarities) must be 1 or 2, got {P}")
    Hd, Wd = -(-H // k), -(-W // k)
    T = int(n_frames)
    if len(events) == 0:
        return np.zeros((T, P, Hd, Wd), np.float32)
    x = events["x"].astype(np.int64)
    y = events["y"].astype(np.int64)
    if x.min() < 0 or x.max() >= W or y.min() < 0 or y.max() >= H:
        raise ValueError(f"events outside the sensor {W}x{H}: x in [{x.min()}, {x.max()}], "
                         f"y in [{y.min()}, {y.max()}]")
    if backend == "tonic":
        tonic = import_tonic("events_to_frames(backend='tonic')")
        if t_start is not None or t_end is not None:
            raise ValueError("backend='tonic' does not take t_start / t_end")
        ev = np.empty(len(events), EVENT_DTYPE)
        ev["x"], ev["y"], ev["t"] = x // k, y // k, events["t"]
        ev["p"] = events["p"].astype(bool) if P == 2 else False
        ev = ev[np.argsort(ev["t"], kind="stable")]
        kw = {"n_time_bins": T} if split_by == "time" else {"n_event_bins": T}
        out = tonic.transforms.ToFrame(sensor_size=(Wd, Hd, P), **kw)(ev)
        return np.asarray(out, np.float32)
    if backend != "numpy":
        raise ValueError(f"backend must be 'numpy' or 'tonic', got {backend!r}")
    p = events["p"].astype(np.int64) if P == 2 else np.zeros(len(events), np.int64)
    t = events["t"].astype(np.int64)
    if split_by == "time":
        t0, t1 = _t_range(events, t_start, t_end)
        keep = (t >= t0) & (t <= t1)
        x, y, p, t = x[keep], y[keep], p[keep], t[keep]
        b = ((t - t0) * T) // (t1 - t0 + 1)
    else:
        order = np.argsort(t, kind="stable")
        x, y, p = x[order], y[order], p[order]
        n = len(order)
        b = (np.arange(n, dtype=np.int64) * T) // n
    flat = ((b * P + p) * Hd + y // k) * Wd + x // k
    counts = np.bincount(flat, minlength=T * P * Hd * Wd)
    return counts.reshape(T, P, Hd, Wd).astype(np.float32)


def events_to_points(events: np.ndarray, *, sensor_size: SensorSize, num_points: int = 1024, timesteps: int = 6,
                     t_start: Optional[int] = None, t_end: Optional[int] = None, time_norm: str = "window",
                     with_polarity: bool = False, rng: Optional[np.random.Generator] = None) -> np.ndarray:
    """Events as a point cloud in ``T`` time steps (SVL's DVS downstream).

    The window ``[t_min, t_max]`` (default: first / last event) is split into ``T`` equal time steps
    with the same integer rule as :func:`events_to_frames` (``split_by="time"``). Per point:
    ``(x / (W - 1), y / (H - 1), z)`` with ``z = (t - t_min) / (t_max - t_min)`` over the window
    (``time_norm="window"``) or over the step's own time range (``"step"``), plus ``p`` in {0, 1} as a 4th
    channel with ``with_polarity``. Every coordinate is in ``[0, 1]``.

    Sampling ``N`` points per step: with ``rng`` (training), a uniform random subset (without replacement
    when the step has >= N events, with replacement otherwise); without ``rng`` (evaluation),
    deterministic evenly spaced events in time order (the first and last event of the step included).
    A step with no events is all zeros.

    Returns:
        float32 ``[T, N, 3]`` (``[T, N, 4]`` with polarity), points of each step in time order.
    """
    W, H = int(sensor_size[0]), int(sensor_size[1])
    if time_norm not in ("window", "step"):
        raise ValueError(f"time_norm must be 'window' or 'step', got {time_norm!r}")
    if num_points < 1 or timesteps < 1:
        raise ValueError(f"num_points and timesteps must be >= 1, got {num_points}, {timesteps}")
    C = 4 if with_polarity else 3
    T, N = int(timesteps), int(num_points)
    out = np.zeros((T, N, C), np.float32)
    if len(events) == 0:
        return out
    t = events["t"].astype(np.int64)
    t0, t1 = _t_range(events, t_start, t_end)
    keep = np.flatnonzero((t >= t0) & (t <= t1))
    keep = keep[np.argsort(t[keep], kind="stable")]
    step = ((t[keep] - t0) * T) // (t1 - t0 + 1)
    bounds = np.searchsorted(step, np.arange(T + 1))
    span = max(t1 - t0, 1)
    for s in range(T):
        idx = keep[bounds[s]:bounds[s + 1]]
        n = len(idx)
        if n == 0:
            continue
        if rng is not None:
            sel = np.sort(rng.choice(n, size=N, replace=n < N))
        else:
            sel = np.rint(np.linspace(0, n - 1, N)).astype(np.int64)
        e = events[idx[sel]]
        te = e["t"].astype(np.float64)
        if time_norm == "window":
            z = (te - t0) / span
        else:  # the step's own range [t0 + s*D/T, t0 + (s+1)*D/T)
            a = t0 + s * (t1 - t0 + 1) / T
            b = t0 + (s + 1) * (t1 - t0 + 1) / T - 1
            z = (te - a) / max(b - a, 1.0)
        out[s, :, 0] = e["x"] / max(W - 1, 1)
        out[s, :, 1] = e["y"] / max(H - 1, 1)
        out[s, :, 2] = np.clip(z, 0.0, 1.0)
        if with_polarity:
            out[s, :, 3] = e["p"]
    return out


def point_features(points: np.ndarray, *, features: str = "xyzrgb",
                   polarity_colors: Sequence[Sequence[float]] = DEFAULT_POLARITY_COLORS,
                   centered: bool = False) -> np.ndarray:
    """Per-point features of event points ``[..., 4]`` (``x, y, z, p`` from :func:`events_to_points` with
    ``with_polarity=True``).

    ``features``: ``"xyz"`` (polarity dropped), ``"xyzp"`` (polarity as a 4th channel, 0 / 1) or
    ``"xyzrgb"``: polarity in the colour channels, ``rgb = polarity_colors[p]`` (default OFF = black
    ``(0, 0, 0)``, ON = white ``(1, 1, 1)``). ``"xyzrgb"`` is the input layout of the SVL-pretrained
    encoders (``in_channels = 6``: xyz + rgb in [0, 1]), so an SVL encoder fine-tunes on DVS points
    without a new first layer. Padding points (a time step with no events is all zeros) keep
    ``rgb = polarity_colors[0]``.

    ``centered``: map the coordinates from ``[0, 1]`` to ``[-1, 1]`` (``2 v - 1``), closer to the
    unit-sphere-normalised clouds the encoders were pretrained on.

    Returns float32 ``[..., 3 | 4 | 6]``.
    """
    if features not in POINT_FEATURES:
        raise ValueError(f"point features must be one of {POINT_FEATURES}, got {features!r}")
    if points.shape[-1] != 4:
        raise ValueError(f"point_features needs [..., 4] points (x, y, z, p), got shape {points.shape}")
    xyz = points[..., :3].astype(np.float32)
    if centered:
        xyz = 2.0 * xyz - 1.0
    if features == "xyz":
        return np.ascontiguousarray(xyz)
    p = points[..., 3:4].astype(np.float32)
    if features == "xyzp":
        return np.concatenate([xyz, p], -1)
    colors = np.asarray(polarity_colors, np.float32)
    if colors.shape != (2, 3):
        raise ValueError(f"polarity_colors must be ((r, g, b) for OFF, (r, g, b) for ON), got {polarity_colors}")
    rgb = np.where(p > 0.5, colors[1], colors[0]).astype(np.float32)
    return np.concatenate([xyz, rgb], -1)


def denoise(events: np.ndarray, *, filter_time_us: float) -> np.ndarray:
    """``tonic.transforms.Denoise``: drop events with no neighbour (4-connected pixel) event within
    ``filter_time_us`` before them. Pure-Python loop in tonic: ~1 s per 10^5-10^6 events."""
    tonic = import_tonic("denoise")
    if len(events) == 0:
        return events
    ev = events[np.argsort(events["t"], kind="stable")]
    return tonic.transforms.Denoise(filter_time=filter_time_us)(ev)


class EventRepresentation:
    """Events -> one sample dict of tensors (frames or points); the per-sample transform of the DataModules.

    ``representation="frames"``: ``{"events": float32 [T_in, P, H/k, W/k]}`` with ``T_in = timesteps *
    frames_per_step`` (:func:`events_to_frames`). ``"points"``: ``{"points": float32 [timesteps, N, F]}``
    (:func:`events_to_points`, then :func:`point_features`: ``F`` = 3 for ``"xyz"``, 4 for ``"xyzp"``, 6 for
    ``"xyzrgb"``; ``point_features=None`` means ``"xyzp"`` with ``with_polarity`` else ``"xyz"``). A ``window_us`` sliding window is cropped first (random start when
    ``train``, centred otherwise); ``denoise_us`` applies tonic's Denoise before that.
    """

    def __init__(self, *, representation: str = "frames", sensor_size: SensorSize = DVSGESTURE_SENSOR_SIZE,
                 timesteps: int = 16, frames_per_step: int = 1, split_by: str = "count", downsample: int = 1,
                 num_points: int = 1024, time_norm: str = "window", with_polarity: bool = False,
                 window_us: Optional[float] = None, denoise_us: Optional[float] = None, train: bool = False,
                 frame_backend: str = "numpy", point_features: Optional[str] = None,
                 polarity_colors: Sequence[Sequence[float]] = DEFAULT_POLARITY_COLORS,
                 center_points: bool = False) -> None:
        if representation not in ("frames", "points"):
            raise ValueError(f"representation must be 'frames' or 'points', got {representation!r}")
        if timesteps < 1 or frames_per_step < 1:
            raise ValueError(f"timesteps and frames_per_step must be >= 1, got {timesteps}, {frames_per_step}")
        self.representation = representation
        self.sensor_size = tuple(int(s) for s in sensor_size)
        self.timesteps, self.frames_per_step = int(timesteps), int(frames_per_step)
        self.split_by, self.downsample, self.frame_backend = split_by, int(downsample), frame_backend
        self.num_points, self.time_norm, self.with_polarity = int(num_points), time_norm, bool(with_polarity)
        self.window_us, self.denoise_us, self.train = window_us, denoise_us, bool(train)
        if point_features is None:
            point_features = "xyzp" if with_polarity else "xyz"
        elif point_features not in POINT_FEATURES:
            raise ValueError(f"point_features must be one of {POINT_FEATURES} or None, got {point_features!r}")
        elif with_polarity and point_features == "xyz":
            raise ValueError("with_polarity=True contradicts point_features='xyz'")
        self.point_features = point_features
        self.polarity_colors = tuple(tuple(float(c) for c in rgb) for rgb in polarity_colors)
        if len(self.polarity_colors) != 2 or any(len(c) != 3 for c in self.polarity_colors):
            raise ValueError(f"polarity_colors must be ((r, g, b) for OFF, (r, g, b) for ON), got {polarity_colors}")
        self.center_points = bool(center_points)

    @property
    def out_shape(self) -> tuple[int, ...]:
        """Per-sample tensor shape: ``(T_in, P, H', W')`` or ``(T, N, C)``."""
        W, H, P = self.sensor_size
        if self.representation == "frames":
            k = self.downsample
            return (self.timesteps * self.frames_per_step, P, -(-H // k), -(-W // k))
        return (self.timesteps, self.num_points, {"xyz": 3, "xyzp": 4, "xyzrgb": 6}[self.point_features])

    def __call__(self, events: np.ndarray, rng: Optional[np.random.Generator] = None) -> dict[str, torch.Tensor]:
        if self.denoise_us is not None:
            events = denoise(events, filter_time_us=self.denoise_us)
        if self.window_us is not None:
            events = time_window(events, window_us=self.window_us, start="random" if self.train else "center",
                                 rng=rng)
        if self.representation == "frames":
            fr = events_to_frames(events, sensor_size=self.sensor_size, n_frames=self.timesteps * self.frames_per_step,
                                  split_by=self.split_by, downsample=self.downsample, backend=self.frame_backend)
            return {"events": torch.from_numpy(fr)}
        plain = self.point_features in ("xyz", "xyzp") and not self.center_points
        pts = events_to_points(events, sensor_size=self.sensor_size, num_points=self.num_points,
                               timesteps=self.timesteps, time_norm=self.time_norm,
                               with_polarity=self.point_features == "xyzp" if plain else True,
                               rng=rng if self.train else None)
        if not plain:
            pts = point_features(pts, features=self.point_features, polarity_colors=self.polarity_colors,
                                 centered=self.center_points)
        return {"points": torch.from_numpy(pts)}


def sample_rng(train: bool, seed: int, index: int) -> np.random.Generator:
    """Training: fresh randomness from torch's RNG (seeded per worker by the DataLoader / seed_everything);
    evaluation: fixed by (seed, index)."""
    if train:
        return np.random.default_rng(int(torch.randint(0, 2**62, (1,)).item()))
    return np.random.default_rng([seed, index])
