"""Tests for spikelight.profiling.memory and the MemoryMonitor callback (CPU, small).

Analytic model used throughout: a stack of L blocks ``Linear(d, d, bias=False) -> ReLU`` on x [B, d] float32,
loss = out.sum(); with F = B*d*4 bytes (one activation) and W = d*d*4 bytes (one weight).

Saved for backward (distinct storages, parameters excluded): Linear_1 saves x (W_1 is not needed: x does
not require grad); Linear_i (i > 1) saves its input r_{i-1}, which is the same storage ReLU_{i-1} saved
(ReLU saves its output); ReLU_L saves r_L; sum saves nothing. So saved = (L + 1) * F. The weights W_2..W_L
are saved too (for d loss / d input) and are reported apart as saved_param_bytes = (L - 1) * W.

Peak (B > d, so activations dominate): forward ends with r_1..r_L alive (z_i, the Linear outputs, die after
their ReLU). Backward of ReLU_L creates g_L (F) and frees r_L; backward of Linear_L creates dL/dr_{L-1} (F)
and dL/dW_L (W) while g_L is alive: live activations/temporaries = r_1..r_{L-1} + g_L + dr_{L-1} + dW_L =
(L + 1) * F + W, plus two float32 scalars (the loss and autograd's seed 1.0, 4 bytes each). Later
layers hold less (each step frees one F and adds one W, W < F). That is the peak:
peak_activation = (L + 1) * F + W + 8 and peak = params (L * W) + x (F) + peak_activation.
"""

from __future__ import annotations

import csv
import time
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from spikelight.callbacks import MemoryMonitor
from spikelight.profiling.memory import MB, SavedTensorCounter, measure_step_memory

B, D, L = 64, 16, 3
F = B * D * 4  # one activation [B, d] float32
W = D * D * 4  # one weight [d, d] float32
SCALARS = 8  # loss + autograd's gradient seed, float32 scalars


def make_stack(num_layers: int = L, d: int = D) -> nn.Sequential:
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for _ in range(num_layers):
        layers += [nn.Linear(d, d, bias=False), nn.ReLU()]
    return nn.Sequential(*layers)


def test_saved_bytes_match_analytic_count() -> None:
    model = make_stack()
    x = torch.randn(B, D)
    with SavedTensorCounter(exclude=(model,)) as counter:
        loss = model(x).sum()
    loss.backward()
    assert counter.saved_bytes == (L + 1) * F
    assert counter.saved_param_bytes == (L - 1) * W
    assert counter.num_saved == (L + 1) + (L - 1)
    # The pack hook hands back an alias, so backward still works and gives the usual gradient.
    reference = make_stack()
    reference(x).sum().backward()
    torch.testing.assert_close(model[0].weight.grad, reference[0].weight.grad)


def test_measure_step_memory_matches_analytic_peak() -> None:
    model = make_stack()
    x = torch.randn(B, D)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)  # no momentum: no optimizer state

    def step() -> float:
        loss = model(x).sum()
        loss.backward()
        opt.step()
        opt.zero_grad()
        return loss.item()

    mem = measure_step_memory(step, modules=model, optimizers=opt, inputs=x)
    expected_act = (L + 1) * F + W
    # Exact up to the two float32 scalars (loss and gradient seed); allow up to 16 bytes of such scalars.
    assert expected_act <= mem["peak_activation_bytes"] <= expected_act + 16
    assert mem["peak_activation_bytes"] == expected_act + SCALARS  # what torch 2.14 does exactly
    assert mem["peak_bytes"] == L * W + F + mem["peak_activation_bytes"]
    bd = mem["breakdown"]
    assert bd["parameter"] == L * W
    assert bd["other"] == F  # the registered input batch
    assert bd["optimizer"] == 0 and bd["buffer"] == 0
    assert sum(bd.values()) == mem["peak_bytes"]
    assert mem["saved_bytes"] == (L + 1) * F
    assert mem["start_bytes"] == L * W + F and mem["end_bytes"] == L * W + F  # grads zeroed (set to None)
    assert mem["device"] == "cpu" and mem["peak_bytes_by_device"] == {"cpu": mem["peak_bytes"]}
    assert mem["rss_peak_bytes"] >= mem["rss_start_bytes"] > 0
    assert mem["cuda_peak_bytes"] is None
    assert isinstance(mem["output"], float)


