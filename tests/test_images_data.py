"""Tests of spikelight.datamodules.images: ImageNet ImageFolder DataModule and synthetic shapes.

The ImageNet tests build a real ImageFolder tree in tmp_path from the 15 real ILSVRC2012 validation
JPEGs in ``../shared/data/imagenet`` (symlinks; skipped when the folder is absent).
"""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image

from spikelight.datamodules.images import (
    SYNTHETIC_CLASSES,
    BadImageError,
    BadImageWarning,
    ImageFolderDataset,
    ImageNetDataModule,
    SyntheticImageDataModule,
    SyntheticImageDataset,
    read_label_list,
    read_synsets,
    shape_mask,
)

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
IMAGENET = DATA / "imagenet"
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)

# file number -> (class index, wnid, first name), transcribed from shared/data/SOURCES.md section 6
EXPECTED = {
    1: (65, "n01751748", "sea snake"), 2: (970, "n09193705", "alp"), 3: (230, "n02105855", "Shetland sheepdog"),
    4: (809, "n04263257", "soup bowl"), 5: (516, "n03125729", "cradle"), 6: (57, "n01735189", "garter snake"),
    7: (334, "n02346627", "porcupine"), 8: (415, "n02776631", "bakery"), 9: (674, "n03794056", "mousetrap"),
    10: (332, "n02328150", "Angora"), 11: (109, "n01917289", "brain coral"), 12: (286, "n02125311", "cougar"),
    13: (370, "n02484975", "guenon"), 14: (757, "n04065272", "recreational vehicle"),
    15: (595, "n03496892", "harvester"),
}


def _fname(k: int) -> str:
    return f"ILSVRC2012_val_{k:08d}.JPEG"


@pytest.fixture
def imagenet_tree(tmp_path) -> Path:
    """``tmp/imagenet/{train,val}/<wnid>/ILSVRC2012_val_*.JPEG`` (symlinks), labels from val_list.txt."""
    if not (IMAGENET / "val").is_dir():
        pytest.skip(f"ImageNet fixtures not present at {IMAGENET}")
    synsets = (IMAGENET / "imagenet_synsets.txt").read_text().split()
    root = tmp_path / "imagenet"
    for line in (IMAGENET / "val_list.txt").read_text().splitlines():
        rel, label = line.split()
        wnid = synsets[int(label)]
        for split in ("train", "val"):
            d = root / split / wnid
            d.mkdir(parents=True, exist_ok=True)
            os.symlink(IMAGENET / rel, d / Path(rel).name)
    return root


def _dm(root: Path, **kw) -> ImageNetDataModule:
    kw.setdefault("num_workers", 0)
    kw.setdefault("global_batch_size", 4)
    return ImageNetDataModule(data_dir=str(root), **kw)


# ----------------------------------------------------------------------------------------------
# ImageNet: layout, classes, labels
# ----------------------------------------------------------------------------------------------
@pytest.mark.data
def test_wnid_folders_and_sorted_labels(imagenet_tree):
    expected_wnids = sorted(w for _, w, _ in EXPECTED.values())
    assert sorted(p.name for p in (imagenet_tree / "val").iterdir()) == expected_wnids
    dm = _dm(imagenet_tree)
    assert dm.num_classes == 15
    assert dm.wnids == expected_wnids and dm.class_names == expected_wnids  # no names given
    dm.setup("fit")
    for ds in (dm.train_set, dm.val_set):
        assert len(ds) == 15
        for path, label in ds.samples:
            k = int(Path(path).stem.split("_")[-1])
            assert label == expected_wnids.index(EXPECTED[k][1]), path


@pytest.mark.data
def test_canonical_labels_and_names_from_synsets_and_label_list(imagenet_tree):
    dm = _dm(imagenet_tree, synsets_file=str(IMAGENET / "imagenet_synsets.txt"),
             label_list_file=str(IMAGENET / "imagenet1k_label_list.txt"))
    assert dm.num_classes == 1000
    assert dm.wnids[0] == "n01440764" and dm.class_names[0] == "tench"
    for idx, wnid, name in EXPECTED.values():
        assert dm.wnids[idx] == wnid and dm.class_names[idx] == name
    dm.setup("validate")
    assert dm.train_set is None  # validate needs val only
    val_labels = {Path(r).name: int(lab) for r, lab in
                  (line.split() for line in (IMAGENET / "val_list.txt").read_text().splitlines())}
    for path, label in dm.val_set.samples:
        assert label == val_labels[Path(path).name]
    k = 12
    i = [Path(p).name for p, _ in dm.val_set.samples].index(_fname(k))
    item = dm.val_set[i]
    assert item["label"] == EXPECTED[k][0] == 286 and dm.class_names[item["label"]] == "cougar"


