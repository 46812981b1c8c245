"""TRevSNNClassify: mode equivalence through Lightning, EMA maths and checkpointing, AGC, the ImageNet
config on a fake ImageFolder tree, the DVS path, and the synthetic experiment learning."""

from __future__ import annotations

import time
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
import yaml
from lightning.pytorch import Callback

from spikelight.datamodules.images import SyntheticImageDataModule
from spikelight.tasks.trevsnn_classify import TRevSNNClassify

REPO = Path(__file__).resolve().parents[1]
CFG = REPO / "experiments" / "trevsnn"


@pytest.fixture(autouse=True)
def _one_thread():
    """The machine is shared: one intra-op thread is faster than oversubscribed ones here."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(autouse=True)
def _no_wandb(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")


def _lamb(params):
    from timm.optim import Lamb

    return Lamb(params, lr=5e-2, weight_decay=0.01, max_grad_norm=1.0)


def _task(mode: str = "reversible", **kw) -> TRevSNNClassify:
    args = dict(
        network={"name": "trevsnn_test", "timesteps": 3, "mode": mode},
        num_classes=4,
        optimizer=_lamb,
        warmup_epochs=0.5,
        warmup_start_lr=1e-4,
        ema_decay=0.9,
    )
    args.update(kw)
    return TRevSNNClassify(**args)


def _data(**kw) -> SyntheticImageDataModule:
    args = dict(num_classes=4, img_size=16, train_size=24, val_size=8, batch_size=8)
    args.update(kw)
    return SyntheticImageDataModule(**args)


def _trainer(tmp_path: Path, **kw) -> pl.Trainer:
    args = dict(
        max_epochs=1,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=str(tmp_path),
    )
    args.update(kw)
    return pl.Trainer(**args)


class _Record(Callback):
    """Losses of every step, and (weights, EMA weights) after every optimizer step + EMA update."""

    def __init__(self) -> None:
        self.losses: list[float] = []
        self.weights: list[dict] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(outputs["loss"]))
        self.weights.append({k: v.detach().clone() for k, v in pl_module.model.state_dict().items()})


# ------------------------------------------------------------------------------------------- modes
def test_reversible_and_bptt_train_identically_in_float64(tmp_path):
    """A few LAMB + AGC + warmup steps through Lightning (float64): same loss at every step, same weights
    and same EMA weights at the end."""
    runs = {}
    for mode in ("reversible", "bptt"):
        pl.seed_everything(0)
        task = _task(mode=mode)
        rec = _Record()
        _trainer(tmp_path / mode, max_steps=3, precision="64-true", callbacks=[rec], limit_val_batches=0).fit(
            task, _data()
        )
        runs[mode] = (task, rec)
    (t_rev, r_rev), (t_bptt, r_bptt) = runs["reversible"], runs["bptt"]
    assert len(r_rev.losses) == 3
    np.testing.assert_allclose(r_rev.losses, r_bptt.losses, rtol=1e-9, atol=0)
    assert len(set(round(v, 6) for v in r_rev.losses)) == 3  # the weights did change between steps
    for (k, a), b in zip(t_rev.model.state_dict().items(), t_bptt.model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-9, msg=k)
    for a, b in zip(t_rev.ema_model.parameters(), t_bptt.ema_model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-9)


# ------------------------------------------------------------------------------------------- EMA
def test_ema_follows_the_formula_differs_from_raw_and_is_restored(tmp_path):
    pl.seed_everything(0)
    decay = 0.8
    task = _task(ema_decay=decay)
    rec = _Record()
    trainer = _trainer(tmp_path, max_steps=3, callbacks=[rec], limit_val_batches=1)
    trainer.fit(task, _data())
    # independent EMA: e_1 = w_1 (ModelEmaV3's first update copies), e_k = d e_{k-1} + (1 - d) w_k
    expected = None
    for w in rec.weights:
        if expected is None:
            expected = {k: v.clone() for k, v in w.items()}
        else:
            expected = {
                k: (decay * expected[k] + (1 - decay) * v if v.is_floating_point() else v.clone())
                for k, v in w.items()
            }
    ema_state = task.ema_model.state_dict()
    for k, v in expected.items():
        torch.testing.assert_close(ema_state[k], v, rtol=1e-5, atol=1e-7, msg=k)
    raw = dict(task.model.named_parameters())
    differs = [n for n, p in task.ema_model.named_parameters() if not torch.equal(p, raw[n])]
    assert differs, "EMA weights equal the raw weights after 3 steps"
    assert not any(p.requires_grad for p in task.ema_model.parameters())
    assert {"val/top1", "val/top5", "val_ema/top1", "val_ema/top5"} <= set(trainer.callback_metrics)

    path = tmp_path / "ema.ckpt"
    trainer.save_checkpoint(path)
    ck = torch.load(path, map_location="cpu", weights_only=True)
    assert any(k.startswith("model_ema.module.") for k in ck["state_dict"])
    loaded = TRevSNNClassify.load_from_checkpoint(path, optimizer=_lamb, weights_only=True)
    # the network spec is plain data in the checkpoint's hyper-parameters: it rebuilds the same network
    assert ck["hyper_parameters"]["network"] == {"name": "trevsnn_test", "timesteps": 3, "mode": "reversible"}
    assert (loaded.model.timesteps, loaded.model.num_classes, loaded.model.channels) == (3, 4, (8, 16, 16, 32))
    fresh = _task(ema_decay=decay)
    n_changed = 0
    for (n, p), q, f in zip(
        loaded.ema_model.named_parameters(), task.ema_model.parameters(), fresh.ema_model.parameters()
    ):
        torch.testing.assert_close(p, q, rtol=0, atol=0, msg=n)
        n_changed += int(not torch.equal(p, f))
    assert n_changed > 0  # what was loaded is not just a fresh initialisation
    # a checkpoint without EMA weights still loads: the EMA starts from its model weights
    no_ema = {k: v for k, v in ck["state_dict"].items() if not k.startswith("model_ema.")}
    task2 = _task(ema_decay=decay)
    ck2 = {"state_dict": no_ema}
    task2.on_load_checkpoint(ck2)
    task2.load_state_dict(ck2["state_dict"])
    for p, q in zip(task2.ema_model.parameters(), task.model.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


def test_ema_off_has_no_copy():
    task = _task(ema_decay=None)
    assert task.ema_model is None
    assert not any(k.startswith("model_ema") for k in task.state_dict())


# ------------------------------------------------------------------------------------------- optimiser
def test_weight_decay_groups_and_agc_clip_per_unit():
    task = _task(agc_clip=0.02)
    groups = task.parameters_to_optimize()
    assert len(groups) == 2 and groups[1]["weight_decay"] == 0.0
    assert all(p.ndim > 1 for p in groups[0]["params"]) and all(p.ndim <= 1 for p in groups[1]["params"])
    n_model = sum(1 for p in task.model.parameters() if p.requires_grad)
    assert len(groups[0]["params"]) + len(groups[1]["params"]) == n_model
    assert not set(map(id, task.parameters_to_optimize()[0]["params"])) & set(
        map(id, task.model_ema.parameters())
    )

    conv = task.model.stems[0].conv1.weight  # [Cout, Cin, k, k]
    small = task.model.stems[0].bn1.bias  # 1-D, zero at init -> norm floor eps=1e-3
    fc = task.model.heads[-1].fc.weight
    for p in task.model.parameters():
        p.grad = torch.zeros_like(p)
    conv.grad = 100.0 * conv.detach().clone()
    conv.grad[0] = 0.001 * conv.detach()[0]  # unit 0 stays below the clip: unchanged
    small.grad = torch.ones_like(small)
    fc.grad = 100.0 * fc.detach().clone()
    g_conv0, g_fc = conv.grad.clone(), fc.grad.clone()
    task.configure_gradient_clipping(torch.optim.SGD([conv], lr=0.1))
    w_norm = conv.detach().flatten(1).norm(dim=1)
    g_norm = conv.grad.flatten(1).norm(dim=1)
    torch.testing.assert_close(g_norm[1:], 0.02 * w_norm[1:].clamp(min=1e-3))
    torch.testing.assert_close(conv.grad[0], g_conv0[0])
    torch.testing.assert_close(small.grad.norm(), torch.tensor(0.02 * 1e-3))
    torch.testing.assert_close(fc.grad, g_fc)  # the classifier is excluded from AGC


# ------------------------------------------------------------------------------------------- DVS
def test_dvs_task_trains_on_event_frames(tmp_path):
    from spikelight.datamodules.events import SyntheticDVSDataModule

    pl.seed_everything(0)
    dm = SyntheticDVSDataModule(
        num_classes=3,
        train_size=8,
        val_size=4,
        timesteps=2,
        frames_per_step=2,
        sensor_size=(32, 32, 2),
        num_events=400,
        batch_size=4,
    )
    network = {"name": "trevsnn_test", "timesteps": 2, "dvs": True, "in_chans": 4}
    task = TRevSNNClassify(network=network, num_classes=3, optimizer=_lamb)
    assert task.input_key == "events"
    rec = _Record()
    trainer = _trainer(tmp_path, max_steps=2, callbacks=[rec], limit_val_batches=1)
    trainer.fit(task, dm)
    assert len(rec.losses) == 2 and all(np.isfinite(rec.losses))
    assert "val_ema/top1" in trainer.callback_metrics
    with pytest.raises(KeyError, match="events"):
        task.training_step({"image": torch.zeros(1, 3, 16, 16), "label": torch.zeros(1, dtype=torch.long)}, 0)


# ------------------------------------------------------------------------------------------- configs
def _check_recipe(cfg: dict, variant: str) -> None:
    init = cfg["model"]["init_args"]
    net = init["network"]
    assert net["name"] == f"trevsnn_{variant}" and net["timesteps"] == 4 and net["mode"] == "reversible"
    assert init["optimizer"]["class_path"] == "timm.optim.Lamb"
    assert init["optimizer"]["init_args"]["lr"] == pytest.approx(8e-3)
    assert init["optimizer"]["init_args"]["weight_decay"] == pytest.approx(0.01)
    assert (init["agc_clip"], init["ema_decay"], init["label_smoothing"]) == (0.02, 0.9992, 0.1)
    assert (init["warmup_epochs"], init["warmup_start_lr"], init["min_lr"]) == (20, 4e-5, 4e-6)
    assert cfg["data"]["init_args"]["global_batch_size"] == 4096
    assert cfg["trainer"]["max_epochs"] == 300 and cfg["trainer"]["precision"] == "16-mixed"


def test_imagenet_small_config_prints_with_ddp(repo_root, monkeypatch, capfd):
    from spikelight.cli import main

    monkeypatch.chdir(repo_root)  # in this process: a console-script launch spends ~15 s importing
    with pytest.raises(SystemExit) as e:
        main(["fit", "--config", "experiments/trevsnn/imagenet_small.yaml", "--config", "experiments/cluster/ddp.yaml",
              "--print_config"])
    out, err = capfd.readouterr()
    assert e.value.code in (0, None), err[-3000:]
    cfg = yaml.safe_load(out)
    _check_recipe(cfg, "small")
    assert "DDPStrategy" in cfg["trainer"]["strategy"]["class_path"]
    assert cfg["trainer"]["sync_batchnorm"] is True


def test_imagenet_tiny_config_instantiates_without_data(tmp_path, monkeypatch):
    from spikelight.cli import SpikelightCLI

    monkeypatch.chdir(tmp_path)
    cli = SpikelightCLI(
        args=[
            "--config",
            str(CFG / "imagenet_tiny.yaml"),
            "--trainer.accelerator",
            "cpu",
            "--run_root",
            str(tmp_path / "runs"),
        ],
        run=False,
    )
    _check_recipe(cli.config.as_dict(), "tiny")
    assert not (tmp_path / "data" / "imagenet").exists()
    assert abs(cli.model.model.param_count(aux_heads=False) / 1e6 - 15.2) < 0.1
    assert cli.model.ema_model is not None and cli.model.model.mode == "reversible"


def _write_fake_imagenet(root: Path, wnids: list[str], per_split: dict[str, int]) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in per_split.items():
        for wnid in wnids:
            d = root / split / wnid
            d.mkdir(parents=True)
            for i in range(n):
                arr = rng.integers(0, 256, size=(40 + 4 * i, 48, 3), dtype=np.uint8)
                Image.fromarray(arr).save(d / f"{wnid}_{i}.JPEG", quality=85)


def test_imagenet_tiny_config_starts_on_a_fake_imagefolder(tmp_path, monkeypatch):
    """The shipped config with its callbacks (MemoryMonitor measures step 1: MemTracker makes that step slow
    with many parameter tensors, hence T=2), shrunk to the test model, on a JPEG ImageFolder tree."""
    from spikelight.cli import SpikelightCLI

    data = tmp_path / "imagenet"
    wnids = ["n01440764", "n01443537", "n01484850"]
    _write_fake_imagenet(data, wnids, {"train": 4, "val": 2})
    monkeypatch.chdir(tmp_path)
    args = [
        "--config",
        str(CFG / "imagenet_tiny.yaml"),
        "--model.init_args.network",
        '{"name": "trevsnn_test", "timesteps": 2}',
        "--model.init_args.num_classes",
        "3",
        "--data.init_args.data_dir",
        str(data),
        "--data.init_args.global_batch_size",
        "4",
        "--data.init_args.num_workers",
        "0",
        "--data.init_args.img_size",
        "32",
        "--data.init_args.eval_resize",
        "36",
        "--trainer.precision",
        "32-true",
        "--trainer.accelerator",
        "cpu",
        "--trainer.max_epochs",
        "1",
        "--trainer.limit_train_batches",
        "2",
        "--trainer.limit_val_batches",
        "1",
        "--trainer.num_sanity_val_steps",
        "0",
        "--trainer.enable_progress_bar",
        "false",
        "--run_root",
        str(tmp_path / "runs"),
        "--name",
        "fake",
    ]
    cli = SpikelightCLI(args=args, run=False)
    assert cli.datamodule.num_classes == 3
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert cli.trainer.global_step == 2
    assert cli.datamodule.per_device_batch_size == 4
    metrics = cli.trainer.callback_metrics
    for key in ("train/loss", "val/top1", "val/top5", "val_ema/top1", "energy/mj_per_sample"):
        assert key in metrics, (key, sorted(metrics))
    assert np.isfinite(float(metrics["train/loss"]))
    mon = [c for c in cli.trainer.callbacks if type(c).__name__ == "MemoryMonitor"][0]
    assert mon.last.get("memory/peak_mb_per_sample", 0) > 0
    assert (tmp_path / "runs" / "fake" / "checkpoints" / "last.ckpt").is_file()
    assert (tmp_path / "runs" / "fake" / "energy.json").is_file()


def test_dvs_config_instantiates_without_data(tmp_path, monkeypatch):
    from spikelight.cli import SpikelightCLI

    monkeypatch.chdir(tmp_path)
    cli = SpikelightCLI(
        args=[
            "--config",
            str(CFG / "dvs_gesture.yaml"),
            "--trainer.accelerator",
            "cpu",
            "--run_root",
            str(tmp_path / "runs"),
        ],
        run=False,
    )
    assert cli.model.model.dvs and cli.model.input_key == "events"
    T_in = cli.datamodule.timesteps * cli.datamodule.hparams.frames_per_step
    x = torch.zeros(1, T_in, 2, 64, 64)
    cli.model.eval()
    with torch.no_grad():
        assert cli.model.infer({"events": x}).shape == (1, 11)


# ------------------------------------------------------------------------------------------- learning
def test_reversible_training_learns_in_a_minute(tmp_path):
    """The default suite's learning check (the shipped config's full run is the slow test below): T-RevSNN
    in reversible mode (16/32/32/64, T=2), trained through the task with AdamW for 4 short epochs (96 steps)
    on 768 synthetic 64 px images, reaches a validation top-1 of at least 3x chance (10 classes). Measured:
    0.47 in 53 s on a shared 2-core CPU."""
    pl.seed_everything(0)
    dm = _data(num_classes=10, img_size=64, train_size=768, val_size=160, batch_size=32, seed=0)
    task = TRevSNNClassify(
        network={"name": "trevsnn_test", "channels": [16, 32, 32, 64], "timesteps": 2, "mode": "reversible"},
        num_classes=10,
        optimizer=lambda p: torch.optim.AdamW(p, lr=8e-3, weight_decay=0.01),
        label_smoothing=0.0,
        ema_decay=None,
        warmup_epochs=0.5,
        warmup_start_lr=1e-4,
        min_lr=2e-3,
    )
    t0 = time.time()
    trainer = _trainer(tmp_path, max_epochs=4)
    trainer.fit(task, dm)
    top1 = float(trainer.callback_metrics["val/top1"])
    print(f"reversible T-RevSNN, 96 steps: val/top1 {top1:.3f} (chance 0.10) in {time.time() - t0:.0f} s")
    assert trainer.global_step == 96
    assert top1 >= 0.3, top1


@pytest.mark.slow
def test_synthetic_experiment_learns(tmp_path, monkeypatch):
    """experiments/trevsnn/synthetic.yaml as shipped: validation top-1 well above chance (10 classes)."""
    from spikelight.cli import SpikelightCLI

    monkeypatch.chdir(tmp_path)
    t0 = time.time()
    cli = SpikelightCLI(
        args=[
            "--config",
            str(CFG / "synthetic.yaml"),
            "--trainer.enable_progress_bar",
            "false",
            "--run_root",
            str(tmp_path / "runs"),
        ],
        run=False,
    )
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    top1 = float(cli.trainer.callback_metrics["val/top1"])
    ema_top1 = float(cli.trainer.callback_metrics["val_ema/top1"])
    chance = 1.0 / cli.datamodule.num_classes
    print(
        f"synthetic: val/top1 {top1:.3f}, val_ema/top1 {ema_top1:.3f} (chance {chance:.2f}) "
        f"in {time.time() - t0:.0f} s"
    )
    assert max(top1, ema_top1) > 3 * chance
