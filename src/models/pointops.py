"""Point-cloud primitives in plain PyTorch: farthest point sampling, kNN, grouping.

All functions are batched and vectorised over the batch (FPS loops over the samples it picks,
``npoint`` steps of ``O(B N)`` work each). Layout: points ``[B, N, C]`` (channels last),
indices ``int64``.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["farthest_point_sample", "group_points", "index_points", "knn", "knn_group"]


@torch.no_grad()
def farthest_point_sample(
    xyz: Tensor, npoint: int, *, start: Tensor | int | None = 0, generator: torch.Generator | None = None
) -> Tensor:
    """Farthest point sampling (the one implementation of spikelight: models and data transforms use it).

    Args:
        xyz: ``[B, N, 3]`` coordinates (only the first 3 channels are used).
        npoint: number of samples ``S``. If ``S > N`` the sequence continues by re-picking the
            points at distance 0 (FPS order is kept, so indices repeat).
        start: index of the first sample (int or ``[B]``); ``None`` draws it at random (``generator``).
        generator: RNG for ``start=None``.

    Returns:
        ``[B, S]`` int64 indices: ``idx[:, 0] = start`` and each next index maximises the distance
        to the already chosen set (ties: the lowest index, like ``argmax``).
    """
    if xyz.dim() != 3 or xyz.shape[-1] < 3:
        raise ValueError(f"farthest_point_sample expects [B, N, >=3], got {tuple(xyz.shape)}")
    B, N, _ = xyz.shape
    if N == 0:
        raise ValueError("farthest_point_sample: the point cloud is empty")
    device = xyz.device
    if start is None:
        cur = torch.randint(0, N, (B,), generator=generator).to(device)
    elif isinstance(start, int):
        cur = torch.full((B,), start, dtype=torch.long, device=device)
    else:
        cur = start.to(device=device, dtype=torch.long).expand(B).clone()
    # coordinate-major layout [3, B, N]: the inner step is a few in-place element-wise kernels
    # (2-5x faster on CPU than ``((pts - c) ** 2).sum(-1)`` on [B, N, 3], same indices)
    P = xyz[..., :3].float().permute(2, 0, 1).contiguous()
    flat = P.reshape(3, B * N)
    idx = torch.empty(npoint, B, dtype=torch.long, device=device)
    min_d = torch.full((B, N), float("inf"), device=device)
    d = torch.empty(B, N, device=device)
    tmp = torch.empty(B, N, device=device)
    offset = torch.arange(B, device=device) * N
    for i in range(npoint):
        idx[i] = cur
        c = flat.index_select(1, offset + cur)  # [3, B] current centres
        torch.sub(P[0], c[0, :, None], out=d)
        d.square_()
        torch.sub(P[1], c[1, :, None], out=tmp)
        d.addcmul_(tmp, tmp)
        torch.sub(P[2], c[2, :, None], out=tmp)
        d.addcmul_(tmp, tmp)
        torch.minimum(min_d, d, out=min_d)
        cur = min_d.argmax(-1)
    return idx.T.contiguous()


def index_points(points: Tensor, idx: Tensor) -> Tensor:
    """Gather points by index.

    Args:
        points: ``[B, N, C]``.
        idx: ``[B, ...]`` int64 indices into ``N``.

    Returns:
        ``[B, ..., C]`` with ``out[b, ...] = points[b, idx[b, ...]]``.
    """
    B = points.shape[0]
    flat = idx.reshape(B, -1)
    out = torch.gather(points, 1, flat.unsqueeze(-1).expand(-1, -1, points.shape[-1]))
    return out.reshape(*idx.shape, points.shape[-1])


def knn(query: Tensor, ref: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """k nearest neighbours of every query among ``ref`` (squared Euclidean distance).

    Args:
        query: ``[B, S, 3]``; ref: ``[B, N, 3]``; ``k <= N``.

    Returns:
        ``(dist2, idx)`` both ``[B, S, k]``, sorted by increasing distance.
    """
    if k > ref.shape[1]:
        raise ValueError(f"knn: k={k} exceeds the number of reference points {ref.shape[1]}")
    d = torch.cdist(query[..., :3].float(), ref[..., :3].float()) ** 2
    dist, idx = torch.topk(d, k, dim=-1, largest=False, sorted=True)
    return dist, idx


def group_points(points: Tensor, centres: Tensor, idx: Tensor, *, relative: bool = True) -> Tensor:
    """Gather neighbourhoods ``[B, S, k, C]``; ``relative`` subtracts the centre from xyz (ch 0:3)."""
    groups = index_points(points, idx)
    if relative:
        xyz = groups[..., :3] - centres[..., :3].unsqueeze(2)
        groups = torch.cat([xyz, groups[..., 3:]], dim=-1)
    return groups


def knn_group(
    points: Tensor, num_groups: int, group_size: int, *, fps_start: int | None = 0
) -> tuple[Tensor, Tensor]:
    """FPS ``num_groups`` centres, kNN ``group_size`` neighbours, gather (Point-BERT grouping).

    Args:
        points: ``[B, N, F]`` (xyz first).

    Returns:
        ``(neighbourhoods [B, G, K, F]`` with xyz relative to the centre, ``centres [B, G, F])``.
        With ``num_groups > N`` or ``group_size > N`` indices repeat (padding by re-use).
    """
    B, N, _ = points.shape
    centre_idx = farthest_point_sample(points, num_groups, start=fps_start)
    centres = index_points(points, centre_idx)
    k = min(group_size, N)
    _, idx = knn(centres, points, k)
    if k < group_size:  # fewer points than the group size: repeat the nearest ones cyclically
        rep = torch.arange(group_size, device=idx.device) % k
        idx = idx[..., rep]
    return group_points(points, centres, idx), centres
