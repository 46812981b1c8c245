"""Spike energy accounting (spikelight.profiling.energy) and the SpikeEnergy callback.

The hand-computed network (T=2, B=2, 1x2x2 images, ILIF beta=0.5 vth=1 D=4):

conv1 (3x3, pad 1, only the centre tap: w=[1, 2], real input -> MAC)
    FLOPs = N(T*B=4) * Cout 2 * HW 4 * Cin*k*k 9 = 288   -> 144 per sample
sn1 input ch0 = x, ch1 = 2x. With x
    t0b0 [[0,1],[2,3]]  t0b1 [[1,0],[0,-1]]  t1b0 [[0,0],[0,1]]  t1b1 [[0,2],[0,0]]
    (the -1 makes the input real-valued, i.e. not spikes; it fires nothing: V = -1 (ch0) / -2
    (ch1) leaks into t1b1 where that pixel gets 0 input, H < 0, still no spike)
    ch0 spikes = max(x, 0) (sums 6, 1, 1, 2 = 10)
    ch1 t0b0: 2x = [0,2,4,6] -> S [0,2,4,4] (sum 10), V = [0,0,0,2]; t0b1 [2,0,0,0] (2)
        t1b0: 2x + 0.5*V = [0,0,0,3] -> 3;  t1b1 [0,4,0,0] -> 4       (ch1 sum 19)
    s1: sum 29 over 32 neuron-steps -> rate 29/32
conv2 (1x1, 2->3, w = [[1,0],[0,1],[0,0]], fed integer spikes -> AC)
    FLOPs = 4 * 3 * 4 * 2 = 96 (48/sample), ops = 96 * 29/32 = 87 (43.5/sample)
sn2 = ILIF(conv2) = [s1 ch0, s1 ch1, 0] (integers in range, no carry): sum 29 over 48 -> 29/48
attn: q = k = tokens of s2 [(T B), (H W)=4, C=3]; q @ k^T (bmm, both spikes -> AC)
    FLOPs = 4 * 4 * 3 * 4 = 192 (96/sample), ops = 192 * 29/48 = 116 (58/sample)
fc (Linear 12 -> 5 on flattened s2, AC): FLOPs 4*12*5 = 240 (120/sample), ops 145 (72.5/sample)

per sample: MAC 144, AC FLOPs 264, AC ops 174
E = 144*4.6 + 174*0.9 = 819.0 pJ;  ANN = 408*4.6 = 1876.8 pJ;  mean firing rate 58/80.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import _spconv_standin
import lightning
import pytest
import torch
from einops import rearrange
from torch import nn

from spikelight.nn.neurons import ILIF, BinarySpike, spike_driven_forward
from spikelight.nn.sparse_conv import SparseActivation, SparseConv3d, SparseTensor, SubMConv3d
from spikelight.profiling.energy import EnergyMeter, format_report, measure_energy

PJ = 1e-9  # mJ per pJ


class SpikeAttn(nn.Module):
    """Spike-driven attention scores: q @ k^T of spike tokens [N, L, C] -> [N, L, L]."""

    def forward(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        return q @ k.transpose(-2, -1)


class HandNet(nn.Module):
    """x: [T, B, 1, 2, 2] -> (logits [T, B, 5], scores [(T B), 4, 4])."""

    def __init__(self, *, spike_driven: bool = False) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 2, 3, padding=1, bias=False)
        self.sn1 = ILIF(beta=0.5, vth=1.0, D=4, spike_driven=spike_driven)
        self.conv2 = nn.Conv2d(2, 3, 1, bias=False)
        self.sn2 = ILIF(beta=0.5, vth=1.0, D=4)
        self.attn = SpikeAttn()
        self.fc = nn.Linear(12, 5)
        self.spike_driven = spike_driven
        with torch.no_grad():
            self.conv1.weight.zero_()
            self.conv1.weight[:, 0, 1, 1] = torch.tensor([1.0, 2.0])
            self.conv2.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]).view(3, 2, 1, 1))
            self.fc.weight.copy_(torch.linspace(-1, 1, 60).view(5, 12))
            self.fc.bias.fill_(0.1)

    def forward(self, x: torch.Tensor):
        T, B = x.shape[:2]
        y = rearrange(self.conv1(rearrange(x, "t b ... -> (t b) ...")), "(t b) ... -> t b ...", t=T)
        s1 = self.sn1(y)
        if self.spike_driven:  # [D, T, B, ...] binary sub-steps, additions only
            z = spike_driven_forward(self.conv2, rearrange(s1, "d t b ... -> d (t b) ..."))
        else:
            z = self.conv2(rearrange(s1, "t b ... -> (t b) ..."))
        s2 = self.sn2(rearrange(z, "(t b) ... -> t b ...", t=T))
        tok = rearrange(s2, "t b c h w -> (t b) (h w) c")
        scores = self.attn(tok, tok)
        logits = self.fc(rearrange(s2, "t b c h w -> t b (c h w)"))
        return logits, scores


def hand_input() -> torch.Tensor:
    x = torch.zeros(2, 2, 1, 2, 2)
    x[0, 0, 0] = torch.tensor([[0.0, 1.0], [2.0, 3.0]])
    x[0, 1, 0] = torch.tensor([[1.0, 0.0], [0.0, -1.0]])  # the -1 makes the input real-valued
    x[1, 0, 0] = torch.tensor([[0.0, 0.0], [0.0, 1.0]])
    x[1, 1, 0] = torch.tensor([[0.0, 2.0], [0.0, 0.0]])
    return x


def run_meter(model, x, samples, **kw):
    meter = EnergyMeter(model, **kw)
    with torch.no_grad(), meter:
        out = model(*x) if isinstance(x, tuple) else model(x)
    meter.add_samples(samples)
    return meter.report(), out


def rows(report):
    return {r.name: r for r in report.layers}


# ---------------------------------------------------------------------------------------------


def test_hand_computed_network():
    net = HandNet().eval()
    rep, _ = run_meter(net, hand_input(), samples=2)
    r = rows(rep)
    assert set(r) == {"conv1", "conv2", "attn", "fc"}
    assert (r["conv1"].kind, r["conv1"].flops, r["conv1"].firing_rate_in) == ("MAC", 144, None)
    assert (r["conv2"].kind, r["conv2"].flops, r["conv2"].ops) == ("AC", 48, pytest.approx(43.5))
    assert r["conv2"].firing_rate_in == pytest.approx(29 / 32)  # integer spikes count their value
    assert (r["attn"].kind, r["attn"].op, r["attn"].flops) == ("AC", "bmm", 96)
    assert r["attn"].ops == pytest.approx(58)
    assert r["attn"].firing_rate_in == pytest.approx(29 / 48)
    assert (r["fc"].kind, r["fc"].flops, r["fc"].ops) == ("AC", 120, pytest.approx(72.5))
    assert r["fc"].type == "Linear" and r["conv1"].type == "Conv2d"
    # neuron firing rates (mean spike count per neuron per timestep)
    n = {x.name: x.firing_rate for x in rep.neurons}
    assert n == {"sn1": pytest.approx(29 / 32), "sn2": pytest.approx(29 / 48)}
    assert rep.mean_firing_rate == pytest.approx(58 / 80)
    # totals per sample
    assert rep.samples == 2
    assert rep.mac_flops_per_sample == 144
    assert rep.ac_flops_per_sample == 264
    assert rep.flops_per_sample == 408
    assert rep.ac_ops_per_sample == pytest.approx(174)
    assert rep.energy_mj_per_sample == pytest.approx(819.0 * PJ, rel=1e-9)
    assert rep.ann_energy_mj_per_sample == pytest.approx(408 * 4.6 * PJ, rel=1e-9)
    assert r["conv1"].energy_mj == pytest.approx(144 * 4.6 * PJ)
    assert r["fc"].energy_mj == pytest.approx(72.5 * 0.9 * PJ)
    assert sum(x.energy_mj for x in rep.layers) == pytest.approx(rep.energy_mj_per_sample)
    # custom energy constants
    rep2, _ = run_meter(net, hand_input(), samples=2, e_mac_pj=1.0, e_ac_pj=0.5)
    assert rep2.energy_mj_per_sample == pytest.approx((144 + 0.5 * 174) * PJ)
    text = format_report(rep)
    assert "conv2" in text and "mJ/sample" in text


def test_inference_mode_composites_counted_once():
    """Under inference_mode linear/conv2d/matmul reach the mode undecomposed: same counts."""
    net = HandNet().eval()
    meter = EnergyMeter(net)
    with torch.inference_mode(), meter:
        net(hand_input())
    meter.add_samples(2)
    rep = meter.report()
    assert rep.mac_flops_per_sample == 144 and rep.ac_flops_per_sample == 264
    assert rep.ac_ops_per_sample == pytest.approx(174)


def test_autocast_weight_copies_stay_weights():
    """bf16 autocast casts weights (new storage): they must still not count as activations.

    conv1's weight is spike-valued (0, 1, 2 <= D=4) and its input is real-valued, so conv1 is a MAC
    layer only if the bf16 copy of the weight is recognised as a weight: an activation that looks like
    that copy makes the same product an AC one (checked below, so the test can fail)."""
    net = HandNet().eval()
    meter = EnergyMeter(net)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16), meter:
        logits, _ = net(hand_input())
    assert logits.dtype == torch.bfloat16  # autocast did run: the products saw bf16 weight copies
    meter.add_samples(2)
    rep = meter.report()
    assert {r.name: r.kind for r in rep.layers} == {"conv1": "MAC", "conv2": "AC", "attn": "AC", "fc": "AC"}
    assert rep.mac_flops_per_sample == 144 and rep.ac_ops_per_sample == pytest.approx(174)

    # control: the same bf16 tensor made outside the model's weights is an activation, and spike-valued
    class ConvOf(nn.Module):
        def forward(self, x, w):
            return torch.nn.functional.conv2d(x, w, padding=1)

    w_copy = net.conv1.weight.detach().to(torch.bfloat16).clone()
    x = hand_input().flatten(0, 1).to(torch.bfloat16)
    control, _ = run_meter(ConvOf(), (x, w_copy), samples=2, spike_max=4)
    assert control.layers[0].kind == "AC"


def test_spike_driven_unfolding_keeps_ops():
    """Binary sub-steps (D=4) quadruple conv2's dense FLOPs but not its additions."""
    net = HandNet(spike_driven=True).eval()
    rep, _ = run_meter(net, hand_input(), samples=2)
    assert rep.ac_ops_per_sample == pytest.approx(174)
    assert rep.ac_flops_per_sample == 264 + 3 * 48
    n = {x.name: x.firing_rate for x in rep.neurons}
    assert n["sn1"] == pytest.approx(29 / 32)  # still spikes per neuron per timestep


