"""spikelight's own subcommands (``energy``, ``export``) as Trainer methods, and checkpoint weight loading.

Their signatures become CLI options (``spikelight energy --num_batches 8``). ``--ckpt_path`` has been
resolved by the CLI before they run (``last`` -> the run's newest checkpoint, see :mod:`spikelight.runs`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import torch
from lightning.pytorch import LightningDataModule, LightningModule, Trainer

from spikelight.checkpoint_io import CheckpointError, load_checkpoint

__all__ = ["SpikelightTrainer", "load_weights", "parse_class_names", "state_mismatch"]


def state_mismatch(model: torch.nn.Module, state: dict) -> list[str]:
    """The first differences between a state dict and a model: missing, unexpected and mis-shaped keys."""
    own = model.state_dict()
    out = [f"missing {k}" for k in own if k not in state][:5]
    out += [f"unexpected {k}" for k in state if k not in own][:5]
    out += [
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in state.items()
        if k in own and hasattr(v, "shape") and tuple(v.shape) != tuple(own[k].shape)
    ][:5]
    return out


def load_weights(model: torch.nn.Module, ckpt_path: str, *, weights_only: Optional[bool] = True,
                 strict: bool = True) -> dict:
    """Load a Lightning checkpoint's ``state_dict`` into ``model`` (``weights_only`` honoured), after the
    module's own ``on_load_checkpoint`` (e.g. the base task drops weights of frozen, rebuilt parts)."""
    ckpt = load_checkpoint(ckpt_path, weights_only=weights_only is not False)
    if "state_dict" in ckpt and isinstance(model, LightningModule):
        model.on_load_checkpoint(ckpt)
    state = ckpt.get("state_dict", ckpt)
    diff = state_mismatch(model, state)
    if strict and diff:
        raise CheckpointError(
            f"checkpoint {ckpt_path} does not fit {type(model).__name__} (another model or size?): " + "; ".join(diff)
        )
    model.load_state_dict(state, strict=False)
    return ckpt


# --------------------------------------------------------------------------- trainer with extra commands
class SpikelightTrainer(Trainer):
    """Lightning's Trainer plus spikelight's own subcommands (their signatures become CLI options)."""

    def energy(
        self,
        model: LightningModule,
        datamodule: Optional[LightningDataModule] = None,
        ckpt_path: Optional[str] = None,
        num_batches: int = 4,
        module: Optional[str] = None,
        weights_only: Optional[bool] = True,
    ) -> dict:
        """Print firing rates, synaptic operations and estimated energy for a model on a few batches.

        Args:
            ckpt_path: checkpoint to load first (``last`` = this run's last.ckpt); random weights if unset.
            num_batches: number of validation batches to measure.
            module: only count operations inside this submodule (e.g. ``encoder``); default: the
                SpikeEnergy callback's setting, else the whole model.
            weights_only: load the checkpoint with ``torch.load(weights_only=...)``.
        """
        from spikelight.callbacks import SpikeEnergy
        from spikelight.profiling.energy import format_report

        if ckpt_path is not None:
            load_weights(model, ckpt_path, weights_only=weights_only)
        meters = [c for c in self.callbacks if isinstance(c, SpikeEnergy)]
        if meters:
            meter = meters[0]
            meter.num_batches = num_batches
            if module is not None:
                meter.module = module
        else:
            meter = SpikeEnergy(module=module, num_batches=num_batches)
            self.callbacks.append(meter)
        self.validate(model, datamodule=datamodule, verbose=False)
        report = meter.last_report
        if report is None:
            raise RuntimeError("no validation batch was measured: does the datamodule have a val_dataloader?")
        print(format_report(report))
        path = Path(self.default_root_dir) / "energy.json"
        if path.is_file():
            print(f"\nwritten: {path}")
        return report.to_dict()

    def export(
        self,
        model: LightningModule,
        datamodule: Optional[LightningDataModule] = None,
        ckpt_path: Optional[str] = None,
        classes: Optional[str] = None,
        templates: Optional[str] = None,
        out: str = "deploy",
        weights_only: Optional[bool] = True,
    ) -> str:
        """Export a deployable model (e.g. SVL's Rep-VLI classifier with no text encoder): the class rows
        come from the task's zero-shot classifier (:mod:`spikelight.models.zero_shot`), the same module
        its validation scores with, and load with :func:`spikelight.deploy.load_deploy`.

        Args:
            ckpt_path: checkpoint with the trained weights (``last`` = this run's last.ckpt).
            classes: class names: a comma-separated list or a text file with one name per line;
                default: the datamodule's first evaluation set.
            templates: prompt templates (one ``{}`` each), a file with one per line (or a list separated by
                ``|``); default: the task's / evaluation set's.
            out: output directory.
            weights_only: load the checkpoint with ``torch.load(weights_only=...)``.
        """
        if not hasattr(model, "export_deploy"):
            raise ValueError(f"{type(model).__name__} does not support export (no export_deploy method)")
        if ckpt_path is None:
            raise ValueError(
                "export needs trained weights: give --ckpt_path last (this run's newest checkpoint) or a file"
            )
        load_weights(model, ckpt_path, weights_only=weights_only)
        class_names = parse_class_names(classes) if classes else None
        prompts = parse_class_names(templates, sep="|") if templates else None
        path = model.export_deploy(out_dir=out, class_names=class_names, datamodule=datamodule, templates=prompts)
        print(f"exported deploy model to {path}")
        return str(path)


def parse_class_names(classes: str, *, sep: str = ",") -> list[str]:
    """``classes`` is a file (one name per line, ``#`` comments allowed) or a ``sep``-separated list."""
    p = Path(classes)
    if p.is_file():
        names = [ln.strip() for ln in p.read_text().splitlines()]
        names = [n for n in names if n and not n.startswith("#")]
    elif sep in classes or not (p.suffix or os.sep in classes):
        names = [n.strip() for n in classes.split(sep) if n.strip()]
    else:
        raise FileNotFoundError(f"file not found: {classes}")
    if not names:
        raise ValueError(f"no names in {classes!r}")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"duplicated names in {classes!r}: {', '.join(dup[:5])} (each class once)")
    return names
