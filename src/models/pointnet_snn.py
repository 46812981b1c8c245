"""Spike PointNet: PointNet with I-LIF neurons (SVL's smallest 3D encoder, ~3.57M parameters).

Reads top to bottom like PointNet (Qi et al. 2017), every ReLU replaced by an I-LIF neuron::

    points [B, N, F] ──(input T-Net: 3x3 on xyz)──> per-point MLP1 (64, 64)
        ──(feature T-Net: 64x64)──> per-point MLP2 (64, 128, 1024) ──max over N──>
        head (512, 256) ──> Linear to C  ──mean over T──> [B, C]

* Per-point MLPs are ``Conv1d(k=1) -> BatchNorm1d -> ILIF``; the head is ``Linear -> BN -> ILIF``
  and a final ``Linear(256, C)`` (with bias) giving the embedding.
* Max-pooling is taken *after* the neuron, so the head sees integer spikes.
* T-Nets (both optional) are spiking PointNets themselves ending in a real-valued matrix
  (initialised to the identity). The input transform multiplies xyz by a 3x3 matrix (real x
  real: part of the MAC front end); the feature transform multiplies spikes by a 64x64 matrix
  and the product goes through an I-LIF before MLP2. These two ``bmm`` s are not modules, so
  hook-based op counters do not see them (9 and 4096 operations per point).

Spike discipline (checked by the tests): the only ``Conv1d``/``Linear`` layers fed real values
are listed in :attr:`SpikePointNet.real_input_layers` - the first conv of the input T-Net
(raw points) and the first conv of MLP1 (the transformed points); every other one is fed
I-LIF outputs (integers 0..D).

Time: ``timesteps = T`` (default 1). ``[B, N, F]`` inputs are repeated over ``T``; ``[T, B, N, F]``
inputs are used as they are. Neurons run over ``[T, B, ...]``; the output is the mean over time
of the final embedding.

Registered variants (``spikelight.models.create_model(name, **kw)``; F = 6, params at C = 512 / 1280):

=================== ================================================================ ===============
name                structure                                                        params
=================== ================================================================ ===============
spike_pointnet      PointNet + both T-Nets, MLP 64-64 / 64-128-1024, head 512-256      3.60M / 3.80M
spike_pointnet_test MLP 16-16 / 16-32-64, head 32-16, T-Nets 16-32-64 / 32-16, C 32   tiny
=================== ================================================================ ===============

The reference count is ``3,601,737 + 257 (C - 512)`` in general (paper: 3.57M). The T-Nets hold
2.66M of it (as in the original PointNet, whose 40-class version has 3.47M).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from einops import rearrange
from torch import Tensor, nn

from spikelight.models.registry import register_model
from spikelight.nn.neurons import ILIF

__all__ = ["SVL_EMBED_DIM", "SpikePointNet", "SpikeTNet", "prepare_points", "spike_pointnet", "spike_pointnet_test"]

SVL_EMBED_DIM = 1280  # default embedding size of the 3D encoders: open_clip ViT-bigG-14, SVL's teacher


def prepare_points(points: Tensor, *, in_channels: int, timesteps: int, default_rgb: float = 0.4) -> Tensor:
    """Validate encoder input and bring it to ``[T, B, N, in_channels]``.

    ``[B, N, F]`` is repeated ``timesteps`` times; ``[T, B, N, F]`` is kept. An xyz-only input
    (``F = 3``) to a 6-channel encoder gets constant colour ``default_rgb`` (SVL's "rgb dropped"
    value). Any other channel mismatch, or non-finite values, raise ``ValueError``.
    """
    if points.dim() == 3:
        points = points.unsqueeze(0).expand(timesteps, *points.shape)
    elif points.dim() != 4:
        raise ValueError(f"points must be [B, N, F] or [T, B, N, F], got shape {tuple(points.shape)}")
    if not points.is_floating_point():
        raise TypeError(f"points must be floating point, got {points.dtype}")
    F_in = points.shape[-1]
    if F_in == 3 and in_channels == 6:
        points = torch.cat([points, torch.full_like(points, default_rgb)], dim=-1)
    elif F_in != in_channels:
        raise ValueError(f"encoder expects {in_channels} point channels (xyz first), got {F_in}")
    if not torch.isfinite(points).all():
        raise ValueError("points contain NaN or Inf")
    return points


def _neuron(neuron_kwargs: dict | None) -> ILIF:
    return ILIF(**(neuron_kwargs or {}))


class _PointMLP(nn.Module):
    """Shared per-point MLP on ``[T, B, C, N]``: (Conv1d k=1 -> BN -> ILIF) per width.

    The first conv receives the input as is; every later conv receives I-LIF output.
    """

    def __init__(self, in_channels: int, widths: Sequence[int], *, neuron_kwargs: dict | None = None) -> None:
        super().__init__()
        self.layers = nn.ModuleList()
        c = in_channels
        for w in widths:
            self.layers.append(
                nn.ModuleDict(
                    {"conv": nn.Conv1d(c, w, 1), "bn": nn.BatchNorm1d(w), "sn": _neuron(neuron_kwargs)}
                )
            )
            c = w
        self.out_channels = c

    def forward(self, x: Tensor) -> Tensor:
        T = x.shape[0]
        for layer in self.layers:
            h = layer["bn"](layer["conv"](rearrange(x, "t b c n -> (t b) c n")))
            x = layer["sn"](rearrange(h, "(t b) c n -> t b c n", t=T))
        return x


class _MLPHead(nn.Module):
    """``[T, B, C]`` -> (Linear -> BN -> ILIF) per width -> optional final Linear (no neuron)."""

    def __init__(
        self,
        in_channels: int,
        widths: Sequence[int],
        out_channels: int | None,
        *,
        neuron_kwargs: dict | None = None,
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList()
        c = in_channels
        for w in widths:
            self.layers.append(
                nn.ModuleDict({"fc": nn.Linear(c, w), "bn": nn.BatchNorm1d(w), "sn": _neuron(neuron_kwargs)})
            )
            c = w
        self.out = nn.Linear(c, out_channels) if out_channels is not None else None

    def forward(self, x: Tensor) -> Tensor:
        T = x.shape[0]
        for layer in self.layers:
            h = layer["bn"](layer["fc"](rearrange(x, "t b c -> (t b) c")))
            x = layer["sn"](rearrange(h, "(t b) c -> t b c", t=T))
        return x if self.out is None else self.out(x)


class SpikeTNet(nn.Module):
    """Spiking T-Net: per-point MLP -> max over N -> MLP -> ``k x k`` matrix (+ identity).

    Input ``[T, B, C, N]``, output ``[T, B, k, k]`` (real). The last Linear is zero-initialised so
    the transform starts as the identity.
    """

    def __init__(
        self,
        *,
        in_channels: int,
        k: int,
        mlp: Sequence[int] = (64, 128, 1024),
        head: Sequence[int] = (512, 256),
        neuron_kwargs: dict | None = None,
    ) -> None:
        super().__init__()
        self.k = k
        self.convs = _PointMLP(in_channels, mlp, neuron_kwargs=neuron_kwargs)
        self.head = _MLPHead(mlp[-1], head, k * k, neuron_kwargs=neuron_kwargs)
        nn.init.zeros_(self.head.out.weight)
        nn.init.zeros_(self.head.out.bias)
        self.register_buffer("eye", torch.eye(k).flatten(), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        s = self.convs(x).amax(dim=-1)  # [T, B, C] spikes
        m = self.head(s) + self.eye
        return m.view(*m.shape[:-1], self.k, self.k)


class SpikePointNet(nn.Module):
    """Spike PointNet encoder (see the module docstring).

    Args:
        embed_dim: output size ``C``.
        in_channels: point channels ``F`` (6 = xyz + rgb, or 3).
        mlp1, mlp2: per-point widths before / after the feature transform.
        head: hidden widths of the global MLP head.
        input_transform, feature_transform: use the 3x3 / ``mlp1[-1]``-square T-Nets.
        tnet_mlp, tnet_head: T-Net widths.
        timesteps: ``T`` (default 1).
        neuron_kwargs: passed to every :class:`~spikelight.nn.neurons.ILIF` (beta, vth, D).

    Shape: ``[B, N, F]`` or ``[T, B, N, F]`` -> ``[B, C]``.
    """

    def __init__(
        self,
        *,
        embed_dim: int,
        in_channels: int = 6,
        mlp1: Sequence[int] = (64, 64),
        mlp2: Sequence[int] = (64, 128, 1024),
        head: Sequence[int] = (512, 256),
        input_transform: bool = True,
        feature_transform: bool = True,
        tnet_mlp: Sequence[int] = (64, 128, 1024),
        tnet_head: Sequence[int] = (512, 256),
        timesteps: int = 1,
        neuron_kwargs: dict | None = None,
    ) -> None:
        super().__init__()
        if in_channels < 3:
            raise ValueError(f"in_channels must be >= 3 (xyz first), got {in_channels}")
        if timesteps < 1:
            raise ValueError(f"timesteps must be >= 1, got {timesteps}")
        self.embed_dim, self.in_channels, self.timesteps = int(embed_dim), int(in_channels), int(timesteps)
        tk = {"mlp": tnet_mlp, "head": tnet_head, "neuron_kwargs": neuron_kwargs}
        self.input_tnet = SpikeTNet(in_channels=in_channels, k=3, **tk) if input_transform else None
        self.mlp1 = _PointMLP(in_channels, mlp1, neuron_kwargs=neuron_kwargs)
        c1 = self.mlp1.out_channels
        self.feature_tnet = SpikeTNet(in_channels=c1, k=c1, **tk) if feature_transform else None
        self.feature_sn = _neuron(neuron_kwargs) if feature_transform else None
        self.mlp2 = _PointMLP(c1, mlp2, neuron_kwargs=neuron_kwargs)
        self.head = _MLPHead(self.mlp2.out_channels, head, embed_dim, neuron_kwargs=neuron_kwargs)

    @property
    def real_input_layers(self) -> tuple[str, ...]:
        """Names (``named_modules``) of the conv/linear layers fed real values (MAC layers)."""
        names = ["mlp1.layers.0.conv"]
        if self.input_tnet is not None:
            names.insert(0, "input_tnet.convs.layers.0.conv")
        return tuple(names)

    def forward(self, points: Tensor) -> Tensor:
        x = prepare_points(points, in_channels=self.in_channels, timesteps=self.timesteps)
        if x.shape[2] == 0:
            raise ValueError("SpikePointNet: empty point cloud (N = 0)")
        x = rearrange(x, "t b n f -> t b f n")
        if self.input_tnet is not None:
            m = self.input_tnet(x)  # [T, B, 3, 3]
            xyz = torch.einsum("tbcn,tbcd->tbdn", x[:, :, :3], m)  # row vector xyz @ M per point
            x = torch.cat([xyz, x[:, :, 3:]], dim=2)
        s = self.mlp1(x)
        if self.feature_tnet is not None:
            m = self.feature_tnet(s)  # [T, B, C, C]
            s = self.feature_sn(torch.einsum("tbcn,tbcd->tbdn", s, m))
        s = self.mlp2(s).amax(dim=-1)  # max-pool over points: [T, B, 1024] spikes
        return self.head(s).mean(0)


# --- registered variants ----------------------------------------------------------------------


@register_model
def spike_pointnet(**kw) -> SpikePointNet:
    """Spike PointNet (3.60M parameters at C = 512, paper 3.57M)."""
    return SpikePointNet(**{"embed_dim": SVL_EMBED_DIM, **kw})


@register_model
def spike_pointnet_test(**kw) -> SpikePointNet:
    """Tiny Spike PointNet for tests (C = 32)."""
    cfg = dict(
        embed_dim=32,
        mlp1=(16, 16),
        mlp2=(16, 32, 64),
        head=(32, 16),
        tnet_mlp=(16, 32, 64),
        tnet_head=(32, 16),
    )
    return SpikePointNet(**{**cfg, **kw})
