"""LVC video loading vs the alignment-tuning step, with and without the vision-feature cache.

Measured in one run:

* **decode**: ``read_video`` (PyAV, threaded, uniform ``M`` frames, only the needed frames decoded) on a
  written 30 s H.264 clip (320x240, 30 fps, keyframe every 2 s) and on the real ``mmaction2/demo.mp4``
  (when ``../shared/data`` is present): output frames/s, and the decoder's own frame count (a sequential
  decode of dense frames decodes the frames in between too); ``strategy`` auto vs sequential vs seek;
* **features**: decode + frame transform + a frozen tiny InternViT (``transformers.InternVLVisionModel``,
  hidden 32, patch 4, 64 px: the synthetic demo's size) per video;
* **projector step**: forward + backward + AdamW of an InternVL-style projector (LayerNorm -> Linear -> GELU ->
  Linear) on the cached features of a batch, with a mean-squared stand-in loss (the frozen LLM's forward and
  backward are not included: benchmarks/lvc_llm_cost.py measures the LLM side);
* **epochs** over 8 short clips (batch 4): without the cache every epoch decodes and runs the tower; with
  :class:`~spikelight.datamodules.video.VisionFeatureCache` the first epoch fills it and later epochs read
  safetensors files and run only the projector.

Usage::

    python benchmarks/lvc_video_loading.py [--quick] [--threads 1]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS_DIR, SHARED_DATA, machine_info, set_threads, summary, time_calls, write_json  # noqa: E402


def moving_scene(n: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    """Frames of a coloured square moving over a gradient (compresses like simple real footage)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([(x * 255 // w), (y * 255 // h), np.full_like(x, 96)], -1).astype(np.uint8)
    colour = rng.integers(0, 256, 3, dtype=np.uint8)
    out = np.empty((n, h, w, 3), np.uint8)
    s = max(4, h // 6)
    for i in range(n):
        f = base.copy()
        cx = int((i * 3 + seed * 17) % (w - s))
        cy = int((h - s) * (0.5 + 0.4 * np.sin(i / 15.0)))
        f[cy:cy + s, cx:cx + s] = colour
        out[i] = f
    return out


def tiny_tower() -> nn.Module:
    from transformers import InternVLVisionConfig, InternVLVisionModel

    cfg = InternVLVisionConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                               image_size=[64, 64], patch_size=[4, 4], use_mask_token=False)
    torch.manual_seed(0)
    return InternVLVisionModel(cfg).eval().requires_grad_(False)


class Projector(nn.Module):
    """InternVL's alignment layer shape: LayerNorm -> Linear -> GELU -> Linear."""

    def __init__(self, c: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(c), nn.Linear(c, hidden), nn.GELU(), nn.Linear(hidden, hidden))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer repeats")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (1 is steadier on a shared CPU)")
    ap.add_argument("--frames", type=int, nargs="+", default=[16, 64], help="frames sampled per video")
    ap.add_argument("--out", default=None, help="JSON path (default results/lvc_video_loading[_quick].json)")
    args = ap.parse_args(argv)
    set_threads(args.threads)
    repeats = 2 if args.quick else 4
    out_path = Path(args.out) if args.out else RESULTS_DIR / f"lvc_video_loading{'_quick' if args.quick else ''}.json"

    from spikelight.datamodules.video import (
        FrameTransform,
        VideoSampling,
        VisionFeatureCache,
        decode_frames,
        frame_times,
        uniform_indices,
        write_video,
    )

    report: dict[str, Any] = {"machine": machine_info("cpu"), "settings": {"repeats": repeats, "frames": args.frames}}
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="spikelight-lvc-video-") as tmp:
        tmp = Path(tmp)
        long_clip = write_video(tmp / "long.mp4", moving_scene(900, 240, 320), 30, gop_size=60)
        videos = {"written 30 s 320x240 h264 (keyframe every 2 s)": long_clip}
        real = SHARED_DATA / "videos" / "mmaction2" / "demo.mp4"
        if real.is_file():
            videos["mmaction2/demo.mp4 (10 s 340x256 h264)"] = real

        # -- decode throughput
        decode: dict[str, Any] = {}
        for name, path in videos.items():
            n = frame_times(path).size
            for m in args.frames:
                for strategy in ("auto", "sequential", "seek"):
                    stats: dict[str, int] = {}
                    idx = uniform_indices(n, m)
                    def run(path=path, idx=idx, strategy=strategy, stats=stats):
                        return decode_frames(path, idx, strategy=strategy, stats=stats)

                    times = time_calls(run, repeats=repeats)
                    med = summary(times)["median_s"]
                    decode[f"{name} | M={m} | {strategy}"] = {
                        "frames": len(idx), "decoded_by_ffmpeg": stats["decoded"], "seeks": stats["seeks"],
                        "video_s": round(med, 4), "output_frames_per_s": round(len(idx) / med, 1)}
                    print(f"decode {name} M={m} {strategy}: {len(idx) / med:.0f} frames/s "
                          f"({stats['decoded']} decoded, {stats['seeks']} seeks)", flush=True)
        report["decode"] = decode

        # -- features vs projector step on 8 short clips
        clips = [write_video(tmp / f"clip{i}.mp4", moving_scene(120, 96, 128, seed=i), 30, gop_size=30)
                 for i in range(8)]
        m = 16
        sampling = VideoSampling(num_frames=m, size=(64, 64))
        transform = FrameTransform(64)
        tower = tiny_tower()

        def features(path: Path) -> torch.Tensor:
            clip = sampling.decode(path)
            with torch.no_grad():
                return tower(pixel_values=transform(clip.frames)).last_hidden_state  # [M, 1 + 256, 32]

        c = features(clips[0]).shape[-1]
        torch.manual_seed(0)
        proj = Projector(c, 64)
        opt = torch.optim.AdamW(proj.parameters(), lr=1e-3)
        target = torch.randn(64)

        def step(feats: list[torch.Tensor]) -> None:
            x = torch.stack(feats)  # [B, M, t, C]
            loss = (proj(x).mean(dim=(1, 2)) - target).pow(2).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        feats = [features(p) for p in clips[:4]]
        t_dec = summary(time_calls(lambda: sampling.decode(clips[0]), repeats=repeats))["median_s"]
        t_feat = summary(time_calls(lambda: features(clips[0]), repeats=repeats))["median_s"]
        t_step = summary(time_calls(lambda: step(feats), repeats=repeats * 2))["median_s"]
        cache = VisionFeatureCache(tmp / "cache")
        fp = "tiny-internvit-test|" + transform.fingerprint
        for p, f in zip(clips[:4], feats):
            cache.put(p, sampling, fp, f)
        t_get = summary(time_calls(lambda: [cache.get(p, sampling, fp) for p in clips[:4]], repeats=repeats))["median_s"]
        per = {"decode_per_video_s": round(t_dec, 4), "decode_transform_tower_per_video_s": round(t_feat, 4),
               "cache_get_per_video_s": round(t_get / 4, 5), "projector_step_batch4_s": round(t_step, 4),
               "feature_shape": list(feats[0].shape),
               "decode_frames_per_s": round(m / t_dec, 1),
               "step_samples_per_s": round(4 / t_step, 1),
               "features_samples_per_s_uncached": round(1 / t_feat, 1),
               "features_samples_per_s_cached": round(4 / t_get, 1)}
        per["uncached_loader_over_step"] = round(per["features_samples_per_s_uncached"] / per["step_samples_per_s"], 3)
        per["cached_loader_over_step"] = round(per["features_samples_per_s_cached"] / per["step_samples_per_s"], 2)
        report["per_sample"] = per
        print(f"per sample: decode {t_dec * 1e3:.1f} ms, decode+tower {t_feat * 1e3:.1f} ms, cache get "
              f"{t_get / 4 * 1e3:.2f} ms; projector step (batch 4) {t_step * 1e3:.1f} ms", flush=True)

        # -- epochs
        def epoch(use_cache: VisionFeatureCache | None) -> float:
            t0 = time.perf_counter()
            for b in range(0, len(clips), 4):
                batch = []
                for p in clips[b:b + 4]:
                    f = use_cache.get(p, sampling, fp) if use_cache is not None else None
                    if f is None:
                        f = features(p)
                        if use_cache is not None:
                            use_cache.put(p, sampling, fp, f)
                    batch.append(f)
                step(batch)
            return time.perf_counter() - t0

        epochs: dict[str, Any] = {"videos": len(clips), "batch_size": 4, "frames": m}
        epochs["no_cache_s"] = [round(epoch(None), 3) for _ in range(3)]
        fresh = VisionFeatureCache(tmp / "cache_epochs")
        epochs["cache_s"] = [round(epoch(fresh), 3) for _ in range(3)]  # first epoch fills it
        epochs["cache_hits_misses"] = [fresh.hits, fresh.misses]
        epochs["speedup_after_first_epoch"] = round(float(np.median(epochs["no_cache_s"][1:])) /
                                                    float(np.median(epochs["cache_s"][1:])), 1)
        report["epochs"] = epochs
        print(f"epochs: no cache {epochs['no_cache_s']} s, cache {epochs['cache_s']} s "
              f"(x{epochs['speedup_after_first_epoch']} after the first)", flush=True)
    report["caveats"] = [
        "CPU only (shared 2-core machine): absolute times are noisy; ratios within one run are the result.",
        "The projector step excludes the frozen LLM's forward/backward (see lvc_llm_cost.json): with a real LLM the "
        "step is much slower and decoding matters less; with the tiny demo model decoding dominates.",
        "decoded_by_ffmpeg counts decoder output frames: sequential decoding of sparse frames decodes every frame "
        "up to the last one needed; seeking decodes from the keyframe before each needed frame.",
    ]
    report["wall_s"] = round(time.perf_counter() - t_start, 1)
    write_json(report, out_path)
    print(f"wrote {out_path}")
    return report


if __name__ == "__main__":
    main()
