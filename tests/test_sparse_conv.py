"""Pure-PyTorch sparse convolution vs dense F.conv3d, hand-computed kernel maps, voxelisation."""

from __future__ import annotations

import _spconv_standin
import pytest
import torch
import torch.nn.functional as F

from spikelight.nn.sparse_conv import (
    BatchNormLastDim,
    SparseActivation,
    SparseBatchNorm,
    SparseConv3d,
    SparseTensor,
    SubMConv3d,
    build_kernel_map,
    global_max_pool,
    global_mean_pool,
    set_backend,
    sparse_conv_reference,
    spconv_available,
    voxelize,
    weight_from_spconv,
    weight_to_spconv,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def random_sites(B: int, shape: tuple[int, int, int], m: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    cols = [torch.randint(0, B, (m,), generator=g)] + [torch.randint(0, s, (m,), generator=g) for s in shape]
    return torch.unique(torch.stack(cols, 1), dim=0)


def dense_grid(features: torch.Tensor, indices: torch.Tensor, B: int, shape) -> torch.Tensor:
    """Independent scatter: [(T,) M, C] -> [(T,) B, C, S0, S1, S2], written with a Python loop."""
    timed = features.dim() == 3
    f = features if timed else features.unsqueeze(0)
    out = f.new_zeros(f.shape[0], B, f.shape[-1], *shape)
    for row, (b, i, j, k) in enumerate(indices.tolist()):
        out[:, b, :, i, j, k] = f[:, row]
    return out if timed else out[0]


def read_sites(dense: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """Dense [(T,) B, C, S...] -> features [(T,) M, C] at the given sites."""
    b, i, j, k = indices.long().unbind(1)
    if dense.dim() == 5:
        return dense.permute(0, 2, 3, 4, 1)[b, i, j, k]
    return dense.permute(0, 1, 3, 4, 5, 2)[:, b, i, j, k]


def dense_conv(x: SparseTensor, conv, subm: bool) -> torch.Tensor:
    dense = dense_grid(x.features, x.indices, x.batch_size, x.spatial_shape)
    timed = dense.dim() == 6
    d = dense.flatten(0, 1) if timed else dense
    w = conv.weight.permute(0, 4, 1, 2, 3)  # [C_out, C_in, k0, k1, k2]
    pad = tuple(k // 2 for k in conv.kernel_size) if subm else conv.padding
    out = F.conv3d(d, w, conv.bias, stride=1 if subm else conv.stride, padding=pad)
    return out.unflatten(0, dense.shape[:2]) if timed else out


# ---------------------------------------------------------------------------------------------
# convolution == dense reference
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("timed", [False, True])
@pytest.mark.parametrize("k", [1, 3, 5])
def test_subm_matches_dense_conv(k, timed):
    B, shape = 3, (6, 7, 5)
    idx = random_sites(B, shape, 70, seed=k)
    f = torch.randn(*((2,) if timed else ()), idx.shape[0], 4, dtype=torch.float64)
    x = SparseTensor(f, idx, shape, B)
    conv = SubMConv3d(4, 5, k, bias=True, backend="torch").double()
    y = conv(x)
    assert torch.equal(y.indices, x.indices)
    ref = read_sites(dense_conv(x, conv, subm=True), idx)
    torch.testing.assert_close(y.features, ref)


@pytest.mark.parametrize("timed", [False, True])
@pytest.mark.parametrize("k,s,p", [(2, 2, 0), (3, 2, 1), (3, 1, 1), (2, 1, 0), (3, 3, 0)])
def test_strided_matches_dense_conv_everywhere(k, s, p, timed):
    """Output features equal the dense conv at the output sites, and the dense conv is zero at
    every other site (so the output site set is exactly right)."""
    B, shape = 2, (8, 6, 7)
    idx = random_sites(B, shape, 60, seed=10 * k + s)
    f = torch.randn(*((3,) if timed else ()), idx.shape[0], 3, dtype=torch.float64)
    x = SparseTensor(f, idx, shape, B)
    conv = SparseConv3d(3, 4, k, stride=s, padding=p, backend="torch").double()
    y = conv(x)
    ref = dense_conv(x, conv, subm=False)
    assert y.spatial_shape == tuple(ref.shape[-3:])
    assert y.indices.shape[0] > 0
    back = dense_grid(y.features, y.indices, B, y.spatial_shape)
    torch.testing.assert_close(back, ref)
    # output sites sorted by (b, i0, i1, i2), unique
    keys = [tuple(r) for r in y.indices.tolist()]
    assert keys == sorted(set(keys))


def test_strided_k2s2_output_sites_are_halved_coordinates():
    idx = torch.tensor([[0, 0, 0, 0], [0, 1, 1, 1], [0, 2, 0, 3], [1, 5, 5, 5], [1, 4, 4, 4]])
    x = SparseTensor(torch.ones(5, 1), idx, (6, 6, 6), 2)
    conv = SparseConv3d(1, 1, 2, stride=2, backend="torch")
    with torch.no_grad():
        conv.weight.fill_(1.0)
    y = conv(x)
    assert y.indices.tolist() == [[0, 0, 0, 0], [0, 1, 0, 1], [1, 2, 2, 2]]
    assert y.features.squeeze(1).tolist() == [2.0, 1.0, 2.0]  # sums of the members
    assert y.spatial_shape == (3, 3, 3)


def test_hand_computed_subm_kernel_map():
    # two neighbours along the last axis: (0,0,0) and (0,0,1)
    idx = torch.tensor([[0, 1, 1, 1], [0, 1, 1, 2]])
    km = build_kernel_map(idx, (4, 4, 4), 1, kernel_size=3, subm=True)
    counts = km.pairs_per_offset()
    assert len(counts) == 27 and sum(counts) == 4
    centre, plus, minus = (1 * 3 + 1) * 3 + 1, (1 * 3 + 1) * 3 + 2, (1 * 3 + 1) * 3 + 0
    assert counts[centre] == 2 and counts[plus] == 1 and counts[minus] == 1

    def pairs(k):
        a, b = km.offsets[k], km.offsets[k + 1]
        return sorted(zip(km.in_idx[a:b].tolist(), km.out_idx[a:b].tolist()))

    # out[p] += W[d] x[p + d - 1]: offset +1 feeds site 0 from site 1
    assert pairs(plus) == [(1, 0)] and pairs(minus) == [(0, 1)] and pairs(centre) == [(0, 0), (1, 1)]


def test_hand_computed_values_with_unit_weights():
    idx = torch.tensor([[0, 1, 1, 1], [0, 1, 1, 2], [0, 3, 3, 3], [1, 1, 1, 1]])
    f = torch.tensor([[1.0], [2.0], [4.0], [8.0]])
    conv = SubMConv3d(1, 1, 3, backend="torch")
    with torch.no_grad():
        conv.weight.fill_(1.0)
    y = conv(SparseTensor(f, idx, (4, 4, 4), 2))
    # neighbours (within the 3x3x3 cube, same batch): 0<->1 only
    assert y.features.squeeze(1).tolist() == [3.0, 3.0, 4.0, 8.0]


@pytest.mark.parametrize("subm", [True, False])
@pytest.mark.parametrize("timed", [False, True])
def test_gradcheck(subm, timed):
    B, shape = 2, (5, 5, 5)
    idx = random_sites(B, shape, 12, seed=3)
    f = torch.randn(*((2,) if timed else ()), idx.shape[0], 2, dtype=torch.float64, requires_grad=True)
    if subm:
        conv = SubMConv3d(2, 2, 3, bias=True, backend="torch").double()
    else:
        conv = SparseConv3d(2, 2, 2, stride=2, bias=True, backend="torch").double()

    def fn_params(feats, weight, bias):
        x = SparseTensor(feats, idx, shape, B)
        return torch.func.functional_call(conv, {"weight": weight, "bias": bias}, (x,)).features

    w = conv.weight.detach().clone().requires_grad_()
    b = conv.bias.detach().clone().requires_grad_()
    assert torch.autograd.gradcheck(fn_params, (f, w, b))


def test_module_backward_matches_plain_autograd_reference():
    B, shape = 3, (6, 6, 6)
    idx = random_sites(B, shape, 80, seed=7)
    f = torch.randn(2, idx.shape[0], 4, requires_grad=True)
    conv = SubMConv3d(4, 6, 3, backend="torch")
    x = SparseTensor(f, idx, shape, B)
    y = conv(x).features
    g = torch.randn_like(y)
    gf, gw = torch.autograd.grad(y, (f, conv.weight), g)
    y_ref = sparse_conv_reference(x, conv.weight, conv.kernel_map(x))
    torch.testing.assert_close(y, y_ref)
    gf_ref, gw_ref = torch.autograd.grad(y_ref, (f, conv.weight), g)
    torch.testing.assert_close(gf, gf_ref)
    torch.testing.assert_close(gw, gw_ref)


def test_backward_on_cpu_through_a_small_network():
    B, shape = 2, (16, 16, 16)
    idx = random_sites(B, shape, 200, seed=1)
    f = torch.randn(idx.shape[0], 3, requires_grad=True)
    net = torch.nn.Sequential(
        SubMConv3d(3, 8, 3, indice_key="a", backend="torch"),
        SparseBatchNorm(8),
        SparseConv3d(8, 16, 2, stride=2, backend="torch"),
        SubMConv3d(16, 16, 3, indice_key="b", backend="torch"),
    )
    out = net(SparseTensor(f, idx, shape, B))
    global_mean_pool(out).square().sum().backward()
    assert f.grad is not None and torch.isfinite(f.grad).all() and f.grad.abs().sum() > 0
    for p in net.parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all()
    assert net[0].weight.grad.abs().sum() > 0


def test_empty_input():
    x = SparseTensor(torch.zeros(0, 3), torch.zeros(0, 4, dtype=torch.long), (8, 8, 8), 2)
    y = SparseConv3d(3, 4, 2, stride=2, backend="torch")(SubMConv3d(3, 3, 3, backend="torch")(x))
    assert y.features.shape == (0, 4) and y.spatial_shape == (4, 4, 4)
    assert global_mean_pool(y).shape == (2, 4) and global_mean_pool(y).abs().sum() == 0


# ---------------------------------------------------------------------------------------------
# kernel-map cache
# ---------------------------------------------------------------------------------------------


def test_indice_key_shares_the_kernel_map_and_rejects_misuse():
    idx = random_sites(2, (6, 6, 6), 40, seed=5)
    x = SparseTensor(torch.randn(idx.shape[0], 2), idx, (6, 6, 6), 2)
    a, b = SubMConv3d(2, 2, 3, indice_key="k"), SubMConv3d(2, 2, 3, indice_key="k")
    y = a(x)
    assert b.kernel_map(y) is a.kernel_map(x)  # derived tensor shares the cache, same sites
    c = SubMConv3d(2, 2, 5, indice_key="k")
    with pytest.raises(ValueError, match="indice_key"):
        c(y)
    down = SparseConv3d(2, 2, 2, stride=2)(x)
    with pytest.raises(ValueError, match="indice_key"):
        SubMConv3d(2, 2, 3, indice_key="k")(down)  # other sites, same key


def test_wrong_channels_and_types_raise():
    idx = random_sites(1, (4, 4, 4), 5, seed=0)
    x = SparseTensor(torch.randn(idx.shape[0], 3), idx, (4, 4, 4), 1)
    with pytest.raises(ValueError, match="input channels"):
        SubMConv3d(2, 2, 3)(x)
    with pytest.raises(TypeError):
        SubMConv3d(3, 2, 3)(torch.randn(5, 3))
    with pytest.raises(ValueError, match="odd"):
        SubMConv3d(3, 2, 2)
    with pytest.raises(ValueError):
        SparseTensor(torch.randn(4, 3), idx, (4, 4, 4), 1)  # M mismatch


# ---------------------------------------------------------------------------------------------
# BN, activation wrapper, pooling, op counts
# ---------------------------------------------------------------------------------------------


def test_sparse_batchnorm_normalises_over_all_sites_and_times():
    idx = random_sites(2, (5, 5, 5), 30, seed=2)
    f = 3.0 + 2.0 * torch.randn(2, idx.shape[0], 4)
    y = SparseBatchNorm(4)(SparseTensor(f, idx, (5, 5, 5), 2)).features
    flat = y.reshape(-1, 4)
    torch.testing.assert_close(flat.mean(0), torch.zeros(4), atol=1e-5, rtol=0)
    torch.testing.assert_close(flat.var(0, unbiased=False), torch.ones(4), atol=1e-3, rtol=0)


def test_batchnorm_single_row_in_training_uses_running_stats():
    bn = BatchNormLastDim(3)
    bn.bn.running_mean.fill_(1.0)
    x = torch.tensor([[2.0, 1.0, 0.0]])
    y = bn.train()(x)
    torch.testing.assert_close(y, (x - 1.0) / (1.0 + bn.bn.eps) ** 0.5)


def test_sparse_activation_sees_time_major_features():
    seen = []

    class Probe(torch.nn.Module):
        def forward(self, t):
            seen.append(tuple(t.shape))
            return t * 2

    idx = random_sites(1, (4, 4, 4), 6, seed=4)
    m = idx.shape[0]
    x = SparseTensor(torch.ones(m, 3), idx, (4, 4, 4), 1)
    assert SparseActivation(Probe())(x).features.shape == (m, 3)
    assert SparseActivation(Probe())(x.replace_feature(torch.ones(2, m, 3))).features.shape == (2, m, 3)
    assert seen == [(1, m, 3), (2, m, 3)]


def test_global_pools_per_sample():
    idx = torch.tensor([[0, 0, 0, 0], [0, 1, 0, 0], [2, 0, 0, 0]])
    f = torch.tensor([[1.0, -1.0], [3.0, -5.0], [7.0, 2.0]])
    x = SparseTensor(f, idx, (2, 2, 2), 3)  # sample 1 has no sites
    assert global_mean_pool(x).tolist() == [[2.0, -3.0], [0.0, 0.0], [7.0, 2.0]]
    assert global_max_pool(x).tolist() == [[3.0, -1.0], [0.0, 0.0], [7.0, 2.0]]
    xt = x.replace_feature(torch.stack([f, 2 * f]))
    assert global_mean_pool(xt)[1].tolist() == [[4.0, -6.0], [0.0, 0.0], [14.0, 4.0]]


# ---------------------------------------------------------------------------------------------
# voxelisation
# ---------------------------------------------------------------------------------------------


def test_voxelize_hand_computed():
    pts = torch.tensor(
        [
            [
                [0.00, 0.00, 0.00, 1.0, 0.0, 0.0],
                [0.01, 0.015, 0.0, 0.0, 1.0, 0.0],
                [0.05, 0.0, 0.0, 0.5, 0.5, 0.5],
            ],
            [
                [1.00, 1.00, 1.00, 0.2, 0.2, 0.2],
                [1.00, 1.00, 1.00, 0.4, 0.4, 0.4],
                [1.03, 1.0, 1.0, 0.0, 0.0, 0.0],
            ],
        ]
    )
    x = voxelize(pts, 0.02, shape_multiple=16)
    # sample 0: voxels (0,0,0) <- points 0,1 ; (2,0,0) <- point 2.  sample 1 (min = (1,1,1)):
    # (0,0,0) <- two duplicates ; (1,0,0) <- point 2 (0.03 / 0.02 = 1.5)
    assert x.indices.tolist() == [[0, 0, 0, 0], [0, 2, 0, 0], [1, 0, 0, 0], [1, 1, 0, 0]]
    torch.testing.assert_close(x.features[0], torch.tensor([0.005, 0.0075, 0.0, 0.5, 0.5, 0.0]))
    torch.testing.assert_close(x.features[1], pts[0, 2])
    torch.testing.assert_close(x.features[2], pts[1, 0] * 0.5 + pts[1, 1] * 0.5)
    assert x.spatial_shape == (16, 16, 16) and x.batch_size == 2


def test_voxelize_counts_match_a_set_of_floor_coordinates():
    g = torch.Generator().manual_seed(0)
    pts = torch.rand(3, 400, 6, generator=g)
    pts[..., :3] = pts[..., :3] * 2 - 1
    pts[1, 200:] = pts[1, :200]  # duplicates
    x = voxelize(pts, 0.1)
    expected = 0
    for b in range(3):
        mn = pts[b, :, :3].min(0).values
        expected += len({tuple(v) for v in torch.floor((pts[b, :, :3] - mn) / 0.1).long().tolist()})
    assert x.num_sites == expected
    assert all(s % 16 == 0 for s in x.spatial_shape)
    assert (x.indices[:, 1:] < torch.tensor(x.spatial_shape)).all() and (x.indices >= 0).all()


def test_voxelize_degenerate_empty_masked_and_bad_inputs():
    same = torch.ones(2, 50, 6) * 0.3
    x = voxelize(same)
    assert x.num_sites == 2 and x.indices[:, 1:].abs().sum() == 0
    torch.testing.assert_close(x.features, torch.full((2, 6), 0.3))
    empty = voxelize(torch.zeros(2, 0, 6))
    assert empty.num_sites == 0 and empty.features.shape == (0, 6) and empty.batch_size == 2
    mask = torch.zeros(2, 50, dtype=torch.bool)
    mask[1, :3] = True
    xm = voxelize(torch.rand(2, 50, 6), mask=mask)
    assert xm.indices[:, 0].tolist() == [1] * xm.num_sites and 1 <= xm.num_sites <= 3
    bad = torch.rand(1, 10, 6)
    bad[0, 3, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        voxelize(bad)
    with pytest.raises(ValueError):
        voxelize(torch.rand(10, 6))
    with pytest.raises(ValueError):
        voxelize(torch.rand(1, 10, 6), grid_size=0.0)


def test_voxelize_with_time_uses_the_union_of_sites():
    p0 = torch.tensor([[[0.0, 0.0, 0.0, 1.0]]])
    p1 = torch.tensor([[[0.1, 0.0, 0.0, 2.0]]])
    x = voxelize(torch.stack([p0, p1]), 0.05)  # [T=2, B=1, N=1, F=4]
    assert x.indices.tolist() == [[0, 0, 0, 0], [0, 2, 0, 0]]
    assert x.features.shape == (2, 2, 4)
    assert x.features[0, 0, 3] == 1.0 and x.features[0, 1].abs().sum() == 0  # empty at t=0
    assert x.features[1, 1, 3] == 2.0 and x.features[1, 0].abs().sum() == 0


def test_voxelize_is_differentiable_in_the_features():
    pts = torch.rand(1, 20, 6, requires_grad=True)
    voxelize(pts, 0.2).features.sum().backward()
    # every point contributes 1/count of its voxel to each channel: per-voxel grads sum to 1
    assert torch.isfinite(pts.grad).all() and pts.grad[..., 3:].sum() > 0


# ---------------------------------------------------------------------------------------------
# spconv interoperability
# ---------------------------------------------------------------------------------------------


def test_spconv_weight_conversion_and_pointwise_quirk():
    c_in, c_out = 3, 5
    w_sp = torch.randn(c_out, 1, 1, 1, c_in)
    f = torch.randn(7, c_in)
    spconv_out = f @ w_sp.view(c_in, c_out)  # what spconv 2.x computes for 1x1x1 kernels
    conv = SubMConv3d(c_in, c_out, 1, backend="torch")
    with torch.no_grad():
        conv.weight.copy_(weight_from_spconv(w_sp))
    idx = torch.stack(
        [
            torch.zeros(7, dtype=torch.long),
            torch.arange(7),
            torch.zeros(7, dtype=torch.long),
            torch.zeros(7, dtype=torch.long),
        ],
        1,
    )
    torch.testing.assert_close(conv(SparseTensor(f, idx, (8, 1, 1), 1)).features, spconv_out)
    torch.testing.assert_close(weight_to_spconv(weight_from_spconv(w_sp)), w_sp)
    w3 = torch.randn(c_out, 3, 3, 3, c_in)
    assert torch.equal(weight_from_spconv(w3), w3)  # KRSC: identical layout


@pytest.mark.parametrize("subm", [True, False])
@pytest.mark.parametrize("timed", [False, True])
def test_spconv_backend_glue_with_a_stand_in(monkeypatch, subm, timed):
    """The spconv path folds T into the batch, shares the weight and re-sorts strided outputs:
    with a stand-in spconv it must reproduce the torch path exactly (values, sites, grads)."""
    _spconv_standin.install(monkeypatch)
    assert spconv_available()
    B, shape = 2, (8, 8, 8)
    idx = random_sites(B, shape, 50, seed=12)
    f = torch.randn(*((3,) if timed else ()), idx.shape[0], 4)
    conv = SubMConv3d(4, 5, 3, bias=True) if subm else SparseConv3d(4, 5, 2, stride=2, bias=True)
    outs, grads = [], []
    for backend in ("torch", "spconv"):
        conv.backend = backend
        conv.zero_grad()
        y = conv(SparseTensor(f, idx, shape, B))
        y.features.square().sum().backward()
        outs.append(y)
        grads.append(conv.weight.grad.clone())
    assert torch.equal(outs[0].indices, outs[1].indices) and outs[0].spatial_shape == outs[1].spatial_shape
    torch.testing.assert_close(outs[0].features, outs[1].features)
    torch.testing.assert_close(grads[0], grads[1])
    assert "_spconv_mod" in conv.__dict__ and "_spconv_mod" not in dict(conv.named_modules())


def test_set_backend_switches_every_sparse_conv_and_reports_what_to_restore():
    net = torch.nn.Sequential(
        SubMConv3d(2, 2, 3, backend="spconv"),
        SparseConv3d(2, 2, 2, backend="auto"),
        SubMConv3d(2, 2, 3, backend="torch"),
    )
    changed = set_backend(net, "torch")
    assert changed == {net[0]: "spconv", net[1]: "auto"}  # the torch layer needed no change
    assert [m.backend for m in net] == ["torch", "torch", "torch"]
    for layer, backend in changed.items():
        layer.backend = backend
    assert [m.backend for m in net] == ["spconv", "auto", "torch"]
    with pytest.raises(ValueError, match="backend must be one of"):
        set_backend(net, "cuda")


@pytest.mark.skipif(not spconv_available(), reason="spconv is not installed")
@pytest.mark.parametrize("subm", [True, False])
def test_matches_spconv_cpu_forward(subm):  # pragma: no cover - needs spconv
    import spconv.pytorch as spconv
    from spconv.core import ConvAlgo

    B, shape = 2, (8, 8, 8)
    idx = random_sites(B, shape, 60, seed=11)
    f = torch.randn(idx.shape[0], 4)
    ours = SubMConv3d(4, 3, 3, backend="torch") if subm else SparseConv3d(4, 3, 2, stride=2, backend="torch")
    kw = {} if subm else {"stride": 2}
    cls = spconv.SubMConv3d if subm else spconv.SparseConv3d
    theirs = cls(4, 3, 3 if subm else 2, bias=False, algo=ConvAlgo.Native, **kw)
    with torch.no_grad():
        theirs.weight.copy_(weight_to_spconv(ours.weight))
    y = ours(SparseTensor(f, idx, shape, B))
    t = theirs(spconv.SparseConvTensor(f, idx.int(), list(shape), B))
    order = torch.argsort(
        (
            ((t.indices[:, 0].long() * 64 + t.indices[:, 1]) * 64 + t.indices[:, 2]) * 64 + t.indices[:, 3]
        ).long()
    )
    assert torch.equal(t.indices[order].long(), y.indices)
    torch.testing.assert_close(t.features[order], y.features, atol=1e-5, rtol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():  # pragma: no cover - needs a GPU
    B, shape = 2, (12, 12, 12)
    idx = random_sites(B, shape, 300, seed=9)
    f = torch.randn(2, idx.shape[0], 4)
    for conv in (SubMConv3d(4, 8, 3, backend="torch"), SparseConv3d(4, 8, 2, stride=2, backend="torch")):
        y_cpu = conv(SparseTensor(f, idx, shape, B))
        y_gpu = conv.cuda()(SparseTensor(f.cuda(), idx.cuda(), shape, B))
        assert torch.equal(y_gpu.indices.cpu(), y_cpu.indices)
        torch.testing.assert_close(y_gpu.features.cpu(), y_cpu.features, atol=1e-4, rtol=1e-4)
        conv.cpu()


@pytest.mark.parametrize("kind", ["subm3", "strided2", "pointwise"])
def test_matches_real_spconv_cpu_forward(kind):
    """Our torch sparse conv equals spconv 2.x's own CPU forward (same weights, same sites).

    spconv's CPU build can run forward only (its backward needs CUDA); skipped where spconv is absent.
    """
    sp = pytest.importorskip("spconv.pytorch")
    g = torch.Generator().manual_seed(3)
    shape, batch, c_in, c_out = (8, 8, 8), 2, 4, 5
    keys = torch.randperm(batch * 8 * 8 * 8, generator=g)[:150]
    idx = torch.stack([keys // 512, (keys // 64) % 8, (keys // 8) % 8, keys % 8], dim=1)
    feats = torch.randn(len(idx), c_in, generator=g)
    if kind == "subm3":
        ref, ours = sp.SubMConv3d(c_in, c_out, 3, bias=False), SubMConv3d(c_in, c_out, 3, backend="torch")
    elif kind == "strided2":
        ref = sp.SparseConv3d(c_in, c_out, 2, stride=2, bias=False)
        ours = SparseConv3d(c_in, c_out, 2, stride=2, backend="torch")
    else:
        ref, ours = sp.SubMConv3d(c_in, c_out, 1, bias=False), SubMConv3d(c_in, c_out, 1, backend="torch")
    with torch.no_grad():
        ours.weight.copy_(weight_from_spconv(ref.weight.detach()))
        y_ref = ref(sp.SparseConvTensor(feats, idx.int(), list(shape), batch))
        y = ours(SparseTensor(feats, idx, shape, batch))
    dense_ref = y_ref.dense()  # [B, C, D, H, W]
    dense = y.dense()
    assert dense.shape == dense_ref.shape
    torch.testing.assert_close(dense, dense_ref, rtol=1e-4, atol=1e-5)
    assert len(y.features) == y_ref.features.shape[0]  # same set of output sites
