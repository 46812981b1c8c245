"""Point-cloud formats, transforms and DataModules (spikelight.datamodules.pointcloud)."""

from __future__ import annotations

import json
import math
import struct
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

from spikelight.datamodules.pointcloud import (
    PROMPT_TEMPLATES,
    SCANOBJECTNN_CLASSES,
    H5PointCloudDataset,
    ModelNet40DataModule,
    ModelNet40Dataset,
    OpenShapeTripletDataModule,
    OpenShapeTripletDataset,
    ScanObjectNNDataModule,
    ScanObjectNNDataset,
    ShapeNet55TripletDataModule,
    ShapeNet55TripletDataset,
    collate_pointcloud,
    load_labels,
    load_point_cloud,
    load_shapenet_taxonomy,
    load_templates,
    read_h5_pointclouds,
    read_modelnet_txt,
    read_modelnet_txt_cached,
    read_off,
    read_ply,
    sample_mesh_surface,
)
from spikelight.datamodules.pointcloud.transforms import (
    PointCloudTransform,
    farthest_point_sample,
    normalize_unit_sphere,
    random_point_dropout,
    random_rgb_drop,
    random_rotate_up,
    sample_points,
)

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"shared fixture {path} absent")
    return path


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------------------------------
# farthest point sampling + transforms
# ----------------------------------------------------------------------------------------------------
def _fps_reference(x: np.ndarray, n: int) -> list[int]:
    """Plain-python FPS (independent of the torch implementation)."""
    chosen = [0]
    d = np.full(len(x), np.inf)
    for _ in range(n - 1):
        d = np.minimum(d, ((x - x[chosen[-1]]) ** 2).sum(1))
        chosen.append(int(np.argmax(d)))
    return chosen


def test_fps_matches_reference_and_batches():
    g = _gen(0)
    xyz = torch.rand(3, 300, 3, generator=g)
    idx = farthest_point_sample(xyz, 40)
    assert idx.shape == (3, 40) and idx.dtype == torch.int64
    for b in range(3):
        assert idx[b].tolist() == _fps_reference(xyz[b].double().numpy(), 40)
        assert len(set(idx[b].tolist())) == 40
    # extra channels are ignored
    assert torch.equal(farthest_point_sample(torch.cat([xyz, torch.rand(3, 300, 3)], -1), 40), idx)
    # more samples than points: every point once (FPS order), then repeats of distance-0 points
    more = farthest_point_sample(xyz[:1, :10], 12)[0].tolist()
    assert sorted(more[:10]) == list(range(10)) and set(more[10:]) <= set(range(10))


def test_fps_picks_spread_points():
    g = _gen(1)
    # a clustered cloud: random subsets land inside the dense blob, FPS covers the extent
    xyz = torch.cat([torch.randn(900, 3, generator=g) * 0.05, torch.rand(100, 3, generator=g) * 2 - 1])[None]
    n = 32
    fps = xyz[0, farthest_point_sample(xyz, n)[0]]
    rnd = xyz[0, torch.randperm(1000, generator=g)[:n]]

    def min_pair(p):
        d = torch.cdist(p, p) + torch.eye(len(p)) * 1e9
        return d.min().item()

    assert min_pair(fps) > 3 * min_pair(rnd)
    r_start = farthest_point_sample(xyz, 8, start=None, generator=_gen(5))
    assert torch.equal(r_start, farthest_point_sample(xyz, 8, start=None, generator=_gen(5)))


def test_sample_points_counts():
    p = torch.arange(30, dtype=torch.float32).reshape(10, 3)
    assert sample_points(p, 4, method="first").tolist() == p[:4].tolist()
    r = sample_points(p, 25, method="random", generator=_gen(0))
    assert r.shape == (25, 3)
    assert torch.equal(r[:10], p)  # all originals kept, then duplicates
    assert all(row in p.tolist() for row in r.tolist())
    f = sample_points(p, 5, method="fps")
    assert len({tuple(x) for x in f.tolist()}) == 5


def test_normalize_unit_sphere_hand_values():
    p = torch.tensor([[1.0, 0, 0, 0.1, 0.2, 0.3], [3.0, 0, 0, 0.1, 0.2, 0.3], [2.0, 1.0, 0, 0.5, 0.5, 0.5]])
    out = normalize_unit_sphere(p)
    centre = torch.tensor([2.0, 1 / 3, 0])
    r = (p[:, :3] - centre).norm(dim=1).max()
    assert torch.allclose(out[:, :3], (p[:, :3] - centre) / r)
    assert torch.equal(out[:, 3:], p[:, 3:])
    assert math.isclose(out[:, :3].norm(dim=1).max().item(), 1.0, rel_tol=1e-6)


def test_transform_eval_unit_sphere_and_shape():
    pts = torch.rand(500, 3) * 7 + 3
    t = PointCloudTransform(num_points=128, sampling="fps", augment=False)
    out = t(pts)
    assert out.shape == (128, 6) and out.dtype == torch.float32
    assert torch.allclose(out[:, 3:], torch.full((128, 3), 0.4))
    assert out[:, :3].norm(dim=1).max().item() == pytest.approx(1.0, abs=1e-5)
    assert out[:, :3].mean(0).abs().max() < 1e-5
    assert torch.equal(out, t(pts))  # fps + no augmentation: deterministic without a generator


