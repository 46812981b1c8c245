"""Shared test fixtures: offline W&B in a temp dir, paths, a CLI runner."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

# One torch thread per process: the suite is dominated by tiny ops (and by 2-process DDP tests on a
# 2-core machine), where thread hand-offs cost more than they give.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402

torch.set_num_threads(1)

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(autouse=True)
def _wandb_tmp(tmp_path, monkeypatch):
    """Keep W&B files and caches of every test inside its tmp dir."""
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb_dir"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb_cache"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb_config"))
    yield
    # no W&B run outlives its test: Lightning's WandbLogger would reuse a live ``wandb.run``
    # (e.g. a disabled-mode one) in the next test, and wandb's process-wide settings (mode, dir) are read
    # once per setup: tear it down so the next test's WANDB_* variables apply
    wandb = sys.modules.get("wandb")
    if wandb is not None:
        if getattr(wandb, "run", None) is not None:
            wandb.finish()
        wandb.teardown()


@pytest.fixture(scope="module")
def one_thread():
    """Run a module's tests with one torch thread: tiny ops are much faster without thread hand-offs,
    especially on a loaded 2-core machine. Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture
def shared_data() -> Path:
    """``../shared/data`` (real-format fixtures); skips the test when the folder is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared test data not present at {SHARED_DATA}")
    return SHARED_DATA


def run_cli(args: list[str], *, cwd: Path, env: dict | None = None, timeout: float = 300,
            check: bool = False) -> subprocess.CompletedProcess:
    """Run ``python -m spikelight <args>`` in a subprocess and return the completed process."""
    full_env = dict(os.environ)
    full_env.update({"PYTHONUNBUFFERED": "1"})
    if env:
        full_env.update(env)
    proc = subprocess.run([sys.executable, "-m", "spikelight", *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"spikelight {' '.join(args)} failed ({proc.returncode}):\n"
                             f"STDOUT:\n{proc.stdout[-4000:]}\nSTDERR:\n{proc.stderr[-4000:]}")
    return proc


@pytest.fixture
def cli():
    return run_cli
