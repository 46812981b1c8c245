"""LVC: LLM cost per question, dense M frames with query-attention compression (w = 4, 8) vs the same M
frames uncompressed vs sparse M/w frames - same model, same run.

Per question and mode:

* ``visual_tokens``: visual tokens that enter the LLM (``frames * t``); ``prompt_tokens`` with the text.
* ``llm_prefill``: building ``inputs_embeds`` (text embeddings + placeholder scatter) and the LLM forward
  over the prompt (KV cache built, logits of the last position only, as a generation prefill does).
* ``align``: the alignment layer (projector) on the frames that mode keeps (M for dense / LVC, M/w sparse).
* ``compression``: LVC's own work - the question query (mean of its token embeddings) plus the
  query-attention over windows - and its share of the LVC prefill time (goal: under 5%).
* ``llm_peak_activation_mb``: tensor peak of the prefill (MemTracker via
  :func:`spikelight.profiling.memory.measure_step_memory`), parameters excluded; ``rss_peak_mb``: the
  process RSS sampled during it (whole process, lower bound).
* ratios (of medians): LVC / sparse for the LLM prefill time and peak memory (goal: within 1.1x), and end
  to end (projector + compression + prefill; the projector runs on w times more frames for LVC). LVC and
  sparse sampling give the LLM inputs of identical shape (``same_llm_input_shape``), so their LLM cost is
  equal by construction and the measured time ratio shows the timing noise of the machine.

Sizes: ``tiny`` (the test VLM: vision 32, Qwen2 64 hidden, 64 px, t = 16) with the vision tower run on the
frames, and ``internvl2_1b_width`` - a random InternVL with InternVL2-1B's widths (InternViT-300M: 1024
hidden, 16 heads, 4096 MLP, 448 px / patch 14 -> 256 tokens per frame after the pixel shuffle; Qwen2-0.5B:
896 hidden, 14 heads, 2 KV heads, 4864 MLP, vocab 151655) and 2 vision + 2 LLM layers (the real model has
24 + 24). At that size the vision tower is timed on one frame only and the frames' vision features are
random tensors of the right shape (the vision tower's cost is the same for dense and LVC, it is not LLM
cost). With 2 of 24 LLM layers the projector's share of the end-to-end time is about 12x what it is in
the real model; the LLM-only ratio is the one the goal refers to.

Writes ``benchmarks/results/lvc_llm_cost.json``::

    python benchmarks/lvc_llm_cost.py                    # CPU, ~2-3 min on a loaded 2-core machine
    python benchmarks/lvc_llm_cost.py --quick            # tiny size only
    python benchmarks/lvc_llm_cost.py --device cuda --frames-real 64
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402,E501
    RESULTS_DIR,
    get_device,
    machine_info,
    set_threads,
    summary,
    sync,
    time_calls,
    time_interleaved,
    write_json,
)

from spikelight.models.lvc import QueryAttentionCompression
from spikelight.models.vlm import adapter_for, tiny_vlm_config
from spikelight.profiling.memory import MB, measure_step_memory

SIZES: dict[str, dict[str, Any]] = {
    "tiny": dict(vocab_size=128),
    "internvl2_1b_width": dict(
        vocab_size=151655, vision_hidden=1024, vision_layers=2, vision_heads=16, vision_intermediate=4096,
        image_size=448, patch_size=14, text_hidden=896, text_layers=2, text_heads=14, text_kv_heads=2,
        text_intermediate=4864,
    ),
}  # fmt: skip
QUESTION_TOKENS = 24  # question + options
SUFFIX_TOKENS = 4  # "Answer:" etc.


def build(size: str, device: torch.device):
    from transformers import InternVLForConditionalGeneration

    kw = SIZES[size]
    cfg = tiny_vlm_config("internvl", image_token_id=kw["vocab_size"] - 1, **kw)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = InternVLForConditionalGeneration(cfg).eval().to(device)
    return adapter_for(model).set_trainable("none")


def prompt(vlm, frames: int, g: torch.Generator, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Random question ids, then the video's placeholders, then a short suffix."""
    hi = vlm.image_token_id - 1
    q = torch.randint(0, hi, (1, QUESTION_TOKENS), generator=g)
    ids = torch.cat(
        [
            q,
            torch.full((1, vlm.num_placeholders(frames)), vlm.image_token_id),
            torch.randint(0, hi, (1, SUFFIX_TOKENS), generator=g),
        ],
        dim=1,
    )
    return ids.to(device), q.to(device)


def _end_to_end(row: dict[str, Any], prefill_factor: float) -> float:
    comp = row["compression"]["median_s"] if "compression" in row else 0.0
    return row["llm_prefill"]["median_s"] * prefill_factor + row["align"]["median_s"] + comp


