"""torchmetrics ``Metric`` subclasses of spikelight (their states sum over DDP ranks at ``compute``).

:class:`PartSegmentationIoU`: the PointNet / PointNet++ part-segmentation evaluation on ShapeNetPart-style data.

* shape IoU: the mean, over the parts of the shape's category, of ``|pred == p & true == p| /
  |pred == p | true == p|``; a part absent from both prediction and truth counts IoU 1;
* instance mIoU: the mean of the shape IoUs over all shapes;
* class mIoU: the mean over categories (those with at least one shape) of the mean shape IoU of the category.

Predictions are expected within the shape's category (the standard evaluation takes the argmax over the
category's parts only: :func:`restrict_to_category` does that from logits); a predicted part of another
category simply never matches.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torchmetrics import Metric

__all__ = ["PartSegmentationIoU", "restrict_to_category", "shape_ious"]


def _mask(category_parts: Sequence[Sequence[int]]) -> Tensor:
    P = 1 + max(p for ps in category_parts for p in ps)
    m = torch.zeros(len(category_parts), P, dtype=torch.bool)
    for c, ps in enumerate(category_parts):
        m[c, list(ps)] = True
    return m


def restrict_to_category(logits: Tensor, category: Tensor, mask: Tensor) -> Tensor:
    """Argmax of ``logits [B, N, P]`` over the parts of each shape's category (``mask [K, P]``): ``[B, N]``."""
    allowed = mask.to(logits.device)[category.long()]  # [B, P]
    return logits.masked_fill(~allowed[:, None, :], float("-inf")).argmax(-1)


def shape_ious(pred: Tensor, target: Tensor, category: Tensor, mask: Tensor) -> Tensor:
    """Per-shape IoU ``[B]`` (see the module docstring) of ``pred``/``target [B, N]`` (global part ids) for
    shapes of ``category [B]``; ``mask [K, P]`` says which parts belong to which category."""
    if pred.shape != target.shape or pred.dim() != 2:
        raise ValueError(f"pred and target must both be [B, N], got {tuple(pred.shape)} and {tuple(target.shape)}")
    P = mask.shape[1]
    pred_1h = torch.nn.functional.one_hot(pred.long().clamp(0, P - 1), P).bool()  # [B, N, P]
    true_1h = torch.nn.functional.one_hot(target.long(), P).bool()
    inter = (pred_1h & true_1h).sum(1).double()  # [B, P]
    union = (pred_1h | true_1h).sum(1).double()
    iou = torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))
    parts = mask.to(pred.device)[category.long()]  # [B, P]
    return (iou * parts).sum(1) / parts.sum(1)


class PartSegmentationIoU(Metric):
    """Instance and class mIoU of part segmentation (see the module docstring).

    Args:
        category_parts: ``category_parts[c]`` = the global part ids of category ``c``.
        category_names: names for the per-category results (default ``cat<c>``).

    ``update(pred [B, N], target [B, N], category [B])`` with global part ids; ``compute()`` returns
    ``{"instance_miou", "class_miou", "miou/<category>" ...}`` (a category with no shape is left out of the
    class mean and of the per-category keys).
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self, category_parts: Sequence[Sequence[int]], category_names: Sequence[str] | None = None,
                 **kwargs) -> None:
        super().__init__(**kwargs)
        self.register_buffer("part_mask", _mask(category_parts), persistent=False)
        K = len(category_parts)
        self.category_names = list(category_names) if category_names is not None else [f"cat{c}" for c in range(K)]
        if len(self.category_names) != K:
            raise ValueError(f"{len(self.category_names)} category names for {K} categories")
        self.add_state("iou_sum", torch.zeros(K, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("shapes", torch.zeros(K, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, pred: Tensor, target: Tensor, category: Tensor) -> None:
        category = category.long().to(self.iou_sum.device)
        if category.numel() and (category.min() < 0 or category.max() >= self.part_mask.shape[0]):
            raise ValueError(f"category ids must be in [0, {self.part_mask.shape[0]}), got {category.tolist()}")
        if target.numel() and (target.min() < 0 or target.max() >= self.part_mask.shape[1]):
            raise ValueError(f"part labels must be in [0, {self.part_mask.shape[1]})")
        iou = shape_ious(pred, target, category, self.part_mask)
        self.iou_sum.index_add_(0, category, iou)
        self.shapes.index_add_(0, category, torch.ones_like(iou))

    def compute(self) -> dict[str, Tensor]:
        seen = self.shapes > 0
        per_cat = self.iou_sum / self.shapes.clamp(min=1)
        nan = torch.tensor(float("nan"), dtype=torch.float64, device=self.shapes.device)
        out = {
            "instance_miou": (self.iou_sum.sum() / self.shapes.sum()) if seen.any() else nan,
            "class_miou": per_cat[seen].mean() if seen.any() else nan,
        }
        for c, name in enumerate(self.category_names):
            if seen[c]:
                out[f"miou/{name}"] = per_cat[c]
        return {k: v.float() for k, v in out.items()}