def test_mac_layers_override_and_spike_cap():
    net = HandNet().eval()
    rep, _ = run_meter(net, hand_input(), samples=2, mac_layers=["conv2", "at*"])
    r = rows(rep)
    assert r["conv2"].kind == "MAC" and r["attn"].kind == "MAC" and r["fc"].kind == "AC"
    assert rep.mac_flops_per_sample == 144 + 48 + 96
    assert rep.energy_mj_per_sample == pytest.approx(((144 + 48 + 96) * 4.6 + 72.5 * 0.9) * PJ)
    # non-negative integer input above max_spike (auto: D=4) is not a spike: 0..255 pixels
    lin = nn.Sequential(nn.Linear(4, 3, bias=False), ILIF(D=4))
    pix = torch.tensor([[[0.0, 7.0, 255.0, 3.0]]])
    rep, _ = run_meter(lin, pix, samples=1)
    assert rep.layers[0].kind == "MAC"
    rep, _ = run_meter(lin, pix, samples=1, spike_max=None)
    assert rep.layers[0].kind == "AC"
    assert rep.layers[0].firing_rate_in == pytest.approx(265 / 4)


def test_operand_rule_and_weight_tracking():
    class Mixed(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.full((4, 3), 2.0))  # integer-valued weight

        def forward(self, a, b, r):
            x1 = a @ b  # both spikes: left operand's rate
            x2 = r @ b  # real @ spikes: AC with the spike operand's rate
            x3 = r @ (self.w * 0.5).round()  # weight-derived, integer-valued: still a weight
            x4 = a @ self.w.double().float()  # weight copies stay weights; a spikes -> AC
            return x1, x2, x3, x4

    a = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])  # rate 1/8
    b = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 1.0], [0.0, 1.0, 1.0], [1.0, 1.0, 1.0]])  # 11/12
    r = torch.randn(2, 4)
    m = Mixed()
    rep, _ = run_meter(m, (a, b, r), samples=1, spike_max=None)
    (x1, x2, x3, x4) = rep.layers
    assert x1.name == "(root)" and x2.name == "(root)#1"
    assert all(x.flops == 24 for x in (x1, x2, x3, x4))
    assert (x1.kind, x1.firing_rate_in, x1.ops) == ("AC", pytest.approx(1 / 8), pytest.approx(3))
    assert (x2.kind, x2.firing_rate_in, x2.ops) == ("AC", pytest.approx(11 / 12), pytest.approx(22))
    assert (x3.kind, x3.ops) == ("MAC", 24)
    assert (x4.kind, x4.firing_rate_in) == ("AC", pytest.approx(1 / 8))


