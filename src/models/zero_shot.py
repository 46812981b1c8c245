"""Zero-shot classification with a frozen text tower, and its Rep-VLI form (REFERENCE section 1).

One module for the chain the SVL task (validation / test), ``spikelight export`` and the deploy model
share::

    prompts   p_km = template_m.format(name_k)                                  K x M strings
    text      t_k  = mean_m normalise(text_tower(p_km))                         [K, D_txt]  (frozen)
    weights   W    = normalise(proj_text(t_k))                                   [K, C]      (AlignmentHead)
    logits         = logit_scale * normalise(x) @ W.T                            [B, K]
    Rep-VLI   W_deploy = logit_scale * W;  logits_deploy = x @ W_deploy.T       (argmax unchanged)

:func:`zero_shot_logits` is the scoring both the full model and the deploy model
(:class:`spikelight.deploy.RepVLIClassifier`) run; :class:`ZeroShotClassifier` builds ``W`` and
``W_deploy`` from class names. This module imports only torch (the text tower is a callable passed
in), so the deploy loader can use it without open_clip or transformers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from spikelight.models.alignment import AlignmentHead

__all__ = ["DEFAULT_PROMPT_TEMPLATES", "ZeroShotClassifier", "ZeroShotScores", "class_prompts", "zero_shot_logits"]

#: used when neither the task nor the evaluation set gives prompt templates
DEFAULT_PROMPT_TEMPLATES: tuple[str, ...] = (
    "a point cloud model of {}.",
    "a 3D model of the {}.",
    "a point cloud of the {}.",
    "a rendering of the {}.",
)


def class_prompts(class_names: Sequence[str], templates: Sequence[str]) -> list[str]:
    """``K x M`` prompts, class-major: ``[t_1(name_1), ..., t_M(name_1), t_1(name_2), ...]``."""
    if not class_names or not templates:
        raise ValueError("zero-shot classification needs at least one class name and one template")
    return [t.format(n) for n in class_names for t in templates]


def zero_shot_logits(
    embedding: Tensor, weight: Tensor, *, logit_scale: Optional[Tensor | float] = None, normalize: bool = True
) -> Tensor:
    """``logit_scale * normalise(x) @ weight.T`` -> ``[B, K]``.

    ``embedding``: ``[B, C]`` or ``[T, B, C]`` (averaged over ``T`` first; ``W`` is linear, so this is the
    mean of the per-step logits); ``weight``: ``[K, C]``. ``normalize=False`` skips the per-sample
    normalisation (argmax unchanged), ``logit_scale=None`` multiplies by 1 (a Rep-VLI ``W_deploy``
    already holds the scale).
    """
    x = embedding.mean(0) if embedding.dim() == 3 else embedding
    x = x.float()
    if normalize:
        x = F.normalize(x, dim=-1)
    logits = x @ weight.to(x.device, torch.float32).t()
    return logits if logit_scale is None else logits * logit_scale


class ZeroShotClassifier:
    """Class names -> zero-shot class weights ``W`` / Rep-VLI weights ``W_deploy`` (see the module docstring).

    Args:
        encode_text: the frozen text tower, ``list[str] -> [N, D_txt]`` (e.g. the task's cached encoder).
        align: the trained :class:`AlignmentHead` (text projection and logit scale).
        templates: default prompt templates (one ``{}`` each).

    Not an ``nn.Module``: it holds references to modules the task owns, so nothing is registered twice.
    Template-averaged text features are cached on the CPU per ``(names, templates)``.
    """

    def __init__(
        self,
        *,
        encode_text: Callable[[list[str]], Tensor],
        align: AlignmentHead,
        templates: Optional[Sequence[str]] = None,
    ) -> None:
        self.encode_text = encode_text
        self.align = align
        self.templates = list(templates or DEFAULT_PROMPT_TEMPLATES)
        self._text: dict[tuple, Tensor] = {}

    def text_features(self, class_names: Sequence[str], templates: Optional[Sequence[str]] = None) -> Tensor:
        """``[K, D_txt]``: ``mean_m normalise(text_tower(template_m(name_k)))`` (frozen, cached)."""
        templates = list(templates or self.templates)
        key = (tuple(class_names), tuple(templates))
        if key not in self._text:
            feats = self.encode_text(class_prompts(class_names, templates))
            feats = feats.detach().float().view(len(class_names), len(templates), -1)
            self._text[key] = F.normalize(feats, dim=-1).mean(dim=1).cpu()
        return self._text[key]

    def weights(self, class_names: Sequence[str], templates: Optional[Sequence[str]] = None) -> Tensor:
        """``W [K, C]`` = ``normalise(proj_text(text_features))`` (differentiable through the projection)."""
        t = self.text_features(class_names, templates)
        return self.align.project_text(t.to(self.align.logit_scale.device))

    @torch.no_grad()
    def deploy_weights(self, class_names: Sequence[str], templates: Optional[Sequence[str]] = None) -> Tensor:
        """Rep-VLI ``W_deploy = logit_scale * W`` ``[K, C]`` (float32, detached)."""
        return (self.align.scale * self.weights(class_names, templates)).float().detach()

    def logits(self, embedding: Tensor, weight: Tensor) -> Tensor:
        """``logit_scale * normalise(embedding) @ weight.T`` (the scale detached: scoring, not training)."""
        return zero_shot_logits(embedding, weight, logit_scale=self.align.scale.detach().float())

    def clear(self) -> None:
        """Forget the cached text features (e.g. after the text tower changed)."""
        self._text.clear()


@dataclass
class ZeroShotScores:
    """Scores of one evaluation set over an epoch: top-1/3/5 (``k <= K``), class-mean accuracy
    (``MulticlassAccuracy`` ``average="macro"``) and the confusion matrix (rows = true class).

    Build with :meth:`create`; :meth:`update` ignores labels ``< 0`` (unknown); metrics sync across ranks.
    """

    name: str
    class_names: tuple[str, ...]
    prefix: str
    weight: Tensor
    metrics: torch.nn.Module
    confmat: torch.nn.Module
    count: int = 0

    @classmethod
    def create(cls, name: str, class_names: Sequence[str], prefix: str, weight: Tensor) -> ZeroShotScores:
        from torchmetrics import MetricCollection
        from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix

        K = len(class_names)
        metrics = {f"top{k}": MulticlassAccuracy(num_classes=K, top_k=k, average="micro") for k in (1, 3, 5) if k <= K}
        metrics["mean_class_acc"] = MulticlassAccuracy(num_classes=K, average="macro")
        # compute_groups=False: torchmetrics would merge top-k metrics whose states happen to be equal after
        # the first batch (e.g. all wrong) and then report top-1 as top-3
        collection = MetricCollection(metrics, compute_groups=False).to(weight.device)
        confmat = MulticlassConfusionMatrix(num_classes=K).to(weight.device)
        return cls(name, tuple(class_names), prefix, weight, collection, confmat)

    def update(self, logits: Tensor, labels: Tensor) -> None:
        labels = labels.to(logits.device)
        valid = labels >= 0
        logits, labels = logits[valid], labels[valid]
        self.metrics.update(logits, labels)
        self.confmat.update(logits.argmax(-1), labels)
        self.count += int(labels.numel())

    def compute(self) -> dict[str, float]:
        return {k: float(v) for k, v in self.metrics.compute().items()}