@pytest.mark.data
def test_synsets_file_with_names_and_parse_errors(imagenet_tree, tmp_path):
    wnids = (IMAGENET / "imagenet_synsets.txt").read_text().split()
    names = read_label_list(IMAGENET / "imagenet1k_label_list.txt")
    assert len(names) == 1000 and names[2].startswith("great white shark, white shark")
    loc = tmp_path / "LOC_synset_mapping.txt"
    loc.write_text("".join(f"{w} {n}\n" for w, n in zip(wnids, names)))
    syn = read_synsets(loc)
    assert syn[1] == ("n01443537", "goldfish, Carassius auratus")
    dm = _dm(imagenet_tree, synsets_file=str(loc))
    assert dm.class_names[970] == "alp" and dm.wnids[970] == "n09193705"

    bad = tmp_path / "bad_synsets.txt"
    bad.write_text("n01440764\nfish\n")
    with pytest.raises(ValueError, match=r"bad_synsets.txt:2"):
        read_synsets(bad)
    bad.write_text("n01440764\nn01440764\n")
    with pytest.raises(ValueError, match="repeats"):
        read_synsets(bad)
    bad_list = tmp_path / "bad_labels.txt"
    bad_list.write_text("0 tench\n2 goldfish\n")
    with pytest.raises(ValueError, match=r"bad_labels.txt:2"):
        read_label_list(bad_list)
    # a label list (1000 names) cannot be matched to 15 sorted folders without the synsets file
    with pytest.raises(ValueError, match="1000 entries but 15"):
        _ = _dm(imagenet_tree, label_list_file=str(IMAGENET / "imagenet1k_label_list.txt")).class_names
    # a folder that is not a known wnid
    short = tmp_path / "short_synsets.txt"
    short.write_text("\n".join(wnids[:100]) + "\n")
    dm = _dm(imagenet_tree, synsets_file=str(short))
    with pytest.raises(ValueError, match="not in the class list"):
        dm.setup("validate")


def test_missing_and_flat_folders(tmp_path):
    dm = _dm(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError) as ei:
        dm.setup("fit")
    msg = str(ei.value)
    assert str(tmp_path / "nowhere" / "train") in msg and "train/<wnid>/*.JPEG" in msg
    # val as shipped (flat) -> says so
    (tmp_path / "flat" / "train" / "n01440764").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "flat" / "train" / "n01440764" / "a.JPEG")
    (tmp_path / "flat" / "val").mkdir()
    for i in range(3):
        Image.new("RGB", (8, 8)).save(tmp_path / "flat" / "val" / f"ILSVRC2012_val_{i:08d}.JPEG")
    with pytest.raises(FileNotFoundError, match=r"3 image files directly"):
        _dm(tmp_path / "flat").setup("fit")
    # train present, val missing: fit fails naming val
    shutil.rmtree(tmp_path / "flat" / "val")
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "flat" / "val")):
        _dm(tmp_path / "flat").setup("fit")


# ----------------------------------------------------------------------------------------------
# ImageNet: transforms and batches
# ----------------------------------------------------------------------------------------------
@pytest.mark.data
def test_eval_transform_is_resize232_centercrop224(imagenet_tree):
    dm = _dm(imagenet_tree)
    dm.setup("validate")
    k = 15  # 620 x 478
    i = [Path(p).name for p, _ in dm.val_set.samples].index(_fname(k))
    got = dm.val_set[i]["image"]
    assert got.dtype == torch.float32 and got.shape == (3, 224, 224)
    # independent reference with PIL: shorter side -> 232 (long side truncated like torchvision), centre crop
    img = Image.open(IMAGENET / "val" / _fname(k)).convert("RGB")
    assert img.size == (620, 478)
    w, h = int(232 * 620 / 478), 232
    img = img.resize((w, h), Image.BICUBIC)
    left, top = int(round((w - 224) / 2.0)), int(round((h - 224) / 2.0))
    ref = torch.from_numpy(np.array(img.crop((left, top, left + 224, top + 224)))).permute(2, 0, 1).float() / 255
    ref = (ref - MEAN) / STD
    assert torch.allclose(got, ref, atol=1e-5)
    # a 256 resize would give a visibly different crop
    img256 = Image.open(IMAGENET / "val" / _fname(k)).convert("RGB").resize((int(256 * 620 / 478), 256),
                                                                           Image.BICUBIC)
    l2, t2 = int(round((img256.size[0] - 224) / 2.0)), 16
    ref256 = torch.from_numpy(np.array(img256.crop((l2, t2, l2 + 224, t2 + 224)))).permute(2, 0, 1).float() / 255
    assert (got - (ref256 - MEAN) / STD).abs().mean() > 0.05