def test_module_restriction():
    class Wrapper(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = HandNet()
            self.tower = nn.Linear(4, 7)  # e.g. a frozen CLIP tower: excluded

        def forward(self, x):
            logits, _ = self.encoder(x)
            feats = self.tower(torch.randn(3, 4))
            return logits.sum() + feats.sum() + (torch.randn(2, 3) @ torch.randn(3, 2)).sum()

    w = Wrapper().eval()
    rep, _ = run_meter(w, hand_input(), samples=2, module="encoder")
    assert {r.name for r in rep.layers} == {"encoder.conv1", "encoder.conv2", "encoder.attn", "encoder.fc"}
    assert rep.mac_flops_per_sample == 144 and rep.ac_ops_per_sample == pytest.approx(174)
    assert {n.name for n in rep.neurons} == {"encoder.sn1", "encoder.sn2"}
    full, _ = run_meter(w, hand_input(), samples=2)
    assert {r.name for r in full.layers} >= {"tower", "(root)"}
    assert full.mac_flops_per_sample == pytest.approx(144 + (3 * 4 * 7 + 2 * 3 * 2) / 2)


def test_two_batches_equal_one_concatenated_batch():
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1),
        ILIF(D=4),
        nn.Conv2d(4, 4, 3, padding=1),
        ILIF(D=2),
        nn.Flatten(),
        nn.Linear(4 * 5 * 5, 3),
    ).eval()
    x = torch.randn(6, 2, 5, 5) * 2
    # ILIF sees T=1 batches [1, N, ...]
    model = nn.Sequential()
    model.net = net

    def fwd(m, batch):
        h = m.net[0](batch).unsqueeze(0)
        h = m.net[2](m.net[1](h)[0]).unsqueeze(0)
        return m.net[5](m.net[4](m.net[3](h)[0]))

    one = measure_energy(model, [x], forward=fwd)
    two = measure_energy(model, [x[:4], x[4:]], forward=fwd)
    three = measure_energy(model, [x[:4], x[4:], x], forward=fwd, max_batches=2)
    for rep in (two, three):
        assert rep.samples == 6
        for f in ("mac_flops_per_sample", "ac_ops_per_sample", "energy_mj_per_sample", "mean_firing_rate"):
            assert getattr(rep, f) == pytest.approx(getattr(one, f), rel=1e-9), f
        for ra, rb in zip(one.layers, rep.layers):
            assert (ra.name, ra.kind, ra.flops) == (rb.name, rb.kind, rb.flops)
            assert ra.ops == pytest.approx(rb.ops, rel=1e-9)
    assert one.mac_flops_per_sample == 2 * 4 * 9 * 25  # first conv
    assert math.isfinite(one.energy_mj_per_sample) and one.energy_mj_per_sample < one.ann_energy_mj_per_sample
    with pytest.raises(ValueError, match="no samples"):
        EnergyMeter(net).report()