def test_transform_augment_deterministic_under_seed():
    pts = torch.cat([torch.rand(400, 3), torch.rand(400, 3)], 1)
    t = PointCloudTransform(num_points=256, sampling="random", augment=True)
    a, b, c = t(pts, _gen(3)), t(pts, _gen(3)), t(pts, _gen(4))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert a.shape == (256, 6) and torch.isfinite(a).all()
    # augmented xyz stays bounded: |scale| <= 1.25, shift <= 0.1 per axis, rotations keep norms
    assert a[:, :3].norm(dim=1).max() <= 1.25 + math.sqrt(3) * 0.1 + 1e-5


def test_dropout_replaces_with_first_point():
    p = torch.randn(1000, 6)
    out = random_point_dropout(p, max_ratio=0.875, generator=_gen(0))
    changed = (out != p).any(1)
    assert changed.sum() > 0
    assert torch.equal(out[changed], p[0].expand(int(changed.sum()), 6))
    assert (out == p[0]).all(1).sum() <= 1000 * 0.875 + 60  # at most ~max_ratio of the rows


def test_rotate_up_keeps_height_and_radius():
    p = torch.randn(200, 6)
    out = random_rotate_up(p, up_axis=1, generator=_gen(2))
    assert torch.allclose(out[:, 1], p[:, 1])
    assert torch.allclose(out[:, [0, 2]].norm(dim=1), p[:, [0, 2]].norm(dim=1), atol=1e-5)
    assert not torch.allclose(out[:, 0], p[:, 0])
    assert torch.equal(out[:, 3:], p[:, 3:])


def test_rgb_drop_probability():
    p = torch.rand(10, 6)
    assert torch.allclose(random_rgb_drop(p, p=1.0)[:, 3:], torch.full((10, 3), 0.4))
    assert torch.equal(random_rgb_drop(p, p=0.0), p)
    g = _gen(0)
    dropped = sum(bool((random_rgb_drop(p, p=0.5, generator=g)[:, 3:] == 0.4).all()) for _ in range(400))
    assert 150 < dropped < 250


# ----------------------------------------------------------------------------------------------------
# file writers for round-trip tests
# ----------------------------------------------------------------------------------------------------
def _write_modelnet_txt(root: Path, classes, train, test, rng) -> dict[str, np.ndarray]:
    root.mkdir(parents=True, exist_ok=True)
    (root / "modelnet40_shape_names.txt").write_text("\n".join(classes) + "\n")
    (root / "modelnet40_train.txt").write_text("\n".join(train) + "\n")
    (root / "modelnet40_test.txt").write_text("\n".join(test) + "\n")
    arrays = {}
    for sid in train + test:
        cls = sid.rsplit("_", 1)[0]
        (root / cls).mkdir(exist_ok=True)
        a = rng.uniform(-1, 1, (64, 6)).astype(np.float32)
        np.savetxt(root / cls / f"{sid}.txt", a, fmt="%.6f", delimiter=",")
        arrays[sid] = np.loadtxt(root / cls / f"{sid}.txt", delimiter=",", dtype=np.float32)
    return arrays


def _write_ply(path: Path, xyz, rgb=None, faces=None, binary=False):
    n = len(xyz)
    head = [
        "ply",
        f"format {'binary_little_endian' if binary else 'ascii'} 1.0",
        "comment test",
        f"element vertex {n}",
    ]
    head += [f"property float {c}" for c in "xyz"]
    if rgb is not None:
        head += [f"property uchar {c}" for c in ("red", "green", "blue")]
    if faces is not None:
        head += [f"element face {len(faces)}", "property list uchar int vertex_indices"]
    head.append("end_header")
    if not binary:
        body = []
        for i in range(n):
            row = " ".join(f"{v:.6f}" for v in xyz[i])
            if rgb is not None:
                row += " " + " ".join(str(int(c)) for c in rgb[i])
            body.append(row)
        for f in faces if faces is not None else []:
            body.append(" ".join(map(str, [len(f), *f])))
        path.write_text("\n".join(head + body) + "\n")
    else:
        data = b""
        for i in range(n):
            data += struct.pack("<3f", *xyz[i])
            if rgb is not None:
                data += struct.pack("<3B", *[int(c) for c in rgb[i]])
        for f in faces if faces is not None else []:
            data += struct.pack("<B", len(f)) + struct.pack(f"<{len(f)}i", *f)
        path.write_bytes(("\n".join(head) + "\n").encode() + data)


# ----------------------------------------------------------------------------------------------------
# formats: round trips
# ----------------------------------------------------------------------------------------------------
def test_modelnet_txt_roundtrip(tmp_path):
    rng = np.random.default_rng(0)
    classes = ["airplane", "night_stand", "sofa"]
    train, test = ["airplane_0001", "night_stand_0003", "sofa_0002"], ["night_stand_0100", "airplane_0700"]
    arrays = _write_modelnet_txt(tmp_path / "modelnet40_normal_resampled", classes, train, test, rng)
    a = read_modelnet_txt(tmp_path / "modelnet40_normal_resampled" / "sofa" / "sofa_0002.txt")
    assert a.shape == (64, 6) and a.dtype == np.float32
    np.testing.assert_allclose(a, arrays["sofa_0002"])

    ds = ModelNet40Dataset(root=tmp_path, split="test", num_points=32, sampling="first")
    assert ds.class_names == ["airplane", "night stand", "sofa"]
    assert len(ds) == 2
    s = ds[0]
    assert s["label"].item() == 1 and s["label"].dtype == torch.int64
    assert "night stand" in s["text"]
    exp = torch.from_numpy(arrays["night_stand_0100"][:32, :3])
    exp = (exp - exp.mean(0)) / (exp - exp.mean(0)).norm(dim=1).max()
    assert torch.allclose(s["points"][:, :3], exp, atol=1e-5)
    assert torch.allclose(s["points"][:, 3:], torch.full((32, 3), 0.4))
    assert ds[1]["label"].item() == 0
    # deterministic evaluation transform: samples are memoised after the first read
    assert ds.memoize
    assert torch.equal(ds[0]["points"], s["points"])
    (tmp_path / "modelnet40_normal_resampled" / "night_stand" / "night_stand_0100.txt").unlink()
    assert torch.equal(ds[0]["points"], s["points"])  # served from memory
    assert not ModelNet40Dataset(root=tmp_path, split="train", augment=True).memoize


