"""`make demo-lvc`: LVC's claim on the synthetic videos, end to end on CPU (run by scripts/demo_lvc.sh).

1. data: short training clips and held-out long videos with brief events (spikelight.datamodules.video.synthetic),
   real mp4 files, cached by their parameters;
2. base model: a tiny InternVL-architecture VLM (build_tiny_vlm, the synthetic vocabulary) trained WHOLE on
   the short clips (every frame), so its LLM knows the synthetic language; saved in HF format to
   <run>/base_vlm and reused by later runs (delete the folder to retrain);
3. frozen vision tower and LLM: the vision features of every video are computed once;
4. alignment-layer tuning (projector only, same steps / batches / learning rate) in two ways:
   sparse: every w-th frame of the short clips, no compression;
   lvc:    every frame, query-attention compression with window w (QueryAttentionCompression);
5. held-out long-video accuracy (option likelihood), each with the visual tokens the LLM reads:
   (a) sparse M/w frames, base model        (b) sparse M/w frames, sparse-tuned projector
   (c) dense M frames + LVC (w), lvc-tuned  (d) dense M frames uncompressed, base model
   plus chance; a table on stdout and <run>/lvc_comparison.json.

Usage: python scripts/demo_lvc.py [--run runs/lvc_demo] [--pretrain_steps N] [--tune_steps N] ...
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch

from spikelight.datamodules.video import read_mcq, read_pairs_jsonl
from spikelight.datamodules.video.synthetic import KINDS, SYNTHETIC_WORDS, generate_lvc_synthetic
from spikelight.models.lvc import QueryAttentionCompression
from spikelight.models.vlm import load_vlm
from spikelight.tasks.vlm_pretrain import collate_inputs, ensure_base_vlm, load_clips, pair_inputs

# ---------------------------------------------------------------------------------------------- prompts


def encode(vlm, num_frames: int, question: str, answer: str | None = None):
    """Prompt (+ answer) ids and labels exactly as LVCAlign builds them (its pair template, which the
    synthetic config also uses for MCQ questions)."""
    return pair_inputs(vlm, num_frames, question, answer)


def collate_text(vlm, rows):
    return collate_inputs(rows, vlm.tokenizer.pad_token_id)


def question_ids(vlm, questions):
    enc = vlm.tokenizer(list(questions), return_tensors="pt", padding=True, add_special_tokens=False)
    return enc.input_ids, enc.attention_mask


# ---------------------------------------------------------------------------------------------- data


def sparse_index(num_frames: int, window: int) -> torch.Tensor:
    """The centre frame of each group of ``window`` frames (what ``fps / window`` sampling decodes)."""
    return torch.arange(num_frames // window) * window + window // 2


# ---------------------------------------------------------------------------------------------- training


def run_steps(vlm, params, steps, batch_fn, lr, *, log_every=50, what="train", seed=0):
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / max(1, steps // 20)) * 0.5 * (1 + math.cos(math.pi * s / steps))
    )
    rng = random.Random(seed)
    t0, run = time.perf_counter(), 0.0
    for step in range(steps):
        loss = batch_fn(rng)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        run = loss.item() if step == 0 else 0.9 * run + 0.1 * loss.item()
        if (step + 1) % log_every == 0 or step + 1 == steps:
            print(f"  {what} step {step + 1}/{steps} loss {run:.3f} ({time.perf_counter() - t0:.0f} s)", flush=True)
    return run


def pretrain_whole(vlm, frames, pairs, steps, batch_size, lr):
    """Train the whole VLM (vision tower, projector, LLM) on the short clips, every frame."""
    vlm.set_trainable("all").train()
    m = frames.shape[1]

    def batch(rng):
        idx = [rng.randrange(len(pairs)) for _ in range(batch_size)]
        rows = [encode(vlm, m, pairs[i][1], pairs[i][2]) for i in idx]
        ids, att, lab = collate_text(vlm, rows)
        return vlm(ids, att, pixel_values=frames[[pairs[i][0] for i in idx]], labels=lab).loss

    params = [p for p in vlm.parameters() if p.requires_grad]
    run_steps(vlm, params, steps, batch, lr, what="pretrain (whole VLM)")
    vlm.set_trainable("none").eval()


@torch.no_grad()
def vision_features(vlm, frames, chunk=256):
    """Frozen vision-tower features ``[N, M, t_raw, C]`` (computed once; the projector is what trains)."""
    n, m = frames.shape[:2]
    flat = frames.flatten(0, 1)
    out = torch.cat([vlm.vision_features(flat[i:i + chunk]) for i in range(0, len(flat), chunk)])
    return out.view(n, m, *out.shape[1:])


def tune_alignment(vlm, feats, pairs, steps, batch_size, lr, *, window, compress, seed):
    """Train only the alignment layer (projector) on the short clips: every frame + LVC (``compress``), or
    every ``window``-th frame uncompressed. Returns the tuned projector's state."""
    vlm.set_trainable("align").train()
    assert vlm.trainable_parameters() == sum(p.numel() for p in vlm.alignment_layer.parameters())
    lvc = QueryAttentionCompression(window=window) if compress else None
    m = feats.shape[1]
    keep = None if compress else sparse_index(m, window)
    n_llm = math.ceil(m / window)

    def batch(rng):
        idx = [rng.randrange(len(pairs)) for _ in range(batch_size)]
        rows = [encode(vlm, n_llm, pairs[i][1], pairs[i][2]) for i in idx]
        ids, att, lab = collate_text(vlm, rows)
        f = feats[[pairs[i][0] for i in idx]]
        if keep is not None:
            f = f[:, keep]
        kw = {}
        if lvc is not None:
            kw = dict(compression=lvc, **dict(zip(("question_ids", "question_mask"),
                                                   question_ids(vlm, [pairs[i][1] for i in idx]))))
        return vlm(ids, att, features=f, labels=lab, **kw).loss

    params = list(vlm.alignment_layer.parameters())
    run_steps(vlm, params, steps, batch, lr, what=f"align ({'lvc' if compress else 'sparse'})", seed=seed)
    vlm.set_trainable("none").eval()
    return {k: v.detach().clone() for k, v in vlm.alignment_layer.state_dict().items()}


