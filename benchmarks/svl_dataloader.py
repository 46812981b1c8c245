"""Data-loader throughput vs the demo's SVL training step on CPU: the loader must not be the bottleneck.

Measured in one run (samples per second):

* **synthetic triplets**: ``Synthetic3DDataModule.train_dataloader()`` with the demo's data settings
  (``experiments/svl/synthetic.yaml``: points + rendered view + caption per sample, SVL augmentation);
  the one-off generation (cached on disk) is timed separately;
* **ModelNet40 txt**: ``ModelNet40DataModule`` on files written to a temp dir in the real
  ``modelnet40_normal_resampled`` format (``x,y,z,nx,ny,nz`` text, 10,000 points per file, shape-names
  and id lists): the training loader (parse + random sampling + augmentation on every access) and the
  same with ``preload=True`` (files parsed once when the dataset is built), and the evaluation loader
  (first epoch: parse + farthest point sampling; second epoch: memoised clouds);

each with ``num_workers`` 0 and 2 (worker start-up reported separately from the steady state), against

* **training step**: the demo's ``SVLPretrain`` step on batches already in memory - frozen image tower
  forward (as the task does per batch), text features (the task caches them per caption in memory; the
  timed steps hit that cache, the cold cost per batch is reported too), encoder forward + backward,
  MTA loss, AdamW step.

``ratio = loader samples/s / training samples/s``: above 1 the loader keeps up. With 0 workers loading
and training run one after the other, so the loader's share of the epoch time is also reported.

Usage::

    python benchmarks/svl_dataloader.py --device cpu [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    RESULTS_DIR,
    SHARED_DATA,
    demo_svl_config,
    get_device,
    machine_info,
    set_threads,
    sync,
    write_json,
)


def loader_throughput(
    make_loader, *, max_batches: int | None, second_epoch: bool = False, prefetch_batches: int = 0
) -> dict[str, Any]:
    """Iterate one epoch (or ``max_batches``) of a fresh loader: start-up (building the loader and the
    first batch) and steady-state samples/s over the remaining batches; with ``second_epoch`` also the
    samples/s of a complete second pass (memoised datasets serve it from memory). ``prefetch_batches``:
    how many batches worker processes may prepare ahead (``2 * num_workers``), for a bias note."""
    t0 = time.perf_counter()
    loader = make_loader()
    it = iter(loader)
    first = next(it)
    t_first = time.perf_counter() - t0
    n, nb = 0, 0
    t1 = time.perf_counter()
    for batch in it:
        n += int(batch["points"].shape[0])
        nb += 1
        if max_batches is not None and nb >= max_batches:
            break
    steady = time.perf_counter() - t1
    extra = {}
    if second_epoch:
        m = 0
        t2 = time.perf_counter()
        for batch in loader:
            m += int(batch["points"].shape[0])
        dt = time.perf_counter() - t2
        extra = {"second_epoch_samples": m, "second_epoch_samples_per_s": m / dt if m else float("nan")}
    del it, loader
    out = {
        "batch_size": int(first["points"].shape[0]),
        "points_per_sample": int(first["points"].shape[1]),
        "keys": sorted(first.keys()),
        "startup_to_first_batch_s": round(t_first, 3),
        "steady_batches": nb,
        "steady_samples": n,
        "steady_s": round(steady, 3),
        "samples_per_s": n / steady if n > 0 and steady > 0 else float("nan"),
        "epoch_samples_per_s_incl_startup": (n + int(first["points"].shape[0])) / (t_first + steady),
        **extra,
    }
    if nb < 5 * max(1, prefetch_batches):
        out["note"] = (
            f"only {nb} steady batches for up to {prefetch_batches} batches prefetched by workers during "
            "start-up: the steady-state rate is biased high"
        )
    return out


# ---------------------------------------------------------------------------------------------
# ModelNet40 files in the real format
# ---------------------------------------------------------------------------------------------


def modelnet_names() -> list[str]:
    f = SHARED_DATA / "modelnet40" / "modelnet40_normal_resampled" / "modelnet40_shape_names.txt"
    if f.is_file():
        return [ln.strip() for ln in f.read_text().splitlines() if ln.strip()]
    return [f"class{i:02d}" for i in range(40)]


def write_modelnet_txt(
    root: Path, *, classes: int, train_per_class: int, test_per_class: int, points: int
) -> Path:
    """Write a ``modelnet40_normal_resampled`` folder (40 names, id lists, ``<class>/<id>.txt`` files of
    ``points`` lines ``x,y,z,nx,ny,nz`` with 6 decimals) with noisy ellipsoid surfaces; returns it."""
    d = root / "modelnet40_normal_resampled"
    d.mkdir(parents=True)
    names = modelnet_names()
    (d / "modelnet40_shape_names.txt").write_text("\n".join(names) + "\n")
    rng = np.random.default_rng(0)
    train, test = [], []
    for c in names[:classes]:
        (d / c).mkdir()
        for k in range(train_per_class + test_per_class):
            sid = f"{c}_{k + 1:04d}"
            v = rng.normal(size=(points, 3))
            v /= np.linalg.norm(v, axis=1, keepdims=True)
            xyz = v * rng.uniform(0.3, 1.0, size=3)
            nrm = xyz / np.linalg.norm(xyz, axis=1, keepdims=True)
            np.savetxt(d / c / f"{sid}.txt", np.concatenate([xyz, nrm], 1), fmt="%.6f", delimiter=",")
            (train if k < train_per_class else test).append(sid)
    (d / "modelnet40_train.txt").write_text("\n".join(train) + "\n")
    (d / "modelnet40_test.txt").write_text("\n".join(test) + "\n")
    return d


# ---------------------------------------------------------------------------------------------
# Training step of the demo model
# ---------------------------------------------------------------------------------------------


def train_step_throughput(dm, demo: dict[str, Any], device: torch.device, *, steps: int) -> dict[str, Any]:
    from spikelight.tasks.svl_pretrain import SVLPretrain

    torch.manual_seed(0)
    task = SVLPretrain(**demo["model"]).to(device)
    task.train()
    opt_kw = demo.get("optimizer") or {}
    opt = torch.optim.AdamW(
        task.parameters_to_optimize(),
        lr=float(opt_kw.get("lr", 2e-3)),
        betas=tuple(opt_kw.get("betas", (0.9, 0.98))),
        weight_decay=float(opt_kw.get("weight_decay", 1e-4)),
    )
    # batches in memory (loading is measured separately)
    batches = []
    for b in dm.train_dataloader():
        batches.append({k: v.to(device) if torch.is_tensor(v) else v for k, v in b.items()})
        if len(batches) >= steps + 2:
            break
    bs = int(batches[0]["points"].shape[0])

    # cold text features: one batch of captions through the text tower (before anything is cached)
    _ = task.towers  # build the frozen towers outside the timing
    cold = batches[0]["text"]
    sync(device)
    t0 = time.perf_counter()
    task.towers.encode_text(list(cold))
    sync(device)
    cold_text_s = time.perf_counter() - t0
    for b in batches:  # warm the task's per-caption cache, as after the first epoch
        task.encode_texts(b["text"])

    def step(batch) -> tuple[float, float, float]:
        """One training step; returns (total, teacher features, forward + MTA) wall seconds."""
        sync(device)
        t0 = time.perf_counter()
        image_feat, text_feat = task.teacher_features(batch)
        sync(device)
        t1 = time.perf_counter()
        out = task.mta(task(batch["points"]), *task.align(image_feat, text_feat))
        sync(device)
        t2 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        opt.step()
        sync(device)
        return time.perf_counter() - t0, t1 - t0, t2 - t1

    times = []
    parts = {"teacher_features_s": [], "forward_loss_s": []}
    for i, b in enumerate(batches):
        total, teacher, fwd = step(b)
        if i >= 2:  # the first two are warm-up
            times.append(total)
            parts["teacher_features_s"].append(teacher)
            parts["forward_loss_s"].append(fwd)
    # zero-shot inference step (what an evaluation epoch runs): encoder forward, no grad
    task.eval()
    infer = []
    with torch.no_grad():
        for b in batches[:steps]:
            sync(device)
            t0 = time.perf_counter()
            task(b["points"])
            sync(device)
            infer.append(time.perf_counter() - t0)
    med = statistics.median(times)
    return {
        "model": f"SVLPretrain({demo['model'].get('encoder')}, {demo['model'].get('clip_model')}, "
        f"text {demo['model'].get('text_model')})",
        "encoder_params": sum(p.numel() for p in task.encoder.parameters()),
        "batch_size": bs,
        "points_per_sample": int(batches[0]["points"].shape[1]),
        "timed_steps": len(times),
        "median_step_s": med,
        "min_step_s": min(times),
        "samples_per_s": bs / med,
        "median_teacher_features_s": statistics.median(parts["teacher_features_s"]),
        "median_encoder_forward_and_loss_s": statistics.median(parts["forward_loss_s"]),
        "median_backward_and_optimizer_s": statistics.median(
            t - a - b for t, a, b in zip(times, parts["teacher_features_s"], parts["forward_loss_s"])
        ),
        "cold_text_encode_s_per_batch": cold_text_s,
        "infer_median_step_s": statistics.median(infer[1:] or infer),
        "infer_samples_per_s": bs / statistics.median(infer[1:] or infer),
        "text_features": "cached per caption by the task (warm in the timed steps: the synthetic caption "
        "set is finite); cold cost per batch reported separately",
        "step": "frozen image tower forward + cached text features + encoder forward/backward + MTA + AdamW",
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--quick", action="store_true", help="fewer batches and files")
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    ap.add_argument(
        "--train-steps", type=int, default=None, help="timed training steps (default 20, quick 6)"
    )
    ap.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: torch's; 1 is steadier on a shared CPU)",
    )
    ap.add_argument("--out", default=None, help="JSON path (default results/svl_dataloader[_quick].json)")
    args = ap.parse_args(argv)

    device = get_device(args.device)
    set_threads(args.threads)
    demo = demo_svl_config()
    steps = args.train_steps or (6 if args.quick else 20)
    max_batches = 8 if args.quick else None
    stem = "svl_dataloader_quick" if args.quick else "svl_dataloader"
    out_path = Path(args.out) if args.out else RESULTS_DIR / f"{stem}.json"
    pin = device.type == "cuda"
    t_start = time.perf_counter()

    from spikelight.datamodules.pointcloud import (
        ModelNet40DataModule,
        ModelNet40Dataset,
        Synthetic3DDataModule,
        read_modelnet_txt_cached,
    )

    # --- synthetic triplets (demo settings; generated once and cached on disk, like the demo)
    data_kw = {**demo["data"], "progress": False}
    dm0 = Synthetic3DDataModule(**data_kw)
    was_cached = dm0.is_cached()
    t0 = time.perf_counter()
    dm0.prepare_data()
    gen_s = time.perf_counter() - t0
    synth: dict[str, Any] = {
        "settings": {k: v for k, v in demo["data"].items()},
        "cache": str(dm0.cache_path),
        "generation_s": None if was_cached else round(gen_s, 1),
        "was_cached": was_cached,
    }
    for w in args.workers:

        def make(w=w):
            dm = Synthetic3DDataModule(**{**data_kw, "num_workers": w, "pin_memory": pin})
            dm.setup("fit")
            return dm.train_dataloader()

        synth[f"workers_{w}"] = loader_throughput(make, max_batches=max_batches, prefetch_batches=2 * w)
        print(
            f"synthetic triplets, {w} workers: {synth[f'workers_{w}']['samples_per_s']:.0f} samples/s",
            flush=True,
        )

    # --- ModelNet40 txt (real format, temp dir)
    mn_points = 1024
    mn: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="spikelight-mn40-") as tmp:
        n_cls, n_tr, n_te = (8, 4, 3) if args.quick else (16, 10, 4)
        t0 = time.perf_counter()
        write_modelnet_txt(Path(tmp), classes=n_cls, train_per_class=n_tr, test_per_class=n_te, points=10000)
        mn["files"] = {
            "format": "modelnet40_normal_resampled txt (x,y,z,nx,ny,nz, 6 decimals), 10000 points per file",
            "content": "noisy ellipsoid surfaces written by this script (real format, synthetic shapes)",
            "train_files": n_cls * n_tr,
            "test_files": n_cls * n_te,
            "write_s": round(time.perf_counter() - t0, 1),
        }
        bs = 8  # small batches so that a few hundred files give several steady-state batches
        mn["settings"] = {"num_points": mn_points, "batch_size": bs}
        for w in args.workers:
            kw = dict(data_dir=tmp, num_points=mn_points, batch_size=bs, num_workers=w, pin_memory=pin)

            def make_train(kw=kw):
                dm = ModelNet40DataModule(**kw, with_train=True, augment=True)
                dm.setup("fit")
                return dm.train_dataloader()

            def make_train_preload(kw=kw):
                dm = ModelNet40DataModule(**kw, with_train=True, augment=True, preload=True)
                dm.setup("fit")
                return dm.train_dataloader()

            npy_dir = str(Path(tmp) / "npy_cache")

            def make_train_npy(kw=kw, npy_dir=npy_dir):
                dm = ModelNet40DataModule(**kw, with_train=True, augment=True, cache_dir=npy_dir)
                dm.setup("fit")
                return dm.train_dataloader()

            # the .npy cache is filled once (what the first epoch / first run does), then reused
            for f, _ in ModelNet40Dataset(root=tmp, split="train", num_points=mn_points).items:
                read_modelnet_txt_cached(f, npy_dir)

            def make_eval(kw=kw):
                dm = ModelNet40DataModule(**kw)
                dm.setup("validate")
                return dm.val_dataloader()[0]

            mn[f"train_workers_{w}"] = loader_throughput(
                make_train, max_batches=max_batches, prefetch_batches=2 * w
            )
            mn[f"train_preload_workers_{w}"] = loader_throughput(
                make_train_preload, max_batches=max_batches, prefetch_batches=2 * w
            )
            mn[f"train_npycache_workers_{w}"] = loader_throughput(
                make_train_npy, max_batches=max_batches, prefetch_batches=2 * w
            )
            mn[f"eval_workers_{w}"] = loader_throughput(
                make_eval, max_batches=None, second_epoch=True, prefetch_batches=2 * w
            )
            e = mn[f"eval_workers_{w}"]
            print(
                f"ModelNet40 txt, {w} workers: train {mn[f'train_workers_{w}']['samples_per_s']:.1f} samples/s "
                f"(preload=True: {mn[f'train_preload_workers_{w}']['samples_per_s']:.1f}, "
                f"npy cache: {mn[f'train_npycache_workers_{w}']['samples_per_s']:.1f}), eval first epoch "
                f"(parse + FPS) {e['samples_per_s']:.1f}, second epoch (memoised) "
                f"{e['second_epoch_samples_per_s']:.1f} samples/s",
                flush=True,
            )

    # --- training step of the demo model
    dm = Synthetic3DDataModule(**data_kw)
    dm.setup("fit")
    train = train_step_throughput(dm, demo, device, steps=steps)
    print(f"training step ({train['model']}): {train['samples_per_s']:.1f} samples/s", flush=True)

    tsps, isps = train["samples_per_s"], train["infer_samples_per_s"]
    ratios: dict[str, Any] = {}
    for w in args.workers:
        for label, entry in (
            (f"synthetic_workers_{w}", synth[f"workers_{w}"]),
            (f"modelnet40_train_workers_{w}", mn[f"train_workers_{w}"]),
            (f"modelnet40_train_preload_workers_{w}", mn[f"train_preload_workers_{w}"]),
            (f"modelnet40_train_npycache_workers_{w}", mn[f"train_npycache_workers_{w}"]),
            (f"modelnet40_eval_first_epoch_workers_{w}", mn[f"eval_workers_{w}"]),
            (
                f"modelnet40_eval_second_epoch_workers_{w}",
                {"samples_per_s": mn[f"eval_workers_{w}"]["second_epoch_samples_per_s"]},
            ),
        ):
            r = entry["samples_per_s"] / tsps
            ratios[label] = {
                "loader_over_train": r,
                "not_bottleneck": r > 1.0,
                # with 0 workers loading and training alternate: fraction of the epoch spent loading
                "loader_share_if_serial": (1 / entry["samples_per_s"])
                / (1 / entry["samples_per_s"] + 1 / tsps),
            }
            if "eval" in label:  # an evaluation epoch runs the inference step, not the training step
                ratios[label]["loader_over_inference"] = entry["samples_per_s"] / isps

    report: dict[str, Any] = {
        "benchmark": "data-loader throughput vs the demo's SVL training step (samples/s)",
        "machine": machine_info(device),
        "settings": {
            "device": args.device,
            "quick": args.quick,
            "demo_config": demo["source"],
            "workers": args.workers,
            "pin_memory": pin,
            "max_batches": max_batches,
            "steady_state": "samples/s over the batches after the first (worker start-up and the first "
            "batch reported as startup_to_first_batch_s)",
        },
        "synthetic_triplets": synth,
        "modelnet40_txt": mn,
        "train_step": train,
        "ratios": ratios,
    }
    report["wall_s"] = round(time.perf_counter() - t_start, 1)
    lines = [
        f"Demo SVL model on {device}: training step {tsps:.1f} samples/s, inference step {isps:.1f} samples/s "
        f"(batch {train['batch_size']}, {train['points_per_sample']} points). Loader throughput relative to it:"
    ]
    for k, v in ratios.items():
        extra = (
            f", {v['loader_over_inference']:.2f}x the inference rate" if "loader_over_inference" in v else ""
        )
        lines.append(
            f"  {k:42s} {v['loader_over_train']:7.1f}x the training rate{extra}"
            f" ({'keeps up with training' if v['not_bottleneck'] else 'slower than training'};"
            f" serial share {v['loader_share_if_serial']:.0%})"
        )
    syn = [v["loader_over_train"] for k, v in ratios.items() if k.startswith("synthetic")]
    slow = [k for k, v in ratios.items() if not v["not_bottleneck"]]
    lines.append(
        f"The demo's loader (synthetic triplets) runs {min(syn):.0f}-{max(syn):.0f}x faster than its training "
        "step: not the bottleneck."
    )
    if slow:
        w0 = mn.get("train_workers_0", {}).get("samples_per_s")
        lines.append(
            "Slower than this (very small) model's training step: "
            + ", ".join(slow)
            + ". "
            + (
                f"A ModelNet40 training sample (parse a 10,000-line text file, sample, augment) costs ~{1e3 / w0:.0f} ms here; "
                if w0
                else ""
            )
            + "use preload=True (parse once, in memory), cache_dir (parse once, .npy on disk, reused across runs) and/or workers for training; evaluation loaders memoise the "
            "sampled clouds, so only the first epoch pays parsing + farthest point sampling."
        )
    report["interpretation"] = lines[-2:] if slow else lines[-1:]
    report["summary_text"] = "\n".join(lines)
    write_json(report, out_path)
    print()
    print(report["summary_text"])
    print(f"wrote {out_path} ({report['wall_s']} s)")
    return report


if __name__ == "__main__":
    main()
