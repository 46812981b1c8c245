"""Tests for spikelight.losses.MTALoss (SVL's stateless MTA loss) with the AlignmentHead that owns the
projections and temperature, including a 2-process gloo DDP check."""

from __future__ import annotations

import math
import socket

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from spikelight.losses import MTALoss
from spikelight.models.alignment import AlignmentHead

C, D_IMG, D_TXT = 8, 12, 10
WORLD, B_LOCAL = 2, 4


def _make_head(**kw) -> AlignmentHead:
    torch.manual_seed(0)
    return AlignmentHead(embed_dim=C, image_dim=D_IMG, text_dim=D_TXT, **kw).double()


def _mta(head: AlignmentHead, loss_fn: MTALoss, pc, img, txt) -> dict:
    """The task's composition: head -> (image_emb, text_emb, logit_scale) -> stateless loss."""
    return loss_fn(pc, *head(img, txt))


def _data(n: int, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    pc = torch.randn(n, C, generator=g, dtype=torch.float64)
    img = torch.randn(n, D_IMG, generator=g, dtype=torch.float64)
    txt = torch.randn(n, D_TXT, generator=g, dtype=torch.float64)
    enc = torch.randn(C, C, generator=g, dtype=torch.float64) / math.sqrt(C)
    return pc, img, txt, enc


# --------------------------------------------------------------------------- numpy reference
def _np_normalize(a):
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def _np_ce(logits):  # rows are queries, the diagonal is the positive
    m = logits.max(axis=1, keepdims=True)
    lse = (m + np.log(np.exp(logits - m).sum(axis=1, keepdims=True)))[:, 0]
    return float(np.mean(lse - np.diag(logits)))


def _np_mta(pc, img, txt, w_img, w_txt, log_scale, mse_on="raw"):
    s = math.exp(log_scale)
    x = _np_normalize(pc)
    y = _np_normalize(txt @ w_txt.T)
    b = _np_normalize(img @ w_img.T)
    l_text = 0.5 * (_np_ce(s * x @ y.T) + _np_ce(s * y @ x.T))
    l_img = 0.5 * (_np_ce(s * x @ b.T) + _np_ce(s * b @ x.T))
    src = pc if mse_on == "raw" else x
    l_mse = float(np.mean((src - b) ** 2))
    acc_t = float(np.mean(np.argmax(x @ y.T, axis=1) == np.arange(len(x))))
    return l_text, l_img, l_mse, acc_t


@pytest.mark.parametrize("mse_on", ["raw", "normalized"])
def test_matches_numpy_reference(mse_on):
    head, loss_fn = _make_head(), MTALoss(mse_on=mse_on)
    pc, img, txt, _ = _data(6)
    out = _mta(head, loss_fn, pc, img, txt)
    ref = _np_mta(
        pc.numpy(),
        img.numpy(),
        txt.numpy(),
        head.proj_image.weight.detach().numpy(),
        head.proj_text.weight.detach().numpy(),
        head.logit_scale.item(),
        mse_on=mse_on,
    )
    assert out["loss_text"].item() == pytest.approx(ref[0], rel=1e-10)
    assert out["loss_image"].item() == pytest.approx(ref[1], rel=1e-10)
    assert out["loss_mse"].item() == pytest.approx(ref[2], rel=1e-10)
    assert out["acc_text"].item() == pytest.approx(ref[3])
    assert out["loss"].item() == pytest.approx(sum(ref[:3]), rel=1e-10)


def test_loss_is_stateless():
    loss_fn = MTALoss(lambda_text=0.5)
    assert list(loss_fn.parameters()) == [] and loss_fn.state_dict() == {}
    head = _make_head()
    pc, img, txt, _ = _data(5)
    a = _mta(head, loss_fn, pc, img, txt)
    with torch.no_grad():  # the temperature is the caller's: the same loss object follows it
        head.logit_scale.fill_(math.log(20.0))
    b = _mta(head, loss_fn, pc, img, txt)
    assert b["logit_scale"].item() == pytest.approx(20.0) and a["loss"].item() != b["loss"].item()


def test_temperature_init_clamp_and_gradient():
    head, loss_fn = _make_head(), MTALoss()
    assert head.logit_scale.item() == pytest.approx(math.log(1 / 0.07))
    pc, img, txt, _ = _data(5)
    out = _mta(head, loss_fn, pc, img, txt)
    assert out["logit_scale"].item() == pytest.approx(1 / 0.07)
    out["loss"].backward()
    assert head.logit_scale.grad is not None and head.logit_scale.grad.abs().item() > 0
    assert head.proj_text.weight.grad.abs().sum() > 0 and head.proj_image.weight.grad.abs().sum() > 0
    # CLIP clamps the logit scale at 100
    with torch.no_grad():
        head.logit_scale.fill_(10.0)
    out = _mta(head, loss_fn, pc, img, txt)
    assert out["logit_scale"].item() == pytest.approx(100.0)
    assert head.logit_scale.item() == pytest.approx(math.log(100.0))
    # a fixed temperature is a buffer, not a parameter
    fixed = AlignmentHead(embed_dim=C, learnable_temperature=False)
    assert "logit_scale" not in dict(fixed.named_parameters())
    assert "logit_scale" in dict(fixed.named_buffers())


def test_aligned_lower_than_random_and_symmetric():
    head, loss_fn = AlignmentHead(embed_dim=C, project=False).double(), MTALoss()
    g = torch.Generator().manual_seed(3)
    feat = F.normalize(torch.randn(16, C, generator=g, dtype=torch.float64), dim=-1)
    aligned = _mta(head, loss_fn, feat, feat, feat)
    rand = _mta(
        head, loss_fn, feat, torch.randn(16, C, generator=g, dtype=torch.float64), torch.randn(16, C, generator=g)
    )
    assert aligned["loss_text"] < rand["loss_text"] and aligned["loss_image"] < rand["loss_image"]
    assert aligned["loss_mse"].item() == pytest.approx(0.0, abs=1e-12)
    assert aligned["acc_text"].item() == 1.0 and aligned["acc_image"].item() == 1.0
    # InfoNCE is symmetric: swapping the roles of the 3D and text features leaves it unchanged
    other = F.normalize(torch.randn(16, C, generator=g, dtype=torch.float64), dim=-1)
    only_text = MTALoss(lambda_image=0, lambda_mse=0)
    ab = _mta(head, only_text, feat, None, other)
    ba = _mta(head, only_text, other, None, feat)
    assert ab["loss"].item() == pytest.approx(ba["loss"].item(), rel=1e-12)
    assert ab["loss_image"].item() == 0.0


def test_shapes_and_errors():
    head, loss_fn = AlignmentHead(embed_dim=C, image_dim=D_IMG, text_dim=D_TXT), MTALoss()
    out = _mta(head, loss_fn, torch.randn(3, C), torch.randn(3, D_IMG), torch.randn(3, D_TXT))
    assert set(out) == {"loss", "loss_text", "loss_image", "loss_mse", "logit_scale", "acc_text", "acc_image"}
    assert all(v.shape == () for v in out.values())
    assert head.project_text(torch.randn(7, D_TXT)).shape == (7, C)
    assert torch.allclose(head.project_image(torch.randn(7, D_IMG)).norm(dim=-1), torch.ones(7))
    with pytest.raises(ValueError, match="pc_feat"):
        _mta(head, loss_fn, torch.randn(3, C + 1), torch.randn(3, D_IMG), torch.randn(3, D_TXT))
    with pytest.raises(ValueError, match="image_emb"):
        _mta(head, loss_fn, torch.randn(3, C), torch.randn(4, D_IMG), torch.randn(3, D_TXT))
    with pytest.raises(ValueError, match="text_feat must be"):
        head(torch.randn(3, D_IMG), torch.randn(3, D_TXT + 1))
    with pytest.raises(ValueError, match="text_emb is None"):
        _mta(head, loss_fn, torch.randn(3, C), torch.randn(3, D_IMG), None)
    with pytest.raises(ValueError, match="project=False"):
        AlignmentHead(embed_dim=C, image_dim=C + 1, project=False)


def test_lambda_weights_combine_terms():
    pc, img, txt, _ = _data(6)
    full = _mta(_make_head(), MTALoss(), pc, img, txt)
    weighted = _mta(_make_head(), MTALoss(lambda_text=0.5, lambda_image=2.0, lambda_mse=0.0), pc, img, txt)
    expect = 0.5 * full["loss_text"] + 2.0 * full["loss_image"]
    assert weighted["loss"].item() == pytest.approx(expect.item(), rel=1e-12)


# --------------------------------------------------------------------------- DDP (gloo, 2 processes)
def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_step(rank, world, head, loss_fn, enc, pc, img, txt, lo, hi):
    """One rank's step on rows lo:hi: loss, then DDP-style averaged grads of the replicated params."""
    head.zero_grad()
    enc = enc.clone().requires_grad_(True)
    pc_in = pc[lo:hi].clone().requires_grad_(True)
    out = _mta(head, loss_fn, pc_in @ enc, img[lo:hi], txt[lo:hi])
    out["loss"].backward()
    grads = {n: p.grad.clone() for n, p in head.named_parameters()}
    grads["enc"] = enc.grad.clone()
    for g in grads.values():  # what DDP does: average over ranks
        torch.distributed.all_reduce(g)
        g /= world
    return {k: v.detach() for k, v in out.items()}, grads, pc_in.grad.clone()


def _ddp_worker(rank, world, port, state, data, results_path):
    torch.distributed.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    try:
        torch.set_num_threads(1)
        pc, img, txt, enc = data
        res = {}
        for local_loss in (True, False):
            head = AlignmentHead(embed_dim=C, image_dim=D_IMG, text_dim=D_TXT).double()
            head.load_state_dict(state)
            lo, hi = rank * B_LOCAL, (rank + 1) * B_LOCAL
            res[local_loss] = _ddp_step(rank, world, head, MTALoss(local_loss=local_loss), enc, pc, img, txt, lo, hi)
        # unequal batch sizes (5 + 3): padding and offsets must still give the global loss
        head = AlignmentHead(embed_dim=C, image_dim=D_IMG, text_dim=D_TXT).double()
        head.load_state_dict(state)
        lo, hi = (0, 5) if rank == 0 else (5, 8)
        with torch.no_grad():
            out = _mta(head, MTALoss(), pc[lo:hi] @ enc, img[lo:hi], txt[lo:hi])
        res["unequal"] = (hi - lo, {k: v.detach() for k, v in out.items()})
        torch.save(res, f"{results_path}.{rank}")
    finally:
        torch.distributed.destroy_process_group()


def test_ddp_gradients_match_single_process(tmp_path):
    """2 gloo ranks x 4 samples == 1 process x 8 samples, for the loss and every gradient."""
    import torch.multiprocessing as mp

    n = WORLD * B_LOCAL
    pc, img, txt, enc = _data(n, seed=7)
    ref_head = _make_head()
    state = {k: v.clone() for k, v in ref_head.state_dict().items()}

    # single process on the concatenated batch
    enc_ref = enc.clone().requires_grad_(True)
    pc_ref = pc.clone().requires_grad_(True)
    ref = _mta(ref_head, MTALoss(), pc_ref @ enc_ref, img, txt)
    ref["loss"].backward()
    ref_grads = {nm: p.grad for nm, p in ref_head.named_parameters()}
    ref_grads["enc"] = enc_ref.grad

    results = tmp_path / "res"
    mp.spawn(_ddp_worker, args=(WORLD, _free_port(), state, (pc, img, txt, enc), str(results)), nprocs=WORLD)
    per_rank = [torch.load(f"{results}.{r}", weights_only=False) for r in range(WORLD)]

    for local_loss in (True, False):
        outs = [per_rank[r][local_loss][0] for r in range(WORLD)]
        # mean of the ranks' losses (what sync_dist logging reports) == single-process loss
        for key in ("loss", "loss_text", "loss_image", "loss_mse", "acc_text", "acc_image"):
            got = sum(o[key] for o in outs) / WORLD
            assert got.item() == pytest.approx(ref[key].item(), abs=1e-10), (local_loss, key)
        # averaged gradients of projections, temperature and the shared "encoder" == single process
        for name, g_ref in ref_grads.items():
            for r in range(WORLD):
                torch.testing.assert_close(
                    per_rank[r][local_loss][1][name], g_ref, atol=1e-10, rtol=1e-8, msg=f"{local_loss} {name}"
                )
        # each rank's input-feature gradient is world_size x the global-loss gradient of its rows
        input_grads = torch.cat([per_rank[r][local_loss][2] for r in range(WORLD)]) / WORLD
        torch.testing.assert_close(input_grads, pc_ref.grad, atol=1e-10, rtol=1e-8)
        assert ref_grads["logit_scale"].abs().item() > 0

    # unequal local batches: the size-weighted mean of the rank losses is the global loss
    sizes = [per_rank[r]["unequal"][0] for r in range(WORLD)]
    assert sizes == [5, 3]
    weighted = sum(s * per_rank[r]["unequal"][1]["loss"] for r, s in enumerate(sizes)) / n
    assert weighted.item() == pytest.approx(ref["loss"].item(), abs=1e-10)
