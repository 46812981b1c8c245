"""SVL downstream: fine-tuning from an SVL-pretrained encoder vs from scratch, and energy vs the ReLU twin.

The paper's claim (REFERENCE section 1, "Downstream gains over the same SNN without SVL": 3D classification
+6.1, DVS action recognition +2.1, 3D segmentation +2.1) measured on this project's synthetic data:

1. **SVL pretraining** (once): the demo model of ``experiments/svl/synthetic.yaml`` (its encoder, frozen
   towers and MTA loss), shrunk (fewer points / objects / epochs), fitted with Lightning on the embedded
   synthetic triplets; the checkpoint is saved and its zero-shot top-1 on held-out objects is reported
   (a check that pretraining learned something).
2. **Fine-tuning**, for each downstream task config in ``experiments/svl_downstream/`` (classification,
   DVS, part segmentation), for each seed: the same task, data, steps and seed twice - once with
   ``pretrained: <the SVL checkpoint>`` and once from scratch (``pretrained: null``, the encoder
   initialised under the same seed). Both runs see identical batches (the DataModule's seed is fixed,
   Lightning's global seed is the run's seed) and the same number of optimiser steps. The score is the
   task's validation metric on its held-out split after the last step (never the training set).
3. **Energy per sample** of each task's fine-tuned model (SVL-initialised, first seed) on validation
   batches, against its ReLU twin (same weights, every spiking neuron replaced by ReLU, all products
   charged as MAC): :func:`spikelight.profiling.energy.measure_energy` and ``relu_twin`` of
   ``benchmarks/svl_energy.py`` (E_MAC 4.6 pJ, E_AC 0.9 pJ).

Data: the SVL triplets are generated with data seed 1, the classification data with seed 0, so no pretraining
object is a fine-tuning or validation object; the categories are shared (the captions name them), as in
SVL, whose pretraining corpus covers the downstream categories. The DVS recordings (moving discs, 11 motion
classes; polarity in the rgb channels, T = 6 windows) and the part labels are never seen in pretraining.
Each task's data is generated / cached once before its seeded runs, so both arms consume the same RNG.

Everything is small (the demo's 145k-parameter Spike PointNet, 64-256 points, 44-88 fine-tuning steps) so
the whole run fits in about 15 minutes on 2 CPU cores; the absolute scores are those of tiny models on
synthetic data, not the paper's. The table gives mean +- std over the seeds of each arm and of the paired
difference, and how many seeds the SVL arm wins. The sizes per task are in ``FINETUNE`` (the DVS budget is
set below the task's ceiling: with 56 steps on 96-point windows both arms reached 0.991 on seed 0).

Energy note: for part segmentation the head's first conv sees real values (membrane-path features, the
global embedding, the category one-hot: a MAC layer, ``PartSegmentationModel.real_input_layers``), which
is about half of the model's products, so its SNN / ReLU-twin ratio is far smaller than the classifiers'.

Usage::

    python benchmarks/svl_downstream.py [--quick] [--seeds 0 1 2] [--tasks classify dvs partseg] [--threads 1]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import importlib
import io
import logging
import math
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS_DIR, finish_report, machine_info, set_threads  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SVL_CONFIG = ROOT / "experiments" / "svl" / "synthetic.yaml"
DOWNSTREAM_DIR = ROOT / "experiments" / "svl_downstream"

#: the downstream tasks: config file, the validation metric compared (first one found is used)
TASKS: dict[str, dict[str, Any]] = {
    "classify": {"config": "synthetic_classify.yaml", "metrics": ["val/top1"]},
    "dvs": {"config": "synthetic_dvs.yaml", "metrics": ["val/top1"]},
    "partseg": {"config": "synthetic_partseg.yaml", "metrics": ["val/instance_miou", "val/class_miou"]},
}

PAPER_GAINS = {
    "source": "SVL paper, as quoted in REFERENCE.md section 1 (real data, full-size models, full recipes)",
    "classify_scanobjectnn_top1_pts": 6.1,
    "dvs_action_top1_pts": 2.1,
    "segmentation_miou_pts": 2.1,
    "detection_kitti_pts": 1.1,
}

# ---------------------------------------------------------------------------------------------
# Sizes (full run / --quick)
# ---------------------------------------------------------------------------------------------

PRETRAIN = {
    "full": {"num_points": 256, "image_size": 32, "train_per_class": 40, "val_per_class": 8, "batch_size": 32,
             "max_epochs": 8},
    "quick": {"num_points": 128, "image_size": 32, "train_per_class": 4, "val_per_class": 2, "batch_size": 16,
              "max_epochs": 1},
}

#: per task: overrides of its config (``model.<init arg>``, ``data.<init arg>``, ``trainer.max_epochs``)
FINETUNE: dict[str, dict[str, dict[str, Any]]] = {
    "classify": {
        "full": {"data.num_points": 256, "data.image_size": 32, "data.train_per_class": 16,
                 "data.val_per_class": 8, "data.batch_size": 32, "data.progress": False, "trainer.max_epochs": 8},
        "quick": {"data.num_points": 128, "data.image_size": 32, "data.train_per_class": 2,
                  "data.val_per_class": 1, "data.batch_size": 8, "data.progress": False, "trainer.max_epochs": 1},
    },
    "dvs": {
        "full": {"data.train_size": 176, "data.val_size": 110, "data.num_points": 64, "data.batch_size": 16,
                 "data.noise_fraction": 0.1, "trainer.max_epochs": 4},
        "quick": {"data.train_size": 8, "data.val_size": 4, "data.num_points": 32, "data.batch_size": 4,
                  "trainer.max_epochs": 1},
    },
    "partseg": {
        "full": {"data.num_points": 256, "data.train_per_class": 8, "data.val_per_class": 4, "data.batch_size": 16,
                 "trainer.max_epochs": 6},
        "quick": {"data.num_points": 64, "data.train_per_class": 1, "data.val_per_class": 1, "data.batch_size": 8,
                  "trainer.max_epochs": 1},
    },
}  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Config helpers
# ---------------------------------------------------------------------------------------------


def load_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: config not found")
    return yaml.safe_load(path.read_text())


def import_object(path: str) -> Any:
    """``"a.b.C"`` -> the object (short class names are not supported here: configs use full paths)."""
    mod, _, name = path.rpartition(".")
    if not mod:
        raise ValueError(f"class_path {path!r} must be a dotted path")
    return getattr(importlib.import_module(mod), name)


def optimizer_callable(spec: Any) -> Any:
    """A YAML ``optimizer:`` entry (``{class_path, init_args}``) -> ``partial(cls, **init_args)``."""
    if spec is None or callable(spec):
        return spec
    if isinstance(spec, dict) and "class_path" in spec:
        return functools.partial(import_object(spec["class_path"]), **dict(spec.get("init_args") or {}))
    raise ValueError(f"optimizer entry not understood: {spec!r}")


def instantiate(spec: dict[str, Any], **overrides: Any) -> Any:
    """``{class_path, init_args}`` -> instance, with ``overrides`` merged into the init args (an
    ``optimizer`` init arg becomes a callable, as LightningCLI does)."""
    args = {**dict(spec.get("init_args") or {}), **overrides}
    if "optimizer" in args:
        args["optimizer"] = optimizer_callable(args["optimizer"])
    return import_object(spec["class_path"])(**args)


@contextlib.contextmanager
def quiet():
    """Silence Lightning's banners and known warnings (results are printed by this script)."""
    names = ["lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning"]
    levels = {n: logging.getLogger(n).level for n in names}
    for n in names:
        logging.getLogger(n).setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            yield
        finally:
            for n, lvl in levels.items():
                logging.getLogger(n).setLevel(lvl)


