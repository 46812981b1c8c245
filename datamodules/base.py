"""What every spikelight DataModule shares.

* :class:`EvalSet`: the typed contract between a DataModule and a task for evaluation sets. A DataModule
  that is evaluated per set (zero-shot classification, per-dataset accuracy ...) exposes
  ``eval_sets() -> list[EvalSet]`` aligned with the list returned by ``val_dataloader()``
  (``dataloader_idx`` = position in the list).
* :func:`batch_size_of`: the number of samples of a batch (the one definition used by tasks,
  callbacks and benchmarks).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = ["EvalSet", "batch_size_of"]


@dataclass(frozen=True)
class EvalSet:
    """One evaluation set of a DataModule.

    Attributes:
        name: short name used in log keys (the first set logs ``val/...``, the others ``val_<name>/...``).
        class_names: human-readable class names, index = label (spaces, not underscores).
        prompt_templates: zero-shot prompt templates (one ``{}`` each); empty = the task's default.
    """

    name: str
    class_names: Sequence[str]
    prompt_templates: Sequence[str] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("EvalSet needs a non-empty name")
        names = list(self.class_names)
        if len(set(names)) != len(names):
            dup = sorted({n for n in names if names.count(n) > 1})
            raise ValueError(f"EvalSet {self.name!r}: duplicated class names {dup[:5]}")
        object.__setattr__(self, "class_names", tuple(str(n) for n in names))
        object.__setattr__(self, "prompt_templates", tuple(str(t) for t in self.prompt_templates))

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


_BATCH_KEYS = ("label", "points", "image", "events", "frames", "x")


def batch_size_of(batch: Any) -> int:
    """Number of samples in a batch (dict: a known key, else the first tensor/list; tuple/list: first
    tensor; tensor: ``len``)."""
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0]) if batch.dim() else 1
    if isinstance(batch, dict):
        for key in _BATCH_KEYS:
            v = batch.get(key)
            if isinstance(v, torch.Tensor) and v.dim() > 0:
                return int(v.shape[0])
        values = list(batch.values())
    elif isinstance(batch, (list, tuple)):
        values = list(batch)
    else:
        return 1
    for v in values:
        if isinstance(v, torch.Tensor) and v.dim() > 0:
            return int(v.shape[0])
        if isinstance(v, (list, tuple)) and v and not isinstance(v[0], (list, tuple, dict)):
            return len(v)
    return 1
