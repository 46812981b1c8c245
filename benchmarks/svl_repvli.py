"""Rep-VLI deploy model vs the full zero-shot path: parameters in memory and latency per query batch.

Two ways to classify a batch of point clouds among K = 40 classes (ModelNet40 names), same inputs,
same run, timed interleaved:

* **deploy** (Rep-VLI): :func:`spikelight.deploy.load_deploy` of the folder written by
  ``SVLPretrain.export_deploy``: the spiking encoder plus one ``K x C`` matrix (prompt-averaged text
  features, text projection and temperature folded in). Resident: encoder + ``K x C``.
* **full**: what a model without Rep-VLI runs for every query batch: encode the ``K x M`` class
  prompts with the text tower, average over templates, apply the trained text projection, normalise,
  then ``logit_scale * normalise(encoder(points)) @ W.T``. Resident: encoder + MTA projections and
  temperature + the text tower. (``full_cached_text`` reuses class text features computed once - what
  Rep-VLI formalises; shown for honesty: the latency gain comes from not running the text tower per
  batch, the memory gain from not holding it.)

Text towers: the demo's all-MiniLM-L6-v2 (``text_model="minilm"``), the tiny open_clip CLIP text
tower, and (``--big``, default on CUDA) open_clip ViT-B-32's text tower with random weights, to show
the scale (its parameters are always counted). The
encoder is the demo's (``experiments/svl/synthetic.yaml``) with random weights: latency and
parameter counts do not depend on training. Parameter-only rows (demo encoder + ViT-B-32 text tower;
the paper's scale, E-3DSNN-H at C = 1280 + the ViT-bigG-14 text tower) are counted on the meta device
(nothing allocated).

Usage::

    python benchmarks/svl_repvli.py --device cpu [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    RESULTS_DIR,
    SHARED_DATA,
    count_parameters,
    demo_svl_config,
    get_device,
    machine_info,
    set_threads,
    summary,
    time_interleaved,
    write_json,
)

MN40 = SHARED_DATA / "modelnet40" / "modelnet40_normal_resampled"


def class_names(k: int = 40) -> tuple[list[str], str]:
    """ModelNet40's 40 names (underscores as spaces) from the shared file, else generated names."""
    f = MN40 / "modelnet40_shape_names.txt"
    if f.is_file():
        names = [ln.strip().replace("_", " ") for ln in f.read_text().splitlines() if ln.strip()]
        if len(names) >= k:
            return names[:k], f"{f.name} (ModelNet40, ../shared/data)"
    return [f"object type {i}" for i in range(k)], "generated (modelnet40_shape_names.txt not found)"


def query_points(batch: int, num_points: int, seed: int = 0) -> tuple[torch.Tensor, str]:
    """``[batch, num_points, 6]`` unit-sphere clouds: the shared real ModelNet40 shapes (cycled, random
    subsets, rgb 0.4) if present, else procedural synthetic objects."""
    from spikelight.datamodules.pointcloud.transforms import PointCloudTransform

    tf = PointCloudTransform(num_points=num_points, sampling="random", normalize=True)
    gen = torch.Generator().manual_seed(seed)
    files = sorted(MN40.glob("*/*.txt")) if MN40.is_dir() else []
    if files:
        from spikelight.datamodules.pointcloud import read_modelnet_txt

        raw = [torch.from_numpy(read_modelnet_txt(f)[:, :3].astype("float32")) for f in files]
        clouds = [tf(raw[i % len(raw)], generator=gen) for i in range(batch)]
        return torch.stack(clouds), f"{len(files)} real ModelNet40 shapes from ../shared/data, cycled"
    import numpy as np

    from spikelight.datamodules.pointcloud.synthetic3d import CATEGORIES, generate_sample

    cats = list(CATEGORIES)
    clouds = []
    for i in range(batch):
        out = generate_sample(cats[i % len(cats)], np.random.default_rng([seed, i]), num_points=num_points,
                              image_size=16)  # fmt: skip
        clouds.append(tf(torch.from_numpy(out["points"]), generator=gen))
    return torch.stack(clouds), "procedural synthetic3d objects (ModelNet40 files not found)"


def text_tower_of(towers) -> torch.nn.Module:
    return towers.text_encoder if towers.text_encoder is not None else towers.clip_text