def make_trainer(*, root: Path, max_epochs: int, val_every: int | None = None, **kw: Any):
    """A quiet CPU trainer writing nothing outside ``root`` (no logger, no checkpoints)."""
    import lightning.pytorch as pl

    return pl.Trainer(
        default_root_dir=str(root),
        accelerator="cpu",
        devices=1,
        max_epochs=max_epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        check_val_every_n_epoch=val_every or 10**6,
        deterministic=False,
        **kw,
    )


def metric_values(trainer) -> dict[str, float]:
    return {k: float(v) for k, v in trainer.callback_metrics.items() if torch.is_tensor(v) and v.numel() == 1}


# ---------------------------------------------------------------------------------------------
# 1. SVL pretraining
# ---------------------------------------------------------------------------------------------


def svl_pretrain(size: dict[str, Any], ckpt_path: Path, *, seed: int = 0, data_seed: int = 1) -> dict[str, Any]:
    """Fit the (shrunk) SVL demo model on the synthetic triplets generated with ``data_seed`` (1: other
    objects than the downstream classification data, which uses seed 0); save the checkpoint to
    ``ckpt_path``; return a summary."""
    import lightning.pytorch as pl

    cfg = load_yaml(SVL_CONFIG)
    model_spec = copy.deepcopy(cfg["model"])
    model_spec["init_args"]["feature_cache"] = None  # in-memory text features only
    model_spec["init_args"]["zero_shot_every_n_epochs"] = 10**6  # zero-shot only after the last epoch
    data_spec = copy.deepcopy(cfg["data"])
    data_over = {k: size[k] for k in ("num_points", "image_size", "train_per_class", "val_per_class", "batch_size")}
    data_over["seed"] = data_seed
    t0 = time.perf_counter()
    with quiet():
        pl.seed_everything(seed, workers=True, verbose=False)
        task = instantiate(model_spec)
        dm = instantiate(data_spec, **data_over, progress=False)
        trainer = make_trainer(root=ckpt_path.parent, max_epochs=size["max_epochs"], val_every=size["max_epochs"])
        with contextlib.redirect_stdout(io.StringIO()):
            trainer.fit(task, datamodule=dm)
        trainer.save_checkpoint(str(ckpt_path))
    m = metric_values(trainer)
    return {
        "config": str(SVL_CONFIG.relative_to(ROOT)),
        "encoder": dict(task.encoder_spec),
        "encoder_params": sum(p.numel() for p in task.encoder.parameters()),
        "teacher": f"{task.hparams.clip_model} image tower (random weights) + text tower {task.hparams.text_model}",
        "data": data_over,
        "train_categories": len(dm.train_class_names),
        "epochs": size["max_epochs"],
        "steps": int(trainer.global_step),
        "train_loss_last": m.get("train/loss"),
        "zero_shot_val_objects_top1": m.get("val/top1"),
        "zero_shot_val_categories_top1": next((v for k, v in m.items() if k.endswith("/top1") and k != "val/top1"
                                               and k.startswith("val_")), None),
        "chance_val_objects": 1.0 / len(dm.train_class_names),
        "wall_s": round(time.perf_counter() - t0, 1),
    }


