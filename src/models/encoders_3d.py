"""Registry of SVL's spiking 3D encoders: variants are small functions, built by name.

Common interface of every encoder::

    enc = build_encoder("e3dsnn_s", embed_dim=1280)
    emb = enc(points)            # points [B, N, F] (F = 6: xyz + rgb in [0, 1], or 3) -> [B, C]
    enc.timesteps                # T (1 for 3D); [T, B, N, F] inputs are also accepted
    enc.embed_dim                # C
    enc.real_input_layers        # names of the conv/linear layers fed real values (MAC layers)

For ``T > 1`` the neurons run over ``[T, B, ...]`` (a ``[B, N, F]`` input repeated over time, or
a ``[T, B, N, F]`` input as given) and the output is the mean over time of the final embedding.

Variants (reference sizes, F = 6; params at C = 512 / 1280):

================== ============================================================ ===============
name               structure                                                    params
================== ============================================================ ===============
spike_pointnet     PointNet + both T-Nets, MLP 64-64 / 64-128-1024, head 512-256  3.60M / 3.80M
e3dsnn_t           stem 16, stages 16/32/64/128, 1 block                        1.94M / 2.03M
e3dsnn_s           stem 24, stages 24/48/96/160, 1 block                        3.35M / 3.47M
e3dsnn_l           stem 64, stages 64/128/128/256, 2 blocks                     17.45M / 17.65M
e3dsnn_h           stem 64, stages 96/192/288/384, 2 blocks                     46.76M / 47.05M
pointformer_snn_l  512 groups x 32, dim 384, 12 blocks, 6 heads                 22.29M / 22.88M
================== ============================================================ ===============

``*_test`` variants are tiny (fast CPU tests and demos).
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from spikelight.models.e3dsnn import E3DSNN
from spikelight.models.pointformer_snn import SpikePointFormer
from spikelight.models.pointnet_snn import SpikePointNet

__all__ = ["ENCODERS_3D", "build_encoder", "list_encoders", "register_encoder"]

ENCODERS_3D: dict[str, Callable[..., nn.Module]] = {}

DEFAULT_EMBED_DIM = 1280  # open_clip ViT-bigG-14, SVL's teacher


def register_encoder(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Decorator: register ``fn`` under its ``__name__``."""
    if fn.__name__ in ENCODERS_3D:
        raise ValueError(f"encoder {fn.__name__!r} is already registered")
    ENCODERS_3D[fn.__name__] = fn
    return fn


def list_encoders() -> list[str]:
    return sorted(ENCODERS_3D)


def build_encoder(name: str, **kwargs) -> nn.Module:
    """Build a registered encoder; ``kwargs`` override the variant's defaults (e.g. ``embed_dim``)."""
    try:
        fn = ENCODERS_3D[name]
    except KeyError:
        raise ValueError(f"unknown 3D encoder {name!r}; available: {', '.join(list_encoders())}") from None
    return fn(**kwargs)


# --- Spike PointNet ---------------------------------------------------------------------------


@register_encoder
def spike_pointnet(**kw) -> SpikePointNet:
    return SpikePointNet(**{"embed_dim": DEFAULT_EMBED_DIM, **kw})


@register_encoder
def spike_pointnet_test(**kw) -> SpikePointNet:
    cfg = dict(
        embed_dim=32,
        mlp1=(16, 16),
        mlp2=(16, 32, 64),
        head=(32, 16),
        tnet_mlp=(16, 32, 64),
        tnet_head=(32, 16),
    )
    return SpikePointNet(**{**cfg, **kw})


# --- E-3DSNN ----------------------------------------------------------------------------------


def _e3dsnn(stem: int, channels: tuple[int, ...], depths: int, kw: dict) -> E3DSNN:
    cfg = dict(embed_dim=DEFAULT_EMBED_DIM, stem_channels=stem, channels=channels, depths=depths)
    return E3DSNN(**{**cfg, **kw})


@register_encoder
def e3dsnn_t(**kw) -> E3DSNN:
    return _e3dsnn(16, (16, 32, 64, 128), 1, kw)


@register_encoder
def e3dsnn_s(**kw) -> E3DSNN:
    return _e3dsnn(24, (24, 48, 96, 160), 1, kw)


@register_encoder
def e3dsnn_l(**kw) -> E3DSNN:
    return _e3dsnn(64, (64, 128, 128, 256), 2, kw)


@register_encoder
def e3dsnn_h(**kw) -> E3DSNN:
    return _e3dsnn(64, (96, 192, 288, 384), 2, kw)


@register_encoder
def e3dsnn_test(**kw) -> E3DSNN:
    """Tiny: stem 8, stages 8/16/16/32, 1 block, C = 32, grid 0.05 (coarser: fewer voxels)."""
    return E3DSNN(
        **{
            "embed_dim": 32,
            "stem_channels": 8,
            "channels": (8, 16, 16, 32),
            "depths": 1,
            "grid_size": 0.05,
            **kw,
        }
    )


# --- Spike-driven PointFormer -----------------------------------------------------------------


@register_encoder
def pointformer_snn_l(**kw) -> SpikePointFormer:
    return SpikePointFormer(**{"embed_dim": DEFAULT_EMBED_DIM, **kw})


@register_encoder
def pointformer_snn_test(**kw) -> SpikePointFormer:
    """Tiny: 32 groups x 16, dim 32, 2 blocks, 2 heads, C = 32."""
    cfg = dict(
        embed_dim=32,
        num_groups=32,
        group_size=16,
        dim=32,
        depth=2,
        num_heads=2,
        token_widths=(16, 32, 64),
        pos_hidden=16,
    )
    return SpikePointFormer(**{**cfg, **kw})