def test_cross_check_spikingjelly():
    oc = pytest.importorskip("spikingjelly.activation_based.op_counter")
    if not hasattr(oc, "estimate_simple_energy"):
        pytest.skip("spikingjelly op_counter has no estimate_simple_energy")
    torch.manual_seed(1)
    # no padding / bias: spikingjelly's exact synaptic ops equal rate * FLOPs
    m = nn.Sequential(
        nn.Conv2d(3, 4, 1, bias=False),
        BinarySpike(),
        nn.Conv2d(4, 6, 1, bias=False),
        BinarySpike(),
        nn.Flatten(),
        nn.Linear(6 * 8 * 8, 10, bias=False),
    ).eval()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        sj = oc.estimate_simple_energy(m, x)
    if not {"mac", "synop"} <= set(getattr(sj, "counts", {})):
        pytest.skip("unexpected spikingjelly report layout")
    rep = measure_energy(m, x)
    assert rep.mac_flops_per_sample * 2 == sj.counts["mac"]
    assert rep.ac_ops_per_sample * 2 == pytest.approx(sj.counts["synop"])


# ---------------------------------------------------------------------------------------------
# Sparse convolutions: counted through the dispatcher, never through spconv's invisible kernels
# ---------------------------------------------------------------------------------------------


def test_sparse_conv_products_are_pairs_times_channels():
    """2 sites next to each other, SubM k=3: 4 (input, output) pairs (each site with itself and with
    its neighbour); per pair C_in x C_out = 2 x 5 MACs; fed integer spikes, the additions are
    C_out x (sum over pairs of the input row) = 5 x (2 (2 + 0) + 2 (1 + 3))."""
    x = SparseTensor(
        torch.tensor([[2.0, 0.0], [1.0, 3.0]]), torch.tensor([[0, 1, 1, 1], [0, 1, 1, 2]]), (4, 4, 4), 1
    )
    rep, _ = run_meter(SubMConv3d(2, 5, 3, backend="torch"), x, samples=1, spike_max=None)
    assert rep.flops_per_sample == 4 * 2 * 5 and rep.mac_flops_per_sample == 0
    assert rep.ac_ops_per_sample == pytest.approx(5 * (2 * (2 + 0) + 2 * (1 + 3)))