def test_modelnet_h5_and_scanobjectnn_roundtrip(tmp_path):
    rng = np.random.default_rng(1)
    d = tmp_path / "modelnet40_ply_hdf5_2048"
    d.mkdir()
    (d / "shape_names.txt").write_text("airplane\nbathtub\nbed\n")
    data0 = rng.normal(size=(4, 50, 3)).astype(np.float32)
    with h5py.File(d / "ply_data_test0.h5", "w") as f:
        f["data"] = data0
        f["label"] = np.array([[0], [2], [1], [2]], dtype=np.uint8)
    with h5py.File(d / "ply_data_test1.h5", "w") as f:
        f["data"] = rng.normal(size=(2, 50, 3)).astype(np.float32)
        f["label"] = np.array([[1], [0]], dtype=np.uint8)
    data, label = read_h5_pointclouds(d / "ply_data_test0.h5")
    assert data.shape == (4, 50, 3) and label.tolist() == [0, 2, 1, 2] and label.dtype == np.int64
    ds = ModelNet40Dataset(root=tmp_path, split="test", format="h5", num_points=20, sampling="first")
    assert len(ds) == 6 and ds.class_names == ["airplane", "bathtub", "bed"]
    assert [ds[i]["label"].item() for i in range(6)] == [0, 2, 1, 2, 1, 0]
    s = ds[1]
    exp = torch.from_numpy(data0[1, :20])
    exp = (exp - exp.mean(0)) / (exp - exp.mean(0)).norm(dim=1).max()
    assert torch.allclose(s["points"][:, :3], exp, atol=1e-5)

    # ScanObjectNN: label (N,)
    sd = tmp_path / "sonn" / "main_split"
    sd.mkdir(parents=True)
    with h5py.File(sd / "test_objectdataset_augmentedrot_scale75.h5", "w") as f:
        f["data"] = rng.normal(size=(3, 40, 3)).astype(np.float32)
        f["label"] = np.array([14, 0, 7], dtype=np.int64)
    sds = ScanObjectNNDataset(root=tmp_path / "sonn", split="test", num_points=16)
    assert [sds[i]["label"].item() for i in range(3)] == [14, 0, 7]
    assert sds.class_names == SCANOBJECTNN_CLASSES and len(SCANOBJECTNN_CLASSES) == 15
    assert "toilet" in sds[0]["text"]
    assert sds[0]["points"].shape == (16, 6)


def test_ply_roundtrip_ascii_and_binary(tmp_path):
    rng = np.random.default_rng(2)
    xyz = rng.normal(size=(20, 3)).astype(np.float32)
    rgb = rng.integers(0, 256, (20, 3))
    faces = [[0, 1, 2], [2, 3, 4, 5]]
    for binary in (False, True):
        p = tmp_path / f"c_{binary}.ply"
        _write_ply(p, xyz, rgb, faces, binary=binary)
        d = read_ply(p)
        np.testing.assert_allclose(d["xyz"], xyz, atol=1e-5)
        np.testing.assert_allclose(d["rgb"], rgb / 255.0, atol=1e-6)
        assert d["faces"].tolist() == [[0, 1, 2], [2, 3, 4], [2, 4, 5]]
        p2 = tmp_path / f"n_{binary}.ply"
        _write_ply(p2, xyz, binary=binary)
        d2 = read_ply(p2)
        assert d2["rgb"] is None and d2["faces"] is None
        pc = load_point_cloud(p2)
        assert pc.shape == (20, 6) and np.allclose(pc[:, 3:], 0.4)
    # truncated binary body
    raw = (tmp_path / "n_True.ply").read_bytes()
    (tmp_path / "trunc.ply").write_bytes(raw[:-7])
    with pytest.raises(ValueError, match="trunc.ply"):
        read_ply(tmp_path / "trunc.ply")


