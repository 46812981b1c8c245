"""DVS events as point clouds for the SVL encoders: polarity in the colour channels, the event DataModules
(files written in tonic's DVS128 Gesture layout, the shared real recordings in class folders) feeding
PointClassify as [T, B, N, F], and an SVL-pretrained (T = 1) encoder fine-tuned over T = 6 windows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from spikelight.datamodules.base import DataError
from spikelight.datamodules.events import (
    DVSGestureDataModule,
    EventFolderDataModule,
    EventRepresentation,
    SyntheticDVSDataModule,
    events_to_points,
    point_features,
)
from spikelight.tasks.point_classify import PointClassify

pytestmark = pytest.mark.usefixtures("one_thread")

ENC = {"name": "spike_pointnet_test", "embed_dim": 16, "input_transform": False, "feature_transform": False}


def test_point_features_polarity_as_colour():
    pts = np.array([[[0.0, 0.5, 1.0, 1.0], [1.0, 0.25, 0.0, 0.0]]], np.float32)  # [T=1, N=2, xyzp]
    rgb = point_features(pts, features="xyzrgb")
    np.testing.assert_array_equal(rgb[0, 0], [0.0, 0.5, 1.0, 1.0, 1.0, 1.0])  # ON: white
    np.testing.assert_array_equal(rgb[0, 1], [1.0, 0.25, 0.0, 0.0, 0.0, 0.0])  # OFF: black
    red_blue = point_features(pts, features="xyzrgb", polarity_colors=((0, 0, 1), (1, 0, 0)), centered=True)
    np.testing.assert_array_equal(red_blue[0, 0], [-1.0, 0.0, 1.0, 1.0, 0.0, 0.0])
    np.testing.assert_array_equal(red_blue[0, 1], [1.0, -0.5, -1.0, 0.0, 0.0, 1.0])
    assert point_features(pts, features="xyz").shape == (1, 2, 3)
    np.testing.assert_array_equal(point_features(pts, features="xyzp"), pts)
    with pytest.raises(ValueError, match="xyzrgb"):
        point_features(pts, features="rgb")
    with pytest.raises(ValueError, match="polarity_colors"):
        EventRepresentation(representation="points", point_features="xyzrgb", polarity_colors=((1, 1, 1),))
    # the representation gives the same xyz as events_to_points, with the colours of the events' polarity
    rng = np.random.default_rng(0)
    ev = np.zeros(500, dtype=[("x", "i2"), ("y", "i2"), ("p", "?"), ("t", "i8")])
    ev["x"], ev["y"] = rng.integers(0, 32, 500), rng.integers(0, 32, 500)
    ev["p"], ev["t"] = rng.random(500) < 0.5, np.sort(rng.integers(0, 10_000, 500))
    rep = EventRepresentation(representation="points", sensor_size=(32, 32, 2), timesteps=6, num_points=16,
                              point_features="xyzrgb")
    assert rep.out_shape == (6, 16, 6)
    out = rep(ev)["points"].numpy()
    ref = events_to_points(ev, sensor_size=(32, 32, 2), num_points=16, timesteps=6, with_polarity=True)
    np.testing.assert_array_equal(out[..., :3], ref[..., :3])
    np.testing.assert_array_equal(out[..., 3], ref[..., 3])


def _write_gesture(root: Path, split: str, user: str, label: int, n: int, seed: int) -> None:
    """One recording in tonic's preprocessed layout: (N, 4) int64 x, y, p, t[ms]."""
    rng = np.random.default_rng(seed)
    arr = np.stack([rng.integers(0, 128, n), rng.integers(0, 128, n), rng.integers(0, 2, n),
                    np.sort(rng.integers(0, 6000, n))], 1).astype(np.int64)
    d = root / "DVSGesture" / split / user
    d.mkdir(parents=True, exist_ok=True)
    np.save(d / f"{label}.npy", arr)


def test_dvsgesture_points_feed_pointclassify_and_frames_still_work(tmp_path):
    for i, (user, label) in enumerate([("user01_fluorescent", 0), ("user01_fluorescent", 4), ("user02_led", 10)]):
        _write_gesture(tmp_path, "ibmGestureTrain", user, label, 400 + 50 * i, i)
    _write_gesture(tmp_path, "ibmGestureTest", "user24_led", 3, 300, 9)
    dm = DVSGestureDataModule(data_dir=str(tmp_path), representation="points", timesteps=6, num_points=32,
                              point_features="xyzrgb", center_points=True, batch_size=3)
    dm.setup("fit")
    b = next(iter(dm.train_dataloader()))
    assert b["points"].shape == (3, 6, 32, 6) and dm.sample_shape == (6, 32, 6)
    assert b["points"][..., :3].abs().max() <= 1.0 and set(b["points"][..., 3:].unique().tolist()) <= {0.0, 1.0}
    assert sorted(b["label"].tolist()) == [0, 4, 10]
    torch.manual_seed(0)
    task = PointClassify(encoder={**ENC, "timesteps": 6}, num_classes=11)
    seen = []
    task.encoder.register_forward_pre_hook(lambda m, a: seen.append(tuple(a[0].shape)))
    loss = torch.nn.functional.cross_entropy(task.infer(b), b["label"])
    loss.backward()
    assert seen == [(6, 3, 32, 6)]  # [T, B, N, F]
    assert torch.isfinite(loss)
    assert task.encoder.mlp1.layers[0]["conv"].weight.grad.abs().sum() > 0  # the 6-channel input layer learns
    assert all(p.grad is not None for p in task.head.parameters())
    # the frames representation (T-RevSNN's DVS config) on the same DataModule class
    frames = DVSGestureDataModule(data_dir=str(tmp_path), timesteps=4, frames_per_step=4, batch_size=2)
    frames.setup("validate")
    fb = next(iter(frames.val_dataloader()))
    assert fb["events"].shape == (1, 16, 2, 128, 128) and fb["events"].sum() == 300