def test_weight_gradients_count_as_gradients() -> None:
    # After backward the weight gradients sit in .grad (category "gradient", not "temp"); a buffer larger
    # than everything before, made after backward, puts the peak there: gradients L W, the buffer alone
    # as activation, nothing left in temp.
    model = make_stack()
    x = torch.randn(B, D)
    big = 4 * (L + 2) * F  # bytes

    def step() -> float:
        model(x).sum().backward()
        return float(torch.ones(big // 4)[0])

    mem = measure_step_memory(step, modules=model, inputs=x)
    bd = mem["breakdown"]
    assert bd["gradient"] == L * W and bd["temp"] == 0
    assert big <= bd["activation"] <= big + SCALARS
    assert mem["peak_bytes"] == L * W + F + L * W + bd["activation"]


def test_checkpoint_saves_less_but_peak_is_higher_than_saved() -> None:
    from torch.utils.checkpoint import checkpoint

    model = make_stack()
    x = torch.randn(B, D)

    def plain_step() -> None:
        model(x).sum().backward()

    def ckpt_step() -> None:
        checkpoint(model, x, use_reentrant=False).sum().backward()

    plain = measure_step_memory(plain_step, modules=model, inputs=x)
    model.zero_grad(set_to_none=True)
    ckpt = measure_step_memory(ckpt_step, modules=model, inputs=x)
    # One checkpointed segment keeps only its input (saved through the outer hooks by checkpoint itself).
    assert ckpt["saved_bytes"] == F < plain["saved_bytes"] == (L + 1) * F
    # ...but backward recomputes every activation, so the step's peak is far above the saved bytes:
    assert ckpt["peak_activation_bytes"] > ckpt["saved_bytes"]
    assert ckpt["peak_activation_bytes"] >= (L + 1) * F + W
    assert ckpt["peak_bytes"] >= plain["peak_bytes"] - 16


def test_module_called_twice_in_one_step() -> None:
    # Two views through one encoder: plain MemTracker refuses a top-level module that runs twice in one
    # tracked region ("multiple iterative calls"); the step tracker keeps no per-module statistics, so it
    # neither fails nor warns, and the peak is exact.
    model = make_stack()
    x = torch.randn(B, D)

    def step() -> None:
        (model(x).sum() + model(x).sum()).backward()

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mem = measure_step_memory(step, modules=model, inputs=x)
    assert mem["tracker_error"] is None
    assert mem["saved_bytes"] == (2 * L + 1) * F  # x shared by both passes, counted once
    # The single-pass peak (module docstring) plus the other pass's L activations, still alive while the
    # first pass's last Linear runs backward: (L + 1) F + W + L F, and the float32 scalars.
    assert (2 * L + 1) * F + W <= mem["peak_activation_bytes"] <= (2 * L + 1) * F + W + 16


def test_rss_peak_sees_transient_allocation() -> None:
    # A fresh anonymous mapping, every page written: RSS must rise by its size whatever the allocator holds
    # (a torch tensor can be served from freed-but-resident heap another test left behind: no rise at all).
    import mmap

    import numpy as np

    from spikelight.profiling.rss import RssSampler

    size = 96 * MB
    sampler = RssSampler(interval_s=1e-3)
    sampler.start()
    region = mmap.mmap(-1, size)
    pages = np.frombuffer(region, dtype=np.uint8)
    pages[:: mmap.PAGESIZE] = 1  # touched pages: resident
    # hold the buffer until the background thread has read RSS twice (on a loaded machine it may not run
    # for a while; a fixed sleep made this test flaky)
    seen, deadline = sampler.samples, time.monotonic() + 30.0
    while sampler.samples < seen + 2 and time.monotonic() < deadline:
        time.sleep(0.005)
    assert sampler.samples >= seen + 2, "the RSS sampler thread took no sample in 30 s"
    del pages
    region.close()
    mem = sampler.stop()
    assert mem["rss_source"] in ("statm", "psutil")
    assert mem["rss_peak_bytes"] - mem["rss_start_bytes"] >= 0.9 * size


def test_measure_step_memory_rss_only() -> None:
    def step() -> None:
        buf = torch.ones(MB)
        del buf

    mem = measure_step_memory(step, track_tensors=False, track_saved=False)
    assert mem["rss_source"] in ("statm", "psutil")
    assert mem["rss_peak_bytes"] >= mem["rss_start_bytes"] > 0
    assert mem["peak_bytes"] is None and mem["saved_bytes"] is None


# ---------------------------------------------------------------------------------------------------------
# Lightning
# ---------------------------------------------------------------------------------------------------------
lightning = pytest.importorskip("lightning")


class _Data(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 4 * B

    def __getitem__(self, i: int) -> dict:
        g = torch.Generator().manual_seed(i)
        return {"x": torch.randn(D, generator=g), "name": f"s{i}"}


class _Stack(lightning.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = make_stack()

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        return self.net(batch["x"]).sum()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=1e-3)


def _fit(
    tmp_path: Path, monitor: MemoryMonitor, model: lightning.LightningModule | None = None
) -> list[dict]:
    from lightning.pytorch.loggers import CSVLogger

    trainer = lightning.Trainer(
        max_epochs=1,
        limit_train_batches=3,
        accelerator="cpu",
        devices=1,
        callbacks=[monitor],
        logger=CSVLogger(tmp_path),
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
    )
    trainer.fit(model or _Stack(), torch.utils.data.DataLoader(_Data(), batch_size=B))
    (path,) = tmp_path.rglob("metrics.csv")
    with open(path) as f:
        return list(csv.DictReader(f))


KEYS = [
    "memory/peak_mb",
    "memory/peak_mb_per_sample",
    "memory/activation_mb",
    "memory/saved_mb",
    "memory/saved_mb_per_sample",
    "memory/rss_mb",
]


def test_memory_monitor_in_trainer(tmp_path: Path) -> None:
    monitor = MemoryMonitor(every_n_steps=1)
    rows = _fit(tmp_path, monitor)
    rows = [r for r in rows if r.get("memory/peak_mb")]
    assert [int(r["step"]) for r in rows] == [0, 1, 2]
    for row in rows:
        for key in KEYS:
            assert float(row[key]) > 0, key
    assert set(KEYS) <= set(monitor.last)
    assert not any(k.startswith("memory/cuda") for k in monitor.last)
    assert monitor.last["memory/saved_mb"] == pytest.approx((L + 1) * F / MB)
    assert monitor.last["memory/saved_mb_per_sample"] == pytest.approx((L + 1) * F / MB / B)
    # Lightning's automatic optimisation runs training_step -> zero_grad -> backward inside
    # optimizer.step(closure): the previous step's gradients are still alive during the forward, so from
    # the second step on the peak is at the end of the forward: params + old grads + batch + r_1..r_{L-1}
    # + z_L + r_L. The categories must not be swallowed by "optimizer" (the closure runs inside step()).
    raw = monitor.last_raw
    bd = raw["breakdown"]
    assert bd["optimizer"] == 0
    assert bd["parameter"] == L * W and bd["gradient"] == L * W and bd["other"] == F
    assert (L + 1) * F <= raw["peak_activation_bytes"] <= (L + 1) * F + 16
    assert raw["peak_bytes"] == 2 * L * W + F + raw["peak_activation_bytes"]
    assert monitor.last["memory/peak_mb"] == pytest.approx(raw["peak_bytes"] / MB)
    assert monitor.last["memory/peak_mb_per_sample"] == pytest.approx(raw["peak_bytes"] / MB / B)


class _StackWithSparseBuffer(_Stack):
    """A model MemTracker cannot register: it has no storage to follow for a sparse COO buffer."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("adjacency", torch.eye(4).to_sparse())


def test_memory_monitor_sampling_and_fallback(tmp_path: Path) -> None:
    monitor = MemoryMonitor(every_n_steps=2, log_rss=True)
    with pytest.warns(RuntimeWarning, match="MemTracker failed") as record:
        rows = _fit(tmp_path, monitor, _StackWithSparseBuffer())
    assert sum("MemTracker failed" in str(w.message) for w in record) == 1  # warned once
    rows = [r for r in rows if r.get("memory/saved_mb")]
    assert [int(r["step"]) for r in rows] == [0, 2]  # global_step % 2 == 0
    for row in rows:
        assert float(row["memory/saved_mb"]) == pytest.approx((L + 1) * F / MB)
        assert float(row["memory/rss_mb"]) > 0
        assert not row.get("memory/peak_mb")
    assert "memory/peak_mb" not in monitor.last and monitor.last["memory/saved_mb"] > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_measure_step_memory_cuda() -> None:
    model = make_stack().cuda()
    x = torch.randn(B, D, device="cuda")

    def step() -> None:
        model(x).sum().backward()

    step()  # warm-up: cuBLAS workspace and the like
    model.zero_grad(set_to_none=True)
    mem = measure_step_memory(step, modules=model, inputs=x)
    assert mem["device"].startswith("cuda")
    assert mem["cuda_peak_bytes"] >= mem["cuda_start_bytes"] > 0
    # MemTracker rounds each storage up to 512-byte blocks like the allocator, and sees a subset of what
    # the allocator holds (not e.g. the cuBLAS workspace), so its peak cannot exceed the allocator's.
    assert 0 < mem["peak_bytes"] <= mem["cuda_peak_bytes"]
    assert mem["peak_activation_bytes"] >= (L + 1) * F


@pytest.mark.slow
def test_memory_monitor_ddp_cpu(tmp_path: Path) -> None:
    """Two gloo ranks on CPU: the max-reduction across ranks runs and rows are written once (rank 0)."""
    from lightning.pytorch.loggers import CSVLogger

    monitor = MemoryMonitor(every_n_steps=1)
    trainer = lightning.Trainer(
        max_epochs=1,
        limit_train_batches=2,
        accelerator="cpu",
        devices=2,
        strategy="ddp_spawn",
        callbacks=[monitor],
        logger=CSVLogger(tmp_path),
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
    )
    trainer.fit(_Stack(), torch.utils.data.DataLoader(_Data(), batch_size=B))
    (path,) = tmp_path.rglob("metrics.csv")
    with open(path) as f:
        rows = [r for r in csv.DictReader(f) if r.get("memory/peak_mb")]
    assert [int(r["step"]) for r in rows] == [0, 1]
    for row in rows:
        assert float(row["memory/saved_mb"]) == pytest.approx((L + 1) * F / MB)
        # DDP adds its gradient bucket on top of the single-process numbers, never less.
        assert float(row["memory/peak_mb"]) * MB >= L * W + F + (L + 1) * F
