"""Issue 9: runs you can trust - the CLI's run-folder rules, 'last', requeue, explicit-vs-checkpoint,
linked keys, config history, one W&B run per training, CLI comforts. All on the tiny toy experiment."""

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

from spikelight.checkpoint_io import load_checkpoint
from spikelight.cli import main

TOY = "experiments/toy.yaml"
TINY = ["--data.init_args.train_size", "64", "--data.init_args.val_size", "32", "--trainer.max_epochs", "1",
        "--trainer.enable_model_summary", "false"]


def run(args: list[str], root: Path, *, logger: bool = False) -> None:
    extra = [] if logger else ["--trainer.logger", "false"]
    main([*args[:1], "--config", TOY, *TINY, "--run_root", str(root), *extra, *args[1:]])


def fails(args: list[str], root: Path, capsys, **kw) -> str:
    with pytest.raises(SystemExit) as e:
        run(args, root, **kw)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


@pytest.fixture
def repo(repo_root, monkeypatch):
    monkeypatch.chdir(repo_root)
    return repo_root


def test_second_fresh_fit_stops_and_overwrite_moves_the_old_training(repo, tmp_path, capsys):
    run(["fit", "--name", "a"], tmp_path)
    ckpts = sorted(p.name for p in (tmp_path / "a" / "checkpoints").iterdir())
    assert "last.ckpt" in ckpts
    err = fails(["fit", "--name", "a"], tmp_path, capsys)
    assert "already holds a training" in err and "--ckpt_path last" in err and "--overwrite" in err
    run(["fit", "--name", "a", "--overwrite", "true"], tmp_path)
    assert list((tmp_path / "a").glob("replaced-*/checkpoints/last.ckpt"))
    # one "last", never last-v1
    assert sorted(p.name for p in (tmp_path / "a" / "checkpoints").glob("last*")) == ["last.ckpt"]


def test_commands_with_last_and_no_checkpoint_stop(repo, tmp_path, capsys):
    for sub in ("validate", "test", "energy"):
        err = fails([sub, "--name", "empty", "--ckpt_path", "last"], tmp_path, capsys)
        assert "has no checkpoint" in err and "empty" in err
    err = fails(["export", "--name", "empty"], tmp_path, capsys)
    assert "--ckpt_path" in err


def test_resume_refuses_a_model_argument_that_differs_from_the_checkpoint(repo, tmp_path, capsys):
    run(["fit", "--name", "r"], tmp_path)
    err = fails(["validate", "--name", "r", "--ckpt_path", "last", "--model.init_args.network.timesteps", "6"],
                tmp_path, capsys)
    assert "network.timesteps=6" in err and "(2," in err
    # same values: accepted, the resumed training continues at the saved step
    run(["fit", "--name", "r", "--ckpt_path", "last", "--trainer.max_epochs", "2"], tmp_path)
    assert load_checkpoint(tmp_path / "r" / "checkpoints" / "last.ckpt")["global_step"] == 4


def test_checkpoint_of_another_model_gives_one_message(repo, tmp_path, capsys):
    run(["fit", "--name", "toy"], tmp_path)
    ckpt = tmp_path / "toy" / "checkpoints" / "last.ckpt"
    with pytest.raises(SystemExit):
        main(["validate", "--config", "experiments/svl/synthetic.yaml", "--run_root", str(tmp_path),
              "--trainer.logger", "false", "--ckpt_path", str(ckpt)])
    err = capsys.readouterr().err
    assert "was written by spikelight.tasks.toy.ToyClassifier" in err and "Traceback" not in err


def test_bad_checkpoint_file_is_one_line_naming_it(repo, tmp_path, capsys):
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(os.urandom(300))
    err = fails(["validate", "--name", "x", "--ckpt_path", str(bad)], tmp_path, capsys)
    assert f"{bad} is not a PyTorch checkpoint" in err


def test_data_and_model_keys_are_linked(repo, tmp_path, caplog):
    run(["fit", "--name", "l", "--data.init_args.num_features", "8"], tmp_path)
    assert "linked model.init_args.in_features=8 (from data.init_args.num_features; was 16)" in caplog.text
    state = load_checkpoint(tmp_path / "l" / "checkpoints" / "last.ckpt")["state_dict"]
    first = [v for k, v in state.items() if k.endswith("weight") and v.dim() == 2][0]
    assert first.shape[1] == 8


def test_config_history_and_config_yaml_only_from_fit(repo, tmp_path):
    run(["fit", "--name", "h"], tmp_path)
    cfg = tmp_path / "h" / "config.yaml"
    before = cfg.read_text()
    run(["validate", "--name", "h", "--ckpt_path", "last", "--data.init_args.batch_size", "16"], tmp_path)
    assert cfg.read_text() == before
    names = sorted(p.name.split("-", 2)[-1] for p in (tmp_path / "h" / "configs").iterdir())
    assert names == ["fit.yaml", "validate.yaml"]


