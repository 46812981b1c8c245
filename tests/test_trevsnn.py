"""T-RevSNN: reversible backward vs BPTT, state reconstruction, sharing, shapes, memory, loss."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from spikelight.losses import loss_weights, trevsnn_loss
from spikelight.models import create_model
from spikelight.models.trevsnn import (
    LEAK_MIN,
    TRevSNN,
    clamp_leak,
    trevsnn_small,
    trevsnn_test,
    trevsnn_tiny,
)

K = 5


pytestmark = pytest.mark.usefixtures("one_thread")


def _randomise(model: TRevSNN, seed: int = 0) -> None:
    """Non-trivial weights: leaks of both signs (one clamped), random BN affine, layer scale ~1."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for leak in model.leaks:
            leak.copy_(torch.empty(leak.shape).uniform_(0.2, 0.9, generator=g))
            leak[0] = -0.6  # negative leak: sign must be kept
            leak[1] = 1e-4  # inside the clamp: used as 1e-3, gradient 0
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.copy_(torch.empty(m.weight.shape).uniform_(0.5, 1.5, generator=g))
                m.bias.copy_(torch.empty(m.bias.shape).uniform_(-0.2, 0.6, generator=g))
        for name, p in model.named_parameters():
            if name.endswith("gamma"):
                p.copy_(torch.empty(p.shape).uniform_(0.5, 1.5, generator=g))


def _pair(T: int, **kw) -> tuple[TRevSNN, TRevSNN]:
    torch.manual_seed(0)
    rev = trevsnn_test(num_classes=K, timesteps=T, mode="reversible", **kw).double()
    _randomise(rev)
    bptt = trevsnn_test(num_classes=K, timesteps=T, mode="bptt", **kw).double()
    bptt.load_state_dict(rev.state_dict())
    return rev, bptt


def _loss_and_grads(model: TRevSNN, x: torch.Tensor, y: torch.Tensor, seed: int = 123):
    x = x.clone().requires_grad_(True)
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    logits = model(x)
    loss = trevsnn_loss(logits, y)
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    return loss.detach(), logits.detach(), grads, x.grad


def _data(shape=(2, 3, 32, 32), seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=g, dtype=torch.float64)
    y = torch.randint(0, K, (shape[0],), generator=g)
    return x, y


