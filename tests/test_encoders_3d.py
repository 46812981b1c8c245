"""Spiking 3D encoders (Spike PointNet, E-3DSNN, spike-driven PointFormer) and point ops."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from spikelight.models import create_model, list_models, model_family
from spikelight.models.pointops import farthest_point_sample, index_points, knn, knn_group
from spikelight.nn.neurons import ILIF
from spikelight.nn.sparse_conv import SparseConv3d, SparseTensor, SubMConv3d

TINY = ["spike_pointnet_test", "e3dsnn_test", "pointformer_snn_test"]
FULL = ["spike_pointnet", "e3dsnn_t", "e3dsnn_s", "e3dsnn_l", "e3dsnn_h", "pointformer_snn_l"]
# paper sizes (REFERENCE section 1); checked at C = 512
REFERENCE_PARAMS = {
    "spike_pointnet": 3.57e6,
    "e3dsnn_l": 17.7e6,
    "e3dsnn_h": 46.7e6,
    "pointformer_snn_l": 22.1e6,
}


pytestmark = pytest.mark.usefixtures("one_thread")


def make_points(B: int = 2, N: int = 512, F: int = 6, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    pts = torch.rand(B, N, F, generator=g)
    pts[..., :3] = pts[..., :3] * 2 - 1
    return pts


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


# ---------------------------------------------------------------------------------------------
# registry and sizes
# ---------------------------------------------------------------------------------------------


def test_registry_lists_every_variant_and_rejects_unknown_names():
    assert set(TINY + FULL) == set(list_models("spike_pointnet*") + list_models("e3dsnn*") + list_models("pointformer*"))
    assert {model_family(n) for n in TINY + FULL} == {"pointnet_snn", "e3dsnn", "pointformer_snn"}
    with pytest.raises(ValueError, match="e3dsnn_s"):
        create_model("e3dsnn_xxl")


def test_full_size_parameter_counts(capsys):
    counts = {}
    for name in FULL:
        for C in (512, 1280):
            m = create_model(name, embed_dim=C)
            assert m.embed_dim == C and m.timesteps == 1
            counts[(name, C)] = n_params(m)
            del m
    with capsys.disabled():
        print("\nparameter counts (M) at C = 512 / 1280:")
        for name in FULL:
            ref = REFERENCE_PARAMS.get(name)
            tail = f"   paper {ref / 1e6:.2f}M" if ref else ""
            print(f"  {name:18s} {counts[(name, 512)] / 1e6:7.2f} / {counts[(name, 1280)] / 1e6:7.2f}{tail}")
    for name, ref in REFERENCE_PARAMS.items():
        assert abs(counts[(name, 512)] / ref - 1) < 0.05, (name, counts[(name, 512)])
    for name in ("e3dsnn_l", "e3dsnn_h", "pointformer_snn_l"):  # also at SVL's C = 1280
        assert abs(counts[(name, 1280)] / REFERENCE_PARAMS[name] - 1) < 0.05, name
    # the size ordering of the E-3DSNN family
    sizes = [counts[(n, 1280)] for n in ("e3dsnn_t", "e3dsnn_s", "e3dsnn_l", "e3dsnn_h")]
    assert sizes == sorted(sizes)


def test_e3dsnn_parameter_count_formula():
    """Independent count: stem 27(F c0 + 2 c0^2), downs 8 c_{i-1} c_i, blocks 3 x 27 c_i^2, head, BN."""
    m = create_model("e3dsnn_l", embed_dim=512)
    c0, ch, d, F, C = 64, (64, 128, 128, 256), 2, 6, 512
    convs = 27 * (F * c0 + 2 * c0 * c0)
    prev = c0
    for c in ch:
        convs += 8 * prev * c + d * 3 * 27 * c * c
        prev = c
    bn = 2 * (3 * c0 + sum(c * (1 + 3 * d) for c in ch))
    assert n_params(m) == convs + bn + prev * C + C


@pytest.mark.slow
@pytest.mark.parametrize("name", ["spike_pointnet", "e3dsnn_l", "pointformer_snn_l"])
def test_full_size_forward_on_a_small_cloud(name):
    m = create_model(name).eval()
    with torch.no_grad():
        y = m(make_points(B=1, N=256))
    assert y.shape == (1, 1280) and torch.isfinite(y).all()


# ---------------------------------------------------------------------------------------------
# tiny variants: forward / backward
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", TINY)
def test_tiny_forward_backward(name):
    torch.manual_seed(0)
    m = create_model(name)
    pts = make_points()
    y = m(pts)
    assert y.shape == (2, m.embed_dim) and torch.isfinite(y).all()
    assert y.std() > 0 and not torch.allclose(y[0], y[1])  # not constant / sample dependent
    y.square().sum().backward()
    modules = dict(m.named_modules())
    # gradients reach the layers fed by the coordinates (the first layers)
    for layer in m.real_input_layers:
        if layer.startswith("input_tnet"):
            continue  # the T-Net's last layer starts at zero, so its inner grads start at zero
        g = modules[layer].weight.grad
        assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0, layer
    for pname, p in m.named_parameters():
        assert p.grad is None or torch.isfinite(p.grad).all(), pname
    if name == "spike_pointnet_test":
        assert m.input_tnet.head.out.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("name", TINY)
def test_eval_mode_is_deterministic(name):
    m = create_model(name).eval()
    pts = make_points(seed=1)
    with torch.no_grad():
        torch.testing.assert_close(m(pts), m(pts))


def _is_integer(t: torch.Tensor) -> bool:
    return bool(torch.equal(t, torch.round(t)))


@pytest.mark.parametrize("name", TINY)
def test_only_declared_layers_see_real_values(name):
    """Forward pre-hooks on every weight layer: the layers fed real values are exactly the
    declared coordinate layers; every other one sees integer spikes in 0..D."""
    torch.manual_seed(0)
    m = create_model(name)
    seen: dict[str, tuple[bool, float, float]] = {}

    def hook(mod, args, name):
        x = args[0].features if isinstance(args[0], SparseTensor) else args[0]
        x = x.detach()
        seen[name] = (_is_integer(x), float(x.min()), float(x.max()))

    handles = [
        mod.register_forward_pre_hook(lambda mod, args, n=n: hook(mod, args, n))
        for n, mod in m.named_modules()
        if isinstance(mod, (nn.Linear, nn.Conv1d, SubMConv3d, SparseConv3d))
    ]
    m(make_points())
    for h in handles:
        h.remove()
    D = max(mod.D for mod in m.modules() if isinstance(mod, ILIF))
    real = {n for n, (is_int, _, _) in seen.items() if not is_int}
    assert real == set(m.real_input_layers)
    for n, (_, lo, hi) in seen.items():
        if n not in real:
            assert lo >= 0 and hi <= D, (n, lo, hi)
    assert len(seen) > len(real) + 3  # the hooks did fire on the spiking layers


# ---------------------------------------------------------------------------------------------
# time
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", TINY)
def test_multistep_input_forms_agree(name):
    """``timesteps=T`` with ``[B, N, F]`` equals the explicit ``[T, B, N, F]`` repetition, and the
    membrane carries state (T = 3 differs from T = 1)."""
    torch.manual_seed(0)
    m3 = create_model(name, timesteps=3)
    pts = make_points(N=256)
    y_rep = m3(pts)
    y_seq = m3(pts.unsqueeze(0).expand(3, -1, -1, -1))
    assert y_rep.shape == (2, m3.embed_dim)
    torch.testing.assert_close(y_rep, y_seq, atol=1e-5, rtol=1e-5)
    m1 = create_model(name, timesteps=1)
    m1.load_state_dict(m3.state_dict())
    assert not torch.allclose(m1(pts), y_rep)


@pytest.mark.parametrize("name", ["e3dsnn_test", "spike_pointnet_test"])
def test_event_sequences_with_different_points_per_step(name):
    torch.manual_seed(0)
    m = create_model(name, in_channels=3, timesteps=4)
    seq = torch.stack([make_points(N=200, F=3, seed=s) for s in range(4)])  # [T, B, N, 3]
    y = m(seq)
    assert y.shape == (2, m.embed_dim) and torch.isfinite(y).all()
    y.sum().backward()


def test_output_is_the_time_mean_of_the_embedding():
    m = create_model("e3dsnn_test", timesteps=2).eval()
    pts = make_points(N=256)
    seen = {}
    m.head.register_forward_hook(lambda mod, args, out: seen.__setitem__("feat", out))
    with torch.no_grad():
        y = m(pts)
    f = seen["feat"]  # [T, M, C] per-voxel embedding
    b = f.indices[:, 0]
    per_t = torch.stack([torch.stack([f.features[t, b == i].mean(0) for i in range(2)]) for t in range(2)])
    torch.testing.assert_close(y, per_t.mean(0))


# ---------------------------------------------------------------------------------------------
# input handling
# ---------------------------------------------------------------------------------------------


def test_xyz_only_input_gets_default_colour():
    torch.manual_seed(0)
    m = create_model("spike_pointnet_test").eval()
    xyz = make_points(F=3)
    with torch.no_grad():
        torch.testing.assert_close(m(xyz), m(torch.cat([xyz, torch.full_like(xyz, 0.4)], -1)))


@pytest.mark.parametrize("name", TINY)
def test_bad_inputs_raise(name):
    m = create_model(name)
    with pytest.raises(ValueError, match="channels"):
        m(make_points(F=5))
    with pytest.raises(ValueError):
        m(torch.rand(512, 6))
    bad = make_points()
    bad[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        m(bad)


def test_e3dsnn_degenerate_duplicate_and_empty_clouds():
    torch.manual_seed(0)
    m = create_model("e3dsnn_test")
    same = torch.full((2, 64, 6), 0.25)  # every point identical: one voxel per sample
    y = m(same)
    assert y.shape == (2, 32) and torch.isfinite(y).all()
    y.sum().backward()
    dup = make_points(N=128)
    dup = torch.cat([dup, dup], 1)  # every point twice: same voxels, same means
    with torch.no_grad():
        m.eval()
        torch.testing.assert_close(m(dup), m(dup[:, :128]))
        empty = m(torch.zeros(2, 0, 6))
    assert empty.shape == (2, 32) and empty.abs().sum() == 0


# ---------------------------------------------------------------------------------------------
# point ops
# ---------------------------------------------------------------------------------------------


def _fps_reference(xyz: torch.Tensor, n: int) -> list[int]:
    chosen = [0]
    dist = [float("inf")] * xyz.shape[0]
    for _ in range(n - 1):
        c = xyz[chosen[-1]].tolist()
        for i, p in enumerate(xyz.tolist()):
            dist[i] = min(dist[i], sum((a - b) ** 2 for a, b in zip(p, c)))
        chosen.append(max(range(len(dist)), key=lambda i: (dist[i], -i)))
    return chosen


def test_farthest_point_sample_matches_a_plain_loop():
    pts = make_points(B=2, N=60, F=3, seed=3)
    idx = farthest_point_sample(pts, 10)
    for b in range(2):
        assert idx[b].tolist() == _fps_reference(pts[b], 10)
    assert idx[:, 0].tolist() == [0, 0] and all(len(set(r)) == 10 for r in idx.tolist())
    # hand-checked: corners of a line, the farthest from 0 is the end, then the middle
    line = torch.tensor([[[0.0, 0, 0], [1.0, 0, 0], [2.0, 0, 0], [4.0, 0, 0]]])
    assert farthest_point_sample(line, 3).tolist() == [[0, 3, 2]]


def test_knn_and_grouping():
    pts = make_points(B=2, N=50, F=6, seed=4)
    centres = pts[:, :5]
    dist, idx = knn(centres, pts, 4)
    full = ((centres[:, :, None, :3] - pts[:, None, :, :3]) ** 2).sum(-1)
    torch.testing.assert_close(dist, full.sort(-1).values[..., :4], atol=1e-5, rtol=1e-5)
    assert (idx[..., 0] == torch.arange(5)).all()  # each centre is its own nearest neighbour
    g = index_points(pts, idx)
    assert g.shape == (2, 5, 4, 6) and torch.equal(g[1, 2, 3], pts[1, idx[1, 2, 3]])
    groups, c = knn_group(pts, num_groups=8, group_size=4)
    assert groups.shape == (2, 8, 4, 6) and c.shape == (2, 8, 6)
    torch.testing.assert_close(groups[:, :, 0, :3], torch.zeros(2, 8, 3))  # relative xyz
    torch.testing.assert_close(groups[:, :, 0, 3:], c[..., 3:])  # rgb kept absolute
    small, _ = knn_group(pts[:, :3], num_groups=2, group_size=5)  # fewer points than K
    assert small.shape == (2, 2, 5, 6)