@pytest.mark.data
def test_train_transform_random_224(imagenet_tree):
    dm = _dm(imagenet_tree, img_size=224)
    dm.setup("fit")
    pl.seed_everything(0, verbose=False)  # python random, numpy (RandAugment op choice) and torch
    a = dm.train_set[3]["image"]
    b = dm.train_set[3]["image"]
    assert a.shape == b.shape == (3, 224, 224) and a.dtype == torch.float32
    assert not torch.equal(a, b)  # random crop / RandAugment / erasing
    pl.seed_everything(0, verbose=False)
    assert torch.equal(dm.train_set[3]["image"], a)  # reproducible under the seeds
    names = [type(t).__name__ for t in dm.train_transform.transforms]
    assert names[:3] == ["RandomResizedCropAndInterpolation", "RandomHorizontalFlip", "RandAugment"]
    assert names[-1] == "RandomErasing" and dm.train_transform.transforms[-1].probability == 0.25
    # a smaller crop for cheap runs
    dm_small = _dm(imagenet_tree, img_size=96, eval_resize=110)
    dm_small.setup("fit")
    assert dm_small.train_set[0]["image"].shape == (3, 96, 96)
    assert dm_small.val_set[0]["image"].shape == (3, 96, 96)


@pytest.mark.data
def test_batches_and_per_rank_batch_division(imagenet_tree):
    # world_size 2 (DDP on CPU, not launched): 8 global -> 4 per device
    trainer = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp", logger=False,
                         enable_checkpointing=False, enable_progress_bar=False)
    assert trainer.world_size == 2
    dm = _dm(imagenet_tree, global_batch_size=8, img_size=64, eval_resize=72)
    dm.trainer = trainer
    dm.setup("fit")
    assert dm.per_device_batch_size == 4
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"image", "label"}
    assert batch["image"].shape == (4, 3, 64, 64) and batch["image"].dtype == torch.float32
    assert batch["label"].shape == (4,) and batch["label"].dtype == torch.int64
    assert len(dm.train_dataloader()) == 15 // 4  # drop_last
    vb = list(dm.val_dataloader())
    assert [len(b["label"]) for b in vb] == [4, 4, 4, 3]
    assert sorted(torch.cat([b["label"] for b in vb]).tolist()) == list(range(15))

    # not divisible
    dm = _dm(imagenet_tree, global_batch_size=7)
    dm.trainer = trainer
    with pytest.raises(ValueError, match="not divisible by world_size=2"):
        dm.setup("fit")
    # per-device batch_size takes precedence (with a warning when inconsistent)
    dm = _dm(imagenet_tree, global_batch_size=4096, batch_size=3)
    dm.trainer = trainer
    with pytest.warns(UserWarning, match="overrides global_batch_size"):
        dm.setup("fit")
    assert dm.per_device_batch_size == 3 and dm.train_dataloader().batch_size == 3
    # gradient accumulation counts towards the global batch: 8 / (2 devices x 2 steps)
    trainer2 = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp", accumulate_grad_batches=2, logger=False,
                          enable_checkpointing=False, enable_progress_bar=False)
    dm = _dm(imagenet_tree, global_batch_size=8)
    dm.trainer = trainer2
    dm.setup("fit")
    assert dm.per_device_batch_size == 2
    # no trainer: world 1
    dm = _dm(imagenet_tree, global_batch_size=6)
    dm.setup("validate")
    assert dm.per_device_batch_size == 6