def _assert_grads_match(rev, bptt, x, y, seed=123):
    l_r, o_r, g_r, gx_r = _loss_and_grads(rev, x, y, seed)
    l_b, o_b, g_b, gx_b = _loss_and_grads(bptt, x, y, seed)
    torch.testing.assert_close(o_r, o_b, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(l_r, l_b, rtol=1e-10, atol=1e-10)
    assert set(g_r) == set(g_b)
    missing = [n for n, g in g_b.items() if g is not None and g_r[n] is None]
    assert not missing, f"reversible mode gave no grad for {missing}"
    for n, gb in g_b.items():
        if gb is None:
            assert g_r[n] is None, n
            continue
        torch.testing.assert_close(g_r[n], gb, rtol=1e-8, atol=1e-10, msg=lambda m, n=n: f"{n}: {m}")
    torch.testing.assert_close(gx_r, gx_b, rtol=1e-8, atol=1e-12)
    return g_r, gx_r


@pytest.mark.parametrize("T", [1, 2, 3])
def test_reversible_grads_match_bptt(T):
    rev, bptt = _pair(T, layer_scale_init=1.0)
    x, y = _data()
    g_r, gx_r = _assert_grads_match(rev, bptt, x, y)
    # the comparison is meaningful: grads reach the input, the shared convs and (T>1) the leaks
    assert gx_r.abs().sum() > 0
    for lvl in range(4):
        assert g_r[f"shared.{lvl}.pw2.weight"].abs().sum() > 0
        assert g_r[f"shared.{lvl}.dw2.weight"].abs().sum() > 0
        ga = g_r[f"leaks.{lvl}"]
        if T == 1:  # c[0] = 0: the leak does not enter
            assert ga is None or ga.abs().sum() == 0
        else:
            assert ga[0].abs() > 0  # negative leak gets gradient
            assert ga[1] == 0  # clamped entry gets none
    # every per-timestep parameter that BPTT trains is trained (no silently dropped column)
    for t in range(T):
        assert g_r[f"columns.{t}.levels.1.blocks.0.pw1.weight"].abs().sum() > 0
    # BN running stats updated exactly once by the reversible run (not again by the recompute)
    for (n, b_r), (_, b_b) in zip(rev.named_buffers(), bptt.named_buffers()):
        torch.testing.assert_close(b_r, b_b, rtol=1e-10, atol=1e-12, msg=lambda m, n=n: f"{n}: {m}")
        if n.endswith("num_batches_tracked"):
            assert int(b_r) == 1, n


def test_reversible_grads_match_bptt_conv_down0_and_aux_only_loss():
    rev, bptt = _pair(3, layer_scale_init=1.0, down0="conv3x3")
    x, y = _data(seed=3)
    _assert_grads_match(rev, bptt, x, y)
    # loss on the aux heads only (the final output gets no gradient): still identical
    grads = []
    for m in (rev, bptt):
        m.zero_grad(set_to_none=True)
        out = m(x)
        F.cross_entropy(out[0], y).add(F.cross_entropy(out[1], y)).backward()
        grads.append({n: p.grad for n, p in m.named_parameters()})
    for n, gb in grads[1].items():
        if gb is None:
            assert grads[0][n] is None or grads[0][n].abs().sum() == 0, n
        else:
            torch.testing.assert_close(grads[0][n], gb, rtol=1e-8, atol=1e-10)
    assert grads[0]["heads.2.fc.weight"].abs().sum() == 0  # stacked logits: zero, not None


def test_autograd_grad_and_frozen_params():
    """Param grads are returned by the Function: torch.autograd.grad works; frozen params skipped."""
    rev, bptt = _pair(2, layer_scale_init=1.0)
    x, y = _data(seed=5)
    for m in (rev, bptt):
        m.columns[1].levels[2].blocks[0].pw1.weight.requires_grad_(False)
    picks = ["leaks.1", "shared.2.pw2.weight", "columns.0.levels.3.down.conv.weight", "stems.0.conv1.weight"]
    res = []
    for m in (rev, bptt):
        params = dict(m.named_parameters())
        res.append(torch.autograd.grad(trevsnn_loss(m(x), y), [params[n] for n in picks]))
        assert all(p.grad is None for p in m.parameters())  # nothing accumulated as a side effect
    for a, b in zip(*res):
        assert a.abs().sum() > 0
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)
    trevsnn_loss(rev(x), y).backward()
    assert rev.columns[1].levels[2].blocks[0].pw1.weight.grad is None


def test_drop_path_rng_is_replayed():
    rev, bptt = _pair(2, layer_scale_init=1.0, drop_path_rate=0.5)
    x, y = _data(seed=4)
    _assert_grads_match(rev, bptt, x, y, seed=7)
    # the caller's RNG stream is left as the forward left it (backward restores it)
    after = []
    for m in (rev, bptt):
        torch.manual_seed(11)
        trevsnn_loss(m(x), y).backward()
        after.append(torch.rand(4))
    torch.testing.assert_close(after[0], after[1])
    # and drop path really is random (otherwise the test above proves nothing about RNG)
    torch.manual_seed(1)
    a = rev(x)
    torch.manual_seed(2)
    b = rev(x)
    assert not torch.allclose(a, b)


