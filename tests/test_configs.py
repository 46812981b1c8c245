"""Every YAML under experiments/ (except cluster/ override files) is parsed and instantiated; configs on
embedded data also ``fit`` for a couple of steps. New configs are picked up without new test code.

A config may carry a ``smoke:`` block (ignored by every command)::

    smoke:
      fit: true              # embedded data: also run fit for 2 steps in this test
      overrides:             # dotted keys applied for the test only (shrink sizes, tiny towers ...)
        data.init_args.train_size: 64
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from spikelight.cli import SpikelightCLI

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted(p for p in (REPO / "experiments").rglob("*.yaml") if "cluster" not in p.relative_to(REPO).parts)


def _override_args(overrides: dict | None) -> list[str]:
    args: list[str] = []
    for key, value in (overrides or {}).items():
        args += [f"--{key}", value if isinstance(value, str) else json.dumps(value)]
    return args


def _smoke(path: Path) -> dict:
    return (yaml.safe_load(path.read_text()) or {}).get("smoke") or {}


def test_there_are_configs():
    assert (REPO / "experiments" / "toy.yaml") in CONFIGS


@pytest.mark.parametrize("path", CONFIGS, ids=[str(p.relative_to(REPO / "experiments")) for p in CONFIGS])
def test_config_parses_instantiates_and_smoke_fits(path: Path, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.chdir(tmp_path)
    smoke = _smoke(path)
    base = ["--config", str(path), "--run_root", str(tmp_path / "runs")]
    shrink = _override_args(smoke.get("overrides"))
    cli = SpikelightCLI(args=[*base, *shrink], run=False)
    assert cli.model is not None and cli.datamodule is not None and cli.trainer is not None
    # the unshrunk config parses too (types, class paths and keys are all valid)
    full = cli.parser.parse_args(base)
    assert full.model.class_path
    if smoke.get("fit"):
        fit_args = [
            "fit", *base, *shrink,
            "--trainer.max_epochs", "1", "--trainer.max_steps", "2",
            "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1",
            "--trainer.num_sanity_val_steps", "0", "--trainer.enable_progress_bar", "false",
            "--trainer.accelerator", "cpu", "--trainer.devices", "1",
        ]
        run = SpikelightCLI(args=fit_args)
        assert run.trainer.global_step == 2
        assert any((tmp_path / "runs").rglob("last.ckpt"))