def _sparse_net(backend: str) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        SubMConv3d(4, 6, 3, backend=backend),
        SparseActivation(ILIF(D=4)),
        SparseConv3d(6, 5, 2, stride=2, backend=backend),
    ).eval()


def _sparse_input() -> SparseTensor:
    g = torch.Generator().manual_seed(3)
    cols = [torch.randint(0, 2, (80,), generator=g)] + [
        torch.randint(0, 8, (80,), generator=g) for _ in range(3)
    ]
    idx = torch.unique(torch.stack(cols, 1), dim=0)
    return SparseTensor(torch.randn(idx.shape[0], 4, generator=g) * 2, idx, (8, 8, 8), 2)


def test_meter_runs_spconv_layers_on_the_torch_backend_and_restores_them(monkeypatch):
    _spconv_standin.install(monkeypatch)  # its kernels, like spconv's CUDA ones, bypass the dispatcher
    x = _sparse_input()
    want, _ = run_meter(_sparse_net("torch"), x, samples=2)
    net = _sparse_net("spconv")
    calls = _spconv_standin.CALLS["forward"]
    with torch.no_grad():
        net(x)
    assert _spconv_standin.CALLS["forward"] == calls + 2  # outside the meter both layers run "spconv"
    got, out = run_meter(net, x, samples=2)
    assert _spconv_standin.CALLS["forward"] == calls + 2  # ...inside, neither does
    assert [net[0].backend, net[2].backend] == ["spconv", "spconv"]  # restored
    assert want.mac_flops_per_sample > 0 and want.ac_ops_per_sample > 0
    for f in ("mac_flops_per_sample", "ac_flops_per_sample", "ac_ops_per_sample", "mean_firing_rate"):
        assert getattr(got, f) == pytest.approx(getattr(want, f), rel=1e-12), f
    assert [(r.name, r.kind, r.flops) for r in got.layers] == [(r.name, r.kind, r.flops) for r in want.layers]

    with pytest.raises(RuntimeError, match="would run spconv's kernels"):
        run_meter(net, x, samples=2, sparse_backend="refuse")
    assert [net[0].backend, net[2].backend] == ["spconv", "spconv"]
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in net.modules())


def test_spconv_modules_whose_kernels_bypass_the_meter_are_refused(monkeypatch):
    fake = _spconv_standin.install(monkeypatch)
    conv = fake.SubMConv3d(4, 6, 3)
    x = _sparse_input()
    t = fake.SparseConvTensor(x.features, x.indices.int(), x.spatial_shape, x.batch_size)
    with pytest.raises(RuntimeError, match="outside PyTorch's dispatcher"):
        run_meter(nn.Sequential(conv), t, samples=2)


def test_spconv_cpu_products_are_counted_like_ours():
    spconv = pytest.importorskip("spconv.pytorch")
    x = _sparse_input()
    ours = SubMConv3d(4, 6, 3, backend="torch")
    theirs = spconv.SubMConv3d(4, 6, 3, bias=False)
    theirs.weight = ours.weight
    want, _ = run_meter(nn.Sequential(ours), x, samples=2)
    t = spconv.SparseConvTensor(x.features, x.indices.int(), list(x.spatial_shape), x.batch_size)
    got, _ = run_meter(nn.Sequential(theirs), t, samples=2)
    assert got.mac_flops_per_sample == want.mac_flops_per_sample > 0


# ---------------------------------------------------------------------------------------------
# SpikeEnergy callback
# ---------------------------------------------------------------------------------------------