def test_reconstructed_states_equal_forward_states():
    T = 3
    rev, _ = _pair(T, layer_scale_init=1.0)
    x, y = _data()
    with rev.record_states() as rec:
        trevsnn_loss(rev(x), y).backward()
    assert sorted(rec.forward) == [(t, lvl) for t in range(1, T + 1) for lvl in range(4)]
    assert sorted(rec.reconstructed) == [(t, lvl) for t in range(1, T) for lvl in range(4)]
    # inversion error ~ eps * |c| / |a|^k after k steps; the clamped channel (|a| = 1e-3) amplifies
    # float64 rounding by 1e3 per step, hence 1e-8 and not 1e-15
    for key, c in rec.reconstructed.items():
        assert c.abs().max() > 0
        torch.testing.assert_close(
            c, rec.forward[key], rtol=1e-8, atol=1e-8, msg=lambda m, k=key: f"{k}: {m}"
        )
        ok = torch.ones(c.shape[1], dtype=torch.bool)
        ok[1] = False  # channels with an unclamped leak: near machine precision
        torch.testing.assert_close(c[:, ok], rec.forward[key][:, ok], rtol=1e-12, atol=1e-13)
    # state really moves between timesteps (reconstruction is not trivially the last state)
    assert not torch.allclose(rec.forward[(1, 0)], rec.forward[(2, 0)])
    assert rev._recorder is None


def test_leak_clamp_keeps_sign_and_magnitude():
    a = torch.tensor([0.5, -0.5, 1e-4, -1e-4, 0.0, 1e-3, -1e-3, -2.0], requires_grad=True)
    c = clamp_leak(a)
    expected = torch.tensor([0.5, -0.5, 1e-3, -1e-3, 1e-3, 1e-3, -1e-3, -2.0])
    torch.testing.assert_close(c.detach(), expected)
    assert (c.detach().abs() >= LEAK_MIN).all()
    c.sum().backward()
    torch.testing.assert_close(a.grad, torch.tensor([1.0, 1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0]))
    # the model uses it in the forward: a zero leak parameter behaves as +1e-3
    model = trevsnn_test(num_classes=K, timesteps=2)
    with torch.no_grad():
        model.leaks[2].zero_()
        model.leaks[2][3] = -1e-6
    eff = model._leak(2).flatten()
    assert eff[0].item() == pytest.approx(1e-3)
    assert eff[3].item() == pytest.approx(-1e-3)


def test_leak_enters_state_update_as_documented():
    """c_l[2] - L_l = a_l * c_l[1], checked on recorded states with a hand-set leak."""
    model = trevsnn_test(num_classes=K, timesteps=2, mode="bptt").double().eval()
    with torch.no_grad():
        for leak in model.leaks:
            leak.fill_(0.3)
    x, _ = _data()
    with torch.no_grad(), model.record_states() as rec:
        model(x)
        # L_3 at t=2 recomputed by hand from c2[2]
        L3 = model.columns[1].levels[3](rec.forward[(2, 2)], None)
    torch.testing.assert_close(rec.forward[(2, 3)], 0.3 * rec.forward[(1, 3)] + L3)


def test_shared_modules_are_the_same_objects():
    T = 3
    model = trevsnn_test(num_classes=K, timesteps=T)
    for lvl in range(4):
        last = [model.columns[t].levels[lvl].blocks[-1] for t in range(T)]
        first = [model.columns[t].levels[lvl].blocks[0] for t in range(T)]
        for blk in last:
            assert blk.pw2 is model.shared[lvl]["pw2"] and blk.dw2 is model.shared[lvl]["dw2"]
            assert blk.is_shared
        # everything else is per timestep
        assert first[0].pw2 is not first[1].pw2
        assert last[0].pw1 is not last[1].pw1 and last[0].dw1 is not last[1].dw1
        assert last[0].gamma is not last[1].gamma
    # registered once: unique parameter names, state dict without duplicates
    names = [n for n, _ in model.named_parameters()]
    assert len(names) == len(set(names))
    assert not any("blocks.1.pw2" in n or "blocks.1.dw2" in n for n in model.state_dict())
    assert sum(p.numel() for p in model.parameters()) == model.param_count()
    # the first timestep has no top-down (Up) modules, later ones do (except level 3)
    assert all(model.columns[0].levels[lvl].up is None for lvl in range(4))
    assert all(model.columns[1].levels[lvl].up is not None for lvl in range(3))
    assert model.columns[1].levels[3].up is None
    # .to() keeps the sharing
    model = model.double()
    assert model.columns[2].levels[0].blocks[-1].pw2.weight.dtype == torch.float64