def test_off_quirks_and_area_weighted_sampling(tmp_path):
    p = tmp_path / "quirk.off"
    p.write_text(
        "\t  OFF4 2 0 # merged header\n# comment\n\n"
        "0 0 0\n1 0 0 # inline\n0 1 0\n"
        "3 3 0\n"
        "3 0 1 2  1.0 0.0 0.0\n"
        "3 1 3 2\n"
    )
    v, f = read_off(p)
    assert v.shape == (4, 3) and f.tolist() == [[0, 1, 2], [1, 3, 2]]
    # areas 0.5 and |(2,3) x (-1,1)| / 2 = 2.5 -> fraction of samples in face 0 = 1/6
    pts, fi = sample_mesh_surface(v, f, 20000, rng=0, return_face_index=True)
    assert abs((fi == 0).mean() - 1 / 6) < 0.01
    assert np.allclose(pts[:, 2], 0)
    in0 = pts[fi == 0]
    assert (in0[:, :2] >= -1e-6).all() and (in0[:, :2].sum(1) <= 1 + 1e-6).all()
    pc = load_point_cloud(p, mesh_points=100)
    assert pc.shape == (100, 6)
    # quads are fan-triangulated
    q = tmp_path / "quad.off"
    q.write_text("OFF\n4 1 0\n0 0 0\n1 0 0\n1 1 0\n0 1 0\n4 0 1 2 3\n")
    tris = read_off(q)[1]  # two triangles covering the quad
    assert tris.shape == (2, 3) and sorted(sorted(t) for t in tris.tolist()) == [[0, 1, 2], [0, 2, 3]]


def test_templates_labels_taxonomy(tmp_path):
    t = tmp_path / "templates.json"
    t.write_text(json.dumps({"a": ["x {}.", "y {}"], "b": ["z {}"]}))
    assert load_templates(t, "a") == ["x {}.", "y {}"]
    with pytest.raises(KeyError):
        load_templates(t, "c")
    (tmp_path / "bad.json").write_text(json.dumps({"a": ["no placeholder"]}))
    with pytest.raises(ValueError, match="bad.json"):
        load_templates(tmp_path / "bad.json", "a")
    lab = tmp_path / "labels.json"
    lab.write_text(json.dumps({"modelnet40": ["flower_pot", "night stand"]}))
    assert load_labels(lab, "modelnet40") == ["flower pot", "night stand"]
    tx = tmp_path / "taxonomy.json"
    tx.write_text(json.dumps([{"synsetId": "02691156", "name": "airplane,aeroplane,plane", "children": []}]))
    assert load_shapenet_taxonomy(tx) == {"02691156": "airplane,aeroplane,plane"}
    assert all("{}" in s for s in PROMPT_TEMPLATES) and 8 <= len(PROMPT_TEMPLATES) <= 12


# ----------------------------------------------------------------------------------------------------
# corrupt files
# ----------------------------------------------------------------------------------------------------
def test_corrupt_txt_errors_and_skip_bad(tmp_path):
    rng = np.random.default_rng(3)
    root = tmp_path / "mn"
    _write_modelnet_txt(
        root, ["chair", "table"], ["chair_0001"], ["chair_0002", "table_0003", "table_0004"], rng
    )
    (root / "table" / "table_0003.txt").write_text("0.1,0.2,0.3\n0.1,abc,0.3\n")
    (root / "table" / "table_0004.txt").write_text("0.1,0.2,0.3\nnan,0.2,0.3\n")
    with pytest.raises(ValueError, match="table_0003.txt"):
        read_modelnet_txt(root / "table" / "table_0003.txt")
    with pytest.raises(ValueError, match=r"table_0004.txt.*non-finite"):
        read_modelnet_txt(root / "table" / "table_0004.txt")
    (root / "ragged.txt").write_text("1,2,3\n1,2\n")
    with pytest.raises(ValueError, match="ragged.txt"):
        read_modelnet_txt(root / "ragged.txt")

    ds = ModelNet40Dataset(root=root, split="test", num_points=16)
    ds[0]
    with pytest.raises(ValueError, match="table_0003.txt"):
        ds[1]
    with pytest.raises(ValueError, match="table_0003.txt"):
        ModelNet40Dataset(root=root, split="test", preload=True)

    # lazy skip: the bad item is replaced by the next valid one, counted, warned once
    lazy = ModelNet40Dataset(root=root, split="test", num_points=16, skip_bad=True)
    with pytest.warns(RuntimeWarning, match="skip"):
        s = lazy[1]
    # items 1 and 2 are both bad: walked past both, wrapped around to chair_0002
    assert s["label"].item() == 0 and lazy.num_skipped == 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second warning
        assert lazy[2]["label"].item() == 0
    assert lazy.num_skipped == 2
    # preload: exact count up front
    with pytest.warns(RuntimeWarning, match="2"):
        pre = ModelNet40Dataset(root=root, split="test", num_points=16, preload=True, skip_bad=True)
    assert pre.num_skipped == 2 and len(pre) == 1
    for i in range(len(pre)):
        assert torch.isfinite(pre[i]["points"]).all()


