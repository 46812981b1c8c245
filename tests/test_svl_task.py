"""SVLPretrain: MTA training on synthetic triplets, zero-shot evaluation on held-out data, checkpoints
without the frozen towers, the confusion-matrix callback."""

from __future__ import annotations

import json
import time

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import Callback, Trainer

from spikelight.callbacks.confusion import ConfusionMatrixPlot
from spikelight.datamodules.pointcloud import Synthetic3DDataModule
from spikelight.tasks.base import ConfusionResult
from spikelight.tasks.svl_pretrain import SVLPretrain

CATS = ["box", "sphere", "cone", "torus", "chair", "table", "mug", "bench"]
HELDOUT = ["mug", "bench"]
TEMPLATES = ["a point cloud model of {}.", "a 3D model of the {}."]


@pytest.fixture(scope="module")
def dm(tmp_path_factory):
    d = Synthetic3DDataModule(
        num_points=128, image_size=32, train_per_class=3, val_per_class=2, categories=CATS,
        heldout_categories=HELDOUT, batch_size=6, cache_dir=str(tmp_path_factory.mktemp("syn3d")), progress=False,
        prompt_templates=TEMPLATES,
    )  # fmt: skip
    d.setup("fit")
    return d


def make_task(**kw) -> SVLPretrain:
    torch.manual_seed(0)
    args = dict(
        encoder={"name": "spike_pointnet_test", "embed_dim": 32, "input_transform": False, "feature_transform": False},
        clip_model="spikelight-tiny-clip",
        text_model=None,
        optimizer=lambda p: torch.optim.AdamW(p, lr=3e-3, betas=(0.9, 0.98), weight_decay=1e-4),
    )
    args.update(kw)
    return SVLPretrain(**args)


def _trainer(tmp_path, **kw) -> Trainer:
    args = dict(
        default_root_dir=str(tmp_path), accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
    )  # fmt: skip
    args.update(kw)
    return Trainer(**args)


def test_dims_come_from_configs_and_towers_are_lazy():
    task = make_task()
    assert (task.image_dim, task.text_dim, task.embed_dim) == (128, 128, 32)
    assert task.frozen_names == ["towers"] and not task.frozen_is_built("towers")  # nothing built yet
    assert not any("visual" in k or "towers" in k for k in task.state_dict())
    assert task.align.proj_text.weight.shape == (32, 128)
    # the encoder comes from its spec; embed_dim follows the CLIP image width when the spec has none
    assert task.encoder.embed_dim == 32
    assert make_task(encoder="spike_pointnet_test").embed_dim == 128
    towers = task.towers  # first use builds it: frozen, eval, on the task's device, still not in state_dict
    assert task.frozen_is_built("towers") and not towers.training
    assert not any(p.requires_grad for p in towers.parameters())
    assert not any("visual" in k or "towers" in k for k in task.state_dict())


def test_loss_finite_and_decreases_on_a_fixed_batch(dm):
    task = make_task()
    batch = next(iter(dm.train_dataloader()))
    opt = torch.optim.AdamW(task.parameters_to_optimize(), lr=3e-3, betas=(0.9, 0.98))
    image_feat, text_feat = task.teacher_features(batch)
    assert image_feat.shape == (6, 128) and text_feat.shape == (6, 128)
    losses = []
    for _ in range(30):
        out = task.mta(task(batch["points"]), *task.align(image_feat, text_feat))
        assert torch.isfinite(out["loss"])
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(float(out["loss"].detach()))
    print(f"MTA loss over 30 steps: {losses[0]:.3f} -> {losses[-1]:.3f}")
    assert losses[-1] < 0.7 * losses[0]
    # the three terms add up with unit weights
    assert torch.allclose(out["loss"], out["loss_text"] + out["loss_image"] + out["loss_mse"])


def test_weight_decay_groups_exclude_logit_scale_and_biases():
    task = make_task()
    decay, no_decay = task.parameters_to_optimize()
    ids = {id(p) for p in no_decay["params"]}
    assert no_decay["weight_decay"] == 0.0
    assert id(task.align.logit_scale) in ids
    assert all(p.ndim >= 2 for p in decay["params"])
    assert id(task.align.proj_text.weight) not in ids
    n = sum(1 for p in task.parameters() if p.requires_grad)
    assert len(decay["params"]) + len(no_decay["params"]) == n