def bench_case(
    label: str,
    model_kwargs: dict[str, Any],
    names: list[str],
    templates: list[str],
    points: torch.Tensor,
    device: torch.device,
    *,
    repeats: int,
    warmup: int,
) -> dict[str, Any]:
    from spikelight.deploy import load_deploy
    from spikelight.models.zero_shot import class_prompts, zero_shot_logits
    from spikelight.tasks.svl_pretrain import SVLPretrain

    t0 = time.perf_counter()
    torch.manual_seed(0)
    task = SVLPretrain(**model_kwargs).to(device).eval()
    towers = task.towers
    text_tower = text_tower_of(towers)
    with tempfile.TemporaryDirectory(prefix="spikelight-repvli-") as tmp:
        task.export_deploy(Path(tmp) / "deploy", class_names=names, templates=templates)
        deploy = load_deploy(Path(tmp) / "deploy", device=device)
    build_s = time.perf_counter() - t0

    K, M = len(names), len(templates)
    prompts = class_prompts(names, templates)
    points = points.to(device)
    scale = task.align.scale.detach().float()

    @torch.no_grad()
    def class_matrix() -> torch.Tensor:  # the text tower on every prompt (no cache), as a full model runs it
        t = towers.encode_text(prompts).view(K, M, -1)  # [K, M, D_txt], normalised by the tower
        return task.align.project_text(F.normalize(t.float(), dim=-1).mean(dim=1))  # [K, C], normalised

    @torch.no_grad()
    def full() -> torch.Tensor:
        return zero_shot_logits(task(points), class_matrix(), logit_scale=scale)

    w_cached = task.zero_shot.weights(names, templates).detach()  # what validation / export use

    @torch.no_grad()
    def full_cached_text() -> torch.Tensor:
        return zero_shot_logits(task(points), w_cached, logit_scale=scale)

    @torch.no_grad()
    def dep() -> torch.Tensor:
        return deploy(points)

    # the two paths must agree before anything is timed
    with torch.no_grad():
        lf, ld = full(), dep()
        emb = deploy.embed(points)
        ld_norm = ld / emb.norm(dim=-1, keepdim=True)
    agree = float((lf.argmax(-1) == ld.argmax(-1)).float().mean())
    max_diff = float((lf - ld_norm).abs().max())

    times = time_interleaved(
        {"deploy": dep, "full": full, "full_cached_text": full_cached_text},
        repeats=repeats, warmup=warmup, device=device,
    )  # fmt: skip
    med = {k: statistics.median(v) for k, v in times.items()}
    speedups = [f / d for f, d in zip(times["full"], times["deploy"])]

    enc_p = count_parameters(task.encoder)
    mta_p = count_parameters(task.align)
    text_p = count_parameters(text_tower)
    image_p = count_parameters(towers.visual)
    dep_p = count_parameters(deploy)
    full_p = count_parameters(task.encoder, task.align, text_tower)
    elem = 4  # float32 everywhere here
    res = {
        "case": label,
        "encoder": task.encoder_spec["name"],
        "encoder_kwargs": {k: v for k, v in task.encoder_spec.items() if k != "name"},
        "clip_model": model_kwargs.get("clip_model"),
        "text_model": model_kwargs.get("text_model") or f"{model_kwargs.get('clip_model')} text tower",
        "embed_dim": task.embed_dim,
        "text_dim": task.text_dim,
        "num_classes": K,
        "num_templates": M,
        "prompts_per_query_batch": K * M,
        "params": {
            "deploy_total": dep_p,
            "deploy_head_KxC": int(deploy.head.weight.numel()),
            "encoder": enc_p,
            "mta_projections_and_temperature": mta_p,
            "text_tower": text_p,
            "image_tower_not_needed_for_zero_shot": image_p,
            "full_zero_shot_resident": full_p,
            "full_as_built_incl_image_tower": full_p + image_p,
            "ratio_full_over_deploy": full_p / dep_p,
            "ratio_as_built_over_deploy": (full_p + image_p) / dep_p,
            "deploy_buffers": count_parameters(deploy, buffers=True) - dep_p,
            "deploy_mb_fp32": dep_p * elem / 2**20,
            "full_mb_fp32": full_p * elem / 2**20,
        },
        "latency_per_query_batch": {k: summary(v) for k, v in times.items()},
        "speedup_full_over_deploy_median": statistics.median(speedups),
        "speedup_full_cached_text_over_deploy": med["full_cached_text"] / med["deploy"],
        "text_tower_share_of_full_s": med["full"] - med["full_cached_text"],
        "predictions_agree_fraction": agree,
        "max_abs_logit_diff_normalised": max_diff,
        "build_and_export_s": round(build_s, 1),
    }
    return res


