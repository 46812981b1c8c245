"""DVS event data: readers, event -> frame / point-cloud transforms, DVS128 Gesture and synthetic DataModules.

Events
------
An event recording is a numpy **structured array** with fields ``x, y, p, t`` (:data:`EVENT_DTYPE`,
the dtype of ``tonic.datasets.DVSGesture``: ``x, y`` int16 pixel column / row, ``p`` bool polarity
(True = ON), ``t`` int64 **microseconds**). Every reader below returns that dtype, whatever the file
format stores, so the transforms work on any of them. Readers raise ``ValueError("<file>: <problem>")``
on corrupt or truncated input and ``FileNotFoundError`` when the file is missing.

==================  ====================================  =============================================
reader              format                                backend
==================  ====================================  =============================================
read_dvsgesture_npy tonic's preprocessed DVS128 Gesture   numpy (tonic's class would download)
                    ``<label>.npy``: (N, 4) x, y, p, t[ms]
read_nmnist_bin     N-MNIST / N-Caltech101 ``.bin``       ``tonic.io.read_mnist_file``
                    (40-bit packed events)
read_ncars_dat      Prophesee DAT v2 (N-CARS ``.dat``)    header checked here, decoded by ``expelliarmus``
                                                          (a tonic dependency)
read_aedat4         AEDAT 4 (DV software, e.g. DVXplorer) ``tonic.io.read_aedat4`` (needs ``aedat``)
read_aedat2         jAER AEDAT 2.0 (DVS128, DAVIS346)     here: tonic's AEDAT2 reader returns 0 events
                                                          silently for a truncated file
read_events         any of the above, by file suffix
==================  ====================================  =============================================

Transforms (numpy in, numpy out; all documented with their layouts)
-------------------------------------------------------------------
* :func:`events_to_frames` -> float32 ``[T, P, H, W]`` event counts (``P = 2``: channel 0 = OFF
  (``p`` False), channel 1 = ON; row = ``y``, column = ``x``, like ``tonic.transforms.ToFrame``).
  ``split_by="time"``: ``T`` equal time windows over ``[t_start, t_end]``; ``"count"``: ``T`` groups of
  (almost) equal event counts (sizes differ by at most one). **Every event in range lands in exactly one
  frame**: ``frames.sum() == number of events``. ``downsample=k`` divides pixel coordinates by ``k``
  (sum pooling, e.g. 128 -> 64 / 32; counts are preserved). ``backend="tonic"`` uses
  ``tonic.transforms.ToFrame(n_time_bins / n_event_bins)`` instead; note that tonic's bin slicers
  drop events: its time bins are ``(t_last - t_first) // T`` long and exclude the last event, its
  event bins hold ``N // T`` events each and drop the ``N % T`` remainder.
* :func:`events_to_points` (SVL downstream, REFERENCE.md section 1) -> float32 ``[T, N, 3]`` (``[T, N, 4]``
  with polarity): a window of events, ``x / (W - 1)``, ``y / (H - 1)`` and normalised time
  ``z = (t - t_min) / (t_max - t_min)``, all in ``[0, 1]``; the window is split into ``T`` (default 6)
  equal time steps and each step is sampled to ``N`` points. ``z`` is normalised over the whole window by
  default (step ``k`` holds ``z`` in ``[k/T, (k+1)/T]``), or per step (``time_norm="step"``) *(inferred:
  the paper does not say which)*. SVL encoders take ``[T, B, N, F]``: ``rearrange(points, "b t n c -> t b n c")``.
* :func:`time_window` crops a sliding window of ``window_us`` microseconds (random start in training,
  centred in evaluation).

Batches
-------
``{"events": float32 [B, T_in, 2, H, W], "label": int64 [B]}`` with ``T_in = timesteps * frames_per_step``
(T-RevSNN's DVS variant chunks ``T_in`` into ``timesteps`` consecutive groups of ``frames_per_step``
frames, ``rearrange(x, "b (t f) p h w -> t b (f p) h w")``), or, with ``representation="points"``,
``{"points": float32 [B, T, N, 3 or 4], "label": int64 [B]}``.

DataModules
-----------
* :class:`DVSGestureDataModule`: DVS128 Gesture (11 classes, 128x128) in tonic's preprocessed folder
  layout ``<data_dir>/DVSGesture/ibmGestureTrain/userXX_<lighting>/<label>.npy`` (and ``ibmGestureTest``).
  It never downloads: missing files raise ``FileNotFoundError`` in ``setup()`` naming the path.
* :class:`SyntheticDVSDataModule`: procedurally generated event streams (a disc moving right / left /
  down / up / diagonally, orbiting clockwise / anticlockwise, growing, shrinking or flickering, plus
  Poisson background noise), deterministic by seed and learnable, same batch layout; for CPU CI runs.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Optional, Union

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

try:  # tonic (neuromorphs/tonic): event dtype, readers, ToFrame / Denoise. Optional at import time.
    import tonic
    import tonic.io
    import tonic.transforms
    from tonic.datasets import DVSGesture as _TonicDVSGesture
except ImportError:  # pragma: no cover - tonic is a declared dependency
    tonic = None
    _TonicDVSGesture = None

__all__ = [
    "EVENT_DTYPE",
    "DVSGESTURE_CLASSES",
    "DVSGESTURE_SENSOR_SIZE",
    "DVSGESTURE_LAYOUT",
    "NMNIST_SENSOR_SIZE",
    "NCARS_SENSOR_SIZE",
    "SYNTHETIC_DVS_CLASSES",
    "as_events",
    "read_dvsgesture_npy",
    "read_nmnist_bin",
    "read_ncars_dat",
    "read_aedat4",
    "aedat4_sensor_size",
    "read_aedat2",
    "read_events",
    "time_window",
    "events_to_frames",
    "events_to_points",
    "denoise",
    "EventRepresentation",
    "DVSGestureDataset",
    "find_dvsgesture_root",
    "SyntheticDVSDataset",
    "synthetic_dvs_events",
    "DVSGestureDataModule",
    "SyntheticDVSDataModule",
]

PathLike = Union[str, Path]
SensorSize = tuple[int, int, int]  # (W, H, P) like tonic

#: The event dtype (fields x, y, p, t; t in microseconds) - tonic's DVSGesture dtype.
EVENT_DTYPE = np.dtype([("x", np.int16), ("y", np.int16), ("p", bool), ("t", np.int64)])
if _TonicDVSGesture is not None:
    EVENT_DTYPE = np.dtype(_TonicDVSGesture.dtype)

#: DVS128 Gesture class names (label = index), as in ``tonic.datasets.DVSGesture.classes``.
DVSGESTURE_CLASSES: list[str] = (
    list(_TonicDVSGesture.classes) if _TonicDVSGesture is not None else [
        "Hand clapping", "Right hand wave", "Left hand wave", "Right arm cw", "Right arm ccw",
        "Left arm cw", "Left arm ccw", "Arm roll", "Air drums", "Air guitar", "Other gestures"]
)
DVSGESTURE_SENSOR_SIZE: SensorSize = (128, 128, 2)
NMNIST_SENSOR_SIZE: SensorSize = (34, 34, 2)
NCARS_SENSOR_SIZE: SensorSize = (120, 100, 2)
DVSGESTURE_LAYOUT = (
    "Expected tonic's preprocessed DVS128 Gesture layout (it is never downloaded here):\n"
    "  <data_dir>/DVSGesture/ibmGestureTrain/userXX_<lighting>/<label>.npy   e.g. user01_fluorescent/0.npy\n"
    "  <data_dir>/DVSGesture/ibmGestureTest/userXX_<lighting>/<label>.npy\n"
    "where <label> is the class index 0..10 and each .npy holds an (N, 4) array with columns x, y, p, t "
    "(t in milliseconds). Unpack ibmGestureTrain.tar.gz / ibmGestureTest.tar.gz (tonic's figshare "
    "archives) into <data_dir>/DVSGesture/."
)


def _tonic_required(what: str) -> None:
    if tonic is None:
        raise ImportError(f"{what} needs the 'tonic' package (pip install tonic)")


# ================================================================================================
# event arrays
# ================================================================================================
def as_events(arr: np.ndarray, *, source: Optional[PathLike] = None) -> np.ndarray:
    """Convert any structured array with fields ``x, y, p, t`` (any order / integer widths, ``p`` bool
    or int, titled fields like aedat's ``('p', 'on')``) to :data:`EVENT_DTYPE`.

    Raises ValueError (naming ``source`` when given) when a field is missing or ``p`` is not 0/1.
    """
    where = f"{source}: " if source is not None else ""
    names = tuple(arr.dtype.fields or ())  # includes titles, e.g. aedat's ('p', 'on')
    missing = [f for f in ("x", "y", "p", "t") if f not in names]
    if missing:
        raise ValueError(f"{where}event array lacks field(s) {missing}; has {list(names)}")
    out = np.empty(arr.shape[0], dtype=EVENT_DTYPE)
    p = np.asarray(arr["p"])
    if p.dtype != np.bool_ and p.size and not np.isin(p, (0, 1)).all():
        raise ValueError(f"{where}polarity values must be 0/1, got {np.unique(p)[:8].tolist()}")
    out["x"], out["y"], out["p"] = arr["x"], arr["y"], p.astype(bool)
    out["t"] = np.asarray(arr["t"]).astype(np.int64)
    return out


def _check_events(ev: np.ndarray, sensor_size: Optional[SensorSize], source: PathLike, fmt: str) -> np.ndarray:
    if ev.shape[0] == 0:
        raise ValueError(f"{source}: {fmt} file contains no events")
    if sensor_size is not None:
        w, h = int(sensor_size[0]), int(sensor_size[1])
        for f, lim in (("x", w), ("y", h)):
            lo, hi = int(ev[f].min()), int(ev[f].max())
            if lo < 0 or hi >= lim:
                raise ValueError(f"{source}: {fmt} event {f} range [{lo}, {hi}] is outside the sensor "
                                 f"(0..{lim - 1}); wrong format or corrupt file")
    return ev


def _require_file(path: PathLike, fmt: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{fmt} file not found: '{path}'")
    return path


# ================================================================================================
# readers
# ================================================================================================
def read_dvsgesture_npy(path: PathLike, *, sensor_size: SensorSize = DVSGESTURE_SENSOR_SIZE) -> np.ndarray:
    """One sample of tonic's preprocessed DVS128 Gesture: an ``(N, 4)`` array, columns ``x, y, p, t``
    with ``t`` in **milliseconds** (tonic multiplies by 1000 when loading; so do we).

    Returns :data:`EVENT_DTYPE` events (t in microseconds), in file order.
    """
    path = _require_file(path, "DVS Gesture .npy")
    try:
        arr = np.load(path, allow_pickle=False)
    except Exception as e:  # noqa: BLE001 - any numpy failure means a corrupt file
        raise ValueError(f"{path}: cannot be read as a .npy array ({type(e).__name__}: {e})") from e
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise ValueError(f"{path}: expected an (N, 4) array with columns x, y, p, t[ms] (tonic DVSGesture "
                         f"layout), got shape {arr.shape}")
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise ValueError(f"{path}: expected a numeric array, got dtype {arr.dtype}")
    if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
        raise ValueError(f"{path}: array contains NaN or inf")
    ev = np.empty(arr.shape[0], dtype=EVENT_DTYPE)
    p = arr[:, 2]
    if p.size and not np.isin(p, (0, 1)).all():
        raise ValueError(f"{path}: polarity column (2) must hold 0/1, got {np.unique(p)[:8].tolist()}")
    for col, f in ((0, "x"), (1, "y")):
        c = arr[:, col]
        if c.size and (c.min() < -32768 or c.max() > 32767):
            raise ValueError(f"{path}: column {col} ({f}) out of range: [{c.min()}, {c.max()}]")
        ev[f] = c
    ev["p"] = p.astype(bool)
    if np.issubdtype(arr.dtype, np.integer):
        ev["t"] = arr[:, 3].astype(np.int64) * 1000
    else:
        ev["t"] = np.rint(arr[:, 3].astype(np.float64) * 1000.0).astype(np.int64)
    return _check_events(ev, sensor_size, path, "DVS Gesture .npy")


def read_nmnist_bin(path: PathLike, *, sensor_size: SensorSize = NMNIST_SENSOR_SIZE) -> np.ndarray:
    """N-MNIST / N-Caltech101 ``.bin`` (40-bit packed events: x 8 bits, y 8 bits, p 1 bit, t 23 bits,
    with ``y == 240`` marking a timestamp overflow), decoded by ``tonic.io.read_mnist_file``.

    ``sensor_size`` is checked against the event coordinates (pass None to skip, e.g. N-Caltech101).
    """
    _tonic_required("read_nmnist_bin")
    path = _require_file(path, "N-MNIST .bin")
    size = path.stat().st_size
    if size == 0 or size % 5:
        raise ValueError(f"{path}: N-MNIST .bin size {size} bytes is not a positive multiple of 5 "
                         f"(40-bit events); truncated or not an N-MNIST file")
    raw = tonic.io.read_mnist_file(str(path), dtype=np.dtype([("x", np.int64), ("y", np.int64),
                                                             ("t", np.int64), ("p", np.int64)]))
    return _check_events(as_events(raw, source=path), sensor_size, path, "N-MNIST")


def _dat_header(path: Path) -> tuple[int, int, int]:
    """Prophesee DAT header: ``%``-lines, then event type and size bytes. Returns (data_start, type, size)."""
    with open(path, "rb") as f:
        pos = 0
        while True:
            line = f.readline()
            if not line.startswith(b"%"):
                break
            pos += len(line)
        f.seek(pos)
        ts = f.read(2)
    if len(ts) < 2:
        raise ValueError(f"{path}: DAT file ends inside its header (no event type / size bytes)")
    return pos + 2, ts[0], ts[1]


def read_ncars_dat(path: PathLike, *, sensor_size: Optional[SensorSize] = NCARS_SENSOR_SIZE) -> np.ndarray:
    """Prophesee DAT v2 (N-CARS ``.dat``): ``%`` text header, 1 byte event type, 1 byte event size (8),
    then little-endian ``uint32 ts, uint32 addr`` (x = addr & 0x3FFF, y = (addr >> 14) & 0x3FFF,
    p = addr >> 28). The header and size are checked here; decoding is ``expelliarmus.Wizard('dat')``
    (a tonic dependency), which silently drops a partial last event.
    """
    path = _require_file(path, "DAT")
    start, _etype, esize = _dat_header(path)
    if esize != 8:
        raise ValueError(f"{path}: DAT event size byte is {esize}, expected 8 (2D CD events)")
    nbytes = path.stat().st_size - start
    if nbytes <= 0:
        raise ValueError(f"{path}: DAT file contains no events")
    if nbytes % 8:
        raise ValueError(f"{path}: DAT payload of {nbytes} bytes is not a multiple of 8; truncated file")
    try:
        import expelliarmus
    except ImportError as e:  # pragma: no cover
        raise ImportError("read_ncars_dat needs 'expelliarmus' (installed with tonic)") from e
    try:
        raw = expelliarmus.Wizard(encoding="dat").read(str(path))
    except Exception as e:  # noqa: BLE001
        raise ValueError(f"{path}: could not decode DAT events ({type(e).__name__}: {e})") from e
    if raw is None or len(raw) != nbytes // 8:
        raise ValueError(f"{path}: decoded {0 if raw is None else len(raw)} events, expected {nbytes // 8}")
    return _check_events(as_events(raw, source=path), sensor_size, path, "DAT")


def aedat4_sensor_size(path: PathLike) -> SensorSize:
    """``(W, H, 2)`` of the first event stream of an AEDAT4 file (from its header, via ``aedat``)."""
    path = _require_file(path, "AEDAT4")
    try:
        import aedat
        streams = aedat.Decoder(str(path)).id_to_stream()
    except ImportError as e:
        raise ImportError("AEDAT4 needs the 'aedat' package (pip install aedat)") from e
    except Exception as e:  # noqa: BLE001
        raise ValueError(f"{path}: not a readable AEDAT4 file ({type(e).__name__}: {e})") from e
    ev = sorted(k for k, s in streams.items() if s.get("type") == "events")
    if not ev:
        raise ValueError(f"{path}: AEDAT4 file has no event stream (streams: {streams})")
    s = streams[ev[0]]
    return int(s["width"]), int(s["height"]), 2


def read_aedat4(path: PathLike, *, return_sensor_size: bool = False):
    """AEDAT 4 (DV software) events of the first event stream, via ``tonic.io.read_aedat4``.

    Returns events (``t`` absolute microseconds), or ``(events, (W, H, 2))`` with ``return_sensor_size``.
    """
    _tonic_required("read_aedat4")
    size = aedat4_sensor_size(path)  # also checks the file and the aedat package
    try:
        raw = tonic.io.read_aedat4(str(path))
    except Exception as e:  # noqa: BLE001
        raise ValueError(f"{path}: could not decode AEDAT4 events ({type(e).__name__}: {e})") from e
    ev = _check_events(as_events(raw, source=path), size, path, "AEDAT4")
    return (ev, size) if return_sensor_size else ev


_AEDAT2_CHIPS = {
    # name: (W, H); address bit layouts (jAER), see read_aedat2
    "dvs128": (128, 128),
    "davis346": (346, 260),
}


def read_aedat2(path: PathLike, *, chip: Optional[str] = None, return_sensor_size: bool = False):
    """jAER AEDAT 2.0: ``#`` header lines, then big-endian ``int32 address, int32 timestamp`` (us) pairs.

    ``chip`` (``"dvs128"`` or ``"davis346"``; default: from the header's ``# AEChip:`` line) sets the
    address layout: DVS128 ``p = a & 1, x = (a >> 1) & 0x7F, y = (a >> 8) & 0x7F``; DAVIS346 (DVS events
    only, bit 31 clear) ``p = (a >> 11) & 1, x = 345 - ((a >> 12) & 0x3FF), y = 259 - ((a >> 22) & 0x1FF)``.
    ``p`` is the raw address bit.

    Raises ValueError naming the file for a truncated header (a preferences block that never ends),
    a payload that is not a whole number of 8-byte events, or a file with no events.
    """
    path = _require_file(path, "AEDAT")
    data = path.read_bytes()
    pos, version, aechip, prefs_open = 0, None, None, False
    while pos < len(data) and data[pos:pos + 1] == b"#":
        end = data.find(b"\n", pos)
        end = len(data) if end < 0 else end + 1
        line = data[pos:end].decode("latin-1").rstrip("\r\n")
        pos = end
        if line.startswith("#!AER-DAT"):
            version = line[len("#!AER-DAT"):].strip()
        elif line.startswith("# AEChip:"):
            aechip = line.split(":", 1)[1].strip()
        elif line.startswith("#Start of Preferences"):
            prefs_open = True
        elif line.startswith("#End of Preferences"):
            prefs_open = False
        elif line.lower().startswith("#end of ascii header"):  # newer jAER files: the header ends here
            break
    if version is None:
        raise ValueError(f"{path}: not an AEDAT file (no '#!AER-DAT' version line)")
    if not version.startswith("2."):
        raise ValueError(f"{path}: AEDAT version {version} is not supported here (only 2.0; use read_aedat4 for "
                         f"AEDAT4 or tonic.io for 3.1)")
    payload = len(data) - pos
    if prefs_open and payload == 0:
        raise ValueError(f"{path}: truncated AEDAT {version} file: the header is cut off inside the "
                         f"preferences block ('#Start of Preferences' without '#End of Preferences') and "
                         f"no events follow")
    if payload == 0:
        raise ValueError(f"{path}: AEDAT {version} file has a header but no events")
    if payload % 8:
        raise ValueError(f"{path}: AEDAT {version} payload of {payload} bytes is not a whole number of "
                         f"8-byte events; truncated or corrupt file")
    if chip is None:
        name = (aechip or "").lower()
        chip = "dvs128" if "dvs128" in name else "davis346" if "davis346" in name else None
        if chip is None:
            raise ValueError(f"{path}: cannot tell the sensor from AEChip '{aechip}'; pass chip='dvs128' or "
                             f"'davis346'")
    if chip not in _AEDAT2_CHIPS:
        raise ValueError(f"chip must be one of {sorted(_AEDAT2_CHIPS)}, got {chip!r}")
    raw = np.frombuffer(data, dtype=np.dtype([("a", ">u4"), ("t", ">i4")]), offset=pos)
    a = raw["a"].astype(np.int64)
    if chip == "dvs128":
        x, y, p, keep = (a >> 1) & 0x7F, (a >> 8) & 0x7F, a & 1, np.ones(len(a), bool)
    else:
        keep = (a >> 31) == 0
        x, y, p = 345 - ((a >> 12) & 0x3FF), 259 - ((a >> 22) & 0x1FF), (a >> 11) & 1
    ev = np.empty(int(keep.sum()), dtype=EVENT_DTYPE)
    ev["x"], ev["y"], ev["p"], ev["t"] = x[keep], y[keep], p[keep].astype(bool), raw["t"][keep]
    w, h = _AEDAT2_CHIPS[chip]
    ev = _check_events(ev, (w, h, 2), path, f"AEDAT {version} ({chip})")
    return (ev, (w, h, 2)) if return_sensor_size else ev


def read_events(path: PathLike) -> np.ndarray:
    """Read any supported file by suffix: ``.npy`` (DVS Gesture), ``.bin`` (N-MNIST), ``.dat`` (N-CARS),
    ``.aedat4``, ``.aedat`` (2.0)."""
    path = Path(path)
    readers: dict[str, Callable[[Path], np.ndarray]] = {
        ".npy": read_dvsgesture_npy, ".bin": read_nmnist_bin, ".dat": read_ncars_dat,
        ".aedat4": read_aedat4, ".aedat": read_aedat2,
    }
    suffix = path.suffix.lower()
    if suffix not in readers:
        raise ValueError(f"{path}: unknown event file type '{suffix}' (known: {sorted(readers)})")
    return readers[suffix](path)


# ================================================================================================
# transforms
# ================================================================================================
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
        _tonic_required("events_to_frames(backend='tonic')")
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


def denoise(events: np.ndarray, *, filter_time_us: float) -> np.ndarray:
    """``tonic.transforms.Denoise``: drop events with no neighbour (4-connected pixel) event within
    ``filter_time_us`` before them. Pure-Python loop in tonic: ~1 s per 10^5-10^6 events."""
    _tonic_required("denoise")
    if len(events) == 0:
        return events
    ev = events[np.argsort(events["t"], kind="stable")]
    return tonic.transforms.Denoise(filter_time=filter_time_us)(ev)


class EventRepresentation:
    """Events -> one sample dict of tensors (frames or points); the per-sample transform of the DataModules.

    ``representation="frames"``: ``{"events": float32 [T_in, P, H/k, W/k]}`` with ``T_in = timesteps *
    frames_per_step`` (:func:`events_to_frames`). ``"points"``: ``{"points": float32 [timesteps, N, 3|4]}``
    (:func:`events_to_points`). A ``window_us`` sliding window is cropped first (random start when
    ``train``, centred otherwise); ``denoise_us`` applies tonic's Denoise before that.
    """

    def __init__(self, *, representation: str = "frames", sensor_size: SensorSize = DVSGESTURE_SENSOR_SIZE,
                 timesteps: int = 16, frames_per_step: int = 1, split_by: str = "count", downsample: int = 1,
                 num_points: int = 1024, time_norm: str = "window", with_polarity: bool = False,
                 window_us: Optional[float] = None, denoise_us: Optional[float] = None, train: bool = False,
                 frame_backend: str = "numpy") -> None:
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

    @property
    def out_shape(self) -> tuple[int, ...]:
        """Per-sample tensor shape: ``(T_in, P, H', W')`` or ``(T, N, C)``."""
        W, H, P = self.sensor_size
        if self.representation == "frames":
            k = self.downsample
            return (self.timesteps * self.frames_per_step, P, -(-H // k), -(-W // k))
        return (self.timesteps, self.num_points, 4 if self.with_polarity else 3)

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
        pts = events_to_points(events, sensor_size=self.sensor_size, num_points=self.num_points,
                               timesteps=self.timesteps, time_norm=self.time_norm, with_polarity=self.with_polarity,
                               rng=rng if self.train else None)
        return {"points": torch.from_numpy(pts)}


def _sample_rng(train: bool, seed: int, index: int) -> np.random.Generator:
    """Training: fresh randomness from torch's RNG (seeded per worker by the DataLoader / seed_everything);
    evaluation: fixed by (seed, index)."""
    if train:
        return np.random.default_rng(int(torch.randint(0, 2**62, (1,)).item()))
    return np.random.default_rng([seed, index])


# ================================================================================================
# DVS128 Gesture (tonic's preprocessed layout)
# ================================================================================================
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
            raise ValueError(f"{path}: {problem}\n{DVSGESTURE_LAYOUT}")
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
                ev = self.load(i)
            except ValueError as e:
                if not self.skip_bad:
                    raise
                warnings.warn(f"skip_bad: replacing unreadable sample ({e})", stacklevel=2)
                continue
            if self.transform is None:
                return {"raw": ev, "label": self.labels[i]}
            item = dict(self.transform(ev, _sample_rng(self.train, self.seed, i)))
            item["label"] = torch.tensor(self.labels[i], dtype=torch.int64)
            return item
        raise ValueError(f"skip_bad: {tries} unreadable samples in a row from index {index} in '{self.split_dir}'")


# ================================================================================================
# synthetic event streams
# ================================================================================================
#: Synthetic classes (label = index): a bright disc that ...
SYNTHETIC_DVS_CLASSES: list[str] = [
    "moves right", "moves left", "moves down", "moves up", "orbits clockwise", "orbits anticlockwise",
    "moves down-right", "moves up-right", "grows", "shrinks", "flickers in place",
]


def _trajectory(label: int, u: np.ndarray, jitter: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Centre ``c(u)``, velocity ``c'(u)`` ([n, 2], unit square coords, u in [0, 1)), radius, radius rate."""
    n = len(u)
    c = np.zeros((n, 2))
    v = np.zeros((n, 2))
    r = np.full(n, 0.12)
    dr = np.zeros(n)
    straight = {0: (1, 0), 1: (-1, 0), 2: (0, 1), 3: (0, -1), 6: (1, 1), 7: (1, -1)}
    if label in straight:
        d = np.asarray(straight[label], float) * 0.5
        start = 0.5 - d / 2 + jitter
        c = start + u[:, None] * d
        v[:] = d
    elif label in (4, 5):  # orbit; y points down so "clockwise" on screen is increasing angle
        w = 2 * np.pi * (1 if label == 4 else -1)
        ang = w * u + jitter[0] * 10
        R = 0.25
        c = 0.5 + jitter * 0.3 + R * np.stack([np.cos(ang), np.sin(ang)], 1)
        v = R * w * np.stack([-np.sin(ang), np.cos(ang)], 1)
    elif label in (8, 9):
        c[:] = 0.5 + jitter
        r = 0.06 + 0.24 * (u if label == 8 else 1 - u)
        dr[:] = 0.24 if label == 8 else -0.24
    else:  # flicker: static disc, brightness alternating at 4 cycles per recording
        c[:] = 0.5 + jitter
    return c, v, r, dr


def synthetic_dvs_events(*, label: int, rng: np.random.Generator, sensor_size: SensorSize = (32, 32, 2),
                         duration_us: int = 1_000_000, num_events: int = 3000, noise_fraction: float = 0.1) -> np.ndarray:
    """One synthetic recording: events on the rim of a disc following class ``label``'s motion.

    The disc rim point at angle ``a`` has outward normal ``n``; its polarity is ON where the rim moves
    outwards (``n . (c' + r' n) > 0``, the bright disc covers dark background) and OFF otherwise; the
    flicker class alternates ON / OFF in time. Positions get 0.6 px Gaussian jitter. Background noise:
    Poisson(``noise_fraction * num_events``) uniform events with random polarity.

    Returns :data:`EVENT_DTYPE` events sorted by ``t`` (``t`` in ``[0, duration_us)``).
    """
    W, H = int(sensor_size[0]), int(sensor_size[1])
    n = int(rng.poisson(num_events))
    u = np.sort(rng.random(n))
    jitter = rng.uniform(-0.08, 0.08, size=2)
    c, v, r, dr = _trajectory(int(label), u, jitter)
    ang = rng.uniform(0, 2 * np.pi, n)
    nrm = np.stack([np.cos(ang), np.sin(ang)], 1)
    pos = c + r[:, None] * nrm
    if label == 10:
        pol = (np.floor(u * 8) % 2) == 0
    else:
        pol = ((v * nrm).sum(1) + dr) > 0
    xs = pos[:, 0] * (W - 1) + rng.normal(0, 0.6, n)
    ys = pos[:, 1] * (H - 1) + rng.normal(0, 0.6, n)
    xs, ys = np.rint(xs).astype(np.int64), np.rint(ys).astype(np.int64)
    inside = (xs >= 0) & (xs < W) & (ys >= 0) & (ys < H)
    m = int(rng.poisson(noise_fraction * num_events))
    ev = np.empty(int(inside.sum()) + m, EVENT_DTYPE)
    k = int(inside.sum())
    ev["x"][:k], ev["y"][:k], ev["p"][:k] = xs[inside], ys[inside], pol[inside]
    ev["t"][:k] = (u[inside] * duration_us).astype(np.int64)
    ev["x"][k:], ev["y"][k:] = rng.integers(0, W, m), rng.integers(0, H, m)
    ev["p"][k:], ev["t"][k:] = rng.random(m) < 0.5, rng.integers(0, duration_us, m)
    return ev[np.argsort(ev["t"], kind="stable")]


class SyntheticDVSDataset(Dataset):
    """``num_samples`` synthetic recordings; sample ``i`` has label ``i % num_classes`` and its events are
    generated from ``np.random.default_rng([seed, i])`` (deterministic, nothing stored).

    Item layout as :class:`DVSGestureDataset`."""

    def __init__(self, *, num_samples: int, num_classes: int = 11, sensor_size: SensorSize = (32, 32, 2),
                 duration_us: int = 1_000_000, num_events: int = 3000, noise_fraction: float = 0.1, seed: int = 0,
                 transform: Optional[Callable] = None, train: bool = False) -> None:
        if not 2 <= num_classes <= len(SYNTHETIC_DVS_CLASSES):
            raise ValueError(f"num_classes must be in 2..{len(SYNTHETIC_DVS_CLASSES)}, got {num_classes}")
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        self.num_samples, self.num_classes = int(num_samples), int(num_classes)
        self.sensor_size = tuple(int(s) for s in sensor_size)
        self.duration_us, self.num_events, self.noise_fraction = int(duration_us), int(num_events), float(noise_fraction)
        self.seed, self.transform, self.train = int(seed), transform, bool(train)

    def __len__(self) -> int:
        return self.num_samples

    def label_of(self, index: int) -> int:
        return index % self.num_classes

    def load(self, index: int) -> np.ndarray:
        return synthetic_dvs_events(label=self.label_of(index), rng=np.random.default_rng([self.seed, index]),
                                    sensor_size=self.sensor_size, duration_us=self.duration_us,
                                    num_events=self.num_events, noise_fraction=self.noise_fraction)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < self.num_samples:
            raise IndexError(index)
        ev = self.load(index)
        y = self.label_of(index)
        if self.transform is None:
            return {"raw": ev, "label": y}
        item = dict(self.transform(ev, _sample_rng(self.train, self.seed, index)))
        item["label"] = torch.tensor(y, dtype=torch.int64)
        return item


# ================================================================================================
# DataModules
# ================================================================================================
class _EventDataModule(pl.LightningDataModule):
    """Shared representation / loader logic (see the module docstring for the batch layout)."""

    def __init__(self, *, sensor_size: Sequence[int], timesteps: Optional[int], frames_per_step: int, split_by: str,
                 downsample: int, representation: str, num_points: int, time_norm: str, with_polarity: bool,
                 window_us: Optional[float], denoise_us: Optional[float], frame_backend: str, batch_size: int,
                 num_workers: int, pin_memory: bool) -> None:
        super().__init__()
        if representation not in ("frames", "points"):
            raise ValueError(f"representation must be 'frames' or 'points', got {representation!r}")
        if len(sensor_size) != 3:
            raise ValueError(f"sensor_size must be (W, H, P), got {sensor_size}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.representation = representation
        self.sensor_size = tuple(int(s) for s in sensor_size)
        self.timesteps = int(timesteps) if timesteps is not None else (16 if representation == "frames" else 6)
        self.batch_size, self.num_workers, self.pin_memory = int(batch_size), int(num_workers), bool(pin_memory)
        kw = dict(representation=representation, sensor_size=self.sensor_size, timesteps=self.timesteps,
                  frames_per_step=frames_per_step, split_by=split_by, downsample=downsample, num_points=num_points,
                  time_norm=time_norm, with_polarity=with_polarity, window_us=window_us, denoise_us=denoise_us,
                  frame_backend=frame_backend)
        self.train_transform = EventRepresentation(train=True, **kw)
        self.eval_transform = EventRepresentation(train=False, **kw)
        self.train_set: Optional[Dataset] = None
        self.val_set: Optional[Dataset] = None
        self.test_set: Optional[Dataset] = None

    @property
    def input_key(self) -> str:
        """Batch key of the model input: ``"events"`` (frames) or ``"points"``."""
        return "events" if self.representation == "frames" else "points"

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """Per-sample input shape (without B): ``(T_in, P, H', W')`` or ``(T, N, C)``."""
        return self.eval_transform.out_shape

    def _loader(self, ds: Optional[Dataset], shuffle: bool) -> DataLoader:
        if ds is None:
            raise RuntimeError("call setup() before asking for dataloaders")
        return DataLoader(ds, batch_size=self.batch_size, shuffle=shuffle, num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0, pin_memory=self.pin_memory, drop_last=False)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, False)


class DVSGestureDataModule(_EventDataModule):
    """DVS128 Gesture (11 classes, 128x128x2) from tonic's preprocessed ``.npy`` layout; never downloads.

    Train = ``ibmGestureTrain`` (1077 samples in the full set), val = test = ``ibmGestureTest`` (264).
    Batches: ``{"events": float32 [B, timesteps * frames_per_step, 2, 128/k, 128/k], "label": int64 [B]}``
    or with ``representation="points"`` ``{"points": float32 [B, timesteps, num_points, 3|4], "label"}``.

    Args:
        data_dir: folder holding ``DVSGesture/ibmGestureTrain`` (or ``ibmGestureTrain`` directly).
        timesteps: model timesteps ``T``; default 16 (frames) or 6 (points, SVL).
        frames_per_step: frames per timestep ``F``; the model receives ``T_in = T * F`` frames and chunks them.
        split_by: ``"count"`` (equal event counts, spikingjelly's ``split_by='number'`` convention) or
            ``"time"`` (equal time windows) - see :func:`events_to_frames`.
        sensor_size: ``(W, H, P)``; ``downsample``: integer pixel factor (2: 64x64, 4: 32x32).
        representation: ``"frames"`` or ``"points"``; ``num_points``, ``time_norm``, ``with_polarity``:
            see :func:`events_to_points`.
        window_us: optional sliding window (us) cropped from each recording (random in training, centred
            in evaluation); ``denoise_us``: optional tonic Denoise filter time (slow: pure Python).
        frame_backend: ``"numpy"`` (every event counted) or ``"tonic"`` (tonic ToFrame).
        skip_bad: skip-and-count invalid files instead of raising ValueError naming the file.
    """

    def __init__(self, *, data_dir: str = "data", timesteps: Optional[int] = None, frames_per_step: int = 1,
                 split_by: str = "count", sensor_size: Sequence[int] = DVSGESTURE_SENSOR_SIZE, downsample: int = 1,
                 representation: str = "frames", num_points: int = 1024, time_norm: str = "window",
                 with_polarity: bool = False, window_us: Optional[float] = None, denoise_us: Optional[float] = None,
                 frame_backend: str = "numpy", batch_size: int = 16, num_workers: int = 0, pin_memory: bool = False,
                 skip_bad: bool = False, seed: int = 0) -> None:
        super().__init__(sensor_size=sensor_size, timesteps=timesteps, frames_per_step=frames_per_step,
                         split_by=split_by, downsample=downsample, representation=representation,
                         num_points=num_points, time_norm=time_norm, with_polarity=with_polarity, window_us=window_us,
                         denoise_us=denoise_us, frame_backend=frame_backend, batch_size=batch_size,
                         num_workers=num_workers, pin_memory=pin_memory)
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


class SyntheticDVSDataModule(_EventDataModule):
    """Synthetic DVS recordings (see :func:`synthetic_dvs_events`): deterministic by ``seed``, learnable,
    no files; same batch layout as :class:`DVSGestureDataModule`. Default sensor 32x32x2 for fast CPU runs.

    Val / test use seed ``seed + 1`` (other recordings of the same classes).
    """

    def __init__(self, *, num_classes: int = 11, train_size: int = 256, val_size: int = 64,
                 timesteps: Optional[int] = None, frames_per_step: int = 1, split_by: str = "time",
                 sensor_size: Sequence[int] = (32, 32, 2), downsample: int = 1, representation: str = "frames",
                 num_points: int = 256, time_norm: str = "window", with_polarity: bool = False,
                 window_us: Optional[float] = None, duration_us: int = 1_000_000, num_events: int = 3000,
                 noise_fraction: float = 0.1, frame_backend: str = "numpy", batch_size: int = 16,
                 num_workers: int = 0, pin_memory: bool = False, seed: int = 0) -> None:
        super().__init__(sensor_size=sensor_size, timesteps=timesteps, frames_per_step=frames_per_step,
                         split_by=split_by, downsample=downsample, representation=representation,
                         num_points=num_points, time_norm=time_norm, with_polarity=with_polarity, window_us=window_us,
                         denoise_us=None, frame_backend=frame_backend, batch_size=batch_size,
                         num_workers=num_workers, pin_memory=pin_memory)
        if not 2 <= num_classes <= len(SYNTHETIC_DVS_CLASSES):
            raise ValueError(f"num_classes must be in 2..{len(SYNTHETIC_DVS_CLASSES)}, got {num_classes}")
        self.save_hyperparameters()
        self.num_classes = int(num_classes)
        self.class_names = SYNTHETIC_DVS_CLASSES[: self.num_classes]

    def _dataset(self, *, n: int, seed: int, train: bool) -> SyntheticDVSDataset:
        h = self.hparams
        return SyntheticDVSDataset(num_samples=n, num_classes=self.num_classes, sensor_size=self.sensor_size,
                                   duration_us=h.duration_us, num_events=h.num_events,
                                   noise_fraction=h.noise_fraction, seed=seed,
                                   transform=self.train_transform if train else self.eval_transform, train=train)

    def setup(self, stage: Optional[str] = None) -> None:
        h = self.hparams
        self.train_set = self._dataset(n=h.train_size, seed=h.seed, train=True)
        self.val_set = self._dataset(n=h.val_size, seed=h.seed + 1, train=False)
        self.test_set = self.val_set