def test_one_wandb_run_per_training(repo, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    run(["fit", "--name", "w"], tmp_path, logger=True)
    rid = (tmp_path / "w" / "wandb_id").read_text().strip()
    import wandb

    wandb.finish()  # as at the end of a process: the resumed launch starts its own W&B process
    run(["fit", "--name", "w", "--ckpt_path", "last", "--trainer.max_epochs", "2"], tmp_path, logger=True)
    wandb.finish()
    runs = sorted((tmp_path / "w" / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and all(r.name.endswith(rid) for r in runs)  # the same run id, resumed


def test_debug_runs_stay_out_of_the_run_folder(repo, tmp_path):
    run(["fit", "--name", "d", "--trainer.fast_dev_run", "true"], tmp_path)
    assert not (tmp_path / "d").exists()
    assert (tmp_path / "_debug" / "d").is_dir()


def test_version_and_short_class_names(repo, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip().endswith("0.1.0")
    run(["fit", "--name", "s", "--model", "ToyClassifier", "--model.init_args.network", "toy_snn_test"], tmp_path)
    assert (tmp_path / "s" / "checkpoints" / "last.ckpt").is_file()


def test_export_refuses_duplicated_class_names(repo, tmp_path, capsys):
    from spikelight.commands import parse_class_names

    with pytest.raises(ValueError, match="duplicated names.*chair"):
        parse_class_names("chair,table,chair")


# ---------------------------------------------------------------------------------------------- requeue
_FIT = [sys.executable, "-m", "spikelight", "fit", "--config", TOY, "--trainer.logger", "false",
        "--data.init_args.train_size", "4096", "--data.init_args.batch_size", "8", "--trainer.max_epochs", "1",
        "--trainer.limit_val_batches", "1", "--checkpoint.every_n_train_steps", "5",
        "--trainer.enable_progress_bar", "false", "--trainer.callbacks", "[]"]


def _slurm_env(tmp_path: Path, restart: int) -> dict:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    scontrol = bin_dir / "scontrol"  # records the requeue request instead of talking to SLURM
    scontrol.write_text(f"#!/bin/sh\necho \"$@\" >> {tmp_path}/requeued\n")
    scontrol.chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", SLURM_NTASKS="1", SLURM_JOB_NAME="sl",
               SLURM_JOB_ID="42", SLURM_PROCID="0", SLURM_LOCALID="0", SLURM_NODEID="0",
               SLURM_NTASKS_PER_NODE="1", SLURM_RESTART_COUNT=str(restart), PYTHONUNBUFFERED="1")
    if restart == 0:
        env.pop("SLURM_RESTART_COUNT")
    return env


def _wait_for(pred, timeout: float = 240) -> None:
    end = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.2)


@pytest.mark.parametrize("path", [pytest.param("sigusr1", marks=pytest.mark.slow), "sigkill"])
def test_requeue_resumes_from_the_newest_checkpoint(repo, tmp_path, path, monkeypatch, caplog):
    run_dir = tmp_path / "runs" / "q"
    args = [*_FIT, "--run_root", str(tmp_path / "runs"), "--name", "q"]
    if path == "sigusr1":
        args += ["--config", "experiments/cluster/slurm.yaml", "--trainer.accelerator", "cpu",
                 "--trainer.devices", "1"]
    proc = subprocess.Popen(args, env=_slurm_env(tmp_path, 0), cwd=repo, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(lambda: (run_dir / "checkpoints" / "last.ckpt").is_file() or proc.poll() is not None)
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        if path == "sigusr1":  # SLURM's warning before the time limit: Lightning saves hpc_ckpt_1.ckpt
            time.sleep(1.0)
            proc.send_signal(signal.SIGUSR1)
            _wait_for(lambda: (run_dir / "hpc_ckpt_1.ckpt").is_file() and (tmp_path / "requeued").is_file())
            time.sleep(0.5)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    from spikelight.runs import RunFolder, checkpoint_step

    newest = RunFolder(run_dir).last_checkpoint()
    saved = checkpoint_step(newest)
    assert saved > 0
    if path == "sigusr1":  # Lightning saved on the signal and asked SLURM to requeue the job
        assert (run_dir / "hpc_ckpt_1.ckpt").is_file() and "requeue 42" in (tmp_path / "requeued").read_text()
        assert saved >= checkpoint_step(run_dir / "hpc_ckpt_1.ckpt") > 0
    # the requeued job reruns the same command (no --ckpt_path): it continues, never from step 0
    # (in this process: a second console-script launch would spend ~15 s importing Lightning)
    for key, value in _slurm_env(tmp_path, 1).items():
        monkeypatch.setenv(key, value)
    caplog.set_level(logging.INFO)
    monkeypatch.setattr(logging.getLogger("lightning.pytorch"), "propagate", True)  # Lightning's own handler
    main([*args[3:], "--trainer.max_steps", str(saved + 2)])
    assert f"resuming from {newest}" in caplog.text
    assert load_checkpoint(run_dir / "checkpoints" / "last.ckpt")["global_step"] == saved + 2


def test_a_second_live_fit_on_the_same_folder_is_refused(repo, tmp_path, capsys):
    code = ("import sys,time; from spikelight.runs import RunFolder; RunFolder(sys.argv[1]).acquire('fit'); "
            "print('held', flush=True); time.sleep(120)")
    holder = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "two")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"  # a live training owns runs/two
        err = fails(["fit", "--name", "two", "--ckpt_path", "last"], tmp_path, capsys)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=60)
    assert "is in use by another process" in err and f"pid {holder.pid}" in err
    run(["fit", "--name", "two"], tmp_path)  # the owner died: the folder is free (kernel-released lock)


def test_torch_loads_checkpoints_weights_only(repo, tmp_path):
    run(["fit", "--name", "wo"], tmp_path)
    ckpt = torch.load(tmp_path / "wo" / "checkpoints" / "last.ckpt", weights_only=True)
    assert "frozen_modules" in ckpt or "state_dict" in ckpt


def test_predict_writes_under_the_run_folder(repo, tmp_path):
    run(["fit", "--name", "p"], tmp_path)
    run(["predict", "--name", "p", "--ckpt_path", "last"], tmp_path)
    preds = torch.load(tmp_path / "p" / "predictions" / "predictions.pt", weights_only=True)
    assert len(preds["predictions"]) == 32  # one row per validation sample of the toy


def test_a_launch_that_fails_before_its_first_step_opens_no_wandb_run(repo, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_MODE", "offline")
    fails(["fit", "--name", "f", "--data.init_args.batch_size", "0"], tmp_path, capsys, logger=True)
    assert not list((tmp_path / "f").glob("wandb/offline-run-*"))


def test_wandb_summary_keeps_the_best_validation_values(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    import wandb

    from spikelight.loggers import OfflineWandbLogger

    wandb.finish()  # no run left over from another test of this process (Lightning would reuse it)

    logger = OfflineWandbLogger(save_dir=str(tmp_path), name="b", id="bestrun", group="b", job_type="fit")
    for step, (top1, loss) in enumerate([(0.5, 2.0), (0.8, 1.5), (0.6, 1.7)]):
        logger.log_metrics({"val/top1": top1, "val/loss": loss, "train/loss": 9.0}, step=step)
    summary = logger.experiment.summary
    assert summary["best/val/top1"] == 0.8 and summary["best/val/loss"] == 1.5
    assert "best/train/loss" not in summary.keys()
    assert logger.experiment.group == "b" and logger.experiment.job_type == "fit" and logger.experiment.id == "bestrun"
    logger.experiment.finish()


def test_resume_removes_checkpoints_the_resumed_training_does_not_know(repo, tmp_path):
    run(["fit", "--name", "k"], tmp_path)
    ckpts = tmp_path / "k" / "checkpoints"
    stale = ckpts / "epoch=009-step=000999.ckpt"  # e.g. a top-k file written after last.ckpt, before a crash
    stale.write_bytes((ckpts / "last.ckpt").read_bytes())
    run(["fit", "--name", "k", "--ckpt_path", "last", "--trainer.max_epochs", "2"], tmp_path)
    names = sorted(p.name for p in ckpts.iterdir())
    assert stale.name not in names and "last.ckpt" in names and len(names) == 2


def test_last_follows_the_training_when_the_monitored_value_stops_improving(repo, tmp_path):
    # monitor "epoch" in mode "min": epoch 0 stays the best, later epochs write no top-k file. Lightning 2.6
    # alone would then leave last.ckpt at epoch 0 and `--ckpt_path last` would resume two epochs back.
    run(["fit", "--name", "m", "--checkpoint.monitor", "epoch", "--checkpoint.mode", "min",
         "--trainer.max_epochs", "3"], tmp_path)
    folder = tmp_path / "m" / "checkpoints"
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["epoch=000-step=000002.ckpt", "last.ckpt"], names
    last = load_checkpoint(folder / "last.ckpt")
    assert last["epoch"] == 2 and last["global_step"] == 6
    state = [v for k, v in last["callbacks"].items() if k.startswith("ModelCheckpoint")]
    assert len(state) == 1 and state[0]["best_model_path"].endswith("epoch=000-step=000002.ckpt")