def test_nan_points_stop_with_clear_error(dm):
    task = make_task()
    batch = next(iter(dm.train_dataloader()))
    batch["points"][0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        task.training_step(batch, 0)


def _hand_zero_shot(task: SVLPretrain, points: torch.Tensor, names: list[str]) -> torch.Tensor:
    """Independent zero-shot logits: template loop, normalise, average, project, normalise."""
    towers = task.towers
    rows = []
    for n in names:
        f = towers.encode_text([t.format(n) for t in TEMPLATES])  # [M, D]
        f = f / f.norm(dim=-1, keepdim=True)
        rows.append(f.mean(0))
    t = torch.stack(rows) @ task.align.proj_text.weight.t()
    t = t / t.norm(dim=-1, keepdim=True)
    x = task(points)
    x = x / x.norm(dim=-1, keepdim=True)
    return task.align.logit_scale.exp() * x @ t.t()


class _RecordValBatches(Callback):
    """Every validation batch the trainer feeds the task: (dataloader_idx, points, labels)."""

    def __init__(self) -> None:
        self.seen: list = []

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        self.seen.append((dataloader_idx, batch["points"].clone(), batch["label"].clone()))


def test_fit_logs_and_zero_shot_uses_only_heldout_data(dm, tmp_path):
    task = make_task()
    rec = _RecordValBatches()
    trainer = _trainer(tmp_path, max_epochs=2, callbacks=[rec, ConfusionMatrixPlot()])
    trainer.fit(task, datamodule=dm)
    seen = rec.seen
    m = trainer.callback_metrics
    for k in ("train/loss", "train/loss_text", "train/loss_image", "train/loss_mse", "train/logit_scale",
              "train/acc_text", "val/top1", "val/top3", "val/top5", "val/mean_class_acc",
              "val_categories/top1", "val_categories/mean_class_acc"):  # fmt: skip
        assert k in m, f"{k} not logged ({sorted(m)})"
    assert "val_categories/top3" not in m  # only 2 held-out categories: top-3 is meaningless
    assert torch.isfinite(m["train/loss"])

    # validation saw exactly the held-out sets, in order, and none of their clouds is a training cloud
    val_sets = dm.val_set
    n_obj, n_cat = len(val_sets["val_objects"]), len(val_sets["val_categories"])
    last_epoch = seen[-(len(seen) // 2) :]
    got_obj = torch.cat([p for i, p, _ in last_epoch if i == 0])
    got_cat = torch.cat([p for i, p, _ in last_epoch if i == 1])
    assert (len(got_obj), len(got_cat)) == (n_obj, n_cat)
    ref_obj = torch.stack([val_sets["val_objects"][j]["points"] for j in range(n_obj)])
    assert torch.equal(got_obj, ref_obj)
    train = torch.from_numpy(dm.load_arrays()["train"]["points"])
    for clouds in (got_obj, got_cat):
        d = torch.cdist(clouds.flatten(1), train.flatten(1))
        assert float(d.min()) > 1.0, "a validation cloud equals a training cloud"

    # logged metrics == an independent computation over the same held-out samples
    task.eval()
    with torch.no_grad():
        for idx, key, names in (
            (0, "val", dm.train_class_names),
            (1, "val_categories", dm.heldout_class_names),
        ):
            pts = torch.cat([p for i, p, _ in last_epoch if i == idx])
            labels = torch.cat([lab for i, _, lab in last_epoch if i == idx])
            logits = _hand_zero_shot(task, pts, names)
            torch.testing.assert_close(task.infer({"points": pts}, idx), logits, rtol=1e-4, atol=1e-4)
            pred = logits.argmax(-1)
            top1 = float((pred == labels).float().mean())
            per_class = [float((pred[labels == c] == c).float().mean()) for c in labels.unique()]
            assert float(m[f"{key}/top1"]) == pytest.approx(top1, abs=1e-6)
            assert float(m[f"{key}/mean_class_acc"]) == pytest.approx(
                sum(per_class) / len(per_class), abs=1e-6
            )
            if idx == 0:
                top3 = float((logits.topk(3, dim=-1).indices == labels[:, None]).any(-1).float().mean())
                assert float(m["val/top3"]) == pytest.approx(top3, abs=1e-6)
            # the typed confusion matrix the callback draws counts exactly these predictions
            res = task.confusion_matrices[dm.eval_sets()[idx].name]
            assert isinstance(res, ConfusionResult) and res.epoch == 1 and res.class_names == tuple(names)
            expect = torch.zeros(len(names), len(names), dtype=torch.long)
            expect.index_put_((labels, pred), torch.ones_like(labels), accumulate=True)
            assert torch.equal(res.matrix, expect)

    record = json.loads((tmp_path / "zero_shot.json").read_text())
    assert set(record["sets"]) == {"val_objects", "val_categories"}
    assert record["sets"]["val_objects"]["top1"] == pytest.approx(float(m["val/top1"]))
    assert (record["sets"]["val_objects"]["samples"], record["sets"]["val_categories"]["samples"]) == (
        n_obj,
        n_cat,
    )
    assert (tmp_path / "confusion_val_objects.png").stat().st_size > 1000


def test_test_stage_logs_test_keys(dm, tmp_path):
    task = make_task()
    trainer = _trainer(tmp_path)
    res = trainer.test(task, datamodule=dm, verbose=False)
    keys = set().union(*[r.keys() for r in res])
    assert {"test/top1", "test/mean_class_acc", "test_categories/top1"} <= keys
    record = json.loads((tmp_path / "zero_shot_test.json").read_text())
    assert record["trainer_fn"] == "test" and record["sets"]["val_objects"]["samples"] == 12
    assert record["sets"]["val_objects"]["top1"] == pytest.approx(float(res[0]["test/top1"]))
    assert not (tmp_path / "zero_shot.json").exists()


class _ScoredEpochs(Callback):
    """Epochs whose validation produced zero-shot scores (the epoch stamp of the confusion matrix)."""

    def __init__(self) -> None:
        self.epochs: list[int] = []

    def on_validation_end(self, trainer, pl_module) -> None:
        res = pl_module.confusion_matrices.get("val_objects")
        if res is not None and res.epoch == trainer.current_epoch:
            self.epochs.append(res.epoch)


def test_zero_shot_every_n_epochs_skips_epochs(dm, tmp_path):
    task = make_task(zero_shot_every_n_epochs=2)
    rec = _ScoredEpochs()
    trainer = _trainer(tmp_path, max_epochs=3, limit_train_batches=1, callbacks=[rec])
    trainer.fit(task, datamodule=dm)
    assert rec.epochs == [1, 2]  # epoch 1 ((1 + 1) % 2 == 0) and the last epoch


def test_checkpoint_excludes_towers_and_reloads(dm, tmp_path):
    from spikelight.cli import load_weights

    task = make_task()  # random-weight tiny CLIP: text AND image tower only come back through tower_seed
    trainer = _trainer(tmp_path, max_epochs=1, limit_train_batches=2, limit_val_batches=1,
                       enable_checkpointing=True)  # fmt: skip
    trainer.fit(task, datamodule=dm)
    assert task.frozen_is_built("towers")
    ckpt = tmp_path / "svl.ckpt"
    trainer.save_checkpoint(ckpt)
    saved = torch.load(ckpt, map_location="cpu", weights_only=True)
    state = saved["state_dict"]
    assert all(k.startswith(("encoder.", "align.")) for k in state), sorted(state)[:5]
    tower_params = sum(p.numel() for p in task.towers.parameters())
    assert sum(v.numel() for v in state.values()) < tower_params  # no tower weights, only small parts
    assert saved["frozen_modules"] == {"towers": {"clip_model": "spikelight-tiny-clip", "clip_pretrained": None,
                                                  "text_model": None}}  # fmt: skip

    # loading rebuilds the towers from the hparams: same zero-shot logits, same teacher image features
    task.eval()
    loaded = SVLPretrain.load_from_checkpoint(ckpt, weights_only=True).eval()
    assert not loaded.frozen_is_built("towers")
    points = torch.cat([b["points"] for b in dm.val_dataloader()[0]])
    names, images = dm.train_class_names, next(iter(dm.train_dataloader()))["image"]
    with torch.no_grad():
        for m in (task, loaded):
            m.zero_shot.clear()
        want = task.zero_shot.logits(task(points), task.zero_shot.weights(names, TEMPLATES))
        got = loaded.zero_shot.logits(loaded(points), loaded.zero_shot.weights(names, TEMPLATES))
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(loaded.towers.encode_image(images), task.towers.encode_image(images))

    # the CLI's strict loader takes it too, and a checkpoint from before the rule (tower weights, mta.*
    # keys) loads with the tower weights dropped and the projections renamed
    fresh = make_task()
    load_weights(fresh, str(ckpt), weights_only=True)
    for k, v in fresh.state_dict().items():
        assert torch.equal(v, state[k])
    old = {("mta." + k[6:] if k.startswith("align.") else k): v for k, v in state.items()}
    old["towers.visual.proj"] = torch.zeros(3)
    torch.save({"state_dict": old}, tmp_path / "old.ckpt")
    fresh = make_task()
    load_weights(fresh, str(tmp_path / "old.ckpt"), weights_only=True)
    assert torch.equal(fresh.align.proj_text.weight, state["align.proj_text.weight"])


def test_precomputed_features_skip_the_towers(dm):
    task = make_task(clip_image_dim=16, clip_text_dim=24, clip_model="spikelight-tiny-clip")
    batch = next(iter(dm.train_dataloader()))
    batch = {"points": batch["points"], "image_feat": F.normalize(torch.randn(6, 16), dim=-1),
             "text_feat": F.normalize(torch.randn(6, 24), dim=-1)}  # fmt: skip
    image_feat, text_feat = task.teacher_features(batch)
    assert image_feat is batch["image_feat"] and text_feat is batch["text_feat"]
    out = task.mta(task(batch["points"]), *task.align(image_feat, text_feat))
    assert torch.isfinite(out["loss"])
    assert not task.frozen_is_built("towers")  # never built


def test_confusion_callback_png_and_wandb_chart(tmp_path, monkeypatch):
    """PNG always; with a WandbLogger also the interactive confusion matrix (in the offline run files)."""
    from lightning.pytorch import LightningModule
    from lightning.pytorch.loggers import WandbLogger

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    module = LightningModule()
    cm = torch.tensor([[3, 1], [0, 2]])
    module.confusion_matrices = {"val_objects": ConfusionResult("val_objects", ("mug", "bench"), cm, 4)}
    logger = WandbLogger(save_dir=str(tmp_path), offline=True, project="t")
    trainer = _trainer(tmp_path, logger=logger)
    cb = ConfusionMatrixPlot()
    cb.on_fit_end(trainer, module)
    assert cb.written == [tmp_path / "confusion_val_objects.png"] and cb.written[0].stat().st_size > 1000
    logger.experiment.finish()
    run = next((tmp_path / "wandb").glob("offline-run-*"))
    # W&B's service process writes the run's transaction log on its own: finish() has been seen to return
    # before the last records reached the file (in a parallel test run), so wait for them (bounded)
    deadline, data = time.monotonic() + 60.0, b""
    while b"plots/confusion_val_objects" not in data and time.monotonic() < deadline:
        time.sleep(0.2)
        data = b"".join(p.read_bytes() for p in run.glob("run-*.wandb"))
    assert b"plots/confusion_val_objects" in data
    table = json.loads(next(run.rglob("confusion_val_objects_table_*.table.json")).read_text())
    counts = {(r[0], r[1]): r[2] for r in table["data"]}  # (actual, predicted) -> count, as in cm
    assert counts == {("mug", "mug"): 3, ("mug", "bench"): 1, ("bench", "mug"): 0, ("bench", "bench"): 2}
    assert any(run.rglob("confusion_val_objects_png_*.png"))