def test_output_shapes_train_and_eval():
    T = 3
    model = trevsnn_test(num_classes=7, timesteps=T)
    x = torch.randn(2, 3, 32, 32)
    assert model(x).shape == (T, 2, 7)
    model.eval()
    with torch.no_grad():
        last = model(x)
        full = model(x, all_heads=True)
        feats = model.forward_features(x)
    assert last.shape == (2, 7)
    assert full.shape == (T, 2, 7)
    torch.testing.assert_close(last, full[-1])
    assert len(feats) == T and feats[0].shape == (2, 32, 2, 2)
    with pytest.raises(ValueError, match="expects"):
        model(torch.randn(2, 1, 32, 32))
    with pytest.raises(ValueError, match="unknown model 'trevsnn_huge'.*trevsnn_small"):
        create_model("trevsnn_huge")
    with pytest.raises(ValueError, match="mode"):
        trevsnn_test(mode="checkpoint")
    with pytest.raises(ValueError, match="channels"):
        TRevSNN(channels=(8, 16, 16))


def test_eval_inference_same_in_both_modes_and_grad_free():
    rev, bptt = _pair(3)
    rev.eval()
    bptt.eval()
    x, _ = _data()
    with torch.no_grad():
        a = rev(x)
    b = bptt(x)  # grad enabled but eval: plain autograd
    torch.testing.assert_close(a, b.detach())
    assert a.shape == (2, K)


def test_dvs_variant_forward_backward():
    T, F_per = 2, 2
    kw = dict(dvs=True, in_chans=2 * F_per, layer_scale_init=1.0)
    rev, bptt = _pair(T, **kw)
    assert len(rev.stems) == T and rev.stems[0] is not rev.stems[1]
    g = torch.Generator().manual_seed(5)
    x = torch.poisson(torch.full((2, T * F_per, 2, 32, 32), 0.5, dtype=torch.float64), generator=g)
    y = torch.tensor([1, 3])
    g_r, gx = _assert_grads_match(rev, bptt, x, y)
    assert gx.shape == x.shape and gx.abs().sum() > 0
    for t in range(T):
        assert g_r[f"stems.{t}.conv1.weight"].abs().sum() > 0
    with pytest.raises(ValueError, match="chunked"):
        rev(torch.zeros(2, 3, 2, 32, 32, dtype=torch.float64))
    with pytest.raises(ValueError, match="in_chans"):
        rev(torch.zeros(2, 2 * T, 1, 32, 32, dtype=torch.float64))


def test_autocast_bf16_every_parameter_learns_and_reversible_matches_bptt():
    """bf16 autocast on CPU: autocast is really on (bf16 logits), the states stay float32, every parameter
    gets a finite, non-zero gradient, and the reversible backward (which must re-enter the forward's
    autocast state for its recompute) gives BPTT's gradients under the same autocast."""
    torch.manual_seed(0)
    rev = trevsnn_test(num_classes=K, timesteps=2)
    _randomise(rev)  # layer scales ~1: the blocks shape the output
    bptt = trevsnn_test(num_classes=K, timesteps=2, mode="bptt")
    bptt.load_state_dict(rev.state_dict())
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(4, 3, 32, 32, generator=g), torch.tensor([0, 1, 2, 3])
    grads = {}
    for name, model in (("reversible", rev), ("bptt", bptt)):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            feats = model.forward_features(x)
            logits = torch.stack([h(f) for h, f in zip(model.heads, feats)])
            loss = trevsnn_loss(logits.float(), y)
        assert logits.dtype == torch.bfloat16, name
        assert all(f.dtype == torch.float32 for f in feats), name
        loss.backward()
        grads[name] = {n: p.grad for n, p in model.named_parameters()}
    for n, gr in grads["reversible"].items():
        assert gr is not None, f"no gradient for {n}"
        assert torch.isfinite(gr).all() and gr.abs().sum() > 0, n
    r = torch.cat([gr.flatten() for gr in grads["reversible"].values()])
    b = torch.cat([gr.flatten() for gr in grads["bptt"].values()])
    assert (r - b).norm() <= 0.02 * b.norm(), float((r - b).norm() / b.norm())


