"""The model registry (``spikelight.models``): every registered ``*_test`` variant builds, runs a forward
and a backward, and every parameter receives a gradient; ``create_model`` / ``list_models`` /
``build_model`` resolve every spec form a config may hold."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

from spikelight.models import build_model, create_model, list_models, model_family, register_model, spec_name
from spikelight.models.toy_snn import ToyMLP
from spikelight.models.trevsnn import TRevSNN

pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------------------------------------
# an example input per family, derived from the built model's own attributes
# ---------------------------------------------------------------------------------------------


def _points(model: nn.Module, g: torch.Generator) -> torch.Tensor:
    """3D encoders: ``[B, N, F]`` with xyz in [-1, 1] and colours in [0, 1], ``F = model.in_channels``."""
    pts = torch.rand(2, 256, model.in_channels, generator=g)
    pts[..., :3] = pts[..., :3] * 2 - 1
    return pts


def _images_or_event_frames(model: TRevSNN, g: torch.Generator) -> torch.Tensor:
    """T-RevSNN: ``[B, in_chans, H, W]`` images, or ``[B, T * F, 2, H, W]`` event frames when ``dvs``."""
    if model.dvs:
        frames_per_step = model.in_chans // 2
        return torch.rand(2, model.timesteps * frames_per_step, 2, 32, 32, generator=g).round()
    return torch.randn(2, model.in_chans, 32, 32, generator=g)


def _features(model: ToyMLP, g: torch.Generator) -> torch.Tensor:
    return torch.randn(4, model.in_features, generator=g)


EXAMPLE_INPUTS: dict[str, Callable[[nn.Module, torch.Generator], torch.Tensor]] = {
    "pointnet_snn": _points,
    "e3dsnn": _points,
    "pointformer_snn": _points,
    "trevsnn": _images_or_event_frames,
    "toy_snn": _features,
}


def _unblock_zero_init(model: nn.Module) -> None:
    """Layers initialised to exactly zero (e.g. the T-Nets' last layer, so that they start as the identity)
    block every gradient behind them at step 0 only. Give them small random values: the test then checks
    that a gradient *can* reach every parameter, which is what training needs."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.copy_(0.02 * torch.randn(p.shape, generator=g))


TEST_VARIANTS = list_models("*_test")


def test_every_family_has_a_test_variant():
    families = {model_family(n) for n in list_models()}
    assert families == {model_family(n) for n in TEST_VARIANTS}
    assert {"pointnet_snn", "e3dsnn", "pointformer_snn", "trevsnn", "toy_snn"} <= families


@pytest.mark.parametrize("name", TEST_VARIANTS)
def test_test_variant_forward_backward_every_parameter_gets_a_gradient(name):
    family = model_family(name)
    if family not in EXAMPLE_INPUTS:
        pytest.fail(
            f"model {name!r} of family {family!r} has no example input: add one for the family to "
            "EXAMPLE_INPUTS in tests/test_models.py"
        )
    torch.manual_seed(0)
    model = create_model(name).train()
    n_params = sum(p.numel() for p in model.parameters())
    assert 0 < n_params < 1_000_000, f"{name} is not tiny: {n_params} parameters"
    _unblock_zero_init(model)
    g = torch.Generator().manual_seed(0)
    out = model(EXAMPLE_INPUTS[family](model, g))
    assert out.is_floating_point() and torch.isfinite(out).all(), name
    # a random projection of every output: a plain sum would give BatchNorm'd outputs no gradient
    loss = (out * torch.randn(out.shape, generator=g)).sum()
    loss.backward()
    problems = _gradient_problems(model)
    assert not problems, f"{name}: " + "; ".join(problems)


def _gradient_problems(model: nn.Module) -> list[str]:
    problems = []
    for pname, p in model.named_parameters():
        if p.grad is None:
            problems.append(f"{pname}: no gradient")
        elif not torch.isfinite(p.grad).all():
            problems.append(f"{pname}: non-finite gradient")
        elif not p.grad.any():
            problems.append(f"{pname}: gradient is all zero")
    return problems


def test_the_gradient_check_flags_missing_zero_and_non_finite_gradients():
    model = create_model("toy_snn_test")
    model.unused = nn.Linear(2, 2)  # off the graph: no gradient
    out = model(torch.randn(4, model.in_features))
    out.square().sum().backward()
    model.head.bias.grad.zero_()
    model.body[0].weight.grad[0, 0] = float("nan")
    assert sorted(_gradient_problems(model)) == [
        "body.0.weight: non-finite gradient",
        "head.bias: gradient is all zero",
        "unused.bias: no gradient",
        "unused.weight: no gradient",
    ]


# ---------------------------------------------------------------------------------------------
# create_model / list_models / build_model
# ---------------------------------------------------------------------------------------------


def test_list_models_patterns_and_families():
    assert list_models("trevsnn_*") == ["trevsnn_small", "trevsnn_test", "trevsnn_tiny"]
    assert list_models("e3dsnn_?") == ["e3dsnn_h", "e3dsnn_l", "e3dsnn_s", "e3dsnn_t"]
    assert list_models(family="toy_snn") == ["toy_mlp", "toy_snn", "toy_snn_test"]
    assert list_models("nothing_like_this*") == []
    assert all(n.endswith("_test") for n in TEST_VARIANTS) and len(TEST_VARIANTS) >= 5


def test_create_model_defaults_and_overrides():
    m = create_model("trevsnn_test")
    assert isinstance(m, TRevSNN) and m.channels == (8, 16, 16, 32) and m.timesteps == 4
    m = create_model("trevsnn_test", channels=(4, 8, 8, 16), timesteps=2, num_classes=3, mode="bptt")
    assert m.channels == (4, 8, 8, 16) and m.timesteps == 2 and m.mode == "bptt"
    assert m(torch.randn(2, 3, 32, 32)).shape == (2, 2, 3)
    assert create_model("trevsnn_small").channels == (96, 192, 384, 512)
    toy = create_model("toy_snn", in_features=5, num_classes=3)
    assert toy.spiking and toy.timesteps == 2 and toy.head.out_features == 3
    assert not create_model("toy_mlp").spiking
    assert create_model("e3dsnn_test", embed_dim=24).embed_dim == 24


def test_create_model_unknown_name_lists_close_names():
    with pytest.raises(ValueError, match=r"unknown model 'trevsnn_huge'.*trevsnn_small.*trevsnn_tiny"):
        create_model("trevsnn_huge")
    with pytest.raises(TypeError, match="no_such_arg"):
        create_model("toy_snn_test", no_such_arg=1)


def _same_architecture(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return type(a) is type(b) and list(sa) == list(sb) and all(sa[k].shape == sb[k].shape for k in sa)


def test_build_model_resolves_every_spec_form():
    ref = create_model("toy_snn", hidden=12, in_features=7)
    by_name = build_model("toy_snn", hidden=12, in_features=7)
    by_dict = build_model({"name": "toy_snn", "hidden": 12}, in_features=7)
    by_kwargs_key = build_model({"name": "toy_snn", "kwargs": {"hidden": 12, "in_features": 7}})
    by_class = build_model(
        {"class_path": "spikelight.models.toy_snn.ToyMLP", "init_args": {"hidden": 12, "num_classes": 4}},
        in_features=7,
        spiking=True,
        timesteps=2,
    )
    for m in (by_name, by_dict, by_kwargs_key, by_class):
        assert _same_architecture(m, ref)
        assert m.spiking and m.timesteps == 2 and m.in_features == 7
    # overrides win over the spec's own values
    assert build_model({"name": "toy_snn", "hidden": 12}, hidden=3).head.in_features == 3
    assert build_model({"class_path": "spikelight.models.toy_snn.ToyMLP", "init_args": {
        "in_features": 2, "num_classes": 9}}, num_classes=5).head.out_features == 5
    # a built module is used as is
    assert build_model(ref) is ref
    assert [spec_name(s) for s in ("toy_snn", {"name": "e3dsnn_s"}, {"class_path": "a.b.Cls"}, ref)] == [
        "toy_snn", "e3dsnn_s", "Cls", "ToyMLP"]


def test_build_model_rejects_bad_specs():
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        build_model({"name": "nope"})
    with pytest.raises(ValueError, match="cannot import class_path 'spikelight.models.toy_snn.Nope'"):
        build_model({"class_path": "spikelight.models.toy_snn.Nope"})
    with pytest.raises(ValueError, match="package.module.Class"):
        build_model({"class_path": "ToyMLP"})
    with pytest.raises(ValueError, match="unexpected keys.*hidden"):
        build_model({"class_path": "spikelight.models.toy_snn.ToyMLP", "hidden": 3})
    with pytest.raises(ValueError, match="a model spec is"):
        build_model(42)
    with pytest.raises(ValueError, match="a model spec is"):
        build_model({"hidden": 3})
    with pytest.raises(ValueError, match="already built"):
        build_model(create_model("toy_mlp"), hidden=3)


def test_register_model_refuses_a_second_model_under_the_same_name():
    with pytest.raises(ValueError, match="already registered"):

        @register_model
        def toy_mlp(**kw):  # noqa: F811 - the clash is the point
            return ToyMLP(in_features=1, num_classes=1, **kw)

    assert create_model("toy_mlp").in_features == 16  # the original is still the one registered