@torch.no_grad()
def evaluate(vlm, feats, items, *, frames_idx=None, lvc=None, batch_size=16):
    """Option-likelihood accuracy on MCQ ``items`` (single-token options: the next-token log-probability of
    each option after the prompt). Returns overall, per task type and the visual tokens per question."""
    vlm.eval()
    m = feats.shape[1] if frames_idx is None else len(frames_idx)
    n_llm = m if lvc is None else lvc.output_frames(m)
    tok = vlm.tokenizer
    correct = {}
    for s in range(0, len(items), batch_size):
        its = items[s:s + batch_size]
        rows = [encode(vlm, n_llm, it.question) for it in its]
        ids, att, _ = collate_text(vlm, rows)
        f = feats[s:s + batch_size]
        if frames_idx is not None:
            f = f[:, frames_idx]
        kw = {}
        if lvc is not None:
            kw = dict(compression=lvc, **dict(zip(("question_ids", "question_mask"),
                                                   question_ids(vlm, [it.question for it in its]))))
        logits = vlm(ids, att, features=f, **kw).logits
        last = att.sum(1) - 1
        for b, it in enumerate(its):
            opt_ids = [tok(o, add_special_tokens=False).input_ids for o in it.options]
            if any(len(o) != 1 for o in opt_ids):
                raise ValueError(f"{it.qid}: the demo scores single-token options only, got {it.options}")
            lp = torch.log_softmax(logits[b, last[b]].float(), -1)[[o[0] for o in opt_ids]]
            correct.setdefault(it.task_type, []).append(int(lp.argmax()) == it.answer_index)
    allc = [c for v in correct.values() for c in v]
    return {"acc": float(np.mean(allc)), "n": len(allc), "visual_tokens": n_llm * vlm.tokens_per_frame,
            "llm_frames": n_llm, "per_task": {k: float(np.mean(v)) for k, v in sorted(correct.items())}}


