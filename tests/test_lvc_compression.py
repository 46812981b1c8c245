"""LVC's query-attention compression (spikelight.models.lvc) on hand-made tensors, against a plain
per-window, per-token loop written from the paper's formula."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from spikelight.models.lvc import QueryAttentionCompression, compressed_length, question_query

pytestmark = pytest.mark.usefixtures("one_thread")


def reference(v, q, mask, w, scale=None, temperature=1.0, residual=0.0):
    """Loop version: for each video, window and spatial token, softmax over the window's real frames."""
    b, m, t, d = v.shape
    n = math.ceil(m / w)
    out = torch.zeros(b, n, t, d, dtype=torch.float64)
    valid = torch.zeros(b, n, dtype=torch.bool)
    s = (1 / math.sqrt(d)) if scale is None else scale
    for bi in range(b):
        for i in range(n):
            frames = [f for f in range(i * w, min((i + 1) * w, m)) if mask[bi, f]]
            if not frames:
                continue
            valid[bi, i] = True
            for k in range(t):
                vk = torch.stack([v[bi, f, k].double() for f in frames])  # [w', d]
                a = torch.softmax(vk @ q[bi].double() * s / temperature, dim=0)
                out[bi, i, k] = (1 - residual) * (a[:, None] * vk).sum(0) + residual * vk.mean(0)
    return out, valid


def test_matches_the_formula_for_every_option():
    g = torch.Generator().manual_seed(0)
    v = torch.randn(2, 7, 3, 8, generator=g)
    q = torch.randn(2, 8, generator=g) * 3
    mask = torch.ones(2, 7, dtype=torch.bool)
    mask[1, 5:] = False
    for kw in ({}, {"scale": 0.3, "temperature": 2.0}, {"temperature": 0.1, "mean_residual": 0.25}):
        lvc = QueryAttentionCompression(window=3, **kw)
        out, valid = lvc(v, q, mask)
        ref, ref_valid = reference(
            v, q, mask, 3, kw.get("scale"), kw.get("temperature", 1.0), kw.get("mean_residual", 0.0)
        )
        assert out.shape == (2, 3, 3, 8) and torch.equal(valid, ref_valid)
        torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=1e-5)


def test_a_query_aligned_with_one_frame_selects_that_frame():
    g = torch.Generator().manual_seed(1)
    d = 16
    q = torch.zeros(1, d)
    q[0, 0] = 1.0
    v = 0.1 * torch.randn(1, 8, 4, d, generator=g)
    chosen = [2, 1]  # frame 2 in window 0 (frames 0-3), frame 1 (= 5) in window 1 (frames 4-7)
    v[0, 2, :, 0] = 5.0
    v[0, 5, :, 0] = 5.0
    out, valid = QueryAttentionCompression(window=4, temperature=1e-3)(v, q)
    assert valid.all()
    torch.testing.assert_close(out[0, 0], v[0, 4 * 0 + chosen[0]], atol=1e-6, rtol=0)
    torch.testing.assert_close(out[0, 1], v[0, 4 * 1 + chosen[1]], atol=1e-6, rtol=0)
    # per spatial token: token 3 of window 0 aligned with frame 0 instead -> that token comes from frame 0
    v[0, 2, 3, 0] = 0.0
    v[0, 0, 3, 0] = 5.0
    out, _ = QueryAttentionCompression(window=4, temperature=1e-3)(v, q)
    torch.testing.assert_close(out[0, 0, 3], v[0, 0, 3], atol=1e-6, rtol=0)
    torch.testing.assert_close(out[0, 0, :3], v[0, 2, :3], atol=1e-6, rtol=0)


def test_uniform_scores_give_the_window_mean():
    g = torch.Generator().manual_seed(2)
    v = torch.randn(2, 6, 5, 12, generator=g)
    out, _ = QueryAttentionCompression(window=3)(v, torch.zeros(2, 12))  # every score 0
    torch.testing.assert_close(out, v.view(2, 2, 3, 5, 12).mean(dim=2), atol=1e-6, rtol=0)
    # mean_residual = 1 is the window mean whatever the query
    out, _ = QueryAttentionCompression(window=3, mean_residual=1.0)(v, torch.randn(2, 12, generator=g))
    torch.testing.assert_close(out, v.view(2, 2, 3, 5, 12).mean(dim=2), atol=1e-6, rtol=0)


