"""Spike-driven PointFormer: a Point-BERT-style transformer with I-LIF neurons (~22.1M params).

Reads top to bottom::

    points [B, N, F] --FPS G centres, kNN K neighbours--> groups [B, G, K, F] (xyz relative)
    token embedding (mini-PointNet, per group):
        Linear(F,128) BN ILIF Linear(128,256) BN  --max over K--> global; concat [global, local]
        ILIF Linear(512,512) BN ILIF Linear(512,dim) --max over K--> token [B, G, dim]
    position embedding: Linear(3,128) BN ILIF Linear(128,dim) of the centre xyz
    x = [cls, tokens] + [cls_pos, pos]                          (real-valued "membrane" path)
    depth x block:   x = x + SDSA(x);   x = x + MLP(x)
    out: BN ILIF -> concat[cls, max over tokens] -> Linear(2 dim, C) --mean over T--> [B, C]

BatchNorm (over the channel axis, every token a sample) replaces LayerNorm everywhere.

Spike-driven self-attention (SDSA), per head, no softmax::

    s = ILIF(x);  Q, K, V = ILIF(BN(W_q s)), ILIF(BN(W_k s)), ILIF(BN(W_v s))      (integers 0..D)
    attn_mode "qk_v"   (default, "SN(Q K^T) V"):  A = ILIF(scale * Q K^T);  O = value_scale * A V
    attn_mode "linear" (Spike-driven Transformer v2's order):  O = scale * value_scale * Q (K^T V)
    out = BN(W_o ILIF(O))

``scale`` defaults to ``head_dim ** -0.5`` and ``value_scale`` to ``1 / L`` (``L`` tokens incl.
cls): ``A V`` sums ``L`` products of integers, and at initialisation (L = 513, dim 384) a
``1 / sqrt(L)`` factor still leaves ~99% of the output neurons saturated at D, ``1 / L`` none. Both
matmuls multiply integer spike tensors (additions only on neuromorphic hardware); they are not
modules, so hook-based counters do not see them.

MLP: ``x + BN(W_2 ILIF(BN(W_1 ILIF(x))))`` with hidden ``mlp_ratio * dim``.

Spike discipline (checked by the tests): only the first Linear of the token embedding (relative
xyz + rgb of the neighbours) and the first Linear of the position embedding (centre xyz) see
real values (:attr:`SpikePointFormer.real_input_layers`); every other Linear sees I-LIF output.

Time: ``timesteps = T`` (default 1); ``[B, N, F]`` is grouped once and repeated over ``T``,
``[T, B, N, F]`` is grouped per step. Output = mean over ``T`` of the embedding.

Registered variants (``spikelight.models.create_model(name, **kw)``; F = 6, params at C = 512 / 1280):

==================== =================================================== =======================
name                 structure                                           params
==================== =================================================== =======================
pointformer_snn_l    512 groups x 32, dim 384, 12 blocks, 6 heads         22.29M / 22.88M [22.1M]
pointformer_snn_test 32 groups x 16, dim 32, 2 blocks, 2 heads, C = 32    tiny
==================== =================================================== =======================
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from einops import rearrange, repeat
from torch import Tensor, nn

from spikelight.models.pointnet_snn import SVL_EMBED_DIM, prepare_points
from spikelight.models.pointops import knn_group
from spikelight.models.registry import register_model
from spikelight.nn.neurons import ILIF
from spikelight.nn.sparse_conv import BatchNormLastDim

__all__ = [
    "SpikePointFormer",
    "SpikeDrivenSelfAttention",
    "SpikeMLP",
    "SpikeTransformerBlock",
    "TokenEmbedding",
    "pointformer_snn_l",
    "pointformer_snn_test",
]


def _sn(neuron_kwargs: dict | None) -> ILIF:
    return ILIF(**(neuron_kwargs or {}))


class TokenEmbedding(nn.Module):
    """Mini-PointNet over each group: ``[T, B, G, K, F]`` -> ``[T, B, G, dim]`` (real-valued).

    The first Linear sees the (relative) coordinates; every other Linear sees I-LIF output.
    """

    def __init__(
        self,
        *,
        in_channels: int,
        dim: int,
        widths: Sequence[int] = (128, 256, 512),
        neuron_kwargs: dict | None = None,
    ) -> None:
        super().__init__()
        c1, c2, c3 = widths
        self.fc1, self.bn1, self.sn1 = nn.Linear(in_channels, c1), BatchNormLastDim(c1), _sn(neuron_kwargs)
        self.fc2, self.bn2 = nn.Linear(c1, c2), BatchNormLastDim(c2)
        self.sn2 = _sn(neuron_kwargs)
        self.fc3, self.bn3, self.sn3 = nn.Linear(2 * c2, c3), BatchNormLastDim(c3), _sn(neuron_kwargs)
        self.fc4 = nn.Linear(c3, dim)

    def forward(self, groups: Tensor) -> Tensor:
        h = self.sn1(self.bn1(self.fc1(groups)))
        f = self.bn2(self.fc2(h))  # [T, B, G, K, c2]
        g = f.amax(dim=-2, keepdim=True).expand_as(f)
        h = self.sn2(torch.cat([g, f], dim=-1))
        h = self.sn3(self.bn3(self.fc3(h)))
        return self.fc4(h).amax(dim=-2)


class SpikeDrivenSelfAttention(nn.Module):
    """Spike-driven self-attention on ``[T, B, L, dim]`` (see the module docstring)."""

    def __init__(
        self,
        *,
        dim: int,
        num_heads: int,
        attn_mode: str = "qk_v",
        scale: float | None = None,
        value_scale: float | None = None,
        neuron_kwargs: dict | None = None,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} must be divisible by num_heads {num_heads}")
        if attn_mode not in ("qk_v", "linear"):
            raise ValueError(f"attn_mode must be 'qk_v' or 'linear', got {attn_mode!r}")
        self.num_heads, self.attn_mode = num_heads, attn_mode
        self.scale = (dim // num_heads) ** -0.5 if scale is None else float(scale)
        self.value_scale = value_scale
        self.in_sn = _sn(neuron_kwargs)
        self.q, self.k, self.v = (nn.Linear(dim, dim, bias=False) for _ in range(3))
        self.q_bn, self.k_bn, self.v_bn = (BatchNormLastDim(dim) for _ in range(3))
        self.q_sn, self.k_sn, self.v_sn = (_sn(neuron_kwargs) for _ in range(3))
        self.attn_sn = _sn(neuron_kwargs)  # on Q K^T ("qk_v" only)
        self.out_sn = _sn(neuron_kwargs)
        self.proj, self.proj_bn = nn.Linear(dim, dim), BatchNormLastDim(dim)

    def forward(self, x: Tensor) -> Tensor:
        s = self.in_sn(x)
        h = self.num_heads
        q = rearrange(self.q_sn(self.q_bn(self.q(s))), "t b l (h d) -> t b h l d", h=h)
        k = rearrange(self.k_sn(self.k_bn(self.k(s))), "t b l (h d) -> t b h l d", h=h)
        v = rearrange(self.v_sn(self.v_bn(self.v(s))), "t b l (h d) -> t b h l d", h=h)
        vs = 1.0 / x.shape[2] if self.value_scale is None else self.value_scale
        if self.attn_mode == "qk_v":
            a = self.attn_sn((q @ k.transpose(-2, -1)) * self.scale)  # [T, B, H, L, L] integers
            o = (a @ v) * vs
        else:
            o = (q @ (k.transpose(-2, -1) @ v)) * (self.scale * vs)
        o = rearrange(o, "t b h l d -> t b l (h d)")
        return self.proj_bn(self.proj(self.out_sn(o)))


class SpikeMLP(nn.Module):
    """``BN(W_2 ILIF(BN(W_1 ILIF(x))))`` on ``[..., dim]``."""

    def __init__(self, *, dim: int, hidden: int, neuron_kwargs: dict | None = None) -> None:
        super().__init__()
        self.sn1, self.fc1, self.bn1 = _sn(neuron_kwargs), nn.Linear(dim, hidden), BatchNormLastDim(hidden)
        self.sn2, self.fc2, self.bn2 = _sn(neuron_kwargs), nn.Linear(hidden, dim), BatchNormLastDim(dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.bn2(self.fc2(self.sn2(self.bn1(self.fc1(self.sn1(x))))))


class SpikeTransformerBlock(nn.Module):
    """``x + SDSA(x)`` then ``x + MLP(x)`` on the real-valued membrane path ``[T, B, L, dim]``."""

    def __init__(
        self,
        *,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        neuron_kwargs: dict | None = None,
        **attn_kw,
    ):
        super().__init__()
        self.attn = SpikeDrivenSelfAttention(
            dim=dim, num_heads=num_heads, neuron_kwargs=neuron_kwargs, **attn_kw
        )
        self.mlp = SpikeMLP(dim=dim, hidden=int(dim * mlp_ratio), neuron_kwargs=neuron_kwargs)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(x)
        return x + self.mlp(x)


class SpikePointFormer(nn.Module):
    """Spike-driven PointFormer encoder (see the module docstring).

    Args:
        embed_dim: output size ``C``.
        in_channels: point channels ``F`` (6 = xyz + rgb, or 3).
        num_groups, group_size: FPS centres ``G`` and kNN size ``K``.
        dim, depth, num_heads, mlp_ratio: transformer size.
        token_widths: mini-PointNet widths ``(c1, c2, c3)``.
        pos_hidden: hidden width of the position MLP.
        attn_mode, attn_scale, value_scale: see :class:`SpikeDrivenSelfAttention`.
        timesteps: ``T`` (default 1).
        neuron_kwargs: passed to every ILIF (beta, vth, D).

    Shape: ``[B, N, F]`` or ``[T, B, N, F]`` -> ``[B, C]``.
    """

    def __init__(
        self,
        *,
        embed_dim: int,
        in_channels: int = 6,
        num_groups: int = 512,
        group_size: int = 32,
        dim: int = 384,
        depth: int = 12,
        num_heads: int = 6,
        mlp_ratio: float = 4.0,
        token_widths: Sequence[int] = (128, 256, 512),
        pos_hidden: int = 128,
        attn_mode: str = "qk_v",
        attn_scale: float | None = None,
        value_scale: float | None = None,
        timesteps: int = 1,
        neuron_kwargs: dict | None = None,
    ) -> None:
        super().__init__()
        if timesteps < 1:
            raise ValueError(f"timesteps must be >= 1, got {timesteps}")
        self.embed_dim, self.in_channels, self.timesteps = int(embed_dim), int(in_channels), int(timesteps)
        self.num_groups, self.group_size = int(num_groups), int(group_size)
        self.tokens = TokenEmbedding(
            in_channels=in_channels, dim=dim, widths=token_widths, neuron_kwargs=neuron_kwargs
        )
        self.pos_fc1, self.pos_bn, self.pos_sn = (
            nn.Linear(3, pos_hidden),
            BatchNormLastDim(pos_hidden),
            _sn(neuron_kwargs),
        )
        self.pos_fc2 = nn.Linear(pos_hidden, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, 1, dim))
        self.cls_pos = nn.Parameter(torch.zeros(1, 1, 1, dim))
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        nn.init.trunc_normal_(self.cls_pos, std=0.02)
        attn_kw = {"attn_mode": attn_mode, "scale": attn_scale, "value_scale": value_scale}
        self.blocks = nn.ModuleList(
            SpikeTransformerBlock(
                dim=dim, num_heads=num_heads, mlp_ratio=mlp_ratio, neuron_kwargs=neuron_kwargs, **attn_kw
            )
            for _ in range(depth)
        )
        self.norm, self.out_sn = BatchNormLastDim(dim), _sn(neuron_kwargs)
        self.head = nn.Linear(2 * dim, embed_dim)

    @property
    def real_input_layers(self) -> tuple[str, ...]:
        """Names of the Linear layers fed real values (MAC layers): the coordinate inputs."""
        return ("tokens.fc1", "pos_fc1")

    def group(self, points: Tensor) -> tuple[Tensor, Tensor]:
        """Points -> ``(groups [T, B, G, K, F], centres [T, B, G, F])``."""
        if points.dim() == 3:
            pts = prepare_points(points, in_channels=self.in_channels, timesteps=1)[0]
            if pts.shape[1] == 0:
                raise ValueError("SpikePointFormer: empty point cloud (N = 0)")
            g, c = knn_group(pts, self.num_groups, self.group_size)
            T = self.timesteps
            return g.unsqueeze(0).expand(T, *g.shape), c.unsqueeze(0).expand(T, *c.shape)
        pts = prepare_points(points, in_channels=self.in_channels, timesteps=points.shape[0])
        if pts.shape[2] == 0:
            raise ValueError("SpikePointFormer: empty point cloud (N = 0)")
        T = pts.shape[0]
        g, c = knn_group(pts.flatten(0, 1), self.num_groups, self.group_size)
        return g.unflatten(0, (T, -1)), c.unflatten(0, (T, -1))

    def forward(self, points: Tensor) -> Tensor:
        groups, centres = self.group(points)
        T, B = groups.shape[:2]
        tok = self.tokens(groups)  # [T, B, G, dim]
        pos = self.pos_fc2(self.pos_sn(self.pos_bn(self.pos_fc1(centres[..., :3]))))
        cls = repeat(self.cls_token, "1 1 1 d -> t b 1 d", t=T, b=B)
        cls_pos = repeat(self.cls_pos, "1 1 1 d -> t b 1 d", t=T, b=B)
        x = torch.cat([cls, tok], dim=2) + torch.cat([cls_pos, pos], dim=2)
        for blk in self.blocks:
            x = blk(x)
        s = self.out_sn(self.norm(x))
        feat = torch.cat([s[:, :, 0], s[:, :, 1:].amax(dim=2)], dim=-1)  # [T, B, 2 dim] integers
        return self.head(feat).mean(0)


# --- registered variants ----------------------------------------------------------------------


@register_model
def pointformer_snn_l(**kw) -> SpikePointFormer:
    """Spike-driven PointFormer-L (22.29M parameters at C = 512, paper 22.1M)."""
    return SpikePointFormer(**{"embed_dim": SVL_EMBED_DIM, **kw})


@register_model
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
