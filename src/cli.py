"""The ``spikelight`` command: LightningCLI in subclass mode for model and data.

::

    spikelight fit      --config experiments/toy.yaml [--trainer.max_epochs 3 ...]
    spikelight validate --config experiments/toy.yaml --ckpt_path last
    spikelight energy   --config experiments/toy.yaml [--ckpt_path ...] [--num_batches 4]
    spikelight export   --config experiments/svl/synthetic.yaml --ckpt_path last --classes names.txt --out deploy/

Run directory: every experiment writes to ``<run_root>/<name>/`` (``run_root`` defaults to ``runs``,
``name`` to the config's file name, e.g. ``experiments/svl/synthetic.yaml`` -> ``svl_synthetic``):
``checkpoints/`` (fixed dirpath, ``last.ckpt`` always kept so ``--ckpt_path last`` resumes),
``config.yaml`` (the resolved config, overwritten on resume), the logger's files (``wandb/``
offline runs by default), and the callbacks' outputs (``energy.json``, plots).

Extra top-level keys: ``name``, ``run_root`` and ``smoke`` (settings the config test uses to shrink an
experiment to a few steps; ignored by every command).
"""

from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path
from typing import Any, Optional

import torch
from jsonargparse import Namespace
from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import WandbLogger as _LightningWandb
from lightning.pytorch.utilities import rank_zero_info

SPIKELIGHT_SUBCOMMANDS = ("energy", "export")


# --------------------------------------------------------------------------- checkpoint loading
def resolve_ckpt_path(ckpt_path: Optional[str], trainer: Optional[Trainer] = None) -> Optional[str]:
    """Turn ``"last"`` into the run's ``checkpoints/last.ckpt``; check that the file exists."""
    if ckpt_path is None:
        return None
    if ckpt_path == "last":
        candidates = []
        if trainer is not None:
            for cb in trainer.checkpoint_callbacks:
                if getattr(cb, "dirpath", None):
                    candidates.append(Path(cb.dirpath) / "last.ckpt")
        for c in candidates:
            if c.is_file():
                return str(c)
        raise FileNotFoundError(
            "--ckpt_path last: no last.ckpt found in " + ", ".join(str(c) for c in candidates) if candidates
            else "--ckpt_path last: this run has no checkpoint directory"
        )
    if not Path(ckpt_path).is_file():
        raise FileNotFoundError(f"checkpoint file not found: {ckpt_path}")
    return ckpt_path


def load_weights(model: torch.nn.Module, ckpt_path: str, *, weights_only: Optional[bool] = True,
                 strict: bool = True) -> dict:
    """Load a Lightning checkpoint's ``state_dict`` into ``model`` (``weights_only`` honoured), after the
    module's own ``on_load_checkpoint`` (e.g. the base task drops weights of frozen, rebuilt parts)."""
    try:
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=weights_only is not False)
    except Exception as e:  # noqa: BLE001 - re-raised with the file name
        raise ValueError(f"cannot read checkpoint {ckpt_path}: {e}") from e
    if "state_dict" in ckpt and isinstance(model, LightningModule):
        model.on_load_checkpoint(ckpt)
    state = ckpt.get("state_dict", ckpt)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if strict and (missing or unexpected):
        raise ValueError(
            f"checkpoint {ckpt_path} does not match the model: missing keys {missing[:5]}..., "
            f"unexpected keys {unexpected[:5]}..."
        )
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

        ckpt = resolve_ckpt_path(ckpt_path, self)
        if ckpt is not None:
            load_weights(model, ckpt, weights_only=weights_only)
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
        ckpt = resolve_ckpt_path(ckpt_path, self)
        if ckpt is not None:
            load_weights(model, ckpt, weights_only=weights_only)
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
    return names