# ---------------------------------------------------------------------------------------------
# 2. Fine-tuning with / without SVL
# ---------------------------------------------------------------------------------------------


def task_config(task: str, quick: bool) -> dict[str, Any]:
    """The task's config with the benchmark's size overrides applied (``model``, ``data`` specs and
    ``max_epochs``); raises ``FileNotFoundError`` when the config is not there."""
    cfg = load_yaml(DOWNSTREAM_DIR / TASKS[task]["config"])
    model, data = copy.deepcopy(cfg["model"]), copy.deepcopy(cfg["data"])
    max_epochs = int((cfg.get("trainer") or {}).get("max_epochs") or 1)
    over = FINETUNE[task]["quick" if quick else "full"]
    for key, value in over.items():
        part, _, name = key.partition(".")
        if part == "trainer" and name == "max_epochs":
            max_epochs = int(value)
        elif part in ("model", "data"):
            spec = model if part == "model" else data
            if part == "data" and name not in (spec.get("init_args") or {}) and name == "image_size":
                continue  # only Synthetic3D has images
            spec.setdefault("init_args", {})[name] = value
        else:
            raise ValueError(f"override {key!r} not understood")
    return {"model": model, "data": data, "max_epochs": max_epochs, "overrides": over,
            "config": str((DOWNSTREAM_DIR / TASKS[task]["config"]).relative_to(ROOT))}


