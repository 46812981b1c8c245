"""Part segmentation on top of a spiking 3D encoder: per-point features from the encoder's internals, the
shape's category as a one-hot input (standard on ShapeNetPart) and a spiking per-point MLP head.

::

    points [B, N, F], category [B]
        --encoder (+ forward hooks on its internals)--> per-point features [T, B, C_feat, N]
        concat one-hot(category) [T, B, K, N]
        --head: (Conv1d k=1 -> BN -> I-LIF) per width -> Conv1d to P parts--> mean over T --> logits [B, N, P]

Per-point features by encoder family (the encoder files are not changed; the wrapper reads their public
sub-modules with forward hooks during the encoder's own forward):

* :class:`~spikelight.models.pointnet_snn.SpikePointNet` (PointNet segmentation): the point's local features
  (``mlp1``, after the feature transform when there is one), its ``mlp2`` features, and the global embedding;
* :class:`~spikelight.models.e3dsnn.E3DSNN`: the features of the voxel the point falls in at every scale
  (stem at the grid size, each stage at 2, 4, 8, 16 times it, the head's output at 16 times), found from the
  point's voxel coordinates (``floor((xyz - min) / grid_size)`` as in :func:`~spikelight.nn.sparse_conv.voxelize`,
  integer-divided by the scale), plus the global embedding (mean over voxels);
* :class:`~spikelight.models.pointformer_snn.SpikePointFormer`: group-centre token features (after the last
  block and the output neuron) interpolated to the points by inverse squared distance over the ``interp_k``
  nearest centres (PointNet++ feature propagation), the cls token, the global embedding, and the point's
  own input channels.

The encoder keeps its own attribute names (``model.encoder``), so an SVL checkpoint's encoder loads into it with
:func:`~spikelight.models.pretrained.load_pretrained_encoder` ``(model.encoder, path)``.

Spike discipline: the head's first conv sees real values (features taken from the membrane path, the global
embedding, coordinates): a MAC layer, listed in :attr:`PartSegmentationModel.real_input_layers` with the
encoder's; every later head conv sees I-LIF output.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager
from typing import Any

import torch
from einops import rearrange
from torch import Tensor, nn

from spikelight.models.e3dsnn import E3DSNN
from spikelight.models.pointformer_snn import SpikePointFormer
from spikelight.models.pointnet_snn import SpikePointNet, prepare_points
from spikelight.models.pointops import index_points, knn
from spikelight.models.registry import ModelConfig, build_model
from spikelight.nn.neurons import ILIF
from spikelight.nn.sparse_conv import SparseConv3d, SparseTensor, SubMConv3d, global_mean_pool

__all__ = ["PartSegmentationModel", "SpikingPointHead", "SUPPORTED_ENCODERS"]

SUPPORTED_ENCODERS = (SpikePointNet, E3DSNN, SpikePointFormer)


class SpikingPointHead(nn.Module):
    """Per-point spiking MLP: ``[T, B, C, N]`` -> (Conv1d k=1 -> BN -> I-LIF) per width -> dropout ->
    Conv1d to ``out_channels`` -> ``[T, B, out_channels, N]`` (real logits)."""

    def __init__(self, in_channels: int, widths: Sequence[int], out_channels: int, *, dropout: float = 0.0,
                 neuron_kwargs: dict | None = None) -> None:
        super().__init__()
        self.layers = nn.ModuleList()
        c = in_channels
        for w in widths:
            self.layers.append(nn.ModuleDict({"conv": nn.Conv1d(c, w, 1), "bn": nn.BatchNorm1d(w),
                                              "sn": ILIF(**(neuron_kwargs or {}))}))
            c = w
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.out = nn.Conv1d(c, out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        T = x.shape[0]
        for layer in self.layers:
            h = layer["bn"](layer["conv"](rearrange(x, "t b c n -> (t b) c n")))
            x = layer["sn"](rearrange(h, "(t b) c n -> t b c n", t=T))
        return rearrange(self.out(self.dropout(rearrange(x, "t b c n -> (t b) c n"))), "(t b) c n -> t b c n", t=T)


@contextmanager
def _capture(modules: dict[str, nn.Module | None], *, inputs: Sequence[str] = ()):
    """Forward hooks storing each module's output (or first input, for names in ``inputs``) in a dict."""
    store: dict[str, Any] = {}
    handles = []
    for name, m in modules.items():
        if m is None:
            continue

        def hook(mod, args, out, name=name):
            store[name] = args[0] if name in inputs else out

        handles.append(m.register_forward_hook(hook))
    try:
        yield store
    finally:
        for h in handles:
            h.remove()


