"""Small helpers shared by the benchmark scripts: machine info, timing, JSON output.

Timing: :func:`time_calls` runs ``warmup`` untimed calls, then ``repeats`` timed ones and returns the
wall times (seconds, CUDA-synchronised); :func:`time_interleaved` times several callables in turn
(ABC, BCA, CAB ...) so that a noisy, shared machine slows all of them alike. Report medians
(:func:`summary`).
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Optional

import torch

RESULTS_DIR = Path(__file__).resolve().parent / "results"
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def get_device(name: str) -> torch.device:
    """``torch.device(name)``; exits with a message when CUDA is asked for but absent."""
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda requested but CUDA is not available")
    return device


def set_threads(n: int | None) -> int:
    """``torch.set_num_threads(n)`` when ``n`` is given; returns the thread count in use. On a shared,
    oversubscribed CPU one thread gives far steadier timings (no OpenMP barrier waits for a core that
    another process holds)."""
    if n is not None:
        torch.set_num_threads(int(n))
    return torch.get_num_threads()


def sync(device: torch.device | str | None = None) -> None:
    if torch.cuda.is_available() and (device is None or torch.device(device).type == "cuda"):
        torch.cuda.synchronize()


def machine_info(device: torch.device | str) -> dict[str, Any]:
    """Platform, CPU, thread count, torch version and (on CUDA) the GPU."""
    device = torch.device(device)
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "device": str(device),
    }
    try:
        info["load_average_1m"] = round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):  # pragma: no cover - not on every OS
        pass
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        info["gpu"] = p.name
        info["gpu_memory_gb"] = round(p.total_memory / 2**30, 1)
    return info


def time_calls(fn: Callable[[], Any], *, repeats: int, warmup: int = 1, device=None) -> list[float]:
    """Wall seconds of ``repeats`` calls of ``fn`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return times


def time_interleaved(
    fns: Mapping[str, Callable[[], Any]], *, repeats: int, warmup: int = 1, device=None
) -> dict[str, list[float]]:
    """Like :func:`time_calls` for several callables, run in turn; the order rotates every round
    (A B C, B C A, C A B ...) so that no callable always follows the same one (a heavy call evicts the
    caches of whatever runs next)."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    names = list(fns)
    times: dict[str, list[float]] = {k: [] for k in names}
    for r in range(repeats):
        for k in names[r % len(names) :] + names[: r % len(names)]:
            sync(device)
            t0 = time.perf_counter()
            fns[k]()
            sync(device)
            times[k].append(time.perf_counter() - t0)
    return times


def summary(times: list[float]) -> dict[str, float]:
    """``{median_s, min_s, max_s, repeats}`` of a list of wall times."""
    return {
        "median_s": statistics.median(times),
        "min_s": min(times),
        "max_s": max(times),
        "repeats": len(times),
    }


def count_parameters(*modules: torch.nn.Module | None, buffers: bool = False) -> int:
    """Elements of the distinct parameters (and, with ``buffers``, buffers) of ``modules``."""
    seen: set[int] = set()
    n = 0
    for m in modules:
        if m is None:
            continue
        tensors = list(m.parameters()) + (list(m.buffers()) if buffers else [])
        for t in tensors:
            if id(t) not in seen:
                seen.add(id(t))
                n += t.numel()
    return n


def count_bytes(*items: torch.nn.Module | torch.Tensor | None, buffers: bool = True) -> int:
    """Bytes of the distinct parameters (and, with ``buffers``, buffers) of the modules and of the plain
    tensors among ``items`` (each storage counted once, at its element size)."""
    seen: set[int] = set()
    n = 0
    for m in items:
        if m is None:
            continue
        if isinstance(m, torch.Tensor):
            tensors = [m]
        else:
            tensors = list(m.parameters()) + (list(m.buffers()) if buffers else [])
        for t in tensors:
            if id(t) not in seen:
                seen.add(id(t))
                n += t.numel() * t.element_size()
    return n


def write_json(report: Mapping[str, Any], path: str | Path) -> Path:
    """Write ``report`` as indented JSON (parent folders created); returns the path."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=_default) + "\n")
    return out


def finish_report(report: dict[str, Any], out_path: str | Path, t_start: float,
                  summary_text: Callable[[dict], str], plot: Callable[[dict, Path], Optional[Path]]) -> dict[str, Any]:
    """The common end of a benchmark: wall time, summary text, plot (its file name in the report), JSON,
    and the summary printed. Returns ``report``."""
    out_path = Path(out_path)
    report["wall_s"] = round(time.perf_counter() - t_start, 1)
    report["summary_text"] = summary_text(report)
    png = plot(report, out_path.with_suffix(".png"))
    if png is not None:
        report["plot"] = png.name
    write_json(report, out_path)
    print()
    print(report["summary_text"])
    print(f"wrote {out_path} ({report['wall_s']} s)")
    return report


def _default(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item"):  # numpy scalars
        return obj.item()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


DEMO_CONFIG = Path(__file__).resolve().parents[1] / "experiments" / "svl" / "synthetic.yaml"
#: used when experiments/svl/synthetic.yaml is absent (its values when these benchmarks were written)
DEMO_FALLBACK: dict[str, Any] = {
    "model": {
        "encoder": {"name": "spike_pointnet", "embed_dim": 128, "mlp1": [32, 32], "mlp2": [64, 128, 256],
                    "head": [256], "input_transform": False, "feature_transform": False},
        "clip_model": "spikelight-tiny-clip",
        "text_model": "minilm",
    },
    "data": {"num_points": 512, "image_size": 64, "train_per_class": 48, "val_per_class": 10, "batch_size": 32},
    "optimizer": {"lr": 0.004, "betas": [0.9, 0.98], "weight_decay": 0.0001},
}  # fmt: skip


def demo_svl_config() -> dict[str, Any]:
    """``{"model": SVLPretrain init_args, "data": Synthetic3DDataModule init_args, "optimizer": AdamW
    init_args, "source": path}`` of the demo (``experiments/svl/synthetic.yaml``), or :data:`DEMO_FALLBACK`
    when that file is absent. ``feature_cache`` is dropped: benchmarks keep text features in memory
    only (no writes to the user's cache, no dependence on earlier runs)."""
    if DEMO_CONFIG.is_file():
        import yaml

        cfg = yaml.safe_load(DEMO_CONFIG.read_text())
        model = dict(cfg["model"]["init_args"])
        model.pop("feature_cache", None)
        opt = model.pop("optimizer", None)
        opt = dict(opt.get("init_args", {})) if isinstance(opt, dict) else dict(DEMO_FALLBACK["optimizer"])
        data = dict(cfg["data"]["init_args"])
        return {
            "model": model,
            "data": data,
            "optimizer": opt,
            "source": str(DEMO_CONFIG.relative_to(DEMO_CONFIG.parents[2])),
        }
    return {**DEMO_FALLBACK, "source": "built-in fallback (experiments/svl/synthetic.yaml not found)"}