def _saved_bytes(model: TRevSNN, x: torch.Tensor) -> int:
    seen: dict[tuple[int, int], int] = {}

    def pack(t: torch.Tensor):
        nbytes = t.numel() * t.element_size()
        seen[(t.data_ptr(), nbytes)] = nbytes
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(x)
    del out
    return sum(seen.values())


def test_reversible_saved_memory_flat_in_T():
    x = torch.randn(2, 3, 64, 64)
    res = {}
    for mode in ("bptt", "reversible"):
        for T in (1, 4):
            torch.manual_seed(0)
            res[mode, T] = _saved_bytes(trevsnn_test(num_classes=K, timesteps=T, mode=mode), x)
    print("saved-for-backward bytes:", res)
    bptt_ratio = res["bptt", 4] / res["bptt", 1]
    rev_ratio = res["reversible", 4] / res["reversible", 1]
    assert bptt_ratio > 3.0, res
    assert rev_ratio < 1.2, res
    assert res["reversible", 4] * 4 < res["bptt", 4], res


def test_param_counts_tiny_small():
    counts = {}
    for name, fn, target in (("tiny", trevsnn_tiny, 15.2e6), ("small", trevsnn_small, 29.8e6)):
        m = fn(num_classes=1000, timesteps=4)
        one_head, all_heads = m.param_count(aux_heads=False), m.param_count()
        counts[name] = (one_head, all_heads)
        print(f"T-RevSNN-{name}: {one_head / 1e6:.3f}M (final head only), {all_heads / 1e6:.3f}M (4 heads)")
        assert abs(one_head - target) / target < 0.05, (name, one_head)
        assert all_heads - one_head == 3 * (m.channels[3] * 1000 + 1000 + 2 * m.channels[3])
        del m


def test_loss_weights_and_value():
    assert loss_weights(4) == [0.25, 0.5, 0.75, 2.0]
    assert loss_weights(1) == [2.0]
    assert loss_weights(2) == [0.25, 2.0]
    assert loss_weights(3) == [0.25, 0.5, 2.0]
    assert loss_weights(6) == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.25, 2.0])
    assert loss_weights(3, (1.0, 3.0)) == [1.0, 1.0, 3.0]
    assert loss_weights(3, (1.0, 2.0, 3.0)) == [1.0, 2.0, 3.0]
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 3, K, generator=g)
    y = torch.tensor([0, 4, 2])

    def ce(lg):  # hand-written cross-entropy
        return -(lg.log_softmax(-1)[torch.arange(3), y]).mean()

    expected = 0.25 * ce(logits[0]) + 0.5 * ce(logits[1]) + 0.75 * ce(logits[2]) + 2.0 * ce(logits[3])
    torch.testing.assert_close(trevsnn_loss(logits, y), expected)
    torch.testing.assert_close(trevsnn_loss(list(logits), y), expected)
    torch.testing.assert_close(trevsnn_loss(logits[3], y), ce(logits[3]))
    # label smoothing: (1-e) * CE + e * mean(-log p)
    e = 0.1
    sm = (1 - e) * ce(logits[3]) + e * (-logits[3].log_softmax(-1).mean(-1)).mean()
    torch.testing.assert_close(trevsnn_loss(logits[3:], y, label_smoothing=e), 2.0 * sm)
    assert math.isfinite(trevsnn_loss(logits[:2], y).item())
