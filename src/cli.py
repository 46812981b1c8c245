"""The ``spikelight`` command: LightningCLI in subclass mode for model and data.

::

    spikelight fit      --config experiments/toy.yaml [--trainer.max_epochs 3 ...]
    spikelight fit      --config experiments/toy.yaml --ckpt_path last          # resume
    spikelight validate --config experiments/toy.yaml --ckpt_path last
    spikelight energy   --config experiments/toy.yaml [--ckpt_path ...] [--num_batches 4]
    spikelight export   --config experiments/svl/synthetic.yaml --ckpt_path last --classes names.txt --out deploy/

Run folder ``<run_root>/<name>/`` (``run_root`` defaults to ``runs``, ``name`` to the config's file name,
e.g. ``experiments/svl/synthetic.yaml`` -> ``svl_synthetic``); its layout and rules are in
:mod:`spikelight.runs`:

* one owner: a ``fit`` holds the folder's lock; a second live ``fit`` on it is refused;
* a fresh ``fit`` (no ``--ckpt_path``) into a folder that holds a training stops with a message
  (``--ckpt_path last`` resumes, ``--name`` starts another, ``--overwrite true`` moves the old files away);
* ``--ckpt_path last`` means the run's newest checkpoint (``checkpoints/last.ckpt`` or a newer SLURM
  ``hpc_ckpt_*``) for every command; ``validate/test/predict/energy/export`` stop when there is none;
* a relaunch by SLURM (``SLURM_RESTART_COUNT > 0``) resumes from the newest checkpoint by itself;
* debug runs (``--trainer.fast_dev_run``) write under ``<run_root>/_debug/<name>/``;
* a model argument that differs from the checkpoint's hyper-parameters is refused, naming the key;
* checkpoints are written atomically (:mod:`spikelight.checkpoint_io`).

Extra top-level keys: ``name``, ``run_root``, ``overwrite`` and ``smoke`` (settings the config test uses to
shrink an experiment to a few steps; ignored by every command).
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path

from spikelight.warnings_filter import filter_known_warnings

filter_known_warnings()  # before Lightning is imported: some of its own imports warn (see warnings_filter)

from typing import Any, Optional

from jsonargparse import Namespace
from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.utilities import rank_zero_info

from spikelight import __version__
from spikelight.checkpoint_io import CheckpointError, RunCheckpoint, load_checkpoint
from spikelight.commands import SpikelightTrainer, load_weights, parse_class_names  # noqa: F401 (public API)
from spikelight.runs import RunFolder, RunFolderError, is_rank_zero

SPIKELIGHT_SUBCOMMANDS = ("energy", "export")
CHECKPOINT_COMMANDS = ("validate", "test", "predict", "energy", "export")
#: keys the DataModule and the model must agree on: (data init arg, model init arg path). The data's
#: value is the source: it is copied into the model's config (one place to change a class count)
LINKED_KEYS = (
    ("num_classes", "num_classes"),
    ("num_features", "in_features"),
    ("in_features", "in_features"),
    ("img_size", "img_size"),
    ("timesteps", "network.timesteps"),
    ("class_names", "class_names"),
)
#: modules imported before parsing so that short class names work (``--model SVLPretrain``)
_SHORT_NAME_MODULES = ("spikelight.tasks.toy", "spikelight.tasks.trevsnn_classify", "spikelight.tasks.svl_pretrain",
                       "spikelight.tasks.lvc_align", "spikelight.tasks.point_classify",
                       "spikelight.tasks.part_segment", "spikelight.tasks.point_qa", "spikelight.datamodules")


# --------------------------------------------------------------------------- config saving
class SpikelightSaveConfig(SaveConfigCallback):
    """``fit``: save the resolved config as ``<run_dir>/config.yaml``; every command: record it once in the
    logger (the W&B run config, or the logger's hyper-parameters). The per-launch history
    (``configs/<time>-<command>.yaml``) is written by the CLI before anything is built."""

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self.already_saved:
            return
        if trainer.is_global_zero:
            run_dir = Path(trainer.default_root_dir)
            run_dir.mkdir(parents=True, exist_ok=True)
            if stage == "fit":
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
            if hasattr(logger, "set_config"):  # OfflineWandbLogger: into wandb.init, no run opened here
                logger.set_config({"config": config})
            else:
                logger.log_hyperparams({"config": config})


class StaleCheckpointCleaner(Callback):
    """On resume, delete checkpoint files in the run's checkpoint folder that the restored ``ModelCheckpoint``
    state does not know (e.g. a top-k file written after the resumed ``last.ckpt``, just before a crash)."""

    def __init__(self, resumed_from: str) -> None:
        self.resumed_from = Path(resumed_from).resolve()

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        for cb in trainer.checkpoint_callbacks:
            if not isinstance(cb, ModelCheckpoint) or not cb.dirpath or not Path(cb.dirpath).is_dir():
                continue
            known = {Path(p).resolve() for p in [*cb.best_k_models, cb.best_model_path, cb.last_model_path] if p}
            known.add(self.resumed_from)
            for f in Path(cb.dirpath).glob("*.ckpt"):
                if f.resolve() not in known and f.name != "last.ckpt":
                    f.unlink()
                    rank_zero_info(f"spikelight: removed stale checkpoint {f} (not part of the resumed training)")


# --------------------------------------------------------------------------- helpers
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


def _entries(value: Any) -> list:
    if isinstance(value, list):
        return value
    if isinstance(value, (Namespace, dict)):
        return [value]
    return []


def _plain(value: Any) -> Any:
    """Comparable plain data (Namespaces -> dicts, tuples -> lists) for config-vs-checkpoint checks."""
    if isinstance(value, Namespace):
        value = value.as_dict()
    return json.loads(json.dumps(value, default=str))


def link_data_to_model(cfg: Namespace) -> list[str]:
    """Copy each :data:`LINKED_KEYS` value of ``data.init_args`` into ``model.init_args`` where both take it;
    returns the changed keys (``model.init_args.in_features=8 (from data.init_args.num_features)``)."""
    data, model = cfg.get("data"), cfg.get("model")
    if not isinstance(data, Namespace) or not isinstance(model, Namespace):
        return []
    d_init, m_init = data.get("init_args"), model.get("init_args")
    if not isinstance(d_init, Namespace) or not isinstance(m_init, Namespace):
        return []
    changed = []
    for d_key, m_path in LINKED_KEYS:
        value = d_init.get(d_key)
        if value is None:
            continue
        *parents, leaf = m_path.split(".")
        holder: Any = m_init
        for part in parents:
            holder = holder.get(part) if isinstance(holder, (Namespace, dict)) else None
        if not isinstance(holder, (Namespace, dict)) or leaf not in holder:
            continue
        if _plain(holder[leaf]) != _plain(value):
            changed.append(f"model.init_args.{m_path}={_plain(value)!r} (from data.init_args.{d_key}; was "
                           f"{_plain(holder[leaf])!r})")
            holder[leaf] = value
    return changed


def _differences(prefix: str, mine: Any, theirs: Any) -> list[tuple[str, Any, Any]]:
    """Leaf keys where two plain configs differ (``network.hidden``, not the whole ``network`` dict)."""
    if isinstance(mine, dict) and isinstance(theirs, dict):
        out = []
        for k in [*mine, *(k for k in theirs if k not in mine)]:
            out += _differences(f"{prefix}.{k}", mine.get(k), theirs.get(k))
        return out
    return [] if mine == theirs else [(prefix, mine, theirs)]


def _is_requeue() -> bool:
    try:
        return int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0) > 0
    except ValueError:
        return False


def _gpu_accelerator(accelerator: Any) -> bool:
    import torch

    name = str(accelerator.get("class_path", "") if isinstance(accelerator, (dict, Namespace)) else accelerator)
    if name.lower() in ("cpu",) or "CPUAccelerator" in name:
        return False
    if name.lower() in ("auto", "none", ""):
        return torch.cuda.is_available()
    return True


# --------------------------------------------------------------------------- the CLI
class SpikelightCLI(LightningCLI):
    """LightningCLI with spikelight's run folders, checkpoint rules and extra subcommands."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        import importlib

        for mod in _SHORT_NAME_MODULES:  # known subclasses -> short class names resolve
            importlib.import_module(mod)
        kwargs.setdefault("model_class", LightningModule)
        kwargs.setdefault("datamodule_class", LightningDataModule)
        kwargs.setdefault("subclass_mode_model", True)
        kwargs.setdefault("subclass_mode_data", True)
        kwargs.setdefault("trainer_class", SpikelightTrainer)
        kwargs.setdefault("save_config_callback", SpikelightSaveConfig)
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        kwargs.setdefault("seed_everything_default", 42)
        kwargs.setdefault("auto_configure_optimizers", False)
        kwargs.setdefault("parser_kwargs", {
            "prog": "spikelight", "version": __version__,
            "description": "spikelight: launch, resume, measure and export experiments.",
        })
        self.run_folder: Optional[RunFolder] = None
        try:
            super().__init__(*args, **kwargs)
        except BaseException:  # a launch that fails before or while running frees its run folder
            if self.run_folder is not None:
                self.run_folder.release()
            raise

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
        parser.add_argument("--overwrite", type=bool, default=False,
                            help="fit: start over in a run folder that holds a training (its files are moved to "
                                 "<run>/replaced-<time>/).")
        parser.add_argument("--smoke", type=Optional[dict], default=None,
                            help="Settings the config test uses to shrink this experiment (ignored by commands).")
        parser.add_lightning_class_args(RunCheckpoint, "checkpoint")
        parser.set_defaults({
            "checkpoint.save_last": True,
            "checkpoint.filename": "{epoch:03d}-{step:06d}",
            "checkpoint.save_top_k": 1,
            "checkpoint.enable_version_counter": False,  # one last.ckpt, never last-v1.ckpt
        })

    # ------------------------------------------------------------------ run folder and checkpoint
    def _prepare_run(self, cfg: Namespace, sub: Optional[str]) -> None:
        """Run folder, ``--ckpt_path`` resolution and the folder rules (once, before the checkpoint's
        hyper-parameters are compared with the config)."""
        if self.run_folder is not None:
            return
        for change in link_data_to_model(cfg):
            rank_zero_info(f"spikelight: linked {change}")
        name = cfg.get("name") or _experiment_name(cfg.get("config") or [])
        cfg["name"] = name
        debug = bool(cfg.get("trainer.fast_dev_run"))
        if not cfg.get("trainer.default_root_dir"):  # an explicit default_root_dir wins
            root = Path(cfg.get("run_root") or "runs")
            cfg["trainer.default_root_dir"] = str(root / "_debug" / name if debug else root / name)
        run = self.run_folder = RunFolder(cfg["trainer.default_root_dir"])
        if not cfg.get("checkpoint.dirpath"):
            cfg["checkpoint.dirpath"] = str(run.checkpoints)
        ckpt = cfg.get("ckpt_path")
        if sub == "fit":
            if not debug:
                run.acquire("fit")  # refuses a second live fit on this folder
            if ckpt == "last" or (ckpt is None and _is_requeue()):
                last = run.last_checkpoint()
                cfg["ckpt_path"] = str(last) if last else None
                rank_zero_info(f"spikelight: resuming from {last}" if last else
                               f"spikelight: no checkpoint in {run.path} yet: starting the training")
            elif ckpt is None and not debug:
                run.check_fresh_fit(overwrite=bool(cfg.get("overwrite")))
        elif sub in CHECKPOINT_COMMANDS and ckpt == "last":
            cfg["ckpt_path"] = str(run.require_last(sub))
        elif sub == "export" and not ckpt:
            raise RunFolderError("export needs trained weights: give --ckpt_path last (this run's newest "
                                 "checkpoint) or a checkpoint file")
        if cfg.get("ckpt_path") and not Path(cfg["ckpt_path"]).is_file():
            raise CheckpointError(f"checkpoint file not found: {cfg['ckpt_path']}")

    def _parse_ckpt_path(self) -> None:
        """Lightning's version lets the checkpoint's hyper-parameters silently replace the config's. Here a
        model argument that differs from the checkpoint is refused with the key named; a checkpoint of
        another model class gives one message."""
        sub = self.config.get("subcommand")
        if not sub:
            return
        cfg = self.config[sub]
        self._prepare_run(cfg, sub)
        ckpt_path = cfg.get("ckpt_path")
        if not ckpt_path:
            return
        ckpt = load_checkpoint(ckpt_path)
        hparams = dict(ckpt.get("hyper_parameters") or {})
        hparams.pop("_instantiator", None)
        class_path = hparams.pop("_class_path", None)
        model_cfg = cfg.get("model")
        if not hparams or not isinstance(model_cfg, Namespace):
            return
        if class_path and class_path != model_cfg.get("class_path"):
            raise CheckpointError(f"checkpoint {ckpt_path} was written by {class_path}, but this config builds "
                                  f"{model_cfg.get('class_path')}: give the matching config or checkpoint")
        init = model_cfg.get("init_args") or Namespace()
        unknown = [k for k in hparams if k not in init]
        if unknown:
            raise CheckpointError(
                f"checkpoint {ckpt_path} holds model arguments {unknown[:5]} that "
                f"{model_cfg.get('class_path')} does not take: it was written by another model"
            )
        differ = [d for k, v in hparams.items() for d in _differences(k, _plain(init[k]), _plain(v))]
        if differ:
            k, mine, theirs = differ[0]
            more = f" (and {len(differ) - 1} more: {[d[0] for d in differ[1:4]]})" if len(differ) > 1 else ""
            raise CheckpointError(
                f"--model.init_args.{k}={mine!r} differs from the value the checkpoint was trained with "
                f"({theirs!r}, {ckpt_path}){more}. Drop it (the checkpoint's value is used) or start a "
                "new run without --ckpt_path."
            )

    # ------------------------------------------------------------------ wiring before anything is built
    def before_instantiate_classes(self) -> None:
        sub = self.subcommand
        cfg = self.config[sub] if sub else self.config
        self._prepare_run(cfg, sub)
        run, name = self.run_folder, cfg["name"]
        self._checkpoint_io(cfg)
        self._sync_batchnorm(cfg)
        callbacks = list(cfg.get("trainer.callbacks") or [])
        logger = cfg.get("trainer.logger")
        if sub in SPIKELIGHT_SUBCOMMANDS:
            # measuring / exporting: no logger, no training-time monitors
            cfg["trainer.logger"] = logger = False
            callbacks = [c for c in callbacks if "MemoryMonitor" not in str(c.get("class_path", ""))]
            self.save_config_callback = None
            if sub == "energy":
                cfg["trainer.limit_val_batches"] = cfg.get("num_batches") or 4
        if logger in (False, None) or not _entries(logger) and logger is not True:
            dropped = [c for c in callbacks if "LearningRateMonitor" in str(c.get("class_path", ""))]
            if dropped and sub not in SPIKELIGHT_SUBCOMMANDS:
                rank_zero_info("spikelight: no logger: LearningRateMonitor left out")
            callbacks = [c for c in callbacks if c not in dropped]
        names = " ".join(str(c.get("class_path", "")) for c in callbacks)
        if (sub in ("fit", "validate", "test", "predict") and cfg.get("trainer.enable_progress_bar") is not False
                and not sys.stdout.isatty() and "ProgressBar" not in names):
            # SLURM .out files / pipes: plain lines instead of a redrawn bar
            callbacks.append(Namespace(class_path="spikelight.callbacks.PlainProgressBar", init_args=Namespace()))
        if sub == "predict" and "PredictionWriter" not in names:  # predictions land in <run>/predictions/
            callbacks.append(Namespace(class_path="spikelight.callbacks.PredictionWriter", init_args=Namespace()))
        cfg["trainer.callbacks"] = callbacks
        for entry in _entries(logger):
            self._wire_logger(entry, name, sub)
        if sub and is_rank_zero() and not cfg.get("trainer.fast_dev_run"):
            run.record_config(self.parser.dump(self.config, skip_none=False), sub)
        # checkpoints written by this framework load with weights_only=True
        if sub in ("fit", "validate", "test", "predict") and cfg.get("ckpt_path") and cfg.get("weights_only") is None:
            cfg["weights_only"] = True

    def _wire_logger(self, entry: Namespace, name: str, sub: Optional[str]) -> None:
        init = entry.get("init_args")
        if init is None:
            return
        class_path = str(entry.get("class_path", ""))
        run_dir = str(self.run_folder.path)
        if "save_dir" in init and init.get("save_dir") in (None, ".", "", "runs"):
            init["save_dir"] = run_dir
        elif "root_dir" in init and init.get("root_dir") in (None, ".", ""):
            init["root_dir"] = run_dir
        if "Wandb" in class_path:
            if init.get("name") in (None, ""):
                init["name"] = name
            if "group" in init and not init.get("group"):
                init["group"] = name
            if "job_type" in init and not init.get("job_type"):
                init["job_type"] = sub
            if sub == "fit" and "id" in init and not init.get("id"):  # one W&B run per training
                init["id"] = self.run_folder.wandb_id()
        elif "name" in init and init.get("name") in (None, "lightning_logs"):
            init["name"] = "logs"

    @staticmethod
    def _checkpoint_io(cfg: Namespace) -> None:
        plugins = _entries(cfg.get("trainer.plugins"))
        if any("CheckpointIO" in str(p.get("class_path", p)) for p in plugins):
            return  # the user chose one
        cfg["trainer.plugins"] = [*plugins, Namespace(class_path="spikelight.checkpoint_io.AtomicCheckpointIO",
                                                      init_args=Namespace())]

    @staticmethod
    def _sync_batchnorm(cfg: Namespace) -> None:
        if cfg.get("trainer.sync_batchnorm") and not _gpu_accelerator(cfg.get("trainer.accelerator")):
            cfg["trainer.sync_batchnorm"] = False
            rank_zero_info("spikelight: sync_batchnorm turned off: SyncBatchNorm needs GPUs (on CPU each process "
                           "normalises its own batch)")

    def after_instantiate_classes(self) -> None:
        super().after_instantiate_classes()
        sub = self.subcommand
        ckpt = self.config[sub].get("ckpt_path") if sub else None
        if sub == "fit" and ckpt:
            self.trainer.callbacks.append(StaleCheckpointCleaner(ckpt))
        if self.subcommand and self.save_config_callback is not None:
            # the resolved config is logged once by SpikelightSaveConfig; no second copy from Lightning
            for obj in (getattr(self, "model", None), getattr(self, "datamodule", None)):
                if obj is not None:
                    obj._log_hyperparams = False

    def _run_subcommand(self, subcommand: str) -> None:
        try:
            super()._run_subcommand(subcommand)
        finally:  # the folder is free again for the next command of this process (the kernel frees it at exit)
            if self.run_folder is not None:
                self.run_folder.release()

    def before_fit(self) -> None:
        rank_zero_info(f"spikelight: run directory {self.run_folder.path if self.run_folder else '?'}")


def main(args: Optional[list[str]] = None) -> None:
    """Console entry point. Known input errors end with one clear line (``SPIKELIGHT_DEBUG=1``: traceback)."""
    os.environ.setdefault("WANDB_SILENT", "true")
    try:
        SpikelightCLI(args=args)
    except (FileNotFoundError, NotADirectoryError, ValueError, FloatingPointError, RunFolderError) as e:
        if os.environ.get("SPIKELIGHT_DEBUG"):
            raise
        tb = traceback.extract_tb(e.__traceback__)
        known = isinstance(e, (RunFolderError, CheckpointError)) or hasattr(e, "path")  # messages that say it all
        where = f" (raised at {tb[-1].filename}:{tb[-1].lineno})" if tb and not known else ""
        print(f"spikelight: error: {type(e).__name__}: {e}{where}\n"
              "Set SPIKELIGHT_DEBUG=1 for the full traceback.", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
