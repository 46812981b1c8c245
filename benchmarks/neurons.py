"""Throughput of spikelight's multi-step neurons vs spikingjelly, side by side in one run.

Measures forward+backward (training) and forward-only (no_grad inference) throughput, in
elements per second (``T * numel(one step)`` per call), of

* ``spikelight.nn.neurons.LIF``  vs ``spikingjelly...neuron.LIFNode(step_mode='m')``
  (tau=2, hard reset to 0, decay_input, atan surrogate alpha=2, same settings on both sides);
* ``spikelight.nn.neurons.ILIF`` vs ``spikingjelly...neuron.ILIFNode(step_mode='m')``
  (beta=0.25 <=> tau=4/3, Vth=1, D=4),

for T in {1, 4, 8} on a ``[T, B, C, H, W]`` tensor. spikingjelly nodes are reset with
``functional.reset_net`` before every call (their state is a module attribute; ours is not).
The two implementations are timed interleaved (ABAB...) and the median of the repeats is
reported, which keeps the ratio fair on a shared, noisy machine.

On CUDA the script also reports the memory-bandwidth bound of the elementwise update: the
fewest bytes a fused kernel must move (LIF fwd+bwd: read X, write S, write H; read dS, read H,
write dX = 24 B/elem in fp32; I-LIF: 4+4+1 + 4+1+4 = 18 B/elem with a 1-byte mask), divided by
the measured device-to-device copy bandwidth, and our fraction of that bound.

Usage::

    python benchmarks/neurons.py --device cpu [--quick] [--threads 1] [--out benchmarks/results/neurons.json]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_info, set_threads, write_json  # noqa: E402
from _common import sync as _sync  # noqa: E402

from spikelight.nn.neurons import ILIF, LIF  # noqa: E402

try:
    import spikingjelly
    from spikingjelly.activation_based import functional as sj_functional
    from spikingjelly.activation_based import neuron as sj_neuron
    from spikingjelly.activation_based import surrogate as sj_surrogate

    SJ_VERSION = getattr(spikingjelly, "__version__", None)
    if SJ_VERSION is None:
        from importlib.metadata import version

        SJ_VERSION = version("spikingjelly")
except ImportError:  # pragma: no cover - reported in the JSON
    sj_neuron = None
    SJ_VERSION = None

# bytes per element a fused fwd+bwd kernel must move (fp32 data, bool mask)
MIN_BYTES = {"lif": 24, "ilif": 18}
MIN_BYTES_INFER = {"lif": 8, "ilif": 8}


def make_pair(kind: str):
    """(ours, spikingjelly's) neuron with equal settings, or (ours, None)."""
    if kind == "lif":
        ours = LIF(tau=2.0, vth=1.0, v_reset=0.0, decay_input=True, detach_reset=False, surrogate="atan", alpha=2.0)
        theirs = None
        if sj_neuron is not None:
            theirs = sj_neuron.LIFNode(
                tau=2.0, decay_input=True, v_threshold=1.0, v_reset=0.0,
                surrogate_function=sj_surrogate.ATan(alpha=2.0), detach_reset=False, step_mode="m",
            )
        return ours, theirs
    # inclusive STE window = spikingjelly's (same cost as the strict default), so grads match exactly
    ours = ILIF(beta=0.25, vth=1.0, D=4, inclusive_window=True)
    theirs = None
    if sj_neuron is not None and hasattr(sj_neuron, "ILIFNode"):
        theirs = sj_neuron.ILIFNode(tau=4.0 / 3.0, v_threshold=1.0, step_mode="m")
    return ours, theirs


def time_call(fn, device) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one call."""
    _sync(device)
    w0, c0 = time.perf_counter(), time.process_time()
    fn()
    _sync(device)
    return time.perf_counter() - w0, time.process_time() - c0


def bench_one(kind: str, T: int, shape: tuple[int, ...], device, repeats: int, warmup: int) -> dict:
    ours, theirs = make_pair(kind)
    ours.to(device)
    gen = torch.Generator(device="cpu").manual_seed(0)
    # inputs around the threshold so that a realistic fraction of neurons fires
    x = (torch.randn((T, *shape), generator=gen) * 1.5 + 0.5).to(device)
    g = torch.randn((T, *shape), generator=gen).to(device)
    numel = x.numel()

    def train_step(node, reset):
        def fn():
            if reset:
                sj_functional.reset_net(node)
            xi = x.detach().requires_grad_(True)
            y = node(xi)
            y.backward(g)
            return xi.grad

        return fn

    def infer_step(node, reset):
        def fn():
            if reset:
                sj_functional.reset_net(node)
            with torch.no_grad():
                return node(x)

        return fn

    result: dict = {"neuron": kind, "T": T, "shape": [T, *shape], "elements": numel}
    if theirs is not None:
        theirs.to(device)
        # sanity: same spikes and same input gradient before timing anything
        ours_grad, sj_grad = train_step(ours, False)(), train_step(theirs, True)()
        sj_functional.reset_net(theirs)
        with torch.no_grad():
            same = torch.equal(ours(x), theirs(x))
        sj_functional.reset_net(theirs)
        result["outputs_equal"] = bool(same)
        diff = (ours_grad - sj_grad).abs()
        result["max_abs_grad_diff"] = float(diff.max())
        # I-LIF: our default STE window is strict (0 < H < D), spikingjelly's inclusive; they differ
        # only where H is exactly 0 or D
        result["grad_mismatch_elements"] = int((diff > 1e-5).sum())

    for mode, maker in (("train", train_step), ("infer", infer_step)):
        t_ours, t_sj = [], []
        fo = maker(ours, False)
        ft = maker(theirs, True) if theirs is not None else None
        for _ in range(warmup):
            fo()
            if ft:
                ft()
        for _ in range(repeats):  # interleaved
            t_ours.append(time_call(fo, device))
            if ft:
                t_sj.append(time_call(ft, device))
        mo = statistics.median(w for w, _ in t_ours)
        entry = {
            "ours_s": mo, "ours_min_s": min(w for w, _ in t_ours), "ours_elem_per_s": numel / mo,
            "ours_cpu_s": statistics.median(c for _, c in t_ours),
        }
        if t_sj:
            ms = statistics.median(w for w, _ in t_sj)
            entry.update(
                sj_s=ms, sj_min_s=min(w for w, _ in t_sj), sj_elem_per_s=numel / ms,
                sj_cpu_s=statistics.median(c for _, c in t_sj),
                # median over interleaved pairs of (sj time / our time): > 1 means we are faster
                ratio_ours_over_sj=statistics.median(b[0] / a[0] for a, b in zip(t_ours, t_sj)),
                ratio_of_min_times=min(w for w, _ in t_sj) / min(w for w, _ in t_ours),
                # process CPU time is less sensitive to other processes sharing the cores
                ratio_cpu_time=statistics.median(b[1] / a[1] for a, b in zip(t_ours, t_sj)),
            )
        result[mode] = entry
    return result


def copy_bandwidth(device, nbytes: int = 1 << 28) -> float:
    """Measured device-to-device copy bandwidth in bytes/s (read + write counted)."""
    a = torch.empty(nbytes // 4, dtype=torch.float32, device=device)
    b = torch.empty_like(a)
    for _ in range(3):
        b.copy_(a)
    _sync(device)
    ts = []
    for _ in range(10):
        t0 = time.perf_counter()
        b.copy_(a)
        _sync(device)
        ts.append(time.perf_counter() - t0)
    return 2 * nbytes / min(ts)


def machine_details(device) -> dict:
    """:func:`_common.machine_info` plus the spikingjelly version, the load at the end and the GPU's
    memory bandwidth from its properties."""
    info = machine_info(device)
    info["spikingjelly"] = SJ_VERSION
    info["load_avg_1_5_15min_at_end"] = [round(v, 2) for v in os.getloadavg()]
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        clock = getattr(p, "memory_clock_rate", None)  # kHz
        bus = getattr(p, "memory_bus_width", None)  # bits
        if clock and bus:
            info["gpu_peak_bw_gb_s_from_props"] = 2 * clock * 1e3 * bus / 8 / 1e9
    return info


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--quick", action="store_true", help="smaller tensors, fewer repeats")
    ap.add_argument("--T", type=int, nargs="+", default=[1, 4, 8])
    ap.add_argument("--neurons", nargs="+", default=["lif", "ilif"], choices=["lif", "ilif"])
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's; 1 is steadier on a shared CPU)"
    )
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "neurons.json"))
    args = ap.parse_args(argv)

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda requested but CUDA is not available")
    threads = set_threads(args.threads)
    if device.type == "cpu":
        shape = (8, 64, 32, 32) if args.quick else (16, 64, 32, 32)
    else:
        shape = (32, 64, 32, 32) if args.quick else (128, 128, 32, 32)
    repeats = args.repeats or (3 if args.quick else 5)
    warmup = 1 if args.quick else 2

    t_start = time.perf_counter()
    results = []
    for kind in args.neurons:
        for T in args.T:
            r = bench_one(kind, T, shape, device, repeats, warmup)
            if device.type == "cuda":
                bw = copy_bandwidth(device)
                for mode, nb in (("train", MIN_BYTES[kind]), ("infer", MIN_BYTES_INFER[kind])):
                    bound = bw / nb  # elements/s a perfectly fused kernel could reach
                    r[mode]["bw_bound_elem_per_s"] = bound
                    r[mode]["ours_fraction_of_bound"] = r[mode]["ours_elem_per_s"] / bound
                    if "sj_elem_per_s" in r[mode]:
                        r[mode]["sj_fraction_of_bound"] = r[mode]["sj_elem_per_s"] / bound
                r["copy_bw_gb_s"] = bw / 1e9
            results.append(r)
            line = f"{kind:5s} T={T}  "
            for mode in ("train", "infer"):
                e = r[mode]
                line += f"{mode}: ours {e['ours_elem_per_s'] / 1e6:7.1f} Melem/s"
                if "sj_elem_per_s" in e:
                    line += (f" sj {e['sj_elem_per_s'] / 1e6:7.1f} ratio {e['ratio_ours_over_sj']:.2f}"
                             f" (cpu-time {e['ratio_cpu_time']:.2f})")
                line += "   "
            print(line, flush=True)

    report = {
        "benchmark": "multi-step neuron forward+backward ('train') and no_grad forward ('infer') throughput",
        "machine": machine_details(device),
        "settings": {
            "device": args.device, "quick": args.quick, "step_shape": list(shape), "T": args.T,
            "torch_threads": threads,
            "repeats": repeats, "warmup": warmup, "statistic": (
                "median wall time; ratio_ours_over_sj = median over interleaved (ours, sj) pairs of "
                "t_sj / t_ours (>1: ours faster); ratio_cpu_time the same with process CPU time"
            ),
            "lif": "tau=2, vth=1, v_reset=0 (hard), decay_input=True, detach_reset=False, atan alpha=2",
            "ilif": "beta=0.25 (sj tau=4/3), vth=1, D=4, soft reset, inclusive STE window (as sj)",
            "sj_nodes": "LIFNode / ILIFNode(step_mode='m'), functional.reset_net before each call",
            "dtype": "float32",
        },
        "note": (
            "absolute throughputs depend on other processes sharing the cores; the interleaved "
            "ratios (and the CPU-time ratios) are the comparable numbers"
        ),
        "results": results,
        "wall_s": round(time.perf_counter() - t_start, 1),
    }
    out = write_json(report, args.out)
    print(f"wrote {out} ({report['wall_s']} s)")
    return report


if __name__ == "__main__":
    main()