@pytest.mark.data
def test_fit_one_step_through_lightning(imagenet_tree, tmp_path):
    class Tiny(pl.LightningModule):
        def __init__(self, n):
            super().__init__()
            self.head = nn.Linear(3, n)
            self.seen = []

        def training_step(self, batch, _):
            self.seen.append(tuple(batch["image"].shape))
            return nn.functional.cross_entropy(self.head(batch["image"].mean((2, 3))), batch["label"])

        def validation_step(self, batch, _):
            self.seen.append(tuple(batch["image"].shape))

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    dm = _dm(imagenet_tree, global_batch_size=2, img_size=32, eval_resize=36)
    model = Tiny(dm.num_classes)
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_epochs=1, limit_train_batches=1, limit_val_batches=1, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         num_sanity_val_steps=0, default_root_dir=str(tmp_path))
    trainer.fit(model, datamodule=dm)
    assert dm.per_device_batch_size == 2
    assert model.seen == [(2, 3, 32, 32), (2, 3, 32, 32)]


# ----------------------------------------------------------------------------------------------
# ImageNet: bad files
# ----------------------------------------------------------------------------------------------
def _add_bad_files(root: Path) -> tuple[Path, Path]:
    wnid = EXPECTED[1][1]
    truncated = root / "train" / wnid / "ILSVRC2012_val_00000001_truncated.JPEG"
    data = (IMAGENET / "val" / _fname(1)).read_bytes()
    truncated.write_bytes(data[: len(data) // 3])
    garbage = root / "train" / EXPECTED[2][1] / "not_an_image.JPEG"
    garbage.write_bytes(b"this is not a JPEG file\n" * 20)
    return truncated, garbage


@pytest.mark.data
def test_bad_images_raise_naming_the_file(imagenet_tree):
    truncated, garbage = _add_bad_files(imagenet_tree)
    dm = _dm(imagenet_tree, img_size=32, eval_resize=36)
    dm.setup("fit")
    paths = [p for p, _ in dm.train_set.samples]
    assert len(paths) == 17
    with pytest.raises(BadImageError, match="truncated") as ei:
        dm.train_set[paths.index(str(truncated))]
    assert str(truncated) in str(ei.value) and ei.value.path == str(truncated)
    with pytest.raises(BadImageError) as ei:
        dm.train_set[paths.index(str(garbage))]
    assert str(garbage) in str(ei.value) and "UnidentifiedImageError" in str(ei.value)
    # also through a DataLoader worker process: the re-raised error still names the file
    ds = ImageFolderDataset(root=imagenet_tree / "train", transform=dm.eval_transform)
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(ds, [paths.index(str(garbage))]), num_workers=1)
    with pytest.raises(BadImageError, match=str(garbage)):
        next(iter(loader))


@pytest.mark.data
def test_skip_bad_substitutes_and_counts(imagenet_tree):
    truncated, garbage = _add_bad_files(imagenet_tree)
    dm = _dm(imagenet_tree, img_size=32, eval_resize=36, skip_bad=True, global_batch_size=17)
    dm.setup("fit")
    ds = dm.train_set
    paths = [p for p, _ in ds.samples]
    i = paths.index(str(truncated))
    with pytest.warns(BadImageWarning, match=str(truncated)):
        item = ds[i]
    # substitute: the next readable sample in folder order
    assert item["label"] == ds.samples[(i + 1) % len(ds)][1]
    assert item["image"].shape == (3, 32, 32) and ds.num_bad == 1
    # a full pass over the loader: every sample position yields an image, both bad files counted
    with pytest.warns(BadImageWarning):
        batches = list(torch.utils.data.DataLoader(ds, batch_size=17, num_workers=0))
    assert batches[0]["image"].shape == (17, 3, 32, 32) and ds.num_bad == 3
    assert dm.num_bad_images == 3
    # counts from worker processes reach the parent through shared memory
    ds2 = ImageFolderDataset(root=imagenet_tree / "train", transform=dm.eval_transform, skip_bad=True)
    list(torch.utils.data.DataLoader(ds2, batch_size=5, num_workers=2))  # (warnings go to worker stderr)
    assert ds2.num_bad == 2
    # all unreadable: gives up with a clear error instead of looping
    only_bad = imagenet_tree.parent / "only_bad" / "train" / "n01440764"
    only_bad.mkdir(parents=True)
    for j in range(3):
        (only_bad / f"x{j}.JPEG").write_bytes(b"junk")
    ds3 = ImageFolderDataset(root=only_bad.parent, skip_bad=True, max_consecutive_bad=2)
    with pytest.warns(BadImageWarning), pytest.raises(BadImageError, match="unreadable images in a row"):
        ds3[0]


# ----------------------------------------------------------------------------------------------
# Synthetic shapes
# ----------------------------------------------------------------------------------------------
def test_shape_masks_match_hand_computed_geometry():
    n, c, s = 64, 32.0, 12.0
    circle = shape_mask("circle", img_size=n, cx=c, cy=c, size=s)
    assert circle[32, 32] == 1 and circle[0, 0] == 0 and circle[32, 32 + 12] == 1 and circle[32, 32 + 13] == 0
    assert abs(circle.sum() - math.pi * s * s) / (math.pi * s * s) < 0.03
    ring = shape_mask("ring", img_size=n, cx=c, cy=c, size=s)
    assert ring[32, 32] == 0 and ring[32, 32 + 10] == 1
    assert abs(ring.sum() - math.pi * (s * s - (0.6 * s) ** 2)) / (math.pi * 0.64 * s * s) < 0.06
    square = shape_mask("square", img_size=n, cx=c, cy=c, size=s)  # half side 0.85 * 12 = 10.2 -> 21 px
    assert square.sum() == 21 * 21
    frame = shape_mask("frame", img_size=n, cx=c, cy=c, size=s)  # 25x25 minus the inner |d| < 7.8 (15x15)
    assert frame.sum() == 25 * 25 - 15 * 15
    tri = shape_mask("triangle", img_size=n, cx=c, cy=c, size=s)
    assert tri[20, 32] == 1 and tri[20, 33] == 0 and tri[44, 20] == 1  # apex row 20, base row 44 half-width 12
    assert abs(tri.sum() - 2 * s * s) / (2 * s * s) < 0.1
    sh = shape_mask("stripes_horizontal", img_size=n, cx=c, cy=c, size=s, period=6.0)
    sv = shape_mask("stripes_vertical", img_size=n, cx=c, cy=c, size=s, period=6.0)
    patch = (slice(21, 44), slice(21, 44))
    assert (sh[patch] == sh[patch][:, :1]).all() and not (sh[patch] == sh[patch][:1, :]).all()
    assert np.array_equal(sv, sh.T)
    assert sh[:20].sum() == 0 and sh[45:].sum() == 0  # only inside the patch
    with pytest.raises(ValueError, match="unknown synthetic class"):
        shape_mask("hexagon", img_size=n, cx=c, cy=c, size=s)


def test_synthetic_determinism_and_batches():
    a = SyntheticImageDataset(size=40, num_classes=10, img_size=32, seed=3, cache=True)
    b = SyntheticImageDataset(size=40, num_classes=10, img_size=32, seed=3, cache=False)
    # cached and on-the-fly renders agree, in any access order
    for i in (39, 0, 17, 5):
        assert torch.equal(a[i]["image"], b[i]["image"]) and a[i]["label"] == b[i]["label"] == i % 10
    c = SyntheticImageDataset(size=40, num_classes=10, img_size=32, seed=4)
    assert not torch.equal(a.raw(0), c.raw(0))
    val = SyntheticImageDataset(size=40, num_classes=10, img_size=32, seed=3, split=1)
    assert not torch.equal(a.raw(0), val.raw(0))  # splits use different streams

    dm = SyntheticImageDataModule(num_classes=6, img_size=32, train_size=24, val_size=12, batch_size=8, seed=0)
    assert dm.num_classes == 6 and dm.class_names == list(SYNTHETIC_CLASSES[:6])
    dm.setup("fit")
    batch = next(iter(dm.val_dataloader()))
    assert batch["image"].shape == (8, 3, 32, 32) and batch["image"].dtype == torch.float32
    assert batch["label"].dtype == torch.int64 and batch["label"].tolist() == [0, 1, 2, 3, 4, 5, 0, 1]
    dm2 = SyntheticImageDataModule(num_classes=6, img_size=32, train_size=24, val_size=12, batch_size=8, seed=0)
    assert torch.equal(next(iter(dm2.val_dataloader()))["image"], batch["image"])
    assert len(dm.test_set) == 12 and not torch.equal(dm.test_set.raw(0), dm.val_set.raw(0))
    with pytest.raises(ValueError, match="num_classes"):
        SyntheticImageDataModule(num_classes=len(SYNTHETIC_CLASSES) + 1)


def test_synthetic_normalisation_and_64px():
    ds = SyntheticImageDataset(size=300, num_classes=10, img_size=32, seed=0)
    x = torch.stack([ds[i]["image"] for i in range(len(ds))])
    assert x.mean().abs() < 0.1 and 0.85 < x.std() < 1.15
    ds64 = SyntheticImageDataset(size=14, num_classes=14, img_size=64, seed=0)
    assert ds64[13]["image"].shape == (3, 64, 64) and ds64[13]["label"] == 13


def _power(x: torch.Tensor) -> torch.Tensor:
    """Translation-invariant view ``[N, H, W//2+1]``: power spectrum per channel (mean removed), summed."""
    return (torch.fft.rfft2(x - x.mean((2, 3), keepdim=True)).abs() ** 2).sum(1)


def test_synthetic_classes_differ():
    k = 10
    ds = SyntheticImageDataset(size=k * 40, num_classes=k, img_size=32, seed=0, cache=False)
    x = torch.stack([ds[i]["image"] for i in range(len(ds))])
    y = torch.tensor([ds.label_of(i) for i in range(len(ds))])
    # raw per-class mean images are ~flat (random colours and positions); compare per-class mean spectra
    power = _power(x)
    spec = torch.log1p(power).flatten(1)
    idx = torch.arange(len(ds))
    fit, held = idx < 20 * k, idx >= 20 * k
    means = torch.stack([spec[fit & (y == c)].mean(0) for c in range(k)])
    other = torch.stack([spec[held & (y == c)].mean(0) for c in range(k)])  # same classes, fresh samples
    # the mean spectrum of fresh samples of class c is nearest to class c's mean, for every c
    assert torch.equal(torch.cdist(other, means).argmin(1), torch.arange(k))
    pred = torch.cdist(spec[held], means).argmin(1)  # nearest class mean on held-out samples
    assert (pred == y[held]).float().mean() > 0.5  # chance is 0.1 (measured 0.83)
    per_class = torch.stack([(pred[y[held] == c] == c).float().mean() for c in range(k)])
    assert per_class.min() > 0.3, per_class  # no class is confused wholesale (measured >= 0.65)
    # horizontal stripes put their energy on the vertical-frequency axis, vertical stripes on the other
    h, v = SYNTHETIC_CLASSES.index("stripes_horizontal"), SYNTHETIC_CLASSES.index("stripes_vertical")
    ky_axis, kx_axis = power[:, 1:, 0].sum(1), power[:, 0, 1:].sum(1)
    assert (ky_axis[y == h] > kx_axis[y == h]).float().mean() > 0.9
    assert (kx_axis[y == v] > ky_axis[y == v]).float().mean() > 0.9


@pytest.fixture
def one_thread():
    """One intra-op thread: on a shared, loaded 2-core machine this is faster than 2 spinning threads."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_synthetic_learnable_by_tiny_cnn(one_thread):
    torch.manual_seed(0)
    dm = SyntheticImageDataModule(num_classes=10, img_size=32, train_size=1000, val_size=300, batch_size=32,
                                  seed=0)
    net = nn.Sequential(nn.Conv2d(3, 16, 5, stride=2, padding=2), nn.ReLU(),
                        nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),
                        nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
                        nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(32, 10))
    opt = torch.optim.Adam(net.parameters(), lr=5e-3)
    step = 0
    while step < 200:
        for batch in dm.train_dataloader():
            loss = nn.functional.cross_entropy(net(batch["image"]), batch["label"])
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
            if step == 200:
                break
    with torch.no_grad():
        correct = sum((net(b["image"]).argmax(1) == b["label"]).sum().item() for b in dm.val_dataloader())
    assert correct / 300 > 0.6  # chance 0.1; measured ~0.95


@pytest.mark.data
def test_datasets_pickle_for_spawned_workers(imagenet_tree):
    import pickle

    dm = _dm(imagenet_tree, img_size=32, eval_resize=36, synsets_file=str(IMAGENET / "imagenet_synsets.txt"))
    dm.setup("fit")
    val = pickle.loads(pickle.dumps(dm.val_set))
    assert val.samples == dm.val_set.samples and torch.equal(val[0]["image"], dm.val_set[0]["image"])
    assert val[0]["label"] == dm.val_set[0]["label"] >= 15  # canonical index survives the round trip
    syn = SyntheticImageDataset(size=5, seed=1)
    assert torch.equal(pickle.loads(pickle.dumps(syn))[4]["image"], syn[4]["image"])