def _link(root: Path, split: str, cls: str, src: Path) -> None:
    d = root / split / cls
    d.mkdir(parents=True, exist_ok=True)
    (d / src.name).symlink_to(src)


def test_event_folder_datamodule_on_real_recordings(shared_data, tmp_path):
    real = shared_data / "events" / "tonic_test_data"
    files = {"aedat4": "sample.aedat4", "nmnist": "sample_nmnist.bin", "ncars": "sample_ncars.dat"}
    for split in ("train", "test"):
        for cls, name in files.items():
            _link(tmp_path / "data", split, cls, real / name)
    dm = EventFolderDataModule(data_dir=str(tmp_path / "data"), sensor_size=(320, 240, 2),
                               representation="points", timesteps=6, num_points=64, point_features="xyzrgb",
                               batch_size=3)
    assert dm.class_names == ["aedat4", "ncars", "nmnist"]
    dm.setup("fit")
    ds = dm.val_set
    assert [len(ds.load(i)) for i in range(3)] == [111954, 2009, 4325]  # SOURCES.md event counts
    b = next(iter(dm.val_dataloader()))
    assert b["points"].shape == (3, 6, 64, 6) and b["label"].tolist() == [0, 1, 2]
    # N-MNIST (34x34 sensor) x never reaches 34 / 319: normalised by the configured sensor width
    assert b["points"][2, ..., 0].max() <= 33 / 319 + 1e-6
    task = PointClassify(encoder={**ENC, "timesteps": 6}, num_classes=3).eval()
    assert task.infer(b).shape == (3, 3)
    # a recording outside the configured sensor, and a header-only AEDAT file: errors naming the file
    small = EventFolderDataModule(data_dir=str(tmp_path / "data"), sensor_size=(128, 128, 2),
                                  representation="points", batch_size=1)
    small.setup("validate")
    with pytest.raises(DataError, match=r"sample\.aedat4.*outside the configured sensor_size 128x128"):
        small.val_set[0]
    _link(tmp_path / "bad", "test", "header_only", real / "sample_aedat_header.aedat")
    bad = EventFolderDataModule(data_dir=str(tmp_path / "bad"), sensor_size=(346, 260, 2),
                                representation="points", batch_size=1)
    bad.setup("validate")
    with pytest.raises(DataError, match=r"sample_aedat_header\.aedat: truncated"):
        bad.val_set[0]
    with pytest.raises(FileNotFoundError, match="nowhere"):
        EventFolderDataModule(data_dir=str(tmp_path / "nowhere"), sensor_size=(8, 8, 2)).setup("fit")


def test_svl_pretrained_encoder_finetunes_on_dvs_points(tmp_path):
    """An encoder pretrained at T = 1 (a state_dict file here) loads exactly into the T = 6 DVS encoder and
    trains on synthetic event points (xyz + polarity colours: the pretrained 6-channel input layer kept)."""
    from spikelight.models import build_model

    pre = build_model(dict(ENC))
    with torch.no_grad():
        for p in pre.parameters():
            p.add_(0.1)
    torch.save({f"encoder.{k}": v for k, v in pre.state_dict().items()}, tmp_path / "enc.pt")
    task = PointClassify(encoder=dict(ENC), encoder_overrides={"timesteps": 6}, num_classes=4,
                         pretrained=str(tmp_path / "enc.pt"),
                         optimizer=lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9))
    assert task.encoder.timesteps == 6 and task.pretrained_report["loaded"] == len(pre.state_dict())
    assert all(torch.equal(task.encoder.state_dict()[k], v) for k, v in pre.state_dict().items())
    dm = SyntheticDVSDataModule(num_classes=4, train_size=8, val_size=4, representation="points", num_points=32,
                                point_features="xyzrgb", center_points=True, batch_size=4)
    dm.setup("fit")
    opt = torch.optim.SGD(task.parameters(), lr=0.05)
    before = task.encoder.state_dict()["mlp1.layers.0.conv.weight"].clone()
    for b in dm.train_dataloader():
        loss = torch.nn.functional.cross_entropy(task.infer(b), b["label"])
        assert torch.isfinite(loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert not torch.equal(before, task.encoder.state_dict()["mlp1.layers.0.conv.weight"])