# --------------------------------------------------------------------------- config saving
class SpikelightSaveConfig(SaveConfigCallback):
    """Save the resolved config as ``<run_dir>/config.yaml`` (overwritten on resume) and record it in
    the logger (W&B run config, or the logger's hyperparameters)."""

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self.already_saved:
            return
        run_dir = Path(trainer.default_root_dir)
        if trainer.is_global_zero:
            run_dir.mkdir(parents=True, exist_ok=True)
            self.parser.save(self.config, str(run_dir / self.config_filename), skip_none=False,
                             overwrite=True, multifile=False)
            self.save_config(trainer, pl_module, stage)
            self.already_saved = True
        self.already_saved = trainer.strategy.broadcast(self.already_saved)

    def save_config(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        import yaml

        config = yaml.safe_load(self.parser.dump(self.config, skip_none=False))
        config.pop("smoke", None)
        for logger in trainer.loggers:
            if isinstance(logger, _LightningWandb):
                logger.experiment.config.update({"config": config}, allow_val_change=True)
            else:
                logger.log_hyperparams({"config": config})


# --------------------------------------------------------------------------- the CLI
def _experiment_name(config_paths: list) -> str:
    """``experiments/svl/synthetic.yaml`` -> ``svl_synthetic``; ``experiments/toy.yaml`` -> ``toy``."""
    for p in config_paths or []:
        path = Path(str(p))
        if path.parent.name == "cluster":
            continue
        if path.parent.name and path.parent.name != "experiments":
            return f"{path.parent.name}_{path.stem}"
        return path.stem
    return "default"


def _logger_entries(logger_cfg: Any) -> list:
    if isinstance(logger_cfg, list):
        return logger_cfg
    if isinstance(logger_cfg, (Namespace, dict)):
        return [logger_cfg]
    return []


class SpikelightCLI(LightningCLI):
    """LightningCLI with spikelight's run directory, checkpointing and extra subcommands."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("model_class", LightningModule)
        kwargs.setdefault("datamodule_class", LightningDataModule)
        kwargs.setdefault("subclass_mode_model", True)
        kwargs.setdefault("subclass_mode_data", True)
        kwargs.setdefault("trainer_class", SpikelightTrainer)
        kwargs.setdefault("save_config_callback", SpikelightSaveConfig)
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        kwargs.setdefault("seed_everything_default", 42)
        kwargs.setdefault("auto_configure_optimizers", False)
        kwargs.setdefault("parser_kwargs", {"prog": "spikelight", "description": "spikelight: launch, resume, measure and export experiments."})
        super().__init__(*args, **kwargs)

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        subs = dict(LightningCLI.subcommands())
        for name in SPIKELIGHT_SUBCOMMANDS:
            subs[name] = {"model", "datamodule"}
        return subs

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument("--name", type=Optional[str], default=None,
                            help="Experiment name (run directory <run_root>/<name>); default: from the config file name.")
        parser.add_argument("--run_root", type=str, default="runs", help="Root folder of run directories.")
        parser.add_argument("--smoke", type=Optional[dict], default=None,
                            help="Settings the config test uses to shrink this experiment (ignored by commands).")
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults({
            "checkpoint.save_last": True,
            "checkpoint.filename": "{epoch:03d}-{step:06d}",
            "checkpoint.save_top_k": 1,
        })

    # ------------------------------------------------------------------ run directory wiring
    def before_instantiate_classes(self) -> None:
        sub = self.subcommand
        cfg = self.config[sub] if sub else self.config
        name = cfg.get("name") or _experiment_name(cfg.get("config") or [])
        cfg["name"] = name
        if not cfg.get("trainer.default_root_dir"):  # an explicit default_root_dir wins
            cfg["trainer.default_root_dir"] = str(Path(cfg.get("run_root") or "runs") / name)
        run_dir = self.run_dir = Path(cfg["trainer.default_root_dir"])
        if not cfg.get("checkpoint.dirpath"):
            cfg["checkpoint.dirpath"] = str(run_dir / "checkpoints")

        if sub in SPIKELIGHT_SUBCOMMANDS:
            # measuring / exporting: no logger, no training-time monitors, no config write
            cfg["trainer.logger"] = False
            cbs = cfg.get("trainer.callbacks") or []
            cfg["trainer.callbacks"] = [c for c in cbs if "MemoryMonitor" not in str(c.get("class_path", ""))]
            self.save_config_callback = None
            if sub == "energy":
                cfg["trainer.limit_val_batches"] = cfg.get("num_batches") or 4
        else:
            for entry in _logger_entries(cfg.get("trainer.logger")):
                init = entry.get("init_args")
                if init is None:
                    continue
                class_path = str(entry.get("class_path", ""))
                if "save_dir" in init and init.get("save_dir") in (None, ".", "", "runs"):
                    init["save_dir"] = str(run_dir)
                elif "root_dir" in init and init.get("root_dir") in (None, ".", ""):
                    init["root_dir"] = str(run_dir)
                if "Wandb" in class_path:
                    if init.get("name") in (None, ""):
                        init["name"] = name
                elif "name" in init and init.get("name") in (None, "lightning_logs"):
                    init["name"] = "logs"
        # checkpoints written by this framework load with weights_only=True
        if sub in ("fit", "validate", "test", "predict") and cfg.get("ckpt_path") and cfg.get("weights_only") is None:
            cfg["weights_only"] = True

    def before_fit(self) -> None:
        rank_zero_info(f"spikelight: run directory {self.run_dir}")


def main(args: Optional[list[str]] = None) -> None:
    """Console entry point. Known input errors end with one clear line (``SPIKELIGHT_DEBUG=1``: traceback)."""
    os.environ.setdefault("WANDB_SILENT", "true")
    try:
        SpikelightCLI(args=args)
    except (FileNotFoundError, NotADirectoryError, ValueError, FloatingPointError) as e:
        if os.environ.get("SPIKELIGHT_DEBUG"):
            raise
        tb = traceback.extract_tb(e.__traceback__)
        where = f" (raised at {tb[-1].filename}:{tb[-1].lineno})" if tb else ""
        print(f"spikelight: error: {type(e).__name__}: {e}{where}\n"
              "Set SPIKELIGHT_DEBUG=1 for the full traceback.", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