def encoder_weights_spec(spec: Any) -> dict[str, Any]:
    """The encoder spec without arguments that do not change the weights (``timesteps``)."""
    spec = {"name": spec} if isinstance(spec, str) else dict(spec or {})
    spec.pop("timesteps", None)
    return spec


def pick_metric(values: dict[str, float], names: list[str]) -> tuple[str, float]:
    for n in names:
        if n in values:
            return n, values[n]
    raise KeyError(f"none of the metrics {names} was logged; logged: {sorted(values)}")


def finetune(task: str, tc: dict[str, Any], *, seed: int, pretrained: Path | None, root: Path,
             keep: bool = False) -> dict[str, Any]:
    """One fine-tuning run; returns its validation metrics (and the task/datamodule with ``keep``)."""
    import lightning.pytorch as pl

    t0 = time.perf_counter()
    with quiet():
        pl.seed_everything(seed, workers=True, verbose=False)
        model = instantiate(tc["model"], pretrained=str(pretrained) if pretrained is not None else None)
        dm = instantiate(tc["data"])
        trainer = make_trainer(root=root, max_epochs=tc["max_epochs"], val_every=tc["max_epochs"])
        with contextlib.redirect_stdout(io.StringIO()):
            trainer.fit(model, datamodule=dm)
    values = metric_values(trainer)
    name, value = pick_metric(values, TASKS[task]["metrics"])
    out = {"seed": seed, "init": "svl" if pretrained is not None else "scratch", "metric": name, "value": value,
           "val_metrics": {k: v for k, v in values.items() if k.startswith("val")},
           "train_loss_last": values.get("train/loss"), "steps": int(trainer.global_step),
           "wall_s": round(time.perf_counter() - t0, 1)}
    if keep:
        out["_model"], out["_dm"] = model, dm
    return out


def mean_std(xs: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(xs), "std": statistics.stdev(xs) if len(xs) > 1 else 0.0, "n": len(xs)}


# ---------------------------------------------------------------------------------------------
# 3. Energy per sample vs the ReLU twin
# ---------------------------------------------------------------------------------------------


def mac_layers(task) -> tuple[str, ...]:
    """Names (in ``task``) of the layers fed real values: the ``real_input_layers`` of its network
    (``task.model``, e.g. PartSegment's) or of its encoder (``task.encoder``, PointClassify's)."""
    for prefix in ("model", "encoder"):
        net = getattr(task, prefix, None)
        if net is not None and hasattr(net, "real_input_layers"):
            return tuple(f"{prefix}.{n}" for n in net.real_input_layers)
    return ()


def task_energy(model, dm, max_batches: int) -> dict[str, Any]:
    """Energy per sample of ``model`` (a fine-tuned task: encoder + head) on validation batches, and of
    its ReLU twin; the encoder's ``real_input_layers`` are MAC, everything else by the meter's rule."""
    from svl_energy import ReLUNeuron, relu_twin

    from spikelight.profiling.energy import measure_energy

    loader = dm.val_dataloader()
    loader = loader[0] if isinstance(loader, (list, tuple)) else loader
    batches = [b for _, b in zip(range(max_batches), loader)]

    def fwd(m, b):
        return m.infer(b)

    mac = mac_layers(model)
    snn = measure_energy(model, batches, forward=fwd, mac_layers=mac)
    twin, swapped = relu_twin(model)
    nz = {"nz": 0.0, "n": 0}

    def hook(mod, args, out):
        nz["nz"] += float((out.detach() != 0).sum())
        nz["n"] += out.numel()

    handles = [m.register_forward_hook(hook) for m in twin.modules() if isinstance(m, ReLUNeuron)]
    try:
        ann = measure_energy(twin, batches, forward=fwd, mac_layers=("*",), spike_max=None)
    finally:
        for h in handles:
            h.remove()
    return {
        "samples": sum(int(b["points"].shape[0]) for b in batches),
        "snn_mj": snn.energy_mj_per_sample,
        "snn_mean_firing_rate": snn.mean_firing_rate,
        "snn_mac_ops": snn.mac_flops_per_sample,
        "snn_ac_ops": snn.ac_ops_per_sample,
        "dense_macs": snn.flops_per_sample,
        "relu_twin_mj": ann.energy_mj_per_sample,
        "relu_twin_dense_macs": ann.flops_per_sample,
        "relu_nonzero_fraction": nz["nz"] / nz["n"] if nz["n"] else None,
        "neurons_replaced": swapped,
        "twin_over_snn": ann.energy_mj_per_sample / snn.energy_mj_per_sample if snn.energy_mj_per_sample else math.inf,
    }