class TinyLit(lightning.LightningModule):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(4, 8), ILIF(D=4), nn.Linear(8, 3))
        self.tower = nn.Linear(4, 4)  # outside "encoder": not counted

    def forward(self, x):
        # x: [B, 4] -> T=1 inside the encoder
        h = self.encoder[1](self.encoder[0](x).unsqueeze(0))[0]
        return self.encoder[2](h)

    def step(self, batch):
        x, y = batch
        self.tower(x)
        return nn.functional.cross_entropy(self(x), y)

    def training_step(self, batch, batch_idx):
        return self.step(batch)

    def validation_step(self, batch, batch_idx):
        self.log("val/loss", self.step(batch))

    def test_step(self, batch, batch_idx):
        self.log("test/loss", self.step(batch))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def _energy_fit(tmp_path, cb, logger):
    from torch.utils.data import DataLoader, TensorDataset

    g = torch.Generator().manual_seed(0)
    ds = TensorDataset(torch.randn(16, 4, generator=g) * 3, torch.randint(0, 3, (16,), generator=g))
    trainer = lightning.Trainer(
        max_epochs=1,
        limit_train_batches=2,
        limit_val_batches=2,
        logger=logger,
        default_root_dir=tmp_path,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        callbacks=[cb],
        enable_checkpointing=False,
    )
    model = TinyLit()
    trainer.fit(model, DataLoader(ds, batch_size=4), DataLoader(ds, batch_size=4))
    return trainer, model, ds


def test_spike_energy_callback(tmp_path):
    from lightning.pytorch.loggers import CSVLogger
    from torch.utils.data import DataLoader

    from spikelight.callbacks import SpikeEnergy

    cb = SpikeEnergy(module="encoder", num_batches=1)
    trainer, model, ds = _energy_fit(tmp_path, cb, CSVLogger(tmp_path))

    data = json.loads((tmp_path / "energy.json").read_text())
    for k in (
        "energy_mj_per_sample",
        "ann_energy_mj_per_sample",
        "ac_ops_per_sample",
        "mac_flops_per_sample",
        "mean_firing_rate",
        "samples",
        "layers",
        "neurons",
        "stage",
        "epoch",
    ):
        assert k in data, k
    assert data["samples"] == 4  # num_batches=1 batch of 4 (the sanity check is skipped)
    assert data["stage"] == "validate"
    assert data["mac_flops_per_sample"] == 4 * 8  # first Linear, real input
    assert {r["name"] for r in data["layers"]} == {"encoder.0", "encoder.2"}
    assert (tmp_path / "firing_rates.png").stat().st_size > 0
    with open(tmp_path / "energy_layers.csv") as f:
        assert [r["name"] for r in csv.DictReader(f)] == ["encoder.0", "encoder.2"]
    logged = trainer.logged_metrics
    assert "energy/mj_per_sample" in logged and "energy/mean_firing_rate" in logged
    assert float(logged["energy/mj_per_sample"]) == pytest.approx(data["energy_mj_per_sample"], rel=1e-5)
    assert cb.last_report is not None and cb.last_report.samples == 4
    # the callback removed its hooks: no forward hooks left on the model
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())

    # a standalone test run measures too
    (tmp_path / "energy.json").unlink()
    trainer.test(model, DataLoader(ds, batch_size=8), verbose=False)
    data = json.loads((tmp_path / "energy.json").read_text())
    assert data["stage"] == "test" and data["samples"] == 8


def test_spike_energy_logs_interactive_firing_rates_to_wandb(tmp_path):
    """With W&B as logger: the PNG on disk, and in the (offline) run the layer table, the image and the
    table of an interactive bar chart with one row per neuron layer."""
    from spikelight.callbacks import SpikeEnergy
    from spikelight.loggers import OfflineWandbLogger

    logger = OfflineWandbLogger(offline=True, save_dir=str(tmp_path), project="t")
    trainer, _, _ = _energy_fit(tmp_path, SpikeEnergy(module="encoder", num_batches=1), logger)
    media = Path(logger.experiment.dir) / "media"
    logger.experiment.finish()
    assert (tmp_path / "firing_rates.png").stat().st_size > 0
    assert list(media.glob("images/energy/firing_rates_*.png"))
    (layers,) = [json.loads(p.read_text()) for p in media.glob("table/energy/layers_*.table.json")]
    assert [row[0] for row in layers["data"]] == ["encoder.0", "encoder.2"]
    tables = [json.loads(p.read_text()) for p in media.glob("table/energy/firing_rates_chart*.table.json")]
    assert tables and tables[0]["columns"] == ["layer", "firing_rate"]
    assert [row[0] for row in tables[0]["data"]] == ["encoder.1"]
