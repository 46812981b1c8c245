"""Issue 11 item 3: part segmentation - ShapeNetPart in its real layout (written here, and the shared real
files), the synthetic parts of the procedural objects, the mIoU metrics against hand-computed values, the
per-point models of the three encoder families, the task end to end from its config and from an SVL
checkpoint's encoder."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.pytorch import Trainer

from spikelight.datamodules.base import DataError
from spikelight.datamodules.pointcloud import procedural
from spikelight.datamodules.pointcloud.shapenetpart import (
    SHAPENETPART,
    ShapeNetPartDataModule,
    ShapeNetPartDataset,
)
from spikelight.datamodules.pointcloud.synthetic_parts import (
    SyntheticPartsDataModule,
    generate_part_split,
    synthetic_part_table,
)
from spikelight.metrics import PartSegmentationIoU, restrict_to_category, shape_ious
from spikelight.models.segmentation import PartSegmentationModel

pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "shapenetpart"
CHAIR, MUG = "03001627", "03797390"


# ------------------------------------------------------------------------------------------------ ShapeNetPart
def _write_shape(path: Path, rng: np.random.Generator, n: int, parts: list[int]) -> np.ndarray:
    xyz = rng.uniform(-0.5, 0.5, (n, 3))
    nrm = rng.normal(size=(n, 3))
    nrm /= np.linalg.norm(nrm, axis=1, keepdims=True)
    lab = np.asarray(parts)[np.arange(n) % len(parts)].astype(float)
    a = np.c_[xyz, nrm, lab]
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savetxt(path, a, fmt="%.6f")
    return np.loadtxt(path)  # the values as written (6 decimals)


@pytest.fixture
def release(tmp_path) -> tuple[Path, dict[str, np.ndarray]]:
    """A ShapeNetPart release in the real layout: 2 chairs, 1 mug; the train list names one absent chair."""
    root = tmp_path / "shapenetcore_partanno_segmentation_benchmark_v0_normal"
    root.mkdir()
    (root / "synsetoffset2category.txt").write_text(f"Chair\t{CHAIR}\nMug\t{MUG}\n")
    rng = np.random.default_rng(0)
    arrays = {
        f"{CHAIR}/c1": _write_shape(root / CHAIR / "c1.txt", rng, 300, [12, 13, 14, 15]),
        f"{CHAIR}/c2": _write_shape(root / CHAIR / "c2.txt", rng, 90, [12, 13]),
        f"{MUG}/m1": _write_shape(root / MUG / "m1.txt", rng, 200, [36, 37]),
    }
    split = root / "train_test_split"
    split.mkdir()
    lists = {"train": [f"{CHAIR}/c1", f"{MUG}/m1", f"{CHAIR}/absent"], "val": [f"{CHAIR}/c2", f"{MUG}/m1"],
             "test": [f"{MUG}/m1"]}
    for name, ids in lists.items():
        (split / f"shuffled_{name}_file_list.json").write_text(json.dumps([f"shape_data/{i}" for i in ids]))
    return tmp_path, arrays


def test_shapenetpart_table():
    t = SHAPENETPART
    assert (t.num_categories, t.num_parts) == (16, 50)
    assert t.category_names[14] == "Skateboard" and t.parts[14] == (44, 45, 46)  # SOURCES.md
    assert t.category_names[15] == "Table" and t.parts[15] == (47, 48, 49)
    assert t.parts[4] == (12, 13, 14, 15) and t.parts[0] == (0, 1, 2, 3)


def test_shapenetpart_real_layout(release):
    tmp, arrays = release
    with pytest.raises(DataError) as e:  # a listed file that is absent: one error at construction
        ShapeNetPartDataset(root=tmp, split="train")
    assert "shuffled_train_file_list.json" in str(e.value) and f"{CHAIR}/absent" in str(e.value)
    assert "on_missing='skip'" in str(e.value)
    with pytest.warns(RuntimeWarning, match="1 of 3 listed"):
        ds = ShapeNetPartDataset(root=tmp, split="train", on_missing="skip", num_points=128)
    assert len(ds) == 2 and ds.missing == [f"{CHAIR}/absent"]
    s = ds[0]
    assert s["shape_id"] == f"{CHAIR}/c1" and int(s["label"]) == 4  # Chair: category from the folder
    assert s["points"].shape == (128, 6) and s["part"].shape == (128,) and s["normals"].shape == (128, 3)
    assert torch.allclose(s["points"][:, :3].norm(dim=1).max(), torch.tensor(1.0))
    assert torch.all(s["points"][:, 3:] == 0.4)
    # every sampled row is a row of the file: its normal and its part label go together
    a = arrays[f"{CHAIR}/c1"]
    rows = {tuple(np.round(r[3:6], 6)): int(r[6]) for r in a}
    for n, p in zip(s["normals"].double().numpy(), s["part"].tolist()):
        assert rows[tuple(np.round(n, 6))] == p
    assert set(s["part"].tolist()) <= {12, 13, 14, 15}
    assert torch.equal(ds[0]["points"], s["points"])  # evaluation sampling is deterministic
    m = ds[1]
    assert int(m["label"]) == 11 and set(m["part"].tolist()) <= {36, 37}
    # fewer points than asked: drawn with replacement; normals as channels 3:6
    val = ShapeNetPartDataset(root=tmp, split="val", num_points=128, normals=True)
    c2 = val[0]
    assert c2["points"].shape == (128, 6) and torch.equal(c2["points"][:, 3:], c2["normals"])
    aug = ShapeNetPartDataset(root=tmp, split="val", num_points=64, augment=True)
    assert not torch.equal(aug[0]["points"], aug[0]["points"])
    full = ShapeNetPartDataset(root=tmp, split="val", num_points=None, categories=["Mug"])
    assert len(full) == 1 and full[0]["points"].shape == (200, 6)


def test_shapenetpart_bad_files_name_the_file(release):
    tmp, _ = release
    root = tmp / "shapenetcore_partanno_segmentation_benchmark_v0_normal"
    bad = root / MUG / "m1.txt"
    a = np.loadtxt(bad)
    a[5, 6] = 12  # a Chair part in a Mug
    np.savetxt(bad, a, fmt="%.6f")
    ds = ShapeNetPartDataset(root=tmp, split="test", num_points=32)
    with pytest.raises(DataError, match=r"m1\.txt: part label\(s\) \[12\] are not parts of this category"):
        ds[0]
    np.savetxt(bad, a[:, :6], fmt="%.6f")
    with pytest.raises(DataError, match=r"m1\.txt: expected N x 7 columns"):
        ShapeNetPartDataset(root=tmp, split="test", num_points=32)[0]
    (root / "synsetoffset2category.txt").write_text("Chair\t02691156\n")
    with pytest.raises(DataError, match="synsetoffset2category.txt: line 1"):
        ShapeNetPartDataset(root=tmp, split="test")


def test_shapenetpart_datamodule_batches(release):
    tmp, _ = release
    dm = ShapeNetPartDataModule(data_dir=tmp, num_points=64, batch_size=2, on_missing="skip")
    with pytest.warns(RuntimeWarning):
        b = next(iter(dm.train_dataloader()))
    assert b["points"].shape == (2, 64, 6) and b["part"].shape == (2, 64) and b["part"].dtype == torch.int64
    assert b["label"].tolist() in ([4, 11], [11, 4])
    assert dm.class_names == list(SHAPENETPART.category_names) and dm.part_table is SHAPENETPART


def test_shapenetpart_shared_real_files():
    if not SHARED.is_dir():
        pytest.skip(f"shared ShapeNetPart files not present at {SHARED}")
    with pytest.raises(DataError, match="212e0563473156e255483301a044235"):
        ShapeNetPartDataset(root=SHARED, split="train")
    with pytest.warns(RuntimeWarning):
        train = ShapeNetPartDataset(root=SHARED, split="train", on_missing="skip", num_points=None)
    assert len(train) == 3  # the list repeats one id; kept as listed
    with pytest.warns(RuntimeWarning):
        test = ShapeNetPartDataset(root=SHARED, split="test", on_missing="skip", num_points=None)
    got = {test[i]["shape_id"]: test[i] for i in range(len(test))}
    skate, table = got["04225987/1c8d5e05c3faa05861be5ced44bc18ac"], got["04379243/1a2abbc9712e2fffc3bd24f986301745"]
    assert skate["points"].shape == (2475, 6) and set(skate["part"].tolist()) == {45} and int(skate["label"]) == 14
    assert table["points"].shape == (2794, 6) and set(table["part"].tolist()) == {47, 48, 49}
    assert int(table["label"]) == 15
    with pytest.raises(DataError, match="split 'val': no shape"), pytest.warns(RuntimeWarning):
        ShapeNetPartDataset(root=SHARED, split="val", on_missing="skip")  # its only entry is absent


# ------------------------------------------------------------------------------------------------ metrics
def test_miou_equals_hand_computed():
    table = [[0, 1], [2, 3, 4]]  # category 0: parts 0, 1; category 1: parts 2, 3, 4
    mask = torch.tensor([[1, 1, 0, 0, 0], [0, 0, 1, 1, 1]], dtype=torch.bool)
    target = torch.tensor([[0, 0, 1, 1], [2, 2, 3, 3], [2, 3, 4, 4], [0, 0, 0, 0]])
    pred = torch.tensor([[0, 1, 1, 1], [2, 2, 3, 3], [2, 2, 4, 3], [0, 0, 0, 1]])
    category = torch.tensor([0, 1, 1, 0])
    # shape 0: part0 1/2, part1 2/3 -> 7/12; shape 1: parts 2, 3 exact, part 4 in neither -> 1
    # shape 2: part2 1/2, part3 0/2, part4 1/2 -> 1/3; shape 3: part0 3/4, part1 0/1 -> 3/8
    want = [7 / 12, 1.0, 1 / 3, 3 / 8]
    assert torch.allclose(shape_ious(pred, target, category, mask), torch.tensor(want, dtype=torch.float64))
    m = PartSegmentationIoU(table, ["a", "b"])
    m.update(pred[:2], target[:2], category[:2])  # two batches accumulate
    m.update(pred[2:], target[2:], category[2:])
    out = m.compute()
    assert out["instance_miou"].item() == pytest.approx(sum(want) / 4, abs=1e-6)
    cat_a, cat_b = (7 / 12 + 3 / 8) / 2, (1 + 1 / 3) / 2
    assert out["miou/a"].item() == pytest.approx(cat_a, abs=1e-6)
    assert out["class_miou"].item() == pytest.approx((cat_a + cat_b) / 2, abs=1e-6)
    m.reset()
    m.update(pred[:1], target[:1], category[:1])
    assert set(m.compute()) == {"instance_miou", "class_miou", "miou/a"}  # unseen categories left out
    # evaluation restricts the argmax to the shape's category
    logits = torch.tensor([[[0.0, 1.0, 5.0, 0.0, 0.0]]])
    assert restrict_to_category(logits, torch.tensor([0]), mask).item() == 1
    assert restrict_to_category(logits, torch.tensor([1]), mask).item() == 2


# ------------------------------------------------------------------------------------------------ synthetic parts
def test_procedural_parts_leave_the_objects_and_streams_unchanged():
    for ci, cat in enumerate(["chair", "table", "airplane", "snowman"]):
        r1, r2 = np.random.default_rng([3, ci]), np.random.default_rng([3, ci])
        plain = procedural.make_object(cat, r1)
        v, f, col, cname, ids = procedural.make_object(cat, r2, with_parts=True)
        assert all(np.array_equal(a, b) for a, b in zip(plain[:3], (v, f, col))) and plain[3] == cname
        s1 = procedural.sample_object(v, f, col, 200, r1)
        s2 = procedural.sample_object(v, f, col, 200, r2, face_ids=ids.part)
        assert all(np.array_equal(a, b) for a, b in zip(s1, s2[:3]))
        assert np.array_equal(r1.random(4), r2.random(4))  # the stream continues identically
        assert ids.primitive.shape == ids.part.shape == (len(f),)
        assert ids.part.max() < len(procedural.part_names(cat))


def test_synthetic_parts_follow_the_geometry():
    cats = ["chair", "table", "mug"]
    table = synthetic_part_table(cats)
    assert table.parts == ((0, 1, 2), (3, 4, 5, 6, 7), (8, 9, 10))
    assert table.part_names[0].startswith("chair/0: _legs(")
    a = generate_part_split(["chair"], 6, split_id=0, seed=0, num_points=400)
    assert a["points"].shape == (6, 400, 6) and set(np.unique(a["part"])) == {0, 1, 2}
    for pts, part in zip(a["points"], a["part"]):  # y is up: legs below the seat below the back
        legs, seat, back = (pts[part == k, 1].mean() for k in range(3))
        assert legs < seat < back
    dm = SyntheticPartsDataModule(categories=cats, num_points=64, train_per_class=2, val_per_class=1, batch_size=2)
    b = next(iter(dm.val_dataloader()))
    assert b["points"].shape == (2, 64, 6) and b["part"].shape == (2, 64)
    for part, label in zip(b["part"], b["label"]):
        assert set(part.tolist()) <= set(table.parts[int(label)])


# ------------------------------------------------------------------------------------------------ models
@pytest.mark.parametrize("encoder", ["spike_pointnet_test", "e3dsnn_test", "pointformer_snn_test"])
def test_per_point_model_every_family(encoder):
    torch.manual_seed(0)
    model = PartSegmentationModel(encoder=encoder, num_parts=5, num_categories=2, head=(16,))
    pts = torch.rand(2, 96, 6) * 2 - 1
    logits = model(pts, torch.tensor([0, 1]))
    assert logits.shape == (2, 96, 5) and torch.isfinite(logits).all()
    logits.logsumexp(-1).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing
    with pytest.raises(ValueError, match="category"):
        model(pts, torch.tensor([0, 2]))


def test_e3dsnn_points_read_the_voxel_they_fall_in():
    torch.manual_seed(0)
    model = PartSegmentationModel(encoder="e3dsnn_test", num_parts=3, num_categories=0, head=(8,))
    enc = model.encoder
    pts = torch.rand(2, 64, 6) * 2 - 1
    stem_out = {}
    h = enc.stem.register_forward_hook(lambda m, a, out: stem_out.setdefault("x", out))
    with torch.no_grad():
        feats = model.point_features(pts)  # [T, B, C, N]
    h.remove()
    x = stem_out["x"]
    dense = x.dense()  # [T, B, C0, S0, S1, S2]: an independent lookup of every point's voxel
    xyz = pts[..., :3]
    grid = torch.floor((xyz - xyz.amin(1, keepdim=True)) / enc.grid_size).long()
    c0 = x.num_channels
    for b in range(2):
        want = dense[0, b][:, grid[b, :, 0], grid[b, :, 1], grid[b, :, 2]]  # [C0, N]
        assert torch.equal(feats[0, b, :c0], want)
    assert feats[0, :, :c0].abs().sum(0).gt(0).float().mean() > 0.5  # not a trivial (all-zero) comparison


# ------------------------------------------------------------------------------------------------ task
ENC = {"name": "spike_pointnet_test", "embed_dim": 32}


@pytest.fixture
def svl_ckpt(tmp_path) -> tuple[Path, dict[str, torch.Tensor]]:
    """A Lightning checkpoint of SVLPretrain with a non-initial encoder (the towers are never built)."""
    from spikelight.tasks.svl_pretrain import SVLPretrain

    task = SVLPretrain(encoder=dict(ENC), clip_model="spikelight-tiny-clip", text_model=None)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for v in task.encoder.state_dict().values():
            if v.is_floating_point():
                v.add_(torch.rand(v.shape, generator=g) * 0.5 + 0.1)
    trainer = Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                      enable_model_summary=False)
    trainer.strategy.connect(task)
    path = tmp_path / "svl.ckpt"
    trainer.save_checkpoint(path)
    return path, {k: v.clone() for k, v in task.encoder.named_parameters()}


def test_synthetic_config_end_to_end_from_an_svl_encoder(svl_ckpt, tmp_path, monkeypatch):
    """``spikelight fit`` on experiments/svl_downstream/synthetic_partseg.yaml (shrunk) with the SVL encoder:
    the encoder starts from the checkpoint (lr 0 keeps it there), validation logs the mIoUs."""
    from spikelight.checkpoint_io import load_checkpoint
    from spikelight.cli import SpikelightCLI

    path, svl_params = svl_ckpt
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("WANDB_MODE", "disabled")
    cats = ["chair", "table", "mug"]
    run = SpikelightCLI(args=[
        "fit", "--config", "experiments/svl_downstream/synthetic_partseg.yaml", "--run_root", str(tmp_path / "runs"),
        "--trainer.callbacks", "[]", "--trainer.max_epochs", "1", "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false", "--trainer.accelerator", "cpu",
        "--data.init_args.num_points", "96", "--data.init_args.categories", json.dumps(cats),
        "--data.init_args.train_per_class", "3", "--data.init_args.val_per_class", "2",
        "--data.init_args.batch_size", "4", "--model.init_args.part_table", json.dumps({"synthetic": cats}),
        "--model.init_args.encoder", json.dumps(ENC), "--model.init_args.head", "[16]",
        "--model.init_args.pretrained", str(path), "--model.init_args.optimizer.init_args.lr", "0.0",
        "--model.init_args.scheduler", "constant"])
    assert run.trainer.global_step == 2 and run.model.pretrained_report["prefix"] == "encoder."
    metrics = run.trainer.callback_metrics
    assert 0.0 <= float(metrics["val/instance_miou"]) <= 1.0 and {"val/class_miou", "val/acc"} <= set(metrics)
    ckpt = load_checkpoint(next((tmp_path / "runs").rglob("last.ckpt")), map_location="cpu")
    state = ckpt["state_dict"]
    for k, v in svl_params.items():
        assert torch.equal(state[f"model.encoder.{k}"], v), k
    assert any(k.startswith("model.head.") for k in state)


def test_task_checks_the_part_table_and_the_pretrained_encoder(svl_ckpt):
    from spikelight.tasks.part_segment import PartSegment

    path, _ = svl_ckpt
    with pytest.raises(ValueError, match=r"svl\.ckpt: .*E3DSNN"):
        PartSegment(encoder="e3dsnn_test", part_table="synthetic").load_pretrained(str(path))
    task = PartSegment(encoder=dict(ENC), part_table="synthetic", head=[8])
    dm = SyntheticPartsDataModule(categories=["chair", "mug"], num_points=32, train_per_class=2, val_per_class=1,
                                  batch_size=2)
    trainer = Trainer(accelerator="cpu", max_steps=1, logger=False, enable_progress_bar=False,
                      enable_model_summary=False, enable_checkpointing=False)
    with pytest.raises(ValueError, match="part table"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(task, dm)