def run_size(
    size: str,
    frames: int,
    windows: list[int],
    repeats: int,
    warmup: int,
    device: torch.device,
    dense_repeats: int | None = None,
) -> dict[str, Any]:
    vlm = build(size, device)
    text_layers = vlm.model.config.text_config.num_hidden_layers
    g = torch.Generator().manual_seed(0)
    s = vlm.image_size[0]
    n_params = {
        "vision_tower": sum(p.numel() for p in vlm.vision_tower.parameters()),
        "alignment_layer": sum(p.numel() for p in vlm.alignment_layer.parameters()),
        "llm": sum(p.numel() for p in vlm.model.model.language_model.parameters()),
    }
    with torch.no_grad():
        t0 = time.perf_counter()
        one = vlm.vision_features(torch.randn(1, 3, s, s, generator=g).to(device))
        sync(device)
        vision_one_frame_s = time.perf_counter() - t0
        if size == "tiny":  # the real tower on every frame
            feats = vlm.vision_features(torch.randn(frames, 3, s, s, generator=g).to(device))[None]
        else:  # random features of the tower's output shape (identical cost for every mode)
            feats = torch.randn(1, frames, *one.shape[1:], generator=g).to(device)

    modes: dict[str, dict[str, Any]] = {"dense": {"frames_in": frames, "window": 1, "llm_frames": frames}}
    for w in windows:
        n = -(-frames // w)
        modes[f"lvc_w{w}"] = {"frames_in": frames, "window": w, "llm_frames": n}
        modes[f"sparse_w{w}"] = {"frames_in": n, "window": 1, "llm_frames": n, "stride": w}
    inputs: dict[str, dict[str, Any]] = {}
    with torch.no_grad():
        for name, m in modes.items():
            ids, q_ids = prompt(vlm, m["llm_frames"], g, device)
            f = feats[:, :: m.pop("stride", 1)]  # sparse: every w-th frame (uniform sampling of M/w)
            lvc = QueryAttentionCompression(window=m["window"]) if name.startswith("lvc") else None
            visual = vlm.align(f)
            if lvc is not None:
                visual, _ = lvc(visual, vlm.question_query(q_ids), None)
            inputs[name] = {"ids": ids, "q_ids": q_ids, "feats": f, "lvc": lvc, "visual": visual}
            m.update(visual_tokens=vlm.num_placeholders(m["llm_frames"]), prompt_tokens=int(ids.shape[1]))

    def prefill(name):
        x = inputs[name]

        def fn():
            with torch.no_grad():
                embeds = vlm.inputs_embeds(x["ids"], x["visual"])
                return vlm.model(inputs_embeds=embeds, logits_to_keep=1, use_cache=True).logits

        return fn

    def align(name):
        return lambda: vlm.align(inputs[name]["feats"])

    def compress(name):
        x = inputs[name]
        visual = vlm.align(x["feats"]) if x["lvc"] is not None else None
        return lambda: x["lvc"](visual, vlm.question_query(x["q_ids"]), None)

    with torch.no_grad():
        # LVC and sparse (same LLM input shapes) interleaved; the long dense prefill timed apart, fewer times
        t_prefill = time_interleaved(
            {k: prefill(k) for k in modes if k != "dense"}, repeats=repeats, warmup=warmup, device=device
        )
        t_prefill["dense"] = time_calls(
            prefill("dense"), repeats=dense_repeats or repeats, warmup=warmup, device=device
        )
        t_align = time_interleaved(
            {k: align(k) for k in modes}, repeats=repeats, warmup=warmup, device=device
        )
        t_comp = {
            k: time_calls(compress(k), repeats=max(5, repeats), warmup=1, device=device)
            for k in modes
            if k.startswith("lvc")
        }
    rows = {}
    for name, m in modes.items():
        gc.collect()
        mem = measure_step_memory(
            prefill(name), modules=(vlm,), inputs=inputs[name]["visual"], device=device, track_saved=False
        )
        row = dict(m)
        row["llm_prefill"] = summary(t_prefill[name])
        row["align"] = summary(t_align[name])
        row["llm_peak_activation_mb"] = round(mem["peak_activation_bytes"] / MB, 2)
        row["llm_peak_mb"] = round(mem["peak_bytes"] / MB, 2)
        if mem.get("rss_peak_bytes"):
            row["rss_peak_mb"] = round(mem["rss_peak_bytes"] / MB, 1)
        total = row["llm_prefill"]["median_s"] + row["align"]["median_s"]
        if name in t_comp:
            row["compression"] = summary(t_comp[name])
            row["compression_fraction_of_prefill"] = round(
                row["compression"]["median_s"] / row["llm_prefill"]["median_s"], 4
            )
            total += row["compression"]["median_s"]
        row["end_to_end_median_s"] = total
        rows[name] = row
    # ratios of medians
    ratios = {}
    for w in windows:
        lvc, sparse = rows[f"lvc_w{w}"], rows[f"sparse_w{w}"]
        lvc_t, sparse_t = lvc["llm_prefill"]["median_s"], sparse["llm_prefill"]["median_s"]
        ratios[f"w{w}"] = {
            "same_llm_input_shape": lvc["prompt_tokens"] == sparse["prompt_tokens"],
            "lvc_over_sparse_llm_prefill_time": round(lvc_t / sparse_t, 3),
            "lvc_over_sparse_llm_peak_activation": round(
                lvc["llm_peak_activation_mb"] / sparse["llm_peak_activation_mb"], 3
            ),
            "lvc_over_sparse_end_to_end": round(
                lvc["end_to_end_median_s"] / sparse["end_to_end_median_s"], 3
            ),
            # the same with the prefill scaled to the real model's 24 LLM layers (projector and compression
            # do not depend on the LLM depth); an extrapolation, not a measurement
            "lvc_over_sparse_end_to_end_at_24_llm_layers": round(
                _end_to_end(lvc, 24 / text_layers) / _end_to_end(sparse, 24 / text_layers), 3
            ),
            "dense_over_lvc_llm_prefill_time": round(rows["dense"]["llm_prefill"]["median_s"] / lvc_t, 2),
            "compression_fraction_of_prefill": lvc["compression_fraction_of_prefill"],
            "meets_llm_cost_goal_1p1x": lvc_t <= 1.1 * sparse_t
            and lvc["llm_peak_activation_mb"] <= 1.1 * sparse["llm_peak_activation_mb"],
            "meets_compression_goal_5pct": lvc["compression_fraction_of_prefill"] < 0.05,
        }
    return {
        "frames_dense": frames,
        "tokens_per_frame": vlm.tokens_per_frame,
        "hidden_size": vlm.hidden_size,
        "parameters": n_params,
        "vision_tower_one_frame_s": round(vision_one_frame_s, 4),
        "vision_features": "vision tower on every frame" if size == "tiny" else "random, tower output shape",
        "config": SIZES[size],
        "modes": rows,
        "ratios": ratios,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: steadiest on a shared CPU)")
    ap.add_argument("--frames-tiny", type=int, default=64)
    ap.add_argument("--frames-real", type=int, default=16)
    ap.add_argument("--windows", type=int, nargs="+", default=[4, 8])
    ap.add_argument("--repeats", type=int, default=5, help="timed prefills per mode at the realistic width")
    ap.add_argument("--repeats-dense", type=int, default=2, help="... of the dense uncompressed mode there")
    ap.add_argument("--repeats-tiny", type=int, default=15, help="timed prefills per mode at the tiny size")
    ap.add_argument("--quick", action="store_true", help="tiny size only")
    ap.add_argument("--out", default=str(RESULTS_DIR / "lvc_llm_cost.json"))
    args = ap.parse_args()
    device = get_device(args.device)
    set_threads(args.threads)
    start = time.perf_counter()
    report: dict[str, Any] = {
        "benchmark": "lvc_llm_cost",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(device),
        "settings": {
            "windows": args.windows,
            "repeats": args.repeats,
            "repeats_tiny": args.repeats_tiny,
            "repeats_dense": args.repeats_dense,
            "question_tokens": QUESTION_TOKENS,
            "suffix_tokens": SUFFIX_TOKENS,
            "dtype": "float32",
            "attention": "sdpa",
        },
        "sizes": {},
    }
    sizes = [("tiny", args.frames_tiny)] + ([] if args.quick else [("internvl2_1b_width", args.frames_real)])
    for size, frames in sizes:
        print(f"[lvc_llm_cost] {size}: {frames} frames ...", flush=True)
        repeats = args.repeats_tiny if size == "tiny" else args.repeats
        warmup = 1 if size == "tiny" else 0  # a prefill of seconds needs no warm-up call
        dense_repeats = None if size == "tiny" else args.repeats_dense
        report["sizes"][size] = res = run_size(
            size, frames, args.windows, repeats, warmup, device, dense_repeats=dense_repeats
        )
        for name, row in res["modes"].items():
            extra = (
                f", compression {row['compression_fraction_of_prefill']:.2%} of its prefill"
                if ("compression" in row)
                else ""
            )
            print(
                f"  {name:10s} {row['visual_tokens']:6d} visual tokens  prefill "
                f"{row['llm_prefill']['median_s'] * 1e3:8.1f} ms  peak act {row['llm_peak_activation_mb']:8.1f} MB"
                f"{extra}",
                flush=True,
            )
        gc.collect()
    report["wall_s"] = round(time.perf_counter() - start, 1)
    report["caveats"] = [
        "random weights: cost only, no accuracy",
        "internvl2_1b_width has 2 of the real 24 LLM layers and 2 of 24 vision layers: prefill times are "
        "about 1/12 of the real model's, the projector's share of end_to_end is inflated about 12x",
        "CPU timings on a shared machine (median of interleaved repeats); peak memory is the tensor peak of "
        "the prefill (parameters excluded), exact on CPU",
    ]
    out = write_json(report, args.out)
    print(f"wrote {out} ({report['wall_s']} s)")


if __name__ == "__main__":
    main()