def params_only(
    label: str, encoder: str, encoder_kwargs: dict[str, Any], clip_name: str, num_classes: int
) -> dict[str, Any]:
    """Parameter counts of ``encoder`` (C = the CLIP width) + ``clip_name``'s text tower + the MTA
    projections, built on the meta device (nothing allocated, nothing timed)."""
    import open_clip
    from open_clip.model import CLIP

    from spikelight.models import create_model
    from spikelight.models.alignment import AlignmentHead

    cfg = open_clip.get_model_config(clip_name)
    C = int(cfg["embed_dim"])
    with torch.device("meta"):
        enc = create_model(encoder, **{**encoder_kwargs, "embed_dim": C})
        clip = CLIP(**cfg)
        mta = AlignmentHead(embed_dim=C, image_dim=C, text_dim=C)
    total = count_parameters(clip)
    text_p = total - count_parameters(clip.visual)
    enc_p, mta_p = count_parameters(enc), count_parameters(mta)
    dep_p = enc_p + num_classes * C
    full_p = enc_p + mta_p + text_p
    return {
        "case": label,
        "measured": "parameters only (meta device, nothing allocated or timed)",
        "encoder": encoder,
        "encoder_kwargs": encoder_kwargs,
        "text_tower": f"open_clip {clip_name} text tower",
        "embed_dim": C,
        "num_classes": num_classes,
        "params": {
            "deploy_total": dep_p,
            "encoder": enc_p,
            "mta_projections_and_temperature": mta_p,
            "text_tower": text_p,
            "image_tower_not_needed_for_zero_shot": total - text_p,
            "full_zero_shot_resident": full_p,
            "ratio_full_over_deploy": full_p / dep_p,
            "deploy_mb_fp32": dep_p * 4 / 2**20,
            "full_mb_fp32": full_p * 4 / 2**20,
        },
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--quick", action="store_true", help="MiniLM + tiny CLIP only, fewer repeats")
    ap.add_argument("--encoder", default=None, help="encoder name (default: the demo's, with its kwargs)")
    ap.add_argument("--batch", type=int, default=16, help="point clouds per query batch")
    ap.add_argument("--num-points", type=int, default=None, help="default: the demo's num_points")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument(
        "--big",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also time the ViT-B-32 text tower (default: on for cuda, off for cpu, where one pass over "
        "the 480 prompts takes minutes; its parameters are always counted)",
    )
    ap.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: torch's; 1 is steadier on a shared CPU)",
    )
    ap.add_argument("--out", default=None, help="JSON path (default results/svl_repvli[_quick].json)")
    args = ap.parse_args(argv)

    device = get_device(args.device)
    set_threads(args.threads)
    demo = demo_svl_config()
    dm = demo["model"]
    spec = {"name": dm["encoder"]} if isinstance(dm["encoder"], str) else dict(dm["encoder"])
    enc_name = args.encoder or spec.pop("name")
    enc_kwargs = spec if args.encoder is None else {}
    enc_kwargs.pop("embed_dim", None)  # follows each case's CLIP width
    num_points = args.num_points or int(demo["data"].get("num_points", 512))
    repeats = args.repeats or (3 if args.quick else 7)
    warmup = 1
    stem = "svl_repvli_quick" if args.quick else "svl_repvli"
    out_path = Path(args.out) if args.out else RESULTS_DIR / f"{stem}.json"

    from spikelight.datamodules.pointcloud import PROMPT_TEMPLATES

    names, names_src = class_names(40)
    templates = list(PROMPT_TEMPLATES)
    points, points_src = query_points(args.batch, num_points)
    base = {"encoder": {"name": enc_name, **enc_kwargs}, "clip_pretrained": None}
    cases = [
        ("demo: MiniLM text tower", {**base, "clip_model": "spikelight-tiny-clip", "text_model": "minilm"}),
        ("tiny CLIP text tower", {**base, "clip_model": "spikelight-tiny-clip", "text_model": None}),
    ]
    big = args.big if args.big is not None else (device.type == "cuda" and not args.quick)
    if big:
        cases.append(
            ("ViT-B-32 text tower (random weights)", {**base, "clip_model": "ViT-B-32", "text_model": None})
        )

    t_start = time.perf_counter()
    print(
        f"K={len(names)} classes x {len(templates)} templates; query batch {tuple(points.shape)}", flush=True
    )
    results = []
    for label, kw in cases:
        # big towers are slow per call on CPU: fewer repeats there
        slow = kw["clip_model"] == "ViT-B-32" and device.type == "cpu"
        r = bench_case(label, kw, names, templates, points, device, repeats=2 if slow else repeats,
                       warmup=0 if slow else warmup)  # fmt: skip
        results.append(r)
        p, lat = r["params"], r["latency_per_query_batch"]
        print(
            f"{label:40s} params deploy {p['deploy_total'] / 1e6:7.3f}M vs full {p['full_zero_shot_resident'] / 1e6:7.2f}M"
            f" ({p['ratio_full_over_deploy']:.1f}x)  latency deploy {lat['deploy']['median_s'] * 1e3:8.1f} ms vs "
            f"full {lat['full']['median_s'] * 1e3:8.1f} ms ({r['speedup_full_over_deploy_median']:.1f}x)  "
            f"agree {r['predictions_agree_fraction']:.2f}",
            flush=True,
        )
    counted = []
    for label, enc, ekw, clip_name in (
        ("demo encoder + ViT-B-32 text tower", enc_name, enc_kwargs, "ViT-B-32"),
        ("paper scale: E-3DSNN-H + ViT-bigG-14 text tower (SVL's teacher)", "e3dsnn_h", {}, "ViT-bigG-14"),
    ):
        try:
            counted.append(params_only(label, enc, ekw, clip_name, len(names)))
        except Exception as e:  # pragma: no cover - reported, not fatal
            counted.append({"case": label, "error": f"{type(e).__name__}: {e}"})

    def goal(r):
        return {
            "params_10x": r["params"]["ratio_full_over_deploy"] >= 10,
            "faster": r["speedup_full_over_deploy_median"] > 1,
        }

    report: dict[str, Any] = {
        "benchmark": "Rep-VLI deploy model (encoder + K x C) vs encoder + text tower (full zero-shot path)",
        "machine": machine_info(device),
        "settings": {
            "device": args.device,
            "quick": args.quick,
            "demo_config": demo["source"],
            "encoder": enc_name,
            "encoder_kwargs": enc_kwargs,
            "weights": "random (torch.manual_seed(0)); latency and parameter counts do not depend on training",
            "query_batch": args.batch,
            "num_points": num_points,
            "points": points_src,
            "classes": names_src,
            "templates": f"spikelight.datamodules.pointcloud.PROMPT_TEMPLATES ({len(templates)})",
            "repeats": repeats,
            "warmup": warmup,
            "statistic": "median wall time per query batch, the three paths timed interleaved (order rotating); "
            "speedup = median over interleaved repeats of t_full / t_deploy",
            "params_counted": "every parameter of every module that must be resident for zero-shot "
            "inference (deploy: encoder + head; full: encoder + MTA projections/temperature + text "
            "tower); buffers (BN statistics) are the same encoder buffers on both sides",
        },
        "results": results,
        "params_only": counted,
        "goal": {
            "target": ">= 10x fewer parameters in memory and faster per query batch",
            **{r["case"]: goal(r) for r in results},
            **{
                c["case"]: {"params_10x": c["params"]["ratio_full_over_deploy"] >= 10}
                for c in counted
                if "params" in c
            },
        },  # fmt: skip
    }
    report["wall_s"] = round(time.perf_counter() - t_start, 1)
    lines = ["Rep-VLI vs full zero-shot path (K=40, random weights, same inputs):"]
    for r in results:
        p, lat = r["params"], r["latency_per_query_batch"]
        lines.append(
            f"  {r['case']}: {p['deploy_total'] / 1e6:.3f}M vs {p['full_zero_shot_resident'] / 1e6:.2f}M params "
            f"({p['ratio_full_over_deploy']:.1f}x fewer); {lat['deploy']['median_s'] * 1e3:.1f} ms vs "
            f"{lat['full']['median_s'] * 1e3:.1f} ms per batch of {args.batch} ({r['speedup_full_over_deploy_median']:.1f}x "
            f"faster; {r['speedup_full_cached_text_over_deploy']:.2f}x vs a full model with cached class text)"
        )
    for c in counted:
        if "params" in c:
            pp = c["params"]
            lines.append(
                f"  {c['case']} (parameters counted, not timed): {pp['deploy_total'] / 1e6:.2f}M vs "
                f"{pp['full_zero_shot_resident'] / 1e6:.1f}M ({pp['ratio_full_over_deploy']:.1f}x)"
            )
    if not big:
        lines.append(
            "  (ViT-B-32 latency not timed: run with --big; on this CPU one text-tower pass over the "
            f"{len(names) * len(templates)} prompts takes minutes)"
        )
    report["summary_text"] = "\n".join(lines)
    write_json(report, out_path)
    print()
    print(report["summary_text"])
    print(f"wrote {out_path} ({report['wall_s']} s)")
    return report


if __name__ == "__main__":
    main()
