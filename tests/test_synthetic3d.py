"""Procedural 3D triplets (spikelight.datamodules.pointcloud.synthetic3d)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from spikelight.datamodules.pointcloud.synthetic3d import (
    CAPTION_TEMPLATES,
    CATEGORIES,
    COLOURS,
    DEFAULT_HELDOUT,
    Synthetic3DDataModule,
    generate_sample,
    generate_split,
    make_caption,
    make_object,
    render_points,
    sample_object,
)

TINY = dict(num_points=96, image_size=24, train_per_class=2, val_per_class=1, progress=False)


@pytest.fixture(scope="module")
def dm(tmp_path_factory):
    d = Synthetic3DDataModule(cache_dir=tmp_path_factory.mktemp("s3d"), batch_size=8, **TINY)
    d.setup("fit")
    return d


def test_categories_and_heldout_defaults():
    assert len(CATEGORIES) >= 20
    assert all(name.isalpha() and name.islower() for name in CATEGORIES)
    for must in ("box", "cylinder", "cone", "torus", "sphere", "chair", "table", "mug", "lamp", "airplane"):
        assert must in CATEGORIES
    assert 4 <= len(DEFAULT_HELDOUT) <= 5 and set(DEFAULT_HELDOUT) <= set(CATEGORIES)
    with pytest.raises(ValueError, match="unknown"):
        Synthetic3DDataModule(heldout_categories=("unicorn",))


def test_captions_articles():
    assert make_caption("red", "chair") == "a red chair"
    assert make_caption("orange", "box") == "an orange box"
    assert make_caption("blue", "airplane", "{a_n} {n} painted {c}") == "an airplane painted blue"
    for t in range(len(CAPTION_TEMPLATES)):
        c = make_caption("green", "mug", t)
        assert "green" in c and "mug" in c


def test_sample_object_area_weighted_on_surface():
    rng = np.random.default_rng(0)
    v, f, col, cname = make_object("box", rng)
    assert cname in COLOURS and v.shape[1] == 3 and f.shape[1] == 3 and col.shape == (len(f), 3)
    xyz, nrm, alb = sample_object(v, f, col, 4000, rng)
    # each point lies in the plane of its face: (p - v0) . n == 0
    assert np.allclose(np.linalg.norm(nrm, axis=1), 1)
    # a box (yawed about y): every point is on one of the 6 faces -> at an extreme of some box axis
    yaw_axis = v[4] - v[0]  # primitive vertex 4 differs from 0 along the box's own x axis
    ax = yaw_axis / np.linalg.norm(yaw_axis)
    proj = np.stack([xyz @ ax, xyz[:, 1]], 1)
    lo, hi = proj.min(0), proj.max(0)
    on_x = np.isclose(proj[:, 0], lo[0], atol=1e-6) | np.isclose(proj[:, 0], hi[0], atol=1e-6)
    on_y = np.isclose(proj[:, 1], lo[1], atol=1e-6) | np.isclose(proj[:, 1], hi[1], atol=1e-6)
    frac_x_faces = on_x.mean()
    # area-weighted: the fraction on the two x faces equals their share of the total area
    sx = np.ptp(proj[:, 0])
    sy = np.ptp(proj[:, 1])
    sz = np.ptp(xyz @ np.cross(ax, [0, 1, 0]))
    share = (sy * sz) / (sx * sy + sy * sz + sx * sz)
    assert abs(frac_x_faces - share) < 0.03
    assert (on_x | on_y).mean() > 0.5


def test_render_sphere_is_a_disc_and_depends_on_colour():
    rng = np.random.default_rng(1)
    n = 20000
    d = rng.normal(size=(n, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    red = np.tile([0.9, 0.1, 0.1], (n, 1))
    img = render_points(d, d, red, size=48, azimuth=0.3, elevation=0.4, fill=0.8)
    assert img.shape == (48, 48, 3) and img.dtype == np.uint8
    obj = (img != 255).any(-1)
    # silhouette of a unit sphere fitted to 80% of the width: a disc of radius 0.4 * 48 = 19.2 pixels
    # (the 2x2 splat footprint widens it by up to ~1 pixel)
    r_est = math.sqrt(obj.sum() / math.pi)
    assert 19.0 <= r_est <= 20.8
    yy, xx = np.nonzero(obj)
    cy, cx = yy.mean(), xx.mean()
    assert abs(cx - 23.5) < 1.5 and abs(cy - 23.5) < 1.5
    dist = np.hypot(*np.meshgrid(np.arange(48) - cy, np.arange(48) - cx, indexing="ij"))
    assert not obj[dist > r_est + 1.5].any() and obj[dist < r_est - 1.5].all()  # a disc, no holes
    assert (img[obj][:, 0] > img[obj][:, 2]).all()  # red object stays red under shading
    # Lambert: lit side brighter than the opposite side (light comes from the upper left)
    assert img[14:20, 14:20, 0].mean() > img[30:34, 30:34, 0].mean()
    blue = render_points(
        d, d, np.tile([0.1, 0.1, 0.9], (n, 1)), size=48, azimuth=0.3, elevation=0.4, fill=0.8
    )
    assert (blue[obj][:, 2] > blue[obj][:, 0]).all()


def test_generate_sample_contents():
    out = generate_sample("chair", np.random.default_rng(2), num_points=256, image_size=32)
    pts, img = out["points"], out["image"]
    assert pts.shape == (256, 6) and pts.dtype == np.float32
    assert np.linalg.norm(pts[:, :3], axis=1).max() == pytest.approx(1.0, abs=1e-5)
    assert np.abs(pts[:, :3].mean(0)).max() < 1e-5
    assert (pts[:, 3:] >= 0).all() and (pts[:, 3:] <= 1).all()
    main = np.array(COLOURS[out["colour"]])
    # most of a chair carries its main colour (the seat and back; legs may be wooden)
    assert (np.abs(pts[:, 3:] - main).max(1) <= 0.05).mean() > 0.4
    obj = (img != 255).any(-1)
    assert 0.05 < obj.mean() < 0.9
    other = generate_sample("chair", np.random.default_rng(3), num_points=256, image_size=32)
    assert not np.array_equal(img, other["image"])  # the image depends on the object


def test_generation_deterministic_and_fast():
    cats = ["mug", "car", "tree"]
    import time

    t = time.perf_counter()
    a = generate_split(cats, 3, split_id=0, seed=7, num_points=256, image_size=32, progress=False)
    dt = (time.perf_counter() - t) / 9
    b = generate_split(cats, 3, split_id=0, seed=7, num_points=256, image_size=32, progress=False)
    c = generate_split(cats, 3, split_id=0, seed=8, num_points=256, image_size=32, progress=False)
    for k in a:
        assert np.array_equal(a[k], b[k])
    assert not np.array_equal(a["points"], c["points"])
    assert a["labels"].tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert [list(CATEGORIES)[i] for i in a["category"][::3]] == cats
    assert dt < 0.25, f"{dt * 1000:.0f} ms per sample"


def test_datamodule_splits_and_all_categories(dm):
    arrs = dm.load_arrays()
    names = list(CATEGORIES)
    assert set(dm.heldout_class_names) == set(DEFAULT_HELDOUT)
    assert set(dm.train_class_names) | set(dm.heldout_class_names) == set(names)
    train_cats = {names[i] for i in arrs["train"]["category"]}
    heldout_cats = {names[i] for i in arrs["val_categories"]["category"]}
    assert train_cats == set(dm.train_class_names)
    assert heldout_cats == set(DEFAULT_HELDOUT) and not (train_cats & heldout_cats)
    assert {names[i] for i in arrs["val_objects"]["category"]} == train_cats
    assert len(arrs["train"]["labels"]) == 2 * len(dm.train_class_names)
    # held-out objects are new objects: no point cloud or image repeats across splits
    tr = {a.tobytes() for a in arrs["train"]["points"]}
    assert not any(a.tobytes() in tr for a in arrs["val_objects"]["points"])
    tri = {a.tobytes() for a in arrs["train"]["images"]}
    assert not any(a.tobytes() in tri for a in arrs["val_objects"]["images"])
    # labels index the split's class list
    for split, cls in (("train", dm.train_class_names), ("val_categories", dm.heldout_class_names)):
        a = arrs[split]
        assert all(cls[lab] == names[c] for lab, c in zip(a["labels"], a["category"]))


def test_datamodule_batches_follow_convention(dm):
    b = next(iter(dm.train_dataloader()))
    assert b["points"].shape == (8, 96, 6) and b["points"].dtype == torch.float32
    assert b["image"].shape == (8, 3, 24, 24) and b["image"].dtype == torch.float32
    assert 0 <= b["image"].min() and b["image"].max() <= 1
    assert b["label"].dtype == torch.int64 and b["label"].shape == (8,)
    assert len(b["text"]) == 8
    for t, lab in zip(b["text"], b["label"]):
        assert dm.train_class_names[lab] in t
        assert any(c in t.split() or c + "," in t for c in COLOURS)
    loaders = dm.val_dataloader()
    sets = dm.eval_sets()
    assert [s.name for s in sets] == ["val_objects", "val_categories"]
    assert len(loaders) == len(sets) == 2
    for ld, vs in zip(loaders, sets):
        vb = next(iter(ld))
        assert vb["label"].max() < vs.num_classes
        assert [vs.class_names[i] in t for i, t in zip(vb["label"], vb["text"])] == [True] * len(vb["text"])
        assert list(vs.prompt_templates) == dm.prompt_templates
        # no augmentation in validation: points lie in the unit sphere
        assert vb["points"][..., :3].norm(dim=-1).amax().item() <= 1 + 1e-5
    assert dm.class_names == dm.train_class_names
    assert all("{}" in t for t in dm.prompt_templates)


def test_cache_reused_and_keyed_by_params(dm):
    assert dm.is_cached() and dm.cache_path.parent.exists()
    files = sorted(dm.cache_path.glob("*.npz"))
    mtimes = [f.stat().st_mtime_ns for f in files]
    again = Synthetic3DDataModule(cache_dir=dm.cache_path.parent, **TINY)
    assert again.cache_path == dm.cache_path
    again.prepare_data()
    again.setup("fit")
    # nothing regenerated: the same cache files, untouched, and no other folder next to them
    assert [f.stat().st_mtime_ns for f in files] == mtimes
    assert [p for p in dm.cache_path.parent.iterdir()] == [dm.cache_path]
    for split in ("train", "val_objects", "val_categories"):
        for k, v in dm.load_arrays()[split].items():
            assert np.array_equal(again.load_arrays()[split][k], v)
    other = Synthetic3DDataModule(cache_dir=dm.cache_path.parent, **{**TINY, "seed": 1})
    assert other.cache_path != dm.cache_path and not other.is_cached()


def test_default_cache_location(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    d = Synthetic3DDataModule(**TINY)
    assert d.cache_path.parent == tmp_path / ".cache" / "spikelight" / "synthetic3d"


def test_train_augmentation_deterministic_with_generator(dm):
    ds = dm.train_set
    ds.generator = torch.Generator().manual_seed(0)
    a = ds[3]
    ds.generator = torch.Generator().manual_seed(0)
    b = ds[3]
    ds.generator = None
    assert torch.equal(a["points"], b["points"]) and a["text"] == b["text"]
    raw = torch.from_numpy(dm.load_arrays()["train"]["points"][3])
    assert not torch.equal(a["points"], raw)  # augmented
    assert torch.equal(a["image"], b["image"])