def summary_text(report: dict[str, Any]) -> str:
    pt = report["pretrain"]
    lines = [
        f"SVL pretraining: {pt['encoder']['name']} ({pt['encoder_params'] / 1e3:.0f}k params), {pt['steps']} steps "
        f"on {pt['train_categories']} synthetic categories (data seed {pt['data']['seed']}), zero-shot top-1 on "
        f"held-out objects {pt['zero_shot_val_objects_top1']:.3f} (chance {pt['chance_val_objects']:.3f}) "
        f"[{pt['wall_s']} s]",
        "",
        f"{'task':9s} {'metric':13s} {'scratch':>15s} {'SVL init':>15s} {'SVL - scratch':>16s} {'wins':>5s} "
        f"{'steps':>5s}  {'SNN mJ':>8s} {'ReLU mJ':>8s} {'ratio':>6s}",
    ]
    for name, t in report["tasks"].items():
        if "skipped" in t:
            lines.append(f"{name:9s} skipped: {t['skipped']}")
            continue
        sc, sv, d = t["scratch"], t["svl"], t["difference"]
        e = t.get("energy") or {}
        lines.append(
            f"{name:9s} {t['metric'].split('/')[-1]:13s} {sc['mean']:.3f} +- {sc['std']:.3f} "
            f"{sv['mean']:.3f} +- {sv['std']:.3f} {d['mean']:+.3f} +- {d['std']:.3f} "
            f"{t['svl_wins']:>2d}/{d['n']:<2d} {t['steps']:5d}  "
            + (f"{e['snn_mj']:8.4f} {e['relu_twin_mj']:8.4f} {e['twin_over_snn']:5.1f}x" if e else "")
        )
    lines += [
        "",
        "mean +- std over seeds (difference: paired per seed); validation split never trained on; energy per "
        "sample of the SVL-initialised fine-tuned model (first seed) vs its ReLU twin (4.6 pJ MAC, 0.9 pJ AC).",
        f"Paper (real data, full models): +{PAPER_GAINS['classify_scanobjectnn_top1_pts']} cls, "
        f"+{PAPER_GAINS['dvs_action_top1_pts']} DVS, +{PAPER_GAINS['segmentation_miou_pts']} seg (points of %).",
    ]
    return "\n".join(lines)