def _last_conv_channels(module: nn.Module) -> int:
    convs = [m for m in module.modules() if isinstance(m, (SubMConv3d, SparseConv3d))]
    return int(convs[-1].out_channels)


def _site_key(b: Tensor, ijk: Tensor, shape: Sequence[int]) -> Tensor:
    return ((b * shape[0] + ijk[:, 0]) * shape[1] + ijk[:, 1]) * shape[2] + ijk[:, 2]


class PartSegmentationModel(nn.Module):
    """A registered 3D encoder + per-point features + category one-hot + spiking per-point head.

    Args:
        encoder: the encoder's model spec (registered name, ``{name: ..., <kwargs>}``, ``{class_path: ...}``) or
            a built module: Spike PointNet, E-3DSNN or Spike-driven PointFormer.
        num_parts: ``P`` output classes (all parts of all categories, e.g. 50 on ShapeNetPart).
        num_categories: ``K`` of the one-hot category input (0: no category input).
        head: hidden widths of the spiking head.
        dropout: dropout before the head's last conv.
        interp_k: nearest group centres interpolated per point (PointFormer).
        neuron_kwargs: I-LIF settings of the head.

    Shape: ``points [B, N, F]`` (+ ``category [B]`` int) -> logits ``[B, N, P]``.
    """

    def __init__(self, *, encoder: ModelConfig | nn.Module, num_parts: int, num_categories: int = 16,
                 head: Sequence[int] = (256, 128), dropout: float = 0.0, interp_k: int = 3,
                 neuron_kwargs: dict | None = None) -> None:
        super().__init__()
        self.encoder = build_model(encoder)
        if not isinstance(self.encoder, SUPPORTED_ENCODERS):
            raise TypeError(f"PartSegmentationModel supports {[c.__name__ for c in SUPPORTED_ENCODERS]}, got "
                            f"{type(self.encoder).__name__}")
        if num_parts < 1 or num_categories < 0:
            raise ValueError(f"num_parts must be >= 1 and num_categories >= 0, got {num_parts}, {num_categories}")
        self.num_parts, self.num_categories, self.interp_k = int(num_parts), int(num_categories), int(interp_k)
        self.feature_channels = self._feature_channels()
        self.head = SpikingPointHead(self.feature_channels + self.num_categories, head, self.num_parts,
                                     dropout=dropout, neuron_kwargs=neuron_kwargs)

    @property
    def real_input_layers(self) -> tuple[str, ...]:
        """MAC layers: the encoder's and the head's first conv."""
        enc = tuple(f"encoder.{n}" for n in getattr(self.encoder, "real_input_layers", ()))
        return (*enc, "head.layers.0.conv" if len(self.head.layers) else "head.out")

    def _feature_channels(self) -> int:
        enc = self.encoder
        if isinstance(enc, SpikePointNet):
            return enc.mlp1.out_channels + enc.mlp2.out_channels + enc.embed_dim
        if isinstance(enc, E3DSNN):
            return _last_conv_channels(enc.stem) + sum(_last_conv_channels(s) for s in enc.stages) + 2 * enc.embed_dim
        dim = int(enc.cls_token.shape[-1])
        return 2 * dim + enc.embed_dim + enc.in_channels

    # ------------------------------------------------------------------ per-point features [T, B, C, N]
    def point_features(self, points: Tensor) -> Tensor:
        """Per-point features ``[T, B, C_feat, N]`` of ``points [B, N, F]`` (see the module docstring)."""
        if points.dim() != 3:
            raise ValueError(f"part segmentation takes points [B, N, F], got shape {tuple(points.shape)}")
        enc = self.encoder
        pts = prepare_points(points, in_channels=enc.in_channels, timesteps=1)[0]
        if pts.shape[1] == 0:
            raise ValueError("part segmentation: empty point cloud (N = 0)")
        if isinstance(enc, SpikePointNet):
            return self._pointnet(pts)
        if isinstance(enc, E3DSNN):
            return self._e3dsnn(pts)
        return self._pointformer(pts)

    def _pointnet(self, pts: Tensor) -> Tensor:
        enc: SpikePointNet = self.encoder
        with _capture({"mlp1": enc.mlp1, "ft": enc.feature_sn, "mlp2": enc.mlp2}) as got:
            emb = enc(pts)  # [B, C]
        local = got.get("ft", got["mlp1"])  # [T, B, c1, N]
        T, _, _, N = local.shape
        glob = emb[None, :, :, None].expand(T, -1, -1, N)
        return torch.cat([local, got["mlp2"], glob], dim=2)

    def _e3dsnn(self, pts: Tensor) -> Tensor:
        enc: E3DSNN = self.encoder
        levels = {"stem": enc.stem, **{f"stage{i}": s for i, s in enumerate(enc.stages)}}
        with _capture(levels) as got:
            out = enc.forward_features(enc.voxelize(pts))
        B, N, _ = pts.shape
        xyz = pts[..., :3].detach()
        grid = torch.floor((xyz - xyz.amin(dim=1, keepdim=True)) / enc.grid_size).long().clamp_(min=0)
        grid = grid.reshape(B * N, 3)
        b = torch.arange(B, device=pts.device).repeat_interleave(N)
        feats = []
        scales = [1] + [2 ** (i + 1) for i in range(len(enc.stages))] + [2 ** len(enc.stages)]
        for name, x, s in zip([*levels, "head"], [*(got[k] for k in levels), out], scales):
            feats.append(self._gather_sites(x, b, grid // s, name))  # [T, B*N, C]
        g = global_mean_pool(out)  # [T, B, C]
        T = g.shape[0]
        per_point = torch.cat(feats, -1).view(T, B, N, -1)
        per_point = torch.cat([per_point, g[:, :, None, :].expand(-1, -1, N, -1)], -1)
        return rearrange(per_point, "t b n c -> t b c n")

    @staticmethod
    def _gather_sites(x: SparseTensor, b: Tensor, ijk: Tensor, name: str) -> Tensor:
        keys = _site_key(x.indices[:, 0].long(), x.indices[:, 1:].long(), x.spatial_shape)
        sorted_keys, perm = torch.sort(keys)
        q = _site_key(b, ijk, x.spatial_shape)
        pos = torch.searchsorted(sorted_keys, q).clamp_(max=max(len(keys) - 1, 0))
        if len(keys) == 0 or not torch.equal(sorted_keys[pos], q):
            raise RuntimeError(f"E-3DSNN part segmentation: a point's voxel has no site at level {name!r} "
                               "(the encoder's voxelisation no longer matches floor((xyz - min) / grid_size))")
        f = x.features if x.features.dim() == 3 else x.features.unsqueeze(0)
        return f[:, perm[pos]]

    def _pointformer(self, pts: Tensor) -> Tensor:
        enc: SpikePointFormer = self.encoder
        with _capture({"centres": enc.pos_fc1, "tokens": enc.out_sn}, inputs=("centres",)) as got:
            emb = enc(pts)  # [B, C]
        centres = got["centres"][0]  # [B, G, 3] (the same centres at every step for [B, N, F] input)
        s = got["tokens"]  # [T, B, 1 + G, dim]
        T = s.shape[0]
        k = min(self.interp_k, centres.shape[1])
        d2, idx = knn(pts[..., :3], centres, k)  # [B, N, k]
        w = 1.0 / (d2 + 1e-8)
        w = (w / w.sum(-1, keepdim=True)).to(s.dtype)
        tok = s[:, :, 1:]
        interp = torch.stack([(index_points(tok[t], idx) * w[..., None]).sum(2) for t in range(T)])  # [T,B,N,dim]
        N = pts.shape[1]
        cls = s[:, :, :1].expand(-1, -1, N, -1)
        glob = emb[None, :, None, :].expand(T, -1, N, -1)
        raw = pts[None].expand(T, -1, -1, -1)
        return rearrange(torch.cat([interp, cls, glob, raw], -1), "t b n c -> t b c n")

    # ------------------------------------------------------------------ forward
    def forward(self, points: Tensor, category: Tensor | None = None) -> Tensor:
        f = self.point_features(points)  # [T, B, C, N]
        T, B, _, N = f.shape
        if self.num_categories:
            if category is None:
                raise ValueError(f"this model takes the shape category (num_categories={self.num_categories})")
            category = category.long().view(-1)
            if category.numel() != B or category.min() < 0 or category.max() >= self.num_categories:
                raise ValueError(f"category must be {B} ids in [0, {self.num_categories}), got {category.tolist()}")
            onehot = torch.nn.functional.one_hot(category, self.num_categories).to(f.dtype)
            f = torch.cat([f, onehot[None, :, :, None].expand(T, -1, -1, N)], dim=2)
        return self.head(f).mean(0).transpose(1, 2)  # [B, N, P]