# ---------------------------------------------------------------------------------------------- main


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default="runs/lvc_demo")
    ap.add_argument("--base_vlm", default="runs/lvc_synthetic_base/vlm", help="base model folder (cached)")
    ap.add_argument("--data_dir", default=None, help="synthetic data cache (default ~/.cache/spikelight/...)")
    ap.add_argument("--window", type=int, default=4)
    ap.add_argument("--num_train", type=int, default=480)
    ap.add_argument("--num_long", type=int, default=96)
    ap.add_argument("--short_frames", type=int, default=16)
    ap.add_argument("--long_frames", type=int, default=64)
    ap.add_argument("--pretrain_steps", type=int, default=800)
    ap.add_argument("--pretrain_lr", type=float, default=2e-3)
    ap.add_argument("--tune_steps", type=int, default=352, help="8 epochs of 44 batches, as the config")
    ap.add_argument("--tune_lr", type=float, default=2e-3)
    ap.add_argument("--batch_size", type=int, default=16)
    ap.add_argument("--text_hidden", type=int, default=128, help="tiny LLM width")
    ap.add_argument("--text_layers", type=int, default=None)
    ap.add_argument("--fit_run", default=None, help="run folder of `spikelight fit --config "
                    "experiments/lvc/synthetic.yaml`: its long-video predictions are added to the table")
    ap.add_argument("--patch_size", type=int, default=16, help="64 px frames / 16 = 4x4 patches -> 4 tokens")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    timings = {}
    run = Path(args.run)
    run.mkdir(parents=True, exist_ok=True)
    w = args.window

    print(f"== [1/5] synthetic videos (window w={w})", flush=True)
    t = time.perf_counter()
    data = generate_lvc_synthetic(args.data_dir, num_train=args.num_train, num_long=args.num_long,
                                  short_frames=args.short_frames, long_frames=args.long_frames, seed=args.seed)
    train_pairs = read_pairs_jsonl(data.train)
    long_items = read_mcq(data.long)
    videos = list(dict.fromkeys(p.video for p in train_pairs))
    vid_index = {v: i for i, v in enumerate(videos)}
    pairs = [(vid_index[p.video], p.prompt, p.answer) for p in train_pairs]
    long_videos = list(dict.fromkeys(it.video for it in long_items))
    assert len(long_videos) == len(long_items), "one question per long video"
    train_frames = load_clips(videos)
    long_frames = load_clips(long_videos)
    timings["data_s"] = time.perf_counter() - t
    print(f"  {data.root}: {len(videos)} short clips ({train_frames.shape[1]} frames, {len(pairs)} QA pairs), "
          f"{len(long_items)} held-out long videos ({long_frames.shape[1]} frames) - {timings['data_s']:.0f} s")

    print("== [2/5] base model: a tiny InternVL trained whole on the short clips", flush=True)
    t = time.perf_counter()
    sizes = {k: v for k, v in (("text_hidden", args.text_hidden), ("text_layers", args.text_layers),
                               ("patch_size", args.patch_size)) if v is not None}
    base_dir = ensure_base_vlm(args.base_vlm, data.train, steps=args.pretrain_steps, batch_size=args.batch_size,
                               lr=args.pretrain_lr, seed=args.seed, words=SYNTHETIC_WORDS, **sizes)
    vlm = load_vlm(base_dir)
    vlm.set_trainable("none").eval()
    timings["pretrain_s"] = time.perf_counter() - t

    print("== [3/5] frozen vision features (once per video)", flush=True)
    t = time.perf_counter()
    train_feats = vision_features(vlm, train_frames)
    long_feats = vision_features(vlm, long_frames)
    timings["features_s"] = time.perf_counter() - t
    base_proj = {k: v.clone() for k, v in vlm.alignment_layer.state_dict().items()}

    print(f"== [4/5] alignment-layer tuning ({args.tune_steps} steps each, projector only)", flush=True)
    t = time.perf_counter()
    tuned = {}
    for mode in ("sparse", "lvc"):
        vlm.alignment_layer.load_state_dict(base_proj)
        torch.manual_seed(args.seed)
        tuned[mode] = tune_alignment(vlm, train_feats, pairs, args.tune_steps, args.batch_size, args.tune_lr,
                                     window=w, compress=mode == "lvc", seed=args.seed)
    timings["tune_s"] = time.perf_counter() - t

    print("== [5/5] held-out long videos", flush=True)
    t = time.perf_counter()
    m = long_feats.shape[1]
    sparse = sparse_index(m, w)
    lvc = QueryAttentionCompression(window=w)
    rows = {}
    vlm.alignment_layer.load_state_dict(base_proj)
    rows["a_sparse_base"] = evaluate(vlm, long_feats, long_items, frames_idx=sparse)
    rows["d_dense_uncompressed_base"] = evaluate(vlm, long_feats, long_items)
    vlm.alignment_layer.load_state_dict(tuned["sparse"])
    rows["b_sparse_aligned"] = evaluate(vlm, long_feats, long_items, frames_idx=sparse)
    vlm.alignment_layer.load_state_dict(tuned["lvc"])
    rows["c_dense_lvc_aligned"] = evaluate(vlm, long_feats, long_items, lvc=lvc)
    vlm.alignment_layer.load_state_dict(base_proj)
    rows["c0_dense_lvc_base"] = evaluate(vlm, long_feats, long_items, lvc=lvc)
    timings["eval_s"] = time.perf_counter() - t
    timings["total_s"] = time.perf_counter() - t_start

    order = ["a_sparse_base", "b_sparse_aligned", "c0_dense_lvc_base", "c_dense_lvc_aligned",
             "d_dense_uncompressed_base"]
    fit_preds = Path(args.fit_run) / "predictions" / "val-long.jsonl" if args.fit_run else None
    if fit_preds is not None and fit_preds.is_file():  # LVCAlign through `spikelight fit` (same data, base)
        recs = [json.loads(line) for line in fit_preds.read_text().splitlines() if line.strip()]
        per = {}
        for r in recs:
            per.setdefault(r["task_type"], []).append(bool(r["correct"]))
        rows["c_fit_lvcalign"] = {"acc": float(np.mean([r["correct"] for r in recs])), "n": len(recs),
                                  "visual_tokens": rows["c_dense_lvc_aligned"]["visual_tokens"],
                                  "llm_frames": rows["c_dense_lvc_aligned"]["llm_frames"],
                                  "per_task": {k: float(np.mean(v)) for k, v in sorted(per.items())},
                                  "source": str(fit_preds)}
        order.insert(4, "c_fit_lvcalign")
    labels = {
        "c_fit_lvcalign": f"(c) same, LVCAlign via spikelight fit ({args.fit_run})",
        "a_sparse_base": f"(a) sparse {m // w} frames, base model",
        "b_sparse_aligned": f"(b) sparse {m // w} frames, aligned without compression",
        "c0_dense_lvc_base": f"(c0) dense {m} frames + LVC w={w}, base projector (no tuning)",
        "c_dense_lvc_aligned": f"(c) dense {m} frames + LVC w={w}, aligned with LVC",
        "d_dense_uncompressed_base": f"(d) dense {m} frames uncompressed, base model",
    }
    line = "=" * 100
    print(line)
    print(f"LVC demo: held-out long videos ({len(long_items)} questions, {m} frames each; chance 25.0%)")
    print(line)
    print(f"{'setting':<62} {'visual tokens':>13} {'acc':>7}  " + " ".join(f"{k:>7}" for k in KINDS))
    for k in order:
        r = rows[k]
        print(f"{labels[k]:<62} {r['visual_tokens']:>13} {100 * r['acc']:>6.1f}%  "
              + " ".join(f"{100 * r['per_task'].get(t, float('nan')):>6.1f}%" for t in KINDS))
    print(f"{'chance':<62} {'':>13} {25.0:>6.1f}%")
    print(line)
    print("timings: " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()))
    result = {
        "claim": "dense M frames + LVC (w) vs sparse M/w frames at the same number of visual tokens",
        "window": w, "long_frames": m, "short_frames": train_frames.shape[1], "chance": 0.25,
        "questions": len(long_items), "settings": {k: {"label": labels[k], **rows[k]} for k in order},
        "lvc_minus_sparse_aligned": rows["c_dense_lvc_aligned"]["acc"] - rows["b_sparse_aligned"]["acc"],
        "args": vars(args), "timings_s": timings, "data": str(data.root), "base_vlm": str(base_dir),
        "machine": {"python": sys.version.split()[0], "torch": torch.__version__, "platform": platform.platform(),
                    "threads": torch.get_num_threads()},
    }
    (run / "lvc_comparison.json").write_text(json.dumps(result, indent=1))
    print(f"written: {run / 'lvc_comparison.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