def test_corrupt_h5_errors_and_skip_bad(tmp_path):
    good = tmp_path / "good.h5"
    data = np.random.default_rng(0).normal(size=(5, 30, 3)).astype(np.float32)
    data[2, 4, 1] = np.nan
    with h5py.File(good, "w") as f:
        f["data"] = data
        f["label"] = np.arange(5) % 3
    with pytest.raises(ValueError, match=r"good.h5.*NaN"):
        H5PointCloudDataset(files=[good], class_names=["a", "b", "c"], transform=None)
    with pytest.warns(RuntimeWarning):
        ds = H5PointCloudDataset(files=[good], class_names=["a", "b", "c"], transform=None, skip_bad=True)
    assert len(ds) == 4 and ds.num_skipped == 1
    assert [ds[i]["label"].item() for i in range(4)] == [0, 1, 0, 1]
    # truncated file
    raw = good.read_bytes()
    (tmp_path / "trunc.h5").write_bytes(raw[: len(raw) // 3])
    with pytest.raises(ValueError, match="trunc.h5"):
        read_h5_pointclouds(tmp_path / "trunc.h5")
    # wrong shape
    with h5py.File(tmp_path / "flat.h5", "w") as f:
        f["data"] = np.zeros((5, 3), np.float32)
        f["label"] = np.zeros(5)
    with pytest.raises(ValueError, match="flat.h5"):
        read_h5_pointclouds(tmp_path / "flat.h5")
    with pytest.warns(RuntimeWarning):
        ds2 = H5PointCloudDataset(
            files=[tmp_path / "trunc.h5", good], class_names=["a", "b", "c"], transform=None, skip_bad=True
        )
    assert ds2.num_skipped == 2 and len(ds2) == 4


def test_missing_paths_raise_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        ModelNet40Dataset(root=tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="modelnet40_shape_names.txt"):
        ModelNet40Dataset(root=tmp_path)
    with pytest.raises(FileNotFoundError, match="ply_data_test"):
        ModelNet40Dataset(root=tmp_path, format="h5")
    with pytest.raises(FileNotFoundError, match="objectdataset_augmentedrot_scale75"):
        ScanObjectNNDataset(root=tmp_path)
    with pytest.raises(FileNotFoundError, match="split list"):
        OpenShapeTripletDataset(root=tmp_path)
    with pytest.raises(FileNotFoundError, match="ShapeNet-55"):
        ShapeNet55TripletDataset(root=tmp_path)
    dm = ModelNet40DataModule(data_dir=tmp_path / "absent")  # construction does not need the data
    with pytest.raises(FileNotFoundError, match="absent"):
        dm.setup("validate")


# ----------------------------------------------------------------------------------------------------
# triplet datasets
# ----------------------------------------------------------------------------------------------------
def _make_shapenet(root: Path, rng) -> dict[str, np.ndarray]:
    (root / "shapenet_pc").mkdir(parents=True)
    (root / "rendered_images").mkdir()
    (root / "ShapeNet-55").mkdir()
    (root / "taxonomy.json").write_text(
        json.dumps(
            [
                {"synsetId": "03001627", "name": "chair"},
                {"synsetId": "02691156", "name": "airplane,aeroplane"},
            ]
        )
    )
    ids = ["02691156-aa11", "03001627-bb22", "03001627-cc33"]
    pcs = {}
    for k, sid in enumerate(ids):
        pcs[sid] = rng.normal(size=(100, 3)).astype(np.float32)
        np.save(root / "shapenet_pc" / f"{sid}.npy", pcs[sid])
        for deg, val in ((0, 10 * k), (30, 200)):
            img = np.full((40, 60, 4), val, np.uint8)
            img[..., 3] = 255
            Image.fromarray(img, "RGBA").save(root / "rendered_images" / f"{sid}_r_{deg:03d}_depth0001.png")
    (root / "ShapeNet-55" / "train.txt").write_text("\n".join(f"{s}.npy" for s in ids) + "\n")
    (root / "ShapeNet-55" / "test.txt").write_text(f"{ids[1]}.npy\n")
    return pcs


def test_shapenet55_triplets(tmp_path):
    pcs = _make_shapenet(tmp_path, np.random.default_rng(4))
    ds = ShapeNet55TripletDataset(root=tmp_path, split="train", num_points=64, image_size=32, augment=False)
    assert ds.class_names == ["airplane", "chair"]  # sorted synset ids
    s = ds[2]
    assert s["label"].item() == 1 and "chair" in s["text"]
    assert s["image"].shape == (3, 32, 32) and s["image"].dtype == torch.float32
    assert torch.allclose(s["image"], torch.full((3, 32, 32), 20 / 255), atol=1 / 255)  # view 0 (deg 000)
    exp = torch.from_numpy(pcs["03001627-cc33"])
    assert s["points"].shape == (64, 6)
    # fps subset of the normalised cloud: every output row is a row of the normalised input
    full = ShapeNet55TripletDataset(root=tmp_path, split="train", num_points=100, augment=False)[2]["points"][
        :, :3
    ]
    e = (exp - exp.mean(0)) / (exp - exp.mean(0)).norm(dim=1).max()
    assert torch.allclose(full.sort(0).values, e.sort(0).values, atol=1e-5)
    # training: random views and synonyms, deterministic under a seeded generator
    tr = ShapeNet55TripletDataset(root=tmp_path, split="train", num_points=64, image_size=16, augment=True)
    tr.generator = _gen(0)
    means = {round(tr[0]["image"].mean().item() * 255) for _ in range(20)}
    assert means == {0, 200}
    texts = " ".join(tr[0]["text"] for _ in range(30))
    assert "airplane" in texts and "aeroplane" in texts
    # missing views
    (tmp_path / "rendered_images" / "03001627-bb22_r_000_depth0001.png").unlink()
    (tmp_path / "rendered_images" / "03001627-bb22_r_030_depth0001.png").unlink()
    with pytest.raises(FileNotFoundError, match="03001627-bb22"):
        ShapeNet55TripletDataset(root=tmp_path, split="train")
    with pytest.warns(RuntimeWarning):
        sk = ShapeNet55TripletDataset(root=tmp_path, split="train", skip_bad=True, num_points=32)
    assert len(sk) == 2 and sk.num_skipped == 1


def _make_openshape(root: Path, D=8) -> None:
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(5)
    np.savez(
        root / "u1.npz",
        xyz=rng.normal(size=(50, 3)).astype(np.float32),
        rgb=rng.integers(0, 256, (50, 3)).astype(np.uint8),
        image_feat=np.arange(3 * D, dtype=np.float32).reshape(3, D),
        text_feat=-np.arange(2 * D, dtype=np.float32).reshape(2, D),
        text=np.array(["a wooden chair", "a chair"]),
        label=1,
    )
    (root / "sub").mkdir(exist_ok=True)
    np.savez(
        root / "sub" / "u2.npz",
        xyz=rng.normal(size=(40, 3)).astype(np.float32),
        image_feat=np.ones(D, np.float32),
        text_feat=np.full(D, 2.0, np.float32),
        name="lamp",
    )
    (root / "train.txt").write_text("u1\nsub/u2\n")
    (root / "class_names.txt").write_text("table\nchair\n")


def test_openshape_triplets(tmp_path):
    _make_openshape(tmp_path)
    ds = OpenShapeTripletDataset(root=tmp_path, split="train", num_points=32, augment=False)
    a, b = ds[0], ds[1]
    assert (
        a["points"].shape == (32, 6) and (a["points"][:, 3:] <= 1).all() and (a["points"][:, 3:] >= 0).all()
    )
    assert not torch.allclose(a["points"][:, 3:], torch.tensor(0.4))
    assert torch.equal(a["image_feat"], torch.arange(8, dtype=torch.float32))
    assert torch.equal(a["text_feat"], -torch.arange(8, dtype=torch.float32))
    assert a["text"] == "a wooden chair" and a["label"].item() == 1
    assert torch.allclose(b["points"][:, 3:], torch.tensor(0.4)) and b["label"].item() == -1
    assert "lamp" in b["text"] and torch.equal(b["image_feat"], torch.ones(8))
    tr = OpenShapeTripletDataset(root=tmp_path, split="train", num_points=32, augment=True)
    tr.generator = _gen(1)
    rows = {tr[0]["image_feat"][0].item() for _ in range(30)}
    assert rows == {0.0, 8.0, 16.0}
    pairs = {(s["text"], s["text_feat"][1].item()) for s in (tr[0] for _ in range(30))}
    assert pairs == {("a wooden chair", -1.0), ("a chair", -9.0)}  # caption row matches text_feat row
    # dimension mismatch is reported with the file name
    np.savez(
        tmp_path / "u3.npz", xyz=np.zeros((10, 3), np.float32), image_feat=np.ones(5), text_feat=np.ones(8)
    )
    (tmp_path / "bad.txt").write_text("u1\nu3\n")
    bad = OpenShapeTripletDataset(root=tmp_path, split="bad", augment=False)
    bad[0]
    with pytest.raises(ValueError, match="u3.npz"):
        bad[1]
    all_ = OpenShapeTripletDataset(root=tmp_path, split="all", augment=False)
    assert len(all_) == 3


class _RunsCode:
    """Unpickling this object would call os.system: a data file must never be unpickled."""

    def __reduce__(self):
        import os

        return (os.system, ("touch PWNED",))


def test_openshape_refuses_pickled_records(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _make_openshape(tmp_path / "os")
    np.save(tmp_path / "os" / "evil.npy", np.array([{"xyz": _RunsCode()}], dtype=object), allow_pickle=True)
    (tmp_path / "os" / "evil.txt").write_text("evil\n")
    ds = OpenShapeTripletDataset(root=tmp_path / "os", split="evil", augment=False)
    with pytest.raises(ValueError, match=r"evil\.npy.*pickle"):
        ds[0]
    with pytest.raises(ValueError, match=r"evil\.npy.*pickle"):
        load_point_cloud(tmp_path / "os" / "evil.npy")
    assert not (tmp_path / "PWNED").exists()


# ----------------------------------------------------------------------------------------------------
# collate + DataModules
# ----------------------------------------------------------------------------------------------------
def test_collate_pointcloud():
    samples = [
        {"points": torch.rand(8, 6), "text": f"t{i}", "label": torch.tensor(i), "image_feat": torch.rand(4)}
        for i in range(3)
    ]
    b = collate_pointcloud(samples)
    assert b["points"].shape == (3, 8, 6) and b["text"] == ["t0", "t1", "t2"]
    assert b["label"].dtype == torch.int64 and b["label"].tolist() == [0, 1, 2]
    assert b["image_feat"].shape == (3, 4)


def _check_batch(b, n_points, image=None, feat=None):
    assert b["points"].dtype == torch.float32 and b["points"].shape[1:] == (n_points, 6)
    B = b["points"].shape[0]
    assert torch.isfinite(b["points"]).all()
    assert b["label"].dtype == torch.int64 and b["label"].shape == (B,)
    assert isinstance(b["text"], list) and len(b["text"]) == B and all(isinstance(t, str) for t in b["text"])
    if image:
        assert b["image"].dtype == torch.float32 and b["image"].shape == (B, 3, image, image)
        assert 0 <= b["image"].min() and b["image"].max() <= 1
    if feat:
        assert b["image_feat"].shape == (B, feat) and b["text_feat"].shape == (B, feat)


def test_modelnet40_datamodule(tmp_path):
    rng = np.random.default_rng(6)
    root = tmp_path / "modelnet40_normal_resampled"
    _write_modelnet_txt(
        root, ["bed", "flower_pot"], ["bed_0001", "flower_pot_0002", "bed_0003"], ["bed_0101"], rng
    )
    dm = ModelNet40DataModule(data_dir=tmp_path, num_points=32, batch_size=2)
    assert dm.class_names == ["bed", "flower pot"]
    assert [(e.name, list(e.class_names)) for e in dm.eval_sets()] == [("modelnet40", ["bed", "flower pot"])]
    loaders = dm.val_dataloader()
    assert len(loaders) == 1
    _check_batch(next(iter(loaders[0])), 32)
    assert dm.prompt_templates == PROMPT_TEMPLATES
    with pytest.raises(RuntimeError, match="with_train"):
        dm.train_dataloader()
    ft = ModelNet40DataModule(data_dir=tmp_path, num_points=32, batch_size=2, with_train=True)
    ft.setup("fit")
    b = next(iter(ft.train_dataloader()))
    _check_batch(b, 32)
    # ULIP templates / labels files
    (tmp_path / "t.json").write_text(json.dumps({"modelnet40_64": ["a {}."]}))
    (tmp_path / "l.json").write_text(json.dumps({"modelnet40": ["bed", "flower pot (vase)"]}))
    dm2 = ModelNet40DataModule(
        data_dir=tmp_path, templates_file=tmp_path / "t.json", labels_file=tmp_path / "l.json"
    )
    assert dm2.prompt_templates == ["a {}."] and dm2.class_names == ["bed", "flower pot (vase)"]


def test_scanobjectnn_datamodule(tmp_path):
    sd = tmp_path / "main_split"
    sd.mkdir()
    for split in ("training", "test"):
        with h5py.File(sd / f"{split}_objectdataset_augmentedrot_scale75.h5", "w") as f:
            f["data"] = np.random.default_rng(7).normal(size=(4, 64, 3)).astype(np.float32)
            f["label"] = np.array([0, 1, 2, 3])
    dm = ScanObjectNNDataModule(data_dir=tmp_path, num_points=32, batch_size=4, with_train=True)
    assert dm.class_names == SCANOBJECTNN_CLASSES
    dm.setup("fit")
    _check_batch(next(iter(dm.train_dataloader())), 32)
    _check_batch(next(iter(dm.val_dataloader()[0])), 32)


def test_triplet_datamodules_with_zero_shot_sets(tmp_path):
    _make_shapenet(tmp_path / "sn", np.random.default_rng(8))
    mn = tmp_path / "mn"
    _write_modelnet_txt(
        mn, ["chair", "lamp"], ["chair_0001"], ["chair_0002", "lamp_0003"], np.random.default_rng(9)
    )
    dm = ShapeNet55TripletDataModule(
        data_dir=tmp_path / "sn",
        image_size=24,
        num_points=48,
        batch_size=2,
        val_split="test",
        zero_shot_modelnet40=mn,
    )
    dm.setup("fit")
    _check_batch(next(iter(dm.train_dataloader())), 48, image=24)
    assert dm.class_names == ["chair", "lamp"]
    sets = dm.eval_sets()  # the typed contract, aligned with val_dataloader()
    assert [(s.name, list(s.class_names)) for s in sets] == [
        ("modelnet40", ["chair", "lamp"]), ("shapenet55", ["airplane", "chair"])]
    assert all(list(s.prompt_templates) == PROMPT_TEMPLATES for s in sets)
    loaders = dm.val_dataloader()
    assert len(loaders) == 2
    assert [len(ld.dataset) for ld in loaders] == [2, 1]
    for ld in loaders:
        _check_batch(next(iter(ld)), 48)

    _make_openshape(tmp_path / "os")
    odm = OpenShapeTripletDataModule(
        data_dir=tmp_path / "os", num_points=30, batch_size=2, zero_shot_modelnet40=mn
    )
    odm.setup("fit")
    _check_batch(next(iter(odm.train_dataloader())), 30, feat=8)
    assert [(e.name, list(e.class_names)) for e in odm.eval_sets()] == [("modelnet40", ["chair", "lamp"])]


# ----------------------------------------------------------------------------------------------------
# real shared fixtures (skip when absent)
# ----------------------------------------------------------------------------------------------------
@pytest.mark.data
def test_real_modelnet40_shapes_and_labels():
    root = _need(DATA / "modelnet40" / "modelnet40_normal_resampled")
    names = (root / "modelnet40_shape_names.txt").read_text().split()
    assert len(names) == 40
    total = 0
    for split, n in (("train", 8), ("test", 4)):
        ds = ModelNet40Dataset(root=root.parent, split=split, num_points=256, sampling="first")
        assert len(ds) == n and len(ds.class_names) == 40 and ds.class_names[23] == "night stand"
        for i, (f, _) in enumerate(ds.items):
            s = ds[i]
            cls = f.stem.rsplit("_", 1)[0]
            assert s["label"].item() == names.index(cls)
            assert s["points"].shape == (256, 6) and torch.isfinite(s["points"]).all()
            assert s["points"][:, :3].norm(dim=1).max().item() == pytest.approx(1.0, abs=1e-4)
        total += len(ds)
    assert total == 12
    a = read_modelnet_txt(root / "airplane" / "airplane_0126.txt")
    assert a.shape == (10000, 6)
    np.testing.assert_allclose(np.linalg.norm(a[:, 3:], axis=1), 1.0, atol=2e-3)  # unit normals
    np.testing.assert_allclose(
        a[0], [-0.068510, -0.087520, 0.187900, -0.639100, 0.768900, 0.020190], atol=1e-6
    )


@pytest.mark.data
def test_real_modelnet40_with_npy_cache_gives_identical_samples(tmp_path):
    root = _need(DATA / "modelnet40" / "modelnet40_normal_resampled")
    plain = ModelNet40Dataset(root=root.parent, split="test", num_points=256, sampling="first")
    cached = ModelNet40Dataset(root=root.parent, split="test", num_points=256, sampling="first",
                               cache_dir=tmp_path / "npy")
    for i in range(len(plain)):
        torch.testing.assert_close(cached[i]["points"], plain[i]["points"])
    assert len(list((tmp_path / "npy").glob("*.npy"))) == len(plain) == 4


@pytest.mark.data
def test_real_ply_files():
    owl = read_ply(_need(DATA / "pointclouds" / "openshape" / "owl.ply"))
    assert owl["xyz"].shape == (10000, 3) and owl["rgb"].shape == (10000, 3)
    np.testing.assert_allclose(owl["xyz"][0], [-0.195068, 0.140991, -0.108887], atol=1e-6)
    np.testing.assert_allclose(owl["rgb"][0], np.array([67, 33, 5]) / 255, atol=1e-6)
    pc = load_point_cloud(DATA / "pointclouds" / "openshape" / "owl.ply")
    assert pc.shape == (10000, 6) and pc[:, 3:].std() > 0.01
    a = read_ply(_need(DATA / "meshes" / "trimesh" / "points_ascii.ply"))
    b = read_ply(_need(DATA / "meshes" / "trimesh" / "points_bin.ply"))
    assert a["xyz"].shape == (5, 3) and b["xyz"].shape == (5, 3)
    np.testing.assert_allclose(a["xyz"][0], [-0.06325, 0.0359793, 0.0420873], atol=1e-7)
    np.testing.assert_allclose(b["xyz"], a["xyz"], atol=1e-6)  # the binary file holds the same 5 points
    assert b["faces"] is None and a["rgb"] is None


@pytest.mark.data
def test_real_off_files():
    d = _need(DATA / "meshes" / "trimesh")
    v1, f1 = read_off(d / "comments.off")
    v2, f2 = read_off(d / "whitespace.off")
    assert v1.shape == (8, 3) and f1.shape == (12, 3)  # 6 quads -> 12 triangles
    np.testing.assert_allclose(v1, v2)
    assert f1.tolist() == f2.tolist()
    np.testing.assert_allclose(v1[1], [0.0, 1.632993, 1.154701])
    vb, fb = read_off(d / "ballA.off")
    assert vb.shape == (1900, 3) and fb.shape == (3796, 3)
    pts = load_point_cloud(d / "comments.off", mesh_points=2000)
    assert pts.shape == (2000, 6) and np.allclose(pts[:, 3:], 0.4)
    # the cube (rotated 45 degrees about z) has faces z = +-1.154701 and |x| + |y| = 1.632993:
    # every surface sample lies on one of them and inside the others
    m = np.maximum(np.abs(pts[:, 2]) / 1.154701, (np.abs(pts[:, 0]) + np.abs(pts[:, 1])) / 1.632993)
    np.testing.assert_allclose(m, 1.0, atol=1e-5)


@pytest.mark.data
def test_real_ulip_metadata():
    d = _need(DATA / "shapenet55")
    t = load_templates(d / "ulip_templates.json", "modelnet40_64")
    assert len(t) == 64 and t[0] == "a point cloud model of {}."
    assert len(load_templates(d / "ulip_templates.json", "shapenet_64")) == 64
    labels = load_labels(d / "ulip_labels.json", "modelnet40")
    assert len(labels) == 40 and "night stand" in labels and "flower pot" in labels
    tax = load_shapenet_taxonomy(d / "shapenet_synset_dict.json")
    assert len(tax) == 55 and tax["02691156"] == "airplane"
    synsets = {ln.split("-")[0] for ln in (d / "ShapeNet-55_test.txt").read_text().split()}
    assert synsets == set(tax)


def test_modelnet_txt_npy_cache_reuses_invalidates_and_repairs(tmp_path):
    f = tmp_path / "chair_0001.txt"
    pts = np.arange(30, dtype=np.float32).reshape(5, 6) / 10
    f.write_text("\n".join(",".join(f"{v:.6f}" for v in row) for row in pts) + "\n")
    cache = tmp_path / "cache"
    first = read_modelnet_txt_cached(f, cache)
    np.testing.assert_allclose(first, pts, atol=1e-6)
    (entry,) = cache.glob("chair_0001-*.npy")

    # a second read is served from the .npy, not parsed: a marker written into the cache comes back
    marker = np.full((5, 6), 7.0, np.float32)
    np.save(entry, marker)
    np.testing.assert_array_equal(read_modelnet_txt_cached(f, cache), marker)

    # an edited file gets a new key and is parsed again (a second cache entry)
    f.write_text("\n".join(",".join(f"{v + 1:.6f}" for v in row) for row in pts) + "\n")
    np.testing.assert_allclose(read_modelnet_txt_cached(f, cache), pts + 1, atol=1e-6)
    (entry2,) = set(cache.glob("chair_0001-*.npy")) - {entry}

    # a damaged cache file is ignored and rewritten with the parsed array
    entry2.write_bytes(b"garbage")
    np.testing.assert_allclose(read_modelnet_txt_cached(f, cache), pts + 1, atol=1e-6)
    np.testing.assert_allclose(np.load(entry2), pts + 1, atol=1e-6)
