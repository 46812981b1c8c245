"""Tests for spikelight.datamodules.events: readers (real tonic test files + files written here),
frame / point transforms, the DVS128 Gesture layout, and the synthetic DVS DataModule."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from spikelight.datamodules.events import (
    DVSGESTURE_CLASSES,
    EVENT_DTYPE,
    SYNTHETIC_DVS_CLASSES,
    DVSGestureDataModule,
    SyntheticDVSDataModule,
    as_events,
    events_to_frames,
    events_to_points,
    read_aedat2,
    read_aedat4,
    read_dvsgesture_npy,
    read_events,
    read_ncars_dat,
    read_nmnist_bin,
    synthetic_dvs_events,
    time_window,
)

EVENTS_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "events" / "tonic_test_data"


def _real(name: str) -> Path:
    p = EVENTS_DIR / name
    if not p.is_file():
        pytest.skip(f"shared event file not present: {p}")
    return p


def _events(x, y, p, t) -> np.ndarray:
    ev = np.empty(len(t), EVENT_DTYPE)
    ev["x"], ev["y"], ev["p"], ev["t"] = x, y, np.asarray(p, bool), t
    return ev


def _random_events(n: int, *, W: int, H: int, t_max: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.sort(rng.choice(t_max, size=n, replace=False))  # unique times
    return _events(rng.integers(0, W, n), rng.integers(0, H, n), rng.random(n) < 0.5, t)


def test_event_dtype_is_tonics():
    import tonic  # the [events] extra, in [dev]: a missing tonic fails here instead of skipping

    assert EVENT_DTYPE == np.dtype(tonic.datasets.DVSGesture.dtype)
    assert EVENT_DTYPE.names == ("x", "y", "p", "t")
    assert DVSGESTURE_CLASSES == list(tonic.datasets.DVSGesture.classes)
    assert len(DVSGESTURE_CLASSES) == 11 and DVSGESTURE_CLASSES[0] == "Hand clapping"


# ----------------------------------------------------------------------------------------------
# readers on the real files (counts and ranges from shared/data/SOURCES.md section 2)
# ----------------------------------------------------------------------------------------------
def test_read_nmnist_real():
    path = _real("sample_nmnist.bin")
    ev = read_nmnist_bin(path)
    assert ev.dtype == EVENT_DTYPE and len(ev) == 4325
    assert ev["x"].min() == 0 and ev["x"].max() == 33 and ev["y"].min() == 0 and ev["y"].max() == 33
    assert ev["t"].min() == 654 and ev["t"].max() == 311175
    assert set(np.unique(ev["p"]).tolist()) == {False, True}
    # independent decode of the 40-bit format (no overflow markers in this sample)
    raw = np.fromfile(path, np.uint8).reshape(-1, 5).astype(np.int64)
    assert not (raw[:, 1] == 240).any()
    np.testing.assert_array_equal(ev["x"], raw[:, 0])
    np.testing.assert_array_equal(ev["y"], raw[:, 1])
    np.testing.assert_array_equal(ev["p"], raw[:, 2] >> 7)
    np.testing.assert_array_equal(ev["t"], ((raw[:, 2] & 127) << 16) | (raw[:, 3] << 8) | raw[:, 4])


def test_read_ncars_real():
    path = _real("sample_ncars.dat")
    ev = read_ncars_dat(path)
    assert ev.dtype == EVENT_DTYPE and len(ev) == 2009
    assert ev["t"].min() == 0 and ev["t"].max() == 99952
    assert ev["x"].min() >= 0 and ev["x"].max() == 77 and ev["y"].min() >= 0 and ev["y"].max() == 41
    # independent decode with the layout from SOURCES.md
    data = path.read_bytes()
    start = data.index(b"\n% Date")
    start = data.index(b"\n", start + 1) + 1
    assert data[start:start + 2] == b"\x00\x08"
    raw = np.frombuffer(data, dtype=np.dtype([("ts", "<u4"), ("a", "<u4")]), offset=start + 2)
    np.testing.assert_array_equal(ev["t"], raw["ts"])
    np.testing.assert_array_equal(ev["x"], raw["a"] & 0x3FFF)
    np.testing.assert_array_equal(ev["y"], (raw["a"] >> 14) & 0x3FFF)
    np.testing.assert_array_equal(ev["p"], raw["a"] >> 28)


def test_read_aedat4_real():
    path = _real("sample.aedat4")
    ev, size = read_aedat4(path, return_sensor_size=True)
    assert size == (320, 240, 2)
    assert ev.dtype == EVENT_DTYPE and len(ev) == 111954
    assert ev["t"].min() == 1605537493718345 and ev["t"].max() == 1605537494308262
    assert ev["x"].min() == 0 and ev["x"].max() == 319 and ev["y"].min() == 0 and ev["y"].max() == 239
    assert (np.diff(ev["t"]) >= 0).all()
    frames = events_to_frames(ev, sensor_size=size, n_frames=3, split_by="time", downsample=4)
    assert frames.shape == (3, 2, 60, 80) and frames.sum() == len(ev)


def test_truncated_aedat_header_clear_error():
    path = _real("sample_aedat_header.aedat")
    with pytest.raises(ValueError, match=r"sample_aedat_header\.aedat.*truncated.*no events follow"):
        read_aedat2(path)
    with pytest.raises(ValueError, match="sample_aedat_header.aedat"):
        read_events(path)


def test_read_events_dispatch_and_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.bin"):
        read_events(tmp_path / "nope.bin")
    with pytest.raises(ValueError, match="unknown event file type"):
        read_events(tmp_path / "x.csv")


# ----------------------------------------------------------------------------------------------
# readers on files written here
# ----------------------------------------------------------------------------------------------
def _aedat2_bytes(addr, ts, chip_line: str, end_prefs: bool = True) -> bytes:
    head = ("#!AER-DAT2.0\r\n# This is a raw AE data file\r\n"
            f"# AEChip: {chip_line}\r\n#Start of Preferences for this AEChip\r\n#<x/>\r\n")
    if end_prefs:
        head += "#End of Preferences for this AEChip\r\n"
    body = b"".join(struct.pack(">Ii", a, t) for a, t in zip(addr, ts))
    return head.encode() + body


def test_aedat2_dvs128_written(tmp_path):
    x, y, p, t = [0, 127, 5, 64], [0, 3, 127, 64], [1, 0, 1, 0], [10, 20, 30, 2_000_000_000]
    addr = [(yy << 8) | (xx << 1) | pp for xx, yy, pp in zip(x, y, p)]
    f = tmp_path / "rec.aedat"
    f.write_bytes(_aedat2_bytes(addr, t, "ch.unizh.ini.jaer.chip.retina.DVS128"))
    ev, size = read_aedat2(f, return_sensor_size=True)
    assert size == (128, 128, 2)
    np.testing.assert_array_equal(ev["x"], x)
    np.testing.assert_array_equal(ev["y"], y)
    np.testing.assert_array_equal(ev["p"], p)
    np.testing.assert_array_equal(ev["t"], t)
    # partial trailing event
    g = tmp_path / "cut.aedat"
    g.write_bytes(f.read_bytes()[:-3])
    with pytest.raises(ValueError, match=r"cut\.aedat.*whole number"):
        read_aedat2(g)
    # complete header but no events
    h = tmp_path / "empty.aedat"
    h.write_bytes(_aedat2_bytes([], [], "DVS128"))
    with pytest.raises(ValueError, match=r"empty\.aedat.*no events"):
        read_aedat2(h)


def test_aedat2_davis346_written(tmp_path):
    # DVS events: y bits 22-30, x bits 12-21 (both flipped), polarity bit 11; an APS sample has bit 31 set
    def a(x, y, p):
        return ((259 - y) << 22) | ((345 - x) << 12) | (p << 11)
    addr = [a(0, 0, 1), a(345, 259, 0), (1 << 31) | 123, a(100, 50, 1)]
    f = tmp_path / "davis.aedat"
    f.write_bytes(_aedat2_bytes(addr, [1, 2, 3, 4], "eu.seebetter.ini.chips.davis.Davis346red"))
    ev = read_aedat2(f)
    np.testing.assert_array_equal(ev["x"], [0, 345, 100])
    np.testing.assert_array_equal(ev["y"], [0, 259, 50])
    np.testing.assert_array_equal(ev["p"], [1, 0, 1])
    np.testing.assert_array_equal(ev["t"], [1, 2, 4])
    # an address whose first byte is '#' (0x23) right after an explicit end-of-header line is an event
    a0 = (0x23 << 24) | (5 << 12)
    head = b"#!AER-DAT2.0\r\n# AEChip: Davis346\r\n#End Of ASCII Header\r\n"
    f.write_bytes(head + struct.pack(">Ii", a0, 7))
    ev = read_aedat2(f)
    assert len(ev) == 1 and ev["x"][0] == 345 - 5 and ev["y"][0] == 259 - (a0 >> 22) and ev["t"][0] == 7


def test_nmnist_written_with_overflow(tmp_path):
    # events (x, y, p, ts) with an overflow marker (y == 240) before the last two: they get +2**13
    rows = [(1, 2, 1, 100), (33, 0, 0, 8000), (240, 240, 0, 0), (7, 9, 1, 5), (0, 33, 0, 8191)]
    buf = bytearray()
    for x, y, p, ts in rows:
        buf += bytes([x, y, (p << 7) | ((ts >> 16) & 127), (ts >> 8) & 255, ts & 255])
    f = tmp_path / "s.bin"
    f.write_bytes(bytes(buf))
    ev = read_nmnist_bin(f)
    np.testing.assert_array_equal(ev["x"], [1, 33, 7, 0])
    np.testing.assert_array_equal(ev["y"], [2, 0, 9, 33])
    np.testing.assert_array_equal(ev["p"], [1, 0, 1, 0])
    np.testing.assert_array_equal(ev["t"], [100, 8000, 5 + 8192, 8191 + 8192])
    g = tmp_path / "bad.bin"
    g.write_bytes(bytes(buf[:-2]))
    with pytest.raises(ValueError, match=r"bad\.bin.*multiple of 5"):
        read_nmnist_bin(g)


def test_ncars_written_and_truncated(tmp_path):
    x, y, p, t = [0, 77, 119], [99, 0, 41], [1, 0, 1], [0, 5, 99952]
    head = b"% Data file containing N9Chronocam7Event2dE events.\n% Version 2\n" + bytes([0, 8])
    body = b"".join(struct.pack("<II", tt, xx | (yy << 14) | (pp << 28)) for xx, yy, pp, tt in zip(x, y, p, t))
    f = tmp_path / "car.dat"
    f.write_bytes(head + body)
    ev = read_ncars_dat(f)
    np.testing.assert_array_equal(ev["x"], x)
    np.testing.assert_array_equal(ev["y"], y)
    np.testing.assert_array_equal(ev["p"], p)
    np.testing.assert_array_equal(ev["t"], t)
    g = tmp_path / "cut.dat"
    g.write_bytes(head + body[:-3])
    with pytest.raises(ValueError, match=r"cut\.dat.*truncated"):
        read_ncars_dat(g)
    h = tmp_path / "hdr.dat"
    h.write_bytes(head)
    with pytest.raises(ValueError, match=r"hdr\.dat.*no events"):
        read_ncars_dat(h)


def test_as_events_rejects_missing_fields():
    arr = np.zeros(3, dtype=[("x", "i4"), ("y", "i4"), ("t", "i8")])
    with pytest.raises(ValueError, match=r"\['p'\]"):
        as_events(arr)


# ----------------------------------------------------------------------------------------------
# frames
# ----------------------------------------------------------------------------------------------
def _loop_frames(ev, W, H, T, bin_of):
    out = np.zeros((T, 2, H, W), np.float32)
    for i, e in enumerate(ev):
        b = bin_of(i, e)
        if b is not None:
            out[b, int(e["p"]), e["y"], e["x"]] += 1
    return out


def test_frames_time_split_hand_computed():
    ev = _events(x=[0, 3, 3, 1, 2, 0], y=[0, 2, 2, 1, 0, 2], p=[1, 0, 0, 1, 1, 0], t=[0, 49, 49, 50, 99, 60])
    fr = events_to_frames(ev, sensor_size=(4, 3, 2), n_frames=2, split_by="time")
    assert fr.shape == (2, 2, 3, 4) and fr.dtype == np.float32
    # range [0, 99] -> windows [0, 50) and [50, 100)
    exp = np.zeros((2, 2, 3, 4), np.float32)
    exp[0, 1, 0, 0] = 1
    exp[0, 0, 2, 3] = 2
    exp[1, 1, 1, 1] = 1
    exp[1, 1, 0, 2] = 1
    exp[1, 0, 2, 0] = 1
    np.testing.assert_array_equal(fr, exp)
    # an explicit range drops the events outside it and keeps the total equal to the events inside
    fr2 = events_to_frames(ev, sensor_size=(4, 3, 2), n_frames=2, split_by="time", t_start=40, t_end=59)
    assert fr2.sum() == 3 and fr2[0].sum() == 2 and fr2[1].sum() == 1  # [40, 50) and [50, 60)


def test_frames_count_split_sizes_and_order_invariance():
    ev = _random_events(10, W=5, H=4, t_max=1000, seed=0)
    fr = events_to_frames(ev, sensor_size=(5, 4, 2), n_frames=3, split_by="count")
    np.testing.assert_array_equal(fr.sum(axis=(1, 2, 3)), [4, 3, 3])  # floor(i * 3 / 10)
    exp = _loop_frames(ev, 5, 4, 3, lambda i, e: (i * 3) // 10)
    np.testing.assert_array_equal(fr, exp)
    shuffled = ev[np.random.default_rng(1).permutation(len(ev))]
    np.testing.assert_array_equal(events_to_frames(shuffled, sensor_size=(5, 4, 2), n_frames=3, split_by="count"), fr)


def test_frames_real_nmnist_counts_and_downsample():
    ev = read_nmnist_bin(_real("sample_nmnist.bin"))
    T = 7
    fr = events_to_frames(ev, sensor_size=(34, 34, 2), n_frames=T, split_by="time")
    assert fr.shape == (T, 2, 34, 34) and fr.sum() == len(ev) == 4325
    t0, t1 = int(ev["t"].min()), int(ev["t"].max())
    D = t1 - t0 + 1
    rel = ev["t"].astype(np.int64) - t0
    per = [int(((rel * T >= k * D) & (rel * T < (k + 1) * D)).sum()) for k in range(T)]
    np.testing.assert_array_equal(fr.sum(axis=(1, 2, 3)), per)
    np.testing.assert_array_equal(fr.sum(axis=(0, 2, 3)), [(~ev["p"]).sum(), ev["p"].sum()])
    # downsample by 4: 34 -> 9 (ceil), equal to sum pooling of the full-resolution frames
    fd = events_to_frames(ev, sensor_size=(34, 34, 2), n_frames=T, split_by="time", downsample=4)
    assert fd.shape == (T, 2, 9, 9)
    pad = np.zeros((T, 2, 36, 36), np.float32)
    pad[..., :34, :34] = fr
    np.testing.assert_array_equal(fd, pad.reshape(T, 2, 9, 4, 9, 4).sum(axis=(3, 5)))


def test_frames_match_tonic_toframe_where_tonic_keeps_all_events():
    from tonic.transforms import ToFrame

    ev = read_nmnist_bin(_real("sample_nmnist.bin"))
    assert len(ev) % 5 == 0  # tonic's n_event_bins keeps N // T per bin: equal to ours when T divides N
    ours = events_to_frames(ev, sensor_size=(34, 34, 2), n_frames=5, split_by="count")
    theirs = ToFrame(sensor_size=(34, 34, 2), n_event_bins=5)(ev)
    np.testing.assert_array_equal(ours, theirs.astype(np.float32))
    assert events_to_frames(ev, sensor_size=(34, 34, 2), n_frames=5, split_by="count", backend="tonic").sum() == len(ev)
    # tonic's time bins are (t_last - t_first) // T long and drop what lies beyond T of them
    T = 4
    w = (int(ev["t"][-1]) - int(ev["t"][0])) // T
    kept = int((ev["t"] < ev["t"][0] + T * w).sum())
    tf = events_to_frames(ev, sensor_size=(34, 34, 2), n_frames=T, split_by="time", backend="tonic")
    assert tf.shape == (T, 2, 34, 34) and tf.sum() == kept < len(ev)


def test_frames_errors_and_empty():
    ev = _events([5], [0], [1], [0])
    with pytest.raises(ValueError, match="outside the sensor"):
        events_to_frames(ev, sensor_size=(4, 4, 2), n_frames=2)
    with pytest.raises(ValueError, match="split_by"):
        events_to_frames(ev, sensor_size=(8, 8, 2), n_frames=2, split_by="bogus")
    empty = np.empty(0, EVENT_DTYPE)
    fr = events_to_frames(empty, sensor_size=(8, 8, 2), n_frames=3, downsample=2)
    assert fr.shape == (3, 2, 4, 4) and fr.sum() == 0


def test_time_window():
    ev = _events(np.zeros(10), np.zeros(10), np.zeros(10), np.arange(10) * 100)  # t = 0..900
    assert np.array_equal(time_window(ev, window_us=300, start="first")["t"], [0, 100, 200])
    assert np.array_equal(time_window(ev, window_us=301, start="center")["t"], [300, 400, 500, 600])
    r = time_window(ev, window_us=250, start="random", rng=np.random.default_rng(0))
    assert 2 <= len(r) <= 3 and r["t"].max() - r["t"].min() < 250
    assert len(time_window(ev, window_us=10_000)) == 10


# ----------------------------------------------------------------------------------------------
# points (SVL's DVS downstream)
# ----------------------------------------------------------------------------------------------
def test_points_eval_normalised_and_steps():
    ev = _random_events(3000, W=128, H=128, t_max=600_000, seed=2)
    T, N = 6, 64
    pts = events_to_points(ev, sensor_size=(128, 128, 2), num_points=N, timesteps=T)
    assert pts.shape == (T, N, 3) and pts.dtype == np.float32
    assert pts.min() >= 0 and pts.max() <= 1
    z = pts[..., 2]
    assert z.min() == 0.0 and z.max() == 1.0  # first and last event are kept in evaluation mode
    t0, t1 = ev["t"].min(), ev["t"].max()
    tol = 1.0 / (t1 - t0)
    for s in range(T):
        assert z[s].min() >= s / T - tol and z[s].max() <= (s + 1) / T + tol
        assert (np.diff(z[s]) >= 0).all()  # time order within a step
    # every point is a real event: (x, y, z) maps back onto the event list
    lookup = {(int(e["x"]), int(e["y"]), int(e["t"])) for e in ev}
    xs, ys = np.rint(pts[..., 0] * 127).astype(int), np.rint(pts[..., 1] * 127).astype(int)
    ts = np.rint(z.astype(np.float64) * (t1 - t0) + t0).astype(int)
    assert all((a, b, c) in lookup for a, b, c in zip(xs.ravel(), ys.ravel(), ts.ravel()))
    np.testing.assert_array_equal(pts, events_to_points(ev, sensor_size=(128, 128, 2), num_points=N, timesteps=T))


def test_points_train_sampling_and_options():
    ev = _random_events(600, W=32, H=32, t_max=60_000, seed=3)
    pts = events_to_points(ev, sensor_size=(32, 32, 2), num_points=50, timesteps=6, with_polarity=True,
                           rng=np.random.default_rng(0))
    assert pts.shape == (6, 50, 4)
    assert set(np.unique(pts[..., 3]).tolist()) <= {0.0, 1.0}
    for s in range(6):  # ~100 events per step >= 50: sampled without replacement (unique times)
        assert len(np.unique(pts[s, :, 2])) == 50
    step = events_to_points(ev, sensor_size=(32, 32, 2), num_points=20, timesteps=3, time_norm="step")
    assert step[..., 2].min() >= 0 and step[..., 2].max() <= 1
    for s in range(3):
        assert step[s, 0, 2] < 0.05 and step[s, -1, 2] > 0.95  # each step spans [0, 1] on its own
    few = _random_events(5, W=8, H=8, t_max=100, seed=0)
    p2 = events_to_points(few, sensor_size=(8, 8, 2), num_points=16, timesteps=1, rng=np.random.default_rng(1))
    assert p2.shape == (1, 16, 3)  # with replacement when the step has fewer events than points


# ----------------------------------------------------------------------------------------------
# DVS128 Gesture layout
# ----------------------------------------------------------------------------------------------
def _write_gesture(root: Path, split: str, user: str, label: int, n: int, seed: int, dtype=np.int64) -> np.ndarray:
    rng = np.random.default_rng(seed)
    arr = np.stack([rng.integers(0, 128, n), rng.integers(0, 128, n), rng.integers(0, 2, n),
                    np.sort(rng.integers(0, 6000, n))], axis=1).astype(dtype)  # t in ms
    d = root / "DVSGesture" / split / user
    d.mkdir(parents=True, exist_ok=True)
    np.save(d / f"{label}.npy", arr)
    return arr


@pytest.fixture
def gesture_root(tmp_path) -> tuple[Path, dict]:
    files = {
        ("ibmGestureTrain", "user01_fluorescent", 0): 300,
        ("ibmGestureTrain", "user01_fluorescent", 3): 250,
        ("ibmGestureTrain", "user01_fluorescent", 10): 200,
        ("ibmGestureTrain", "user02_led", 1): 180,
        ("ibmGestureTrain", "user02_led", 3): 220,
        ("ibmGestureTest", "user24_natural", 5): 150,
        ("ibmGestureTest", "user24_natural", 2): 170,
    }
    arrays = {}
    for i, ((split, user, label), n) in enumerate(files.items()):
        arrays[(split, user, label)] = _write_gesture(tmp_path, split, user, label, n, seed=i,
                                                      dtype=np.float32 if label == 10 else np.int64)
    return tmp_path, arrays


def test_read_dvsgesture_npy_ms_to_us(gesture_root):
    root, arrays = gesture_root
    for label in (10, 0):  # a float32 file and an int64 file
        arr = arrays[("ibmGestureTrain", "user01_fluorescent", label)]
        ev = read_dvsgesture_npy(root / f"DVSGesture/ibmGestureTrain/user01_fluorescent/{label}.npy")
        assert ev.dtype == EVENT_DTYPE and len(ev) == len(arr)
        np.testing.assert_array_equal(ev["t"], arr[:, 3].astype(np.int64) * 1000)
        np.testing.assert_array_equal(ev["x"], arr[:, 0])
        np.testing.assert_array_equal(ev["y"], arr[:, 1])
        np.testing.assert_array_equal(ev["p"], arr[:, 2].astype(bool))


def test_dvsgesture_frames_datamodule(gesture_root):
    root, arrays = gesture_root
    dm = DVSGestureDataModule(data_dir=str(root), timesteps=4, frames_per_step=2, downsample=4, batch_size=8)
    assert dm.num_classes == 11 and dm.class_names == DVSGESTURE_CLASSES and dm.sample_shape == (8, 2, 32, 32)
    dm.setup("fit")
    assert len(dm.train_set) == 5 and len(dm.val_set) == 2
    assert sorted(dm.train_set.labels) == [0, 1, 3, 3, 10]
    assert set(dm.train_set.lighting) == {"fluorescent", "led"} and set(dm.train_set.users) == {1, 2}
    b = next(iter(dm.train_dataloader()))
    assert b["events"].shape == (5, 8, 2, 32, 32) and b["events"].dtype == torch.float32
    assert b["label"].dtype == torch.int64
    expected = sorted((k[2], len(a)) for k, a in arrays.items() if k[0] == "ibmGestureTrain")
    got = sorted(zip(b["label"].tolist(), b["events"].sum(dim=(1, 2, 3, 4)).long().tolist()))
    assert got == expected  # every event lands in a frame
    v = next(iter(dm.val_dataloader()))
    val_files = [f.name for f in dm.val_set.files]
    assert val_files == ["2.npy", "5.npy"] and v["label"].tolist() == [2, 5]
    assert v["events"].sum(dim=(1, 2, 3, 4)).tolist() == [170, 150]
    # data_dir may also be the DVSGesture folder itself
    dm2 = DVSGestureDataModule(data_dir=str(root / "DVSGesture"), timesteps=2)
    dm2.setup("validate")
    assert dm2.train_set is None and len(dm2.val_set) == 2


def test_dvsgesture_points_datamodule(gesture_root):
    root, _ = gesture_root
    dm = DVSGestureDataModule(data_dir=str(root), representation="points", num_points=32, batch_size=4)
    assert dm.timesteps == 6 and dm.input_key == "points"
    dm.setup("fit")
    b = next(iter(dm.train_dataloader()))
    assert set(b) == {"points", "label"}
    assert b["points"].shape == (4, 6, 32, 3) and b["points"].dtype == torch.float32
    assert b["points"].min() >= 0 and b["points"].max() <= 1
    # training samples points at random (a new subset each call); evaluation is deterministic
    assert not torch.equal(dm.train_set[0]["points"], dm.train_set[0]["points"])
    assert torch.equal(dm.val_set[1]["points"], dm.val_set[1]["points"])
    v = next(iter(dm.val_dataloader()))
    z = v["points"][..., 2]
    assert torch.allclose(z.amin(dim=(1, 2)), torch.zeros(2)) and torch.allclose(z.amax(dim=(1, 2)), torch.ones(2))


def test_dvsgesture_missing_folder_names_path(tmp_path):
    missing = tmp_path / "nowhere"
    dm = DVSGestureDataModule(data_dir=str(missing))  # no error before setup
    with pytest.raises(FileNotFoundError) as ei:
        dm.setup("fit")
    msg = str(ei.value)
    assert str(missing / "DVSGesture" / "ibmGestureTrain") in msg and "<label>.npy" in msg
    assert not missing.exists()  # nothing created or downloaded


def test_dvsgesture_corrupt_file(gesture_root):
    root, _ = gesture_root
    bad = root / "DVSGesture/ibmGestureTrain/user02_led/4.npy"
    bad.write_bytes(b"this is not a npy file")
    with pytest.raises(ValueError, match=r"user02_led[/\\]4\.npy"):
        DVSGestureDataModule(data_dir=str(root)).setup("fit")
    dm = DVSGestureDataModule(data_dir=str(root), skip_bad=True, timesteps=2)
    with pytest.warns(UserWarning, match="skipped 1 bad file"):
        dm.setup("fit")
    assert dm.num_skipped == 1 and len(dm.train_set) == 5
    # wrong shape: clear message with the shape
    np.save(bad, np.zeros((10, 3)))
    with pytest.raises(ValueError, match=r"4\.npy.*\(N, 4\).*\(10, 3\)"):
        DVSGestureDataModule(data_dir=str(root)).setup("fit")


def test_dvsgesture_bad_content_found_at_load(gesture_root):
    root, _ = gesture_root
    f = root / "DVSGesture/ibmGestureTest/user24_natural/2.npy"
    arr = np.load(f)
    arr[3, 0] = 500  # x outside the 128-pixel sensor; the header is still valid
    np.save(f, arr)
    dm = DVSGestureDataModule(data_dir=str(root), timesteps=2)
    dm.setup("validate")
    with pytest.raises(ValueError, match=r"2\.npy.*x range"):
        dm.val_set[0]
    dm = DVSGestureDataModule(data_dir=str(root), timesteps=2, skip_bad=True)
    dm.setup("validate")
    with pytest.warns(UserWarning, match="replacing unreadable"):
        item = dm.val_set[0]
    assert item["label"].item() == 5  # replaced by the next sample


# ----------------------------------------------------------------------------------------------
# synthetic
# ----------------------------------------------------------------------------------------------
def test_synthetic_events_valid_and_deterministic():
    ev = synthetic_dvs_events(label=4, rng=np.random.default_rng(0), sensor_size=(32, 32, 2), num_events=800)
    assert ev.dtype == EVENT_DTYPE and 600 < len(ev) < 1100
    assert ev["x"].min() >= 0 and ev["x"].max() < 32 and ev["y"].max() < 32
    assert (np.diff(ev["t"]) >= 0).all() and ev["t"].min() >= 0 and ev["t"].max() < 1_000_000
    again = synthetic_dvs_events(label=4, rng=np.random.default_rng(0), sensor_size=(32, 32, 2), num_events=800)
    np.testing.assert_array_equal(ev, again)


def test_synthetic_datamodule_determinism_and_layout():
    kw = dict(num_classes=4, train_size=16, val_size=8, timesteps=4, batch_size=8, num_events=500)
    a, b, c = SyntheticDVSDataModule(**kw), SyntheticDVSDataModule(**kw), SyntheticDVSDataModule(seed=1, **kw)
    for dm in (a, b, c):
        dm.setup("fit")
    va, vb, vc = (next(iter(dm.val_dataloader())) for dm in (a, b, c))
    assert va["events"].shape == (8, 4, 2, 32, 32) and va["label"].dtype == torch.int64
    assert torch.equal(va["events"], vb["events"]) and torch.equal(va["label"], vb["label"])
    assert not torch.equal(va["events"], vc["events"])
    torch.manual_seed(0)
    ta = next(iter(a.train_dataloader()))
    torch.manual_seed(0)
    tb = next(iter(b.train_dataloader()))
    assert torch.equal(ta["events"], tb["events"]) and torch.equal(ta["label"], tb["label"])
    # frames hold every generated event; labels are balanced
    raw = a.val_set.load(3)
    assert a.val_set[3]["events"].sum().item() == len(raw)
    assert sorted(a.train_set.label_of(i) for i in range(16)) == sorted(list(range(4)) * 4)
    assert a.class_names == SYNTHETIC_DVS_CLASSES[:4]
    p = SyntheticDVSDataModule(representation="points", num_points=32, **kw)
    p.setup("fit")
    pb = next(iter(p.val_dataloader()))
    assert pb["points"].shape == (8, 4, 32, 3)


def test_synthetic_is_learnable_quickly():
    """A nearest-class-centroid classifier on the frames beats chance (1/11) on held-out recordings;
    the same classifier fit on shuffled labels does not (so the check can fail)."""
    K = 11
    dm = SyntheticDVSDataModule(num_classes=K, train_size=16 * K, val_size=8 * K, timesteps=4, downsample=2,
                                num_events=800, batch_size=1024, seed=3)
    dm.setup("fit")
    tr, va = next(iter(dm.train_dataloader())), next(iter(dm.val_dataloader()))

    def feat(batch):
        return torch.nn.functional.normalize(batch["events"].flatten(1), dim=1)

    def accuracy(train_labels):
        cent = torch.stack([feat(tr)[train_labels == k].mean(0) for k in range(K)])
        return ((feat(va) @ cent.T).argmax(1) == va["label"]).float().mean().item()

    acc = accuracy(tr["label"])
    shuffled = tr["label"][torch.randperm(len(tr["label"]), generator=torch.Generator().manual_seed(0))]
    acc_shuffled = accuracy(shuffled)
    assert acc >= 0.8, f"val accuracy {acc:.2f} (chance {1 / K:.2f})"
    assert acc_shuffled < 0.5, f"shuffled-label control reached {acc_shuffled:.2f}"


def test_synthetic_frames_feed_trevsnn_dvs():
    from spikelight.models import trevsnn
    T, F = 2, 2
    dm = SyntheticDVSDataModule(num_classes=4, train_size=4, val_size=2, timesteps=T, frames_per_step=F,
                                batch_size=2, num_events=300)
    dm.setup("fit")
    x = next(iter(dm.val_dataloader()))["events"]
    model = trevsnn.trevsnn_test(num_classes=4, timesteps=T, dvs=True, in_chans=2 * F).eval()
    with torch.no_grad():
        out = model(x)
    assert out.shape == (2, 4) and torch.isfinite(out).all()
