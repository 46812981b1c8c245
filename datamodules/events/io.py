"""DVS event readers: every reader returns :data:`EVENT_DTYPE` events (fields ``x, y, p, t``, ``t`` in
microseconds), raises :class:`~spikelight.datamodules.base.DataError` (a ``ValueError``, ``"<file>: <problem>"``
on one line, also through DataLoader workers) on corrupt or truncated input and ``FileNotFoundError`` when the
file is missing. See :mod:`spikelight.datamodules.events` for the table. ``tonic``, ``aedat`` and
``expelliarmus`` (the ``[events]`` extra) are imported by the readers that use them, on first use.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Optional, Union

import numpy as np

from spikelight.datamodules.base import DataError

PathLike = Union[str, Path]
SensorSize = tuple[int, int, int]  # (W, H, P) like tonic

#: The event dtype (fields x, y, p, t; t in microseconds) - tonic's DVSGesture dtype (a test checks it).
EVENT_DTYPE = np.dtype([("x", np.int16), ("y", np.int16), ("p", bool), ("t", np.int64)])

#: DVS128 Gesture class names (label = index), as in ``tonic.datasets.DVSGesture.classes``.
DVSGESTURE_CLASSES: list[str] = [
    "Hand clapping", "Right hand wave", "Left hand wave", "Right arm cw", "Right arm ccw",
    "Left arm cw", "Left arm ccw", "Arm roll", "Air drums", "Air guitar", "Other gestures"]
DVSGESTURE_SENSOR_SIZE: SensorSize = (128, 128, 2)
NMNIST_SENSOR_SIZE: SensorSize = (34, 34, 2)
NCARS_SENSOR_SIZE: SensorSize = (120, 100, 2)


def import_tonic(what: str) -> ModuleType:
    """``tonic`` with ``tonic.io`` and ``tonic.transforms`` loaded (imported on first use: the ``[events]`` extra)."""
    try:
        import tonic
        import tonic.io
        import tonic.transforms
    except ImportError as e:
        raise ImportError(f"{what} needs the 'tonic' package: pip install 'spikelight[events]'") from e
    return tonic


def as_events(arr: np.ndarray, *, source: Optional[PathLike] = None) -> np.ndarray:
    """Convert any structured array with fields ``x, y, p, t`` (any order / integer widths, ``p`` bool
    or int, titled fields like aedat's ``('p', 'on')``) to :data:`EVENT_DTYPE`.

    Raises DataError naming ``source`` (ValueError without it) when a field is missing or ``p`` is not 0/1.
    """
    names = tuple(arr.dtype.fields or ())  # includes titles, e.g. aedat's ('p', 'on')
    missing = [f for f in ("x", "y", "p", "t") if f not in names]
    if missing:
        raise _bad(source, f"event array lacks field(s) {missing}; has {list(names)}")
    out = np.empty(arr.shape[0], dtype=EVENT_DTYPE)
    p = np.asarray(arr["p"])
    if p.dtype != np.bool_ and p.size and not np.isin(p, (0, 1)).all():
        raise _bad(source, f"polarity values must be 0/1, got {np.unique(p)[:8].tolist()}")
    out["x"], out["y"], out["p"] = arr["x"], arr["y"], p.astype(bool)
    out["t"] = np.asarray(arr["t"]).astype(np.int64)
    return out


def _bad(source: Optional[PathLike], problem: str) -> ValueError:
    """A :class:`DataError` naming ``source``; a plain ``ValueError`` for an array with no file."""
    return ValueError(problem) if source is None else DataError(source, problem)


def _check_events(ev: np.ndarray, sensor_size: Optional[SensorSize], source: PathLike, fmt: str) -> np.ndarray:
    if ev.shape[0] == 0:
        raise DataError(source, f"{fmt} file contains no events")
    if sensor_size is not None:
        w, h = int(sensor_size[0]), int(sensor_size[1])
        for f, lim in (("x", w), ("y", h)):
            lo, hi = int(ev[f].min()), int(ev[f].max())
            if lo < 0 or hi >= lim:
                raise DataError(source, f"{fmt} event {f} range [{lo}, {hi}] is outside the sensor "
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
        raise DataError(path, f"cannot be read as a .npy array ({type(e).__name__}: {e})") from e
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise DataError(path, f"expected an (N, 4) array with columns x, y, p, t[ms] (tonic DVSGesture "
                         f"layout), got shape {arr.shape}")
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise DataError(path, f"expected a numeric array, got dtype {arr.dtype}")
    if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
        raise DataError(path, "array contains NaN or inf")
    ev = np.empty(arr.shape[0], dtype=EVENT_DTYPE)
    p = arr[:, 2]
    if p.size and not np.isin(p, (0, 1)).all():
        raise DataError(path, f"polarity column (2) must hold 0/1, got {np.unique(p)[:8].tolist()}")
    for col, f in ((0, "x"), (1, "y")):
        c = arr[:, col]
        if c.size and (c.min() < -32768 or c.max() > 32767):
            raise DataError(path, f"column {col} ({f}) out of range: [{c.min()}, {c.max()}]")
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
    tonic = import_tonic("read_nmnist_bin")
    path = _require_file(path, "N-MNIST .bin")
    size = path.stat().st_size
    if size == 0 or size % 5:
        raise DataError(path, f"N-MNIST .bin size {size} bytes is not a positive multiple of 5 "
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
        raise DataError(path, "DAT file ends inside its header (no event type / size bytes)")
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
        raise DataError(path, f"DAT event size byte is {esize}, expected 8 (2D CD events)")
    nbytes = path.stat().st_size - start
    if nbytes <= 0:
        raise DataError(path, "DAT file contains no events")
    if nbytes % 8:
        raise DataError(path, f"DAT payload of {nbytes} bytes is not a multiple of 8; truncated file")
    try:
        import expelliarmus
    except ImportError as e:  # pragma: no cover
        raise ImportError("read_ncars_dat needs 'expelliarmus': pip install 'spikelight[events]'") from e
    try:
        raw = expelliarmus.Wizard(encoding="dat").read(str(path))
    except Exception as e:  # noqa: BLE001
        raise DataError(path, f"could not decode DAT events ({type(e).__name__}: {e})") from e
    if raw is None or len(raw) != nbytes // 8:
        raise DataError(path, f"decoded {0 if raw is None else len(raw)} events, expected {nbytes // 8}")
    return _check_events(as_events(raw, source=path), sensor_size, path, "DAT")


def aedat4_sensor_size(path: PathLike) -> SensorSize:
    """``(W, H, 2)`` of the first event stream of an AEDAT4 file (from its header, via ``aedat``)."""
    path = _require_file(path, "AEDAT4")
    try:
        import aedat
        streams = aedat.Decoder(str(path)).id_to_stream()
    except ImportError as e:
        raise ImportError("AEDAT4 needs the 'aedat' package: pip install 'spikelight[events]'") from e
    except Exception as e:  # noqa: BLE001
        raise DataError(path, f"not a readable AEDAT4 file ({type(e).__name__}: {e})") from e
    ev = sorted(k for k, s in streams.items() if s.get("type") == "events")
    if not ev:
        raise DataError(path, f"AEDAT4 file has no event stream (streams: {streams})")
    s = streams[ev[0]]
    return int(s["width"]), int(s["height"]), 2


def read_aedat4(path: PathLike, *, return_sensor_size: bool = False):
    """AEDAT 4 (DV software) events of the first event stream, via ``tonic.io.read_aedat4``.

    Returns events (``t`` absolute microseconds), or ``(events, (W, H, 2))`` with ``return_sensor_size``.
    """
    tonic = import_tonic("read_aedat4")
    size = aedat4_sensor_size(path)  # also checks the file and the aedat package
    try:
        raw = tonic.io.read_aedat4(str(path))
    except Exception as e:  # noqa: BLE001
        raise DataError(path, f"could not decode AEDAT4 events ({type(e).__name__}: {e})") from e
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

    Raises DataError naming the file for a truncated header (a preferences block that never ends),
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
        raise DataError(path, "not an AEDAT file (no '#!AER-DAT' version line)")
    if not version.startswith("2."):
        raise DataError(path, f"AEDAT version {version} is not supported here (only 2.0; use read_aedat4 for "
                         f"AEDAT4 or tonic.io for 3.1)")
    payload = len(data) - pos
    if prefs_open and payload == 0:
        raise DataError(path, f"truncated AEDAT {version} file: the header is cut off inside the "
                         f"preferences block ('#Start of Preferences' without '#End of Preferences') and "
                         f"no events follow")
    if payload == 0:
        raise DataError(path, f"AEDAT {version} file has a header but no events")
    if payload % 8:
        raise DataError(path, f"AEDAT {version} payload of {payload} bytes is not a whole number of "
                         f"8-byte events; truncated or corrupt file")
    if chip is None:
        name = (aechip or "").lower()
        chip = "dvs128" if "dvs128" in name else "davis346" if "davis346" in name else None
        if chip is None:
            raise DataError(path, f"cannot tell the sensor from AEChip '{aechip}'; pass chip='dvs128' or "
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
        raise DataError(path, f"unknown event file type '{suffix}' (known: {sorted(readers)})")
    return readers[suffix](path)
