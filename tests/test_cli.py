"""The spine: CLI, W&B offline tracking, checkpoints and resume, crash safety, DDP on CPU, bad configs."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from lightning.pytorch import Callback

from spikelight.cli import SpikelightCLI, main, parse_class_names

TOY = "experiments/toy.yaml"
SMALL = ["--data.init_args.train_size", "128", "--data.init_args.val_size", "64"]


def spikelight(args: list[str], capfd) -> tuple[int, str, str]:
    """``spikelight <args>`` in this process (the console script's ``main``): exit code, stdout, stderr.
    In-process, not a subprocess: each launch of the console script spends ~15 s importing Lightning on
    the 2-core CI machine; ``test_console_script_runs`` and the kill tests keep the real process."""
    capfd.readouterr()
    try:
        main(args)
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    out, err = capfd.readouterr()
    return code, out, err


class _Parsed(Exception):
    """Carries (subcommand, parsed config) out of :class:`_ParseOnly`."""


class _ParseOnly(SpikelightCLI):
    """The real CLI stopped right after parsing: what the parser made of a command line (no run folder
    is touched: the checkpoint/run-folder step is skipped too)."""

    def _parse_ckpt_path(self) -> None:
        pass

    def before_instantiate_classes(self) -> None:
        raise _Parsed(self.subcommand, self.config[self.subcommand])


def test_console_script_runs(repo_root):
    script = Path(sys.executable).parent / "spikelight"
    assert script.exists(), "console script `spikelight` is not installed"
    out = subprocess.run([str(script), "--help"], capture_output=True, text=True, cwd=repo_root, timeout=120)
    assert out.returncode == 0, out.stderr


@pytest.mark.parametrize(
    ("sub", "extra", "expect"),
    [
        ("fit", ["--trainer.max_epochs", "3"], {"trainer.max_epochs": 3}),
        ("validate", ["--ckpt_path", "some.ckpt"], {"ckpt_path": "some.ckpt"}),
        ("test", ["--ckpt_path", "some.ckpt"], {"ckpt_path": "some.ckpt"}),
        ("predict", ["--return_predictions", "false"], {"return_predictions": False}),
        ("energy", ["--num_batches", "7", "--module", "model"], {"num_batches": 7, "module": "model"}),
        ("export", ["--classes", "a,b", "--templates", "a {}.|an {}.", "--out", "d"],
         {"classes": "a,b", "templates": "a {}.|an {}.", "out": "d"}),
    ],
)  # fmt: skip
def test_every_subcommand_is_registered_and_parses_its_options(repo_root, monkeypatch, sub, extra, expect):
    """Each subcommand (Lightning's and spikelight's) exists on the one parser, takes --config and its
    own options (spikelight's come from the Trainer method signatures)."""
    monkeypatch.chdir(repo_root)
    assert set(SpikelightCLI.subcommands()) == {"fit", "validate", "test", "predict", "energy", "export"}
    with pytest.raises(_Parsed) as parsed:
        _ParseOnly(args=[sub, "--config", TOY, *extra])
    got_sub, cfg = parsed.value.args
    assert got_sub == sub
    assert cfg["model.class_path"] == "spikelight.tasks.toy.ToyClassifier"  # --config was read
    for key, value in expect.items():
        assert cfg[key] == value, key


def test_unknown_subcommand_is_refused(repo_root, monkeypatch):
    monkeypatch.chdir(repo_root)
    with pytest.raises(SystemExit) as e:
        _ParseOnly(args=["train", "--config", TOY])
    assert e.value.code != 0


def test_print_config_has_fixed_seed_and_resolved_classes(repo_root, monkeypatch, capfd):
    monkeypatch.chdir(repo_root)
    code, out, err = spikelight(["fit", "--config", TOY, "--print_config"], capfd)
    assert code == 0, err
    cfg = yaml.safe_load(out)
    assert cfg["seed_everything"] == 42
    assert cfg["model"]["class_path"] == "spikelight.tasks.toy.ToyClassifier"
    assert cfg["checkpoint"]["save_last"] is True
    assert cfg["trainer"]["logger"]["class_path"] == "spikelight.loggers.OfflineWandbLogger"


def test_fit_with_wandb_offline_records_metrics_and_config(repo_root, tmp_path, cli):
    # a real console-script process: W&B's offline run file is complete when the process ends
    env = {"WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path / "wb")}
    cli(["fit", "--config", str(repo_root / TOY), *SMALL, "--trainer.max_epochs", "1",
         "--run_root", str(tmp_path / "runs"), "--name", "toyrun"], cwd=tmp_path, env=env, check=True)
    run = tmp_path / "runs" / "toyrun"
    assert (run / "config.yaml").is_file()
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["model"]["class_path"] == "spikelight.tasks.toy.ToyClassifier"
    assert (run / "checkpoints" / "last.ckpt").is_file()
    offline = sorted((run / "wandb").glob("offline-run-*"))
    assert offline, f"no offline W&B run under {run / 'wandb'}"
    data = b"".join(p.read_bytes() for p in offline[-1].glob("run-*.wandb"))
    assert b"train/loss" in data and b"val/top1" in data
    # the resolved config is part of the W&B run
    assert b"spikelight.tasks.toy.ToyClassifier" in data


@pytest.mark.parametrize("logger", ["CSVLogger", "TensorBoardLogger"])
def test_csv_or_tensorboard_logger_instead_of_wandb(repo_root, tmp_path, monkeypatch, logger):
    monkeypatch.chdir(tmp_path)
    c = _cli(["--config", str(repo_root / TOY), *SMALL, "--run_root", str(tmp_path / "runs"), "--name", "l",
              "--trainer.logger", f"spikelight.loggers.Run{logger}", "--trainer.max_epochs", "1"])
    c.trainer.fit(c.model, datamodule=c.datamodule)
    logs = tmp_path / "runs" / "l" / "logs"
    if logger == "CSVLogger":
        metrics = next(logs.rglob("metrics.csv")).read_text()
        assert "val/top1" in metrics and "energy/mj_per_sample" in metrics
    else:
        assert any(logs.rglob("events.out.tfevents.*"))


class _RecordStart(Callback):
    def __init__(self) -> None:
        self.start = None

    def on_train_start(self, trainer, pl_module) -> None:
        self.start = (trainer.current_epoch, trainer.global_step)


def _cli(args, **kw):
    return SpikelightCLI(args=args, run=False, **kw)


def test_resume_from_last_restores_epoch_step_and_optimizer(repo_root, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.chdir(tmp_path)
    base = ["--config", str(repo_root / TOY), *SMALL, "--run_root", str(tmp_path / "runs"), "--name", "r"]
    c1 = _cli([*base, "--trainer.max_epochs", "1"])
    c1.trainer.fit(c1.model, datamodule=c1.datamodule)
    steps_per_epoch = c1.trainer.global_step
    assert steps_per_epoch == 4  # 128 samples / batch 32
    last = tmp_path / "runs" / "r" / "checkpoints" / "last.ckpt"
    ck = torch.load(last, map_location="cpu", weights_only=True)  # loads with weights_only
    assert ck["global_step"] == steps_per_epoch and ck["epoch"] == 0
    assert ck["optimizer_states"] and ck["lr_schedulers"]

    c2 = _cli([*base, "--trainer.max_epochs", "2"])
    rec = _RecordStart()
    c2.trainer.callbacks.append(rec)
    c2.trainer.fit(c2.model, datamodule=c2.datamodule, ckpt_path="last", weights_only=True)
    assert rec.start == (1, steps_per_epoch), rec.start
    assert c2.trainer.global_step == 2 * steps_per_epoch
    # the LR schedule continued from the restored step (it was not restarted at warmup)
    sched = c2.trainer.lr_scheduler_configs[0].scheduler
    assert sched.last_epoch == 2 * steps_per_epoch


def test_crash_resume_after_sigkill(repo_root, tmp_path, monkeypatch, caplog):
    """Kill a fit mid-epoch with SIGKILL; every checkpoint left behind loads; --ckpt_path last completes."""
    env = dict(os.environ, WANDB_MODE="disabled", PYTHONUNBUFFERED="1")
    args = [sys.executable, "-m", "spikelight", "fit", "--config", str(repo_root / TOY),
            "--data.init_args.train_size", "4000", "--data.init_args.batch_size", "8",
            "--trainer.max_epochs", "1", "--trainer.limit_val_batches", "2",
            "--checkpoint.every_n_train_steps", "5", "--run_root", str(tmp_path / "runs"), "--name", "crash"]
    ckdir = tmp_path / "runs" / "crash" / "checkpoints"
    proc = subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and not (ckdir / "last.ckpt").exists():
            if proc.poll() is not None:
                raise AssertionError(f"fit ended before any checkpoint: {proc.stderr.read().decode()[-3000:]}")
            time.sleep(0.05)
        assert (ckdir / "last.ckpt").exists(), "no checkpoint written in time"
        time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    steps_at_kill = []
    for f in ckdir.glob("*.ckpt"):
        ck = torch.load(f, map_location="cpu", weights_only=True)  # none is corrupt
        steps_at_kill.append(ck["global_step"])
    assert max(steps_at_kill) < 500  # killed mid-epoch (500 steps per epoch)
    # the resume runs in this process (a second console-script launch would spend ~15 s importing)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "disabled")
    caplog.set_level(logging.INFO)
    monkeypatch.setattr(logging.getLogger("lightning.pytorch"), "propagate", True)  # Lightning's own handler
    main(args[3:] + ["--ckpt_path", "last", "--checkpoint.every_n_train_steps", "250"])
    final = torch.load(ckdir / "last.ckpt", map_location="cpu", weights_only=True)
    assert final["global_step"] == 500
    assert "Restoring states from the checkpoint" in caplog.text


@pytest.mark.slow
def test_ddp_two_cpu_processes(repo_root, tmp_path, cli):
    proc = cli(["fit", "--config", str(repo_root / TOY), *SMALL, "--trainer.max_epochs", "1",
                "--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp",
                "--run_root", str(tmp_path / "runs"), "--name", "ddp"],
               cwd=tmp_path, env={"WANDB_MODE": "disabled"}, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    ck = torch.load(tmp_path / "runs" / "ddp" / "checkpoints" / "last.ckpt", map_location="cpu",
                    weights_only=True)
    # 128 samples split over 2 ranks, batch 32 per rank -> 2 steps per epoch
    assert ck["global_step"] == 2
    assert "distributed_backend=gloo" in proc.stderr + proc.stdout


def test_ddp_config_stacks_on_an_experiment(repo_root, monkeypatch, capfd):
    monkeypatch.chdir(repo_root)
    code, out, err = spikelight(["fit", "--config", TOY, "--config", "experiments/cluster/ddp.yaml",
                                 "--print_config"], capfd)
    assert code == 0, err
    cfg = yaml.safe_load(out)
    assert cfg["trainer"]["sync_batchnorm"] is True
    assert "DDPStrategy" in cfg["trainer"]["strategy"]["class_path"]


def test_unknown_key_fails_naming_the_key(repo_root, tmp_path, monkeypatch, capfd):
    monkeypatch.chdir(repo_root)
    code, _, err = spikelight(["fit", "--config", TOY, "--model.init_args.hiddn", "8"], capfd)
    assert code != 0
    assert "hiddn" in err
    bad = tmp_path / "bad.yaml"
    cfg = yaml.safe_load((repo_root / TOY).read_text())
    cfg["data"]["init_args"]["batch_sise"] = 4
    bad.write_text(yaml.safe_dump(cfg))
    code, _, err = spikelight(["fit", "--config", str(bad)], capfd)
    assert code != 0 and "batch_sise" in err


def test_wrong_type_fails_naming_the_key(repo_root, monkeypatch, capfd):
    monkeypatch.chdir(repo_root)
    code, _, err = spikelight(["fit", "--config", TOY, "--data.init_args.batch_size", "lots"], capfd)
    assert code != 0
    assert "batch_size" in err


def test_missing_data_path_fails_naming_the_path(repo_root, tmp_path, monkeypatch, capfd):
    monkeypatch.chdir(repo_root)
    monkeypatch.setenv("WANDB_MODE", "disabled")
    missing = tmp_path / "no_imagenet_here"
    code, _, err = spikelight(["fit", "--config", "experiments/trevsnn/imagenet_tiny.yaml",
                               "--data.init_args.data_dir", str(missing), "--model.init_args.network", "trevsnn_test",
                               "--run_root", str(tmp_path / "runs")], capfd)
    assert code != 0
    assert str(missing) in err
    assert "spikelight: error: FileNotFoundError" in err


def test_missing_checkpoint_file_is_named(repo_root, tmp_path, monkeypatch, capfd):
    monkeypatch.chdir(repo_root)
    code, _, err = spikelight(["energy", "--config", TOY, "--ckpt_path", str(tmp_path / "nope.ckpt"),
                               "--run_root", str(tmp_path / "runs")], capfd)
    assert code != 0
    assert "nope.ckpt" in err


def test_parse_class_names(tmp_path):
    f = tmp_path / "names.txt"
    f.write_text("# classes\nchair\n\nairplane\nflower pot\n")
    assert parse_class_names(str(f)) == ["chair", "airplane", "flower pot"]
    assert parse_class_names("chair, table") == ["chair", "table"]
    assert parse_class_names("a {}.|a 3D model of {}.", sep="|") == ["a {}.", "a 3D model of {}."]
    with pytest.raises(FileNotFoundError):
        parse_class_names(str(tmp_path / "missing.txt"))