def test_padding_never_leaks_into_a_pseudo_frame():
    g = torch.Generator().manual_seed(3)
    short = torch.randn(1, 5, 3, 8, generator=g)
    long = torch.randn(1, 9, 3, 8, generator=g)
    q = torch.randn(2, 8, generator=g)
    batch = torch.full((2, 9, 3, 8), float("nan"))  # padding holds garbage, even NaN
    batch[0, :5] = short[0]
    batch[0, 7, 0, 0] = 1e30
    batch[1] = long[0]
    mask = torch.zeros(2, 9, dtype=torch.bool)
    mask[0, :5] = True
    mask[1] = True
    lvc = QueryAttentionCompression(window=2)
    out, valid = lvc(batch, q, mask)
    alone, alone_valid = lvc(short, q[:1])  # the short video without any padding
    assert torch.isfinite(out).all()
    assert valid.tolist() == [[True, True, True, False, False], [True] * 5]
    assert alone_valid.tolist() == [[True, True, True]]
    torch.testing.assert_close(out[0, :3], alone[0], atol=0, rtol=0)
    assert torch.equal(out[0, 3:], torch.zeros(2, 3, 8))  # all-padding windows: zeros, masked out
    torch.testing.assert_close(out[1:], lvc(long, q[1:])[0], atol=0, rtol=0)
    # window 2 = frame 4 + a padded frame: exactly frame 4 (softmax over its one real frame)
    assert torch.equal(out[0, 2], short[0, 4])


def test_m_not_divisible_by_w_and_w_1_is_the_identity():
    g = torch.Generator().manual_seed(4)
    v = torch.randn(1, 7, 4, 6, generator=g)
    q = torch.randn(1, 6, generator=g)
    out, valid = QueryAttentionCompression(window=3)(v, q)
    assert out.shape == (1, 3, 4, 6) and valid.all() and compressed_length(7, 3) == 3
    assert torch.equal(out[0, 2], v[0, 6])  # the last window holds frame 6 alone
    out1, valid1 = QueryAttentionCompression(window=1)(v, q)
    assert torch.equal(out1, v) and valid1.all()
    assert [compressed_length(m, 4) for m in (1, 4, 5, 8, 9)] == [1, 1, 2, 2, 3]


def test_no_parameters_and_gradients_flow_to_the_tokens():
    lvc = QueryAttentionCompression(window=4, temperature=0.5, mean_residual=0.1)
    assert list(lvc.parameters()) == [] and list(lvc.buffers()) == [] and lvc.state_dict() == {}
    assert "window=4" in repr(lvc)
    g = torch.Generator().manual_seed(5)
    v = torch.randn(2, 6, 3, 8, generator=g, requires_grad=True)
    q = torch.randn(2, 8, generator=g, requires_grad=True)
    mask = torch.tensor([[True] * 6, [True] * 3 + [False] * 3])
    out, _ = lvc(v, q, mask)
    (out * torch.randn(out.shape, generator=g)).sum().backward()
    assert (v.grad[0].abs().sum(dim=(1, 2)) > 0).all() and (v.grad[1, :3].abs().sum(dim=(1, 2)) > 0).all()
    assert torch.equal(v.grad[1, 3:], torch.zeros(3, 3, 8))  # padded frames get no gradient
    assert q.grad is not None and q.grad.abs().sum() > 0


def test_bfloat16_tokens_and_bad_arguments():
    g = torch.Generator().manual_seed(6)
    v = torch.randn(1, 4, 2, 8, generator=g)
    q = torch.randn(1, 8, generator=g)
    out16, _ = QueryAttentionCompression(window=2)(v.bfloat16(), q.bfloat16())
    out32, _ = QueryAttentionCompression(window=2)(v, q)
    assert out16.dtype == torch.bfloat16
    torch.testing.assert_close(out16.float(), out32, atol=5e-2, rtol=5e-2)
    for bad in ({"window": 0}, {"temperature": 0.0}, {"mean_residual": 1.5}):
        with pytest.raises(ValueError):
            QueryAttentionCompression(**bad)
    with pytest.raises(ValueError, match=r"\[B, M, t, d\]"):
        QueryAttentionCompression()(v[0], q)
    with pytest.raises(ValueError, match="query must be"):
        QueryAttentionCompression()(v, q[:, :4])
    with pytest.raises(ValueError, match="frame_mask must be"):
        QueryAttentionCompression()(v, q, torch.ones(1, 3, dtype=torch.bool))


def test_question_query_is_the_mean_of_the_question_embeddings():
    emb = nn.Embedding(10, 4)
    ids = torch.tensor([[3, 5, 7, 0], [2, 0, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]])
    q = question_query(ids, mask, emb)
    w = emb.weight.detach()
    torch.testing.assert_close(q[0], (w[3] + w[5] + w[7]) / 3)
    torch.testing.assert_close(q[1], w[2])
    torch.testing.assert_close(question_query(ids[:1, :3], None, emb)[0], (w[3] + w[5] + w[7]) / 3)
    with pytest.raises(ValueError, match="no valid token"):
        question_query(ids, torch.tensor([[1, 1, 1, 0], [0, 0, 0, 0]]), emb)
