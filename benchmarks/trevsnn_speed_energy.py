"""T-RevSNN: training step time (reversible vs BPTT) and inference energy per image.

1. **Training step time**: the same model, batch and optimizer (timm LAMB + AGC 0.02, as the recipe),
   ``mode="reversible"`` vs ``mode="bptt"``: forward (all T heads) + weighted loss + backward + AGC +
   optimizer step. The two modes are timed interleaved (B R, R B, ...: a shared, noisy CPU slows both
   alike); median of ``--reps`` timed steps each after one warm-up step, and the median over rounds of
   the per-round ratio reversible / BPTT. The reversible backward
   recomputes every level once more, so it is expected to be *slower* per step than BPTT (which keeps
   everything); its gain is memory (see ``trevsnn_memory.py``). The paper's "2.0x faster" compares with the
   Spike-driven Transformer, a different network.

2. **Inference energy per image** (REFERENCE.md section 4 convention, ``spikelight.profiling.energy.measure_energy``:
   ``E = 4.6 pJ x MAC FLOPs (layers fed real values) + 0.9 pJ x AC ops (layers fed spikes, rate x FLOPs)``),
   tiny and small at 224 px, T=4, 1000 classes, eval mode (last head only), on one image (a real ImageNet
   validation JPEG from ``../shared/data/imagenet`` with the eval transform when present, else a procedural
   image). Compared:

   * ``trevsnn``: the T-RevSNN as designed - the real-valued stem (the only MAC-heavy part) runs **once**
     and its output feeds the T sub-networks ("one encoded input").
   * ``repeated_input``: the *same* network and weights run the conventional direct-encoding way, the input
     repeated T times and encoded at every timestep (the stem runs T times, as a BPTT-trained SNN with
     repeated static input does). Built as the DVS-structured model (one stem per timestep) with every stem
     a copy of the image stem, fed ``[B, T, 3, H, W]`` = the image repeated; its logits equal the T-RevSNN's
     (checked), only the accounting differs: ``E_repeated - E_trevsnn = (T - 1) x E_stem``.
   * ``ann``: the same FLOPs all charged as MACs (``E_MAC x FLOPs``).

   The weights are random (no trained checkpoint is available offline), so firing rates - hence AC energy -
   are those of an untrained network; the stem's MAC energy does not depend on them. ``mode`` does not
   matter at inference: both modes run the same loop without grad.

Writes ``benchmarks/results/trevsnn_speed_energy.json``::

    python benchmarks/trevsnn_speed_energy.py            # CPU, ~2-4 min
    python benchmarks/trevsnn_speed_energy.py --quick    # smaller speed test
    python benchmarks/trevsnn_speed_energy.py --device cuda --speed-img-size 224 --speed-batch-size 64
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_info, time_interleaved  # noqa: E402

from spikelight.losses import trevsnn_loss
from spikelight.models import create_model
from spikelight.models.trevsnn import TRevSNN
from spikelight.profiling.energy import measure_energy

RESULTS = Path(__file__).resolve().parent / "results"
SHARED_IMAGENET = Path(__file__).resolve().parents[2] / "shared" / "data" / "imagenet"
PAPER = {"small_energy_mj": 2.8, "sdt_energy_mj": 4.50, "small_top1": 73.2, "tiny_top1": 69.8}






# --------------------------------------------------------------------------------- speed
def time_training(
    *, variant: str, img: int, batch: int, timesteps: int, reps: int, device: torch.device, seed: int = 0
) -> dict:
    from timm.optim import Lamb
    from timm.utils import adaptive_clip_grad

    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, img, img, generator=gen).to(device)
    y = torch.randint(0, 1000, (batch,), generator=gen).to(device)
    steps = {}
    keep = []
    for mode in ("bptt", "reversible"):
        torch.manual_seed(seed)  # same initial weights in both modes
        model = create_model(f"trevsnn_{variant}", num_classes=1000, timesteps=timesteps, mode=mode).to(device).train()
        opt = Lamb(model.parameters(), lr=1e-4, weight_decay=0.01, max_grad_norm=1.0)
        agc_params = [p for p in model.parameters() if p.ndim > 0]

        def step(model=model, opt=opt, agc_params=agc_params) -> None:
            loss = trevsnn_loss(model(x), y, label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            adaptive_clip_grad(agc_params, clip_factor=0.02)
            opt.step()

        steps[mode] = step
        keep.append((model, opt))
    # one untimed warm-up call each (lazy optimizer state, allocator); then the modes in turn
    times_by_mode = time_interleaved(steps, repeats=reps, warmup=1, device=device)
    del keep, steps
    out: dict = {}
    for mode, times in times_by_mode.items():
        out[mode] = {"step_seconds": times, "median_step_seconds": statistics.median(times)}
        print(
            f"speed {variant} {img}px b{batch} T={timesteps} {mode:10s}: median {statistics.median(times):.3f} s "
            f"({', '.join(f'{t:.2f}' for t in times)})",
            flush=True,
        )
    out["reversible_over_bptt_time"] = statistics.median(
        r / b for r, b in zip(times_by_mode["reversible"], times_by_mode["bptt"])
    )
    out["reversible_over_bptt_time_of_medians"] = (
        out["reversible"]["median_step_seconds"] / out["bptt"]["median_step_seconds"]
    )
    return out


# --------------------------------------------------------------------------------- energy
def load_images(img: int, n: int) -> tuple[torch.Tensor, str]:
    """``n`` eval-transformed images ``[n, 3, img, img]``: real ImageNet val JPEGs when available."""
    files = sorted((SHARED_IMAGENET / "val").rglob("*.JPEG")) if SHARED_IMAGENET.is_dir() else []
    if files:
        from PIL import Image
        from timm.data import create_transform

        tf = create_transform(
            input_size=img, is_training=False, crop_pct=img / (232 + 1e-3), interpolation="bicubic"
        )
        xs = []
        for f in files[:n]:
            with Image.open(f) as im:
                xs.append(tf(im.convert("RGB")))
        return torch.stack(xs), (
            f"ImageNet val JPEGs from ../shared/data/imagenet (resize 232, centre crop {img}); "
            f"energy on {files[0].relative_to(SHARED_IMAGENET)}"
        )
    from spikelight.datamodules.images import SyntheticImageDataset

    ds = SyntheticImageDataset(size=n, num_classes=10, img_size=img, cache=False)
    return torch.stack(
        [ds[i]["image"] for i in range(n)]
    ), "procedural synthetic images (../shared/data/imagenet not found)"


@torch.no_grad()
def calibrate_bn(model: TRevSNN, x: torch.Tensor) -> None:
    """Reset every BatchNorm's running statistics and set them to the batch statistics of ``x``.

    Random-init running stats (mean 0, var 1) do not match the activations, so in eval mode most
    membranes sit far from the threshold and the firing rates are near 0; calibrated BN gives rates of a
    network whose normalisation fits its input (still untrained weights).
    """
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    saved = [(m, m.momentum) for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average: one pass = the batch statistics
    model.train()
    model(x)
    for m, mom in saved:
        m.momentum = mom
    model.eval()


_CHAIN_SPIKE = {
    "dw1": "spike1",
    "pw1": "spike1",
    "pw2": "spike2",
    "dw2": "spike2",
    "conv": "spike",
    "conv2": "spike",
}


def spike_domain_energy(report, model: TRevSNN, e_mac_pj: float = 4.6, e_ac_pj: float = 0.9) -> dict:
    """Energy with every conv after the stem's first conv charged as AC at the firing rate of the spike
    tensor that starts its linear chain (``S -> dw1 -> pw1``, ``S -> pw2 -> dw2``, ``S -> conv``), the usual
    SNN-paper convention; the stem's first conv and the head's Linear (fed pooled rates) stay MAC.

    Shared pw2/dw2 rows (``shared.l.*``, one row for all timesteps) use the mean rate of the last block's
    ``spike2`` of level ``l`` over the timesteps (equal FLOPs per timestep).
    """
    rates = {n.name: n.firing_rate for n in report.neurons}
    depth = len(model.columns[0].levels[0].blocks)
    total = mac = ac = 0.0
    for row in report.layers:
        parts = row.name.split(".")
        op = parts[-1].split("#")[0]
        if (
            row.name.endswith("stems.0.conv1")
            or parts[0] == "heads"
            or (parts[0] == "stems" and op == "conv1")
        ):
            e = e_mac_pj * row.flops
            mac += row.flops
        else:
            if parts[0] == "shared":
                lvl = int(parts[1])
                keys = [f"columns.{t}.levels.{lvl}.blocks.{depth - 1}.spike2" for t in range(model.timesteps)]
                r = sum(rates.get(k, 0.0) for k in keys) / len(keys)
            else:
                r = rates.get(".".join(parts[:-1] + [_CHAIN_SPIKE.get(op, "spike")]))
                if r is None:
                    r = row.firing_rate_in if row.firing_rate_in is not None else 1.0
            e = e_ac_pj * r * row.flops
            ac += r * row.flops
        total += e
    return {"energy_mj": total * 1e-9, "mac_flops": mac, "ac_ops": ac}


def _group(name: str) -> str:
    if name.startswith("stems."):
        return "stem"
    if name.startswith("heads."):
        return "head"
    if name.startswith(("columns.", "shared.")):
        return "columns"
    return "other"


def energy_summary(report) -> dict:
    parts: dict[str, dict[str, float]] = {}
    for row in report.layers:
        g = parts.setdefault(
            _group(row.name), {"energy_mj": 0.0, "flops": 0.0, "mac_flops": 0.0, "ac_ops": 0.0}
        )
        g["energy_mj"] += row.energy_mj
        g["flops"] += row.flops
        if row.kind == "MAC":
            g["mac_flops"] += row.flops
        else:
            g["ac_ops"] += row.ops
    return {
        "energy_mj": report.energy_mj_per_sample,
        "ann_energy_mj": report.ann_energy_mj_per_sample,
        "flops": report.flops_per_sample,
        "mac_flops": report.mac_flops_per_sample,
        "ac_flops": report.ac_flops_per_sample,
        "ac_ops": report.ac_ops_per_sample,
        "mean_firing_rate": report.mean_firing_rate,
        "parts": parts,
    }


def repeated_input_model(model: TRevSNN) -> TRevSNN:
    """The same network and weights with one stem per timestep (each a copy of the image stem)."""
    rep = TRevSNN(
        channels=model.channels,
        num_classes=model.num_classes,
        timesteps=model.timesteps,
        dvs=True,
        in_chans=model.in_chans,
    )
    state = model.state_dict()
    for key, value in list(state.items()):
        if key.startswith("stems.0."):
            for t in range(1, model.timesteps):
                state[f"stems.{t}." + key[len("stems.0.") :]] = value
    rep.load_state_dict(state, strict=True)
    return rep.to(next(model.parameters()).device).eval()


def measure_inference_energy(
    *, variant: str, x: torch.Tensor, x_cal: torch.Tensor, timesteps: int, device: torch.device, seed: int = 0
) -> dict:
    torch.manual_seed(seed)
    model = create_model(f"trevsnn_{variant}", num_classes=1000, timesteps=timesteps).to(device).eval()
    x = x.to(device)
    uncal = measure_energy(model, x)
    calibrate_bn(model, x_cal.to(device))
    t0 = time.perf_counter()
    rep_trev = measure_energy(model, x)
    secs = time.perf_counter() - t0
    rep_model = repeated_input_model(model)
    xr = x.unsqueeze(1).expand(-1, timesteps, -1, -1, -1).contiguous()  # [B, T, 3, H, W]
    rep_rep = measure_energy(rep_model, xr)
    with torch.no_grad():
        same = torch.allclose(model(x), rep_model(xr), atol=1e-5, rtol=1e-5)
    a, b = energy_summary(rep_trev), energy_summary(rep_rep)
    a["spike_domain_convention"] = spike_domain_energy(rep_trev, model)
    b["spike_domain_convention"] = spike_domain_energy(rep_rep, rep_model)
    a["firing_rates"] = {n.name: n.firing_rate for n in rep_trev.neurons}
    out = {
        "uncalibrated_bn": {
            "energy_mj": uncal.energy_mj_per_sample,
            "mean_firing_rate": uncal.mean_firing_rate,
        },
        "params_M_final_head": model.param_count(aux_heads=False) / 1e6,
        "trevsnn": a,
        "repeated_input": b,
        "repeated_over_trevsnn_energy": b["energy_mj"] / a["energy_mj"],
        "repeated_over_trevsnn_energy_spike_domain": b["spike_domain_convention"]["energy_mj"]
        / a["spike_domain_convention"]["energy_mj"],
        "repeated_logits_equal_trevsnn": bool(same),
        "stem_share_of_trevsnn_energy": a["parts"].get("stem", {}).get("energy_mj", 0.0) / a["energy_mj"],
        "measure_seconds": round(secs, 1),
    }
    print(
        f"energy {variant}: T-RevSNN {a['energy_mj']:.3f} mJ/image (stem {a['parts']['stem']['energy_mj']:.3f}, "
        f"columns {a['parts']['columns']['energy_mj']:.3f}, head {a['parts'].get('head', {}).get('energy_mj', 0):.4f}; "
        f"mean firing rate {a['mean_firing_rate']:.3f}) | repeated input {b['energy_mj']:.3f} mJ "
        f"({out['repeated_over_trevsnn_energy']:.2f}x) | ANN {a['ann_energy_mj']:.3f} mJ",
        flush=True,
    )
    print(
        f"energy {variant} (spike-domain convention): T-RevSNN {a['spike_domain_convention']['energy_mj']:.3f} mJ | "
        f"repeated input {b['spike_domain_convention']['energy_mj']:.3f} mJ "
        f"({out['repeated_over_trevsnn_energy_spike_domain']:.2f}x) | uncalibrated BN: "
        f"{out['uncalibrated_bn']['energy_mj']:.3f} mJ, rate {out['uncalibrated_bn']['mean_firing_rate']:.4f}",
        flush=True,
    )
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--quick", action="store_true", help="speed test at 64 px with 2 reps")
    ap.add_argument("--speed-variant", default="tiny", choices=["tiny", "small", "test"])
    ap.add_argument(
        "--speed-img-size", type=int, default=None, help="default 112 (CPU) / 224 (CUDA); 64 quick"
    )
    ap.add_argument("--speed-batch-size", type=int, default=2)
    ap.add_argument("--reps", type=int, default=None, help="timed steps per mode (default 5; 2 quick)")
    ap.add_argument("--energy-variants", nargs="+", default=["tiny", "small"])
    ap.add_argument("--energy-img-size", type=int, default=224)
    ap.add_argument("--calib-images", type=int, default=8, help="images for the BatchNorm calibration pass")
    ap.add_argument("--timesteps", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=RESULTS / "trevsnn_speed_energy.json")
    args = ap.parse_args(argv)

    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    speed_img = args.speed_img_size or (64 if args.quick else (224 if device.type == "cuda" else 112))
    reps = args.reps or (2 if args.quick else 5)
    t_start = time.perf_counter()

    speed = time_training(
        variant=args.speed_variant,
        img=speed_img,
        batch=args.speed_batch_size,
        timesteps=args.timesteps,
        reps=reps,
        device=device,
    )
    x_cal, source = load_images(args.energy_img_size, args.calib_images)
    x = x_cal[:1]
    energy = {
        v: measure_inference_energy(variant=v, x=x, x_cal=x_cal, timesteps=args.timesteps, device=device)
        for v in args.energy_variants
    }

    result = {
        "benchmark": "trevsnn_speed_energy",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(device),
        "settings": {
            "timesteps": args.timesteps,
            "speed": {
                "variant": args.speed_variant,
                "img_size": speed_img,
                "batch_size": args.speed_batch_size,
                "reps": reps,
                "dtype": "float32",
                "step": "forward (all heads) + weighted CE + backward + AGC 0.02 + LAMB step",
                "timing": "modes interleaved (order alternating per round), one warm-up step each; "
                "reversible_over_bptt_time = median over rounds of t_reversible / t_bptt",
            },
            "energy": {
                "variants": args.energy_variants,
                "img_size": args.energy_img_size,
                "images": 1,
                "input": source,
                "e_mac_pj": 4.6,
                "e_ac_pj": 0.9,
                "weights": "random init (seed 0), BatchNorm statistics calibrated on "
                f"{args.calib_images} images (one train-mode pass, no gradient)",
                "eval": "last head only",
            },
        },
        "speed": speed,
        "energy": energy,
        "paper": PAPER,
        "notes": [
            "Speed: reversible_over_bptt_time > 1 is expected (each level is recomputed once in backward); the "
            "paper's 2.0x training speed-up is against the Spike-driven Transformer, not T-RevSNN with BPTT.",
            "Energy: 'trevsnn' runs the stem once per image; 'repeated_input' runs the same weights with the "
            "stem applied to the input at every timestep (conventional repeated direct encoding). The logits "
            "are identical; the difference is (T-1) x the stem's MAC energy.",
            "Untrained weights: AC energy follows the firing rates of a random network whose BatchNorm statistics "
            "were calibrated on a few images (uncalibrated_bn: with init statistics the rates are ~0). The "
            "paper's 2.8 mJ (small) is for trained weights.",
            "Two accountings. 'energy_mj' is spikelight's operand-based rule (an op is AC only if its input "
            "tensor is spikes): in each block pw1 is fed dw1's real-valued output and dw2 pw2's, so they count "
            "as MAC; pw1 (C -> 4C) alone is ~90% of the total, independent of firing rates. "
            "'spike_domain_convention' charges every conv after the stem's first conv as AC at the firing rate "
            "of the spike tensor that starts its linear chain (S -> dw1 -> pw1, S -> pw2 -> dw2), as SNN "
            "papers usually do; the paper's 2.8 mJ should be compared with that one.",
            "CPU timings on a shared machine are noisy (see machine.load_avg_1m); ratios are more meaningful "
            "than absolute seconds.",
        ],
        "wall_seconds": None,
    }
    result["wall_seconds"] = round(time.perf_counter() - t_start, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"reversible / bptt step time: {speed['reversible_over_bptt_time']:.2f}x")
    print(f"written: {args.out}")
    return result


if __name__ == "__main__":
    main()
