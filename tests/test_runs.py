"""Run-folder rules and atomic checkpoint files (spikelight.runs, spikelight.checkpoint_io)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from spikelight.checkpoint_io import AtomicCheckpointIO, CheckpointError, atomic_torch_save, load_checkpoint
from spikelight.runs import RunFolder, RunFolderBusy, RunFolderError, checkpoint_step, remove_partials


class _Unpicklable:
    def __reduce__(self):
        raise RuntimeError("boom while pickling")


def test_atomic_save_roundtrip_and_no_tmpdir_use(tmp_path, monkeypatch):
    other_fs_tmp = tmp_path / "node_local_tmp"
    other_fs_tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(other_fs_tmp))
    dest = tmp_path / "runs" / "x" / "checkpoints" / "last.ckpt"
    atomic_torch_save({"global_step": 3, "w": torch.arange(5.0)}, dest)
    assert torch.equal(load_checkpoint(dest)["w"], torch.arange(5.0))
    assert list(other_fs_tmp.iterdir()) == []  # nothing staged in $TMPDIR
    assert sorted(p.name for p in dest.parent.iterdir()) == ["last.ckpt"]


def test_failed_save_keeps_old_file_and_leaves_no_partial(tmp_path):
    dest = tmp_path / "last.ckpt"
    atomic_torch_save({"global_step": 1}, dest)
    with pytest.raises(RuntimeError, match="boom"):
        atomic_torch_save({"global_step": 2, "bad": _Unpicklable()}, dest)
    assert load_checkpoint(dest)["global_step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


_WRITER = """
import sys, torch
from spikelight.checkpoint_io import atomic_torch_save
big = {"global_step": 2, "w": torch.randn(16 * 2**20 // 4)}   # 16 MB
while True:
    atomic_torch_save(big, sys.argv[1])
    print("saved", flush=True)
"""


def test_kill_during_save_never_leaves_a_truncated_checkpoint(tmp_path):
    dest = tmp_path / "checkpoints" / "last.ckpt"
    atomic_torch_save({"global_step": 1, "w": torch.zeros(1)}, dest)
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(dest)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "saved"
    deadline = time.monotonic() + 60
    while not list(dest.parent.glob(".*.partial")):  # wait until the next save is under way
        assert time.monotonic() < deadline, "the writer never started a second save"
        time.sleep(0.001)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert load_checkpoint(dest)["global_step"] == 2  # the complete file, never a part
    assert list(dest.parent.glob(".*.partial"))  # the kill did land inside a save
    # the killed writer's temporary file is cleaned when a process takes the folder
    rf = RunFolder(tmp_path)
    rf.acquire("fit")
    try:
        assert [p.name for p in dest.parent.iterdir()] == ["last.ckpt"]
    finally:
        rf.release()


def test_bad_checkpoint_files_name_the_file(tmp_path):
    rnd = tmp_path / "random.ckpt"
    rnd.write_bytes(os.urandom(256))
    with pytest.raises(CheckpointError, match=r"random\.ckpt is not a PyTorch checkpoint"):
        load_checkpoint(rnd)
    good = tmp_path / "good.ckpt"
    atomic_torch_save({"w": torch.randn(1000)}, good)
    trunc = tmp_path / "trunc.ckpt"
    trunc.write_bytes(good.read_bytes()[:2000])
    with pytest.raises(CheckpointError, match=r"trunc\.ckpt is truncated"):
        load_checkpoint(trunc)
    empty = tmp_path / "empty.ckpt"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"empty\.ckpt is empty"):
        AtomicCheckpointIO().load_checkpoint(empty)


def test_run_folder_lock_refuses_a_second_process_and_frees_on_kill(tmp_path):
    code = "import sys,time; from spikelight.runs import RunFolder; RunFolder(sys.argv[1]).acquire('fit'); " \
           "print('held', flush=True); time.sleep(60)"
    holder = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunFolderBusy, match=rf"{tmp_path}.*in use.*pid {holder.pid}"):
            RunFolder(tmp_path).acquire("fit")
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    rf = RunFolder(tmp_path)
    assert rf.acquire("fit")  # the kernel dropped the dead owner's lock
    rf.release()


def test_lock_taken_by_rank_zero_only(tmp_path, monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert RunFolder(tmp_path).acquire("fit") is False
    assert not (tmp_path / ".lock").exists()


def test_last_is_the_newest_training_state(tmp_path):
    rf = RunFolder(tmp_path)
    assert rf.last_checkpoint() is None
    with pytest.raises(RunFolderError, match="no checkpoint"):
        rf.require_last("validate")
    atomic_torch_save({"global_step": 10}, rf.checkpoints / "last.ckpt")
    assert rf.last_checkpoint() == rf.checkpoints / "last.ckpt"
    atomic_torch_save({"global_step": 14}, tmp_path / "hpc_ckpt_1.ckpt")  # SIGUSR1 save after last.ckpt
    assert rf.last_checkpoint() == tmp_path / "hpc_ckpt_1.ckpt"
    atomic_torch_save({"global_step": 20}, rf.checkpoints / "last.ckpt")  # training went on after requeue
    assert rf.last_checkpoint() == rf.checkpoints / "last.ckpt"
    assert checkpoint_step(rf.checkpoints / "last.ckpt") == 20


def test_fresh_fit_into_a_used_folder_stops_or_moves_old_files(tmp_path):
    rf = RunFolder(tmp_path)
    rf.check_fresh_fit(overwrite=False)  # empty: fine
    atomic_torch_save({"global_step": 5}, rf.checkpoints / "last.ckpt")
    rf.wandb_id()
    with pytest.raises(RunFolderError, match="--ckpt_path last.*--name.*--overwrite"):
        rf.check_fresh_fit(overwrite=False)
    rf.check_fresh_fit(overwrite=True)
    assert rf.last_checkpoint() is None and rf.wandb_id(create=False) is None
    moved = list(tmp_path.glob("replaced-*/checkpoints/last.ckpt"))
    assert len(moved) == 1 and load_checkpoint(moved[0])["global_step"] == 5


def test_config_history_and_wandb_id(tmp_path):
    rf = RunFolder(tmp_path)
    a = rf.record_config("a: 1\n", "fit")
    b = rf.record_config("a: 2\n", "validate")
    c = rf.record_config("a: 3\n", "validate")
    assert len({a, b, c}) == 3 and all(p.parent == tmp_path / "configs" for p in (a, b, c))
    assert a.name.endswith("-fit.yaml") and a.read_text() == "a: 1\n"
    rid = rf.wandb_id()
    assert rid and RunFolder(tmp_path).wandb_id() == rid


def test_remove_partials_only_touches_partials(tmp_path):
    (tmp_path / ".last.ckpt.abc.partial").write_bytes(b"x")
    (tmp_path / "last.ckpt").write_bytes(b"y")
    assert [p.name for p in remove_partials(tmp_path)] == [".last.ckpt.abc.partial"]
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_run_folder_paths_are_plain(tmp_path):
    assert RunFolder(str(tmp_path)).path == Path(tmp_path)