def plot(report: dict[str, Any], path: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover
        return None
    tasks = [(k, t) for k, t in report["tasks"].items() if "skipped" not in t]
    if not tasks:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    w = 0.36
    for j, (arm, colour) in enumerate((("scratch", "#9ecae1"), ("svl", "#3182bd"))):
        xs = [i + (j - 0.5) * w for i in range(len(tasks))]
        ax.bar(xs, [t[arm]["mean"] for _, t in tasks], w, yerr=[t[arm]["std"] for _, t in tasks], capsize=4,
               color=colour, label="from scratch" if arm == "scratch" else "SVL-pretrained init")
        for i, (_, t) in enumerate(tasks):
            vals = [r["value"] for r in t["runs"] if r["init"] == arm]
            ax.scatter([xs[i]] * len(vals), vals, s=10, color="k", zorder=3)
    ax.set_xticks(range(len(tasks)), [f"{k}\n({t['metric']})" for k, t in tasks])
    ax.set_ylabel("validation score")
    ax.set_ylim(0, 1)
    ax.set_title(f"SVL downstream on synthetic data ({len(report['settings']['seeds'])} seeds, equal steps)")
    ax.legend(fontsize=8, loc="center right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: tiny sizes, one seed, one epoch each")
    ap.add_argument("--seeds", type=int, nargs="+", default=None, help="default 0 1 2 (quick: 0)")
    ap.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    ap.add_argument("--energy-batches", type=int, default=None, help="validation batches for energy (default 2, quick 1)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--out", default=None, help="JSON path (default results/svl_downstream[_quick].json)")
    args = ap.parse_args(argv)

    set_threads(args.threads)
    seeds = args.seeds if args.seeds is not None else ([0] if args.quick else [0, 1, 2])
    size = PRETRAIN["quick" if args.quick else "full"]
    energy_batches = args.energy_batches or (1 if args.quick else 2)
    out_path = Path(args.out) if args.out else RESULTS_DIR / ("svl_downstream_quick.json" if args.quick
                                                              else "svl_downstream.json")
    t_start = time.perf_counter()
    report: dict[str, Any] = {
        "benchmark": "SVL downstream: fine-tuning from the SVL-pretrained encoder vs from scratch (equal steps "
                     "and seeds), and energy per sample vs the ReLU twin, on synthetic data",
        "machine": machine_info("cpu"),
        "settings": {"quick": args.quick, "seeds": seeds, "torch_threads": torch.get_num_threads(), "tasks": args.tasks, "pretrain_sizes": size,
                     "energy_batches": energy_batches},
        "paper_reference": PAPER_GAINS,
        "tasks": {},
    }
    with tempfile.TemporaryDirectory(prefix="svl_downstream_") as tmp:
        tmp = Path(tmp)
        ckpt = tmp / "svl_pretrained.ckpt"
        print(f"SVL pretraining ({size}) ...", flush=True)
        report["pretrain"] = pt = svl_pretrain(size, ckpt)
        print(f"  {pt['steps']} steps, zero-shot top-1 (held-out objects) {pt['zero_shot_val_objects_top1']:.3f} "
              f"[{pt['wall_s']} s]", flush=True)
        for task in args.tasks:
            try:
                tc = task_config(task, args.quick)
            except FileNotFoundError as e:
                report["tasks"][task] = {"skipped": str(e)}
                print(f"{task}: skipped ({e})", flush=True)
                continue
            enc = tc["model"].get("init_args", {}).get("encoder")
            if encoder_weights_spec(enc) != encoder_weights_spec(pt["encoder"]):
                raise SystemExit(f"{tc['config']}: its encoder {enc} is not the SVL demo's {pt['encoder']} "
                                 "(the checkpoint would not load)")
            with quiet():  # generate / cache the data once, so that no seeded run does it (same RNG use in both arms)
                instantiate(tc["data"]).prepare_data()
            runs = []
            energy = None
            for seed in seeds:
                for init in ("scratch", "svl"):
                    keep = init == "svl" and seed == seeds[0]
                    r = finetune(task, tc, seed=seed, pretrained=ckpt if init == "svl" else None, root=tmp,
                                 keep=keep)
                    if keep:
                        energy = task_energy(r.pop("_model"), r.pop("_dm"), energy_batches)
                    runs.append(r)
                    print(f"  {task:9s} seed {seed} {init:7s} {r['metric']} {r['value']:.3f} "
                          f"({r['steps']} steps, {r['wall_s']} s)", flush=True)
            by = {arm: {r["seed"]: r["value"] for r in runs if r["init"] == arm} for arm in ("scratch", "svl")}
            diffs = [by["svl"][s] - by["scratch"][s] for s in seeds]
            report["tasks"][task] = {
                "config": tc["config"], "overrides": tc["overrides"], "max_epochs": tc["max_epochs"],
                "metric": runs[0]["metric"], "steps": runs[0]["steps"],
                "scratch": mean_std(list(by["scratch"].values())), "svl": mean_std(list(by["svl"].values())),
                "difference": mean_std(diffs), "svl_wins": sum(d > 0 for d in diffs),
                "energy": energy, "runs": runs,
            }
    return finish_report(report, out_path, t_start, summary_text, plot)


if __name__ == "__main__":
    main()
