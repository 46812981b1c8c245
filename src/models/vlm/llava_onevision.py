"""Adapter for ``transformers``' ``LlavaOnevisionForConditionalGeneration`` (video path).

LLaVA-OneVision's video path (``LlavaOnevisionModel.get_video_features``): SigLIP -> the configured
hidden layer(s) (``vision_feature_layer``, several are concatenated) -> drop CLS when the strategy is
``"default"`` -> projector ``multi_modal_projector`` (Linear -> GELU -> Linear) -> 2x2 bilinear pooling
(``apply_pooling``: 27x27 -> 14x14 = 196 tokens per frame at 384 px) -> the frames' tokens in a row,
followed by one ``image_newline`` token per video, scattered into the ``<video>`` placeholders
(``config.video_token_id``; ``frames * t + 1`` of them).

Here :meth:`vision_features` stops before the projector; :meth:`align` is projector + pooling (the pooling
has no parameters and the query-attention compression works on the pooled frames); the trailing newline
token is added per video when the tokens enter the LLM (:meth:`video_token_sequence`), after compression.
The ``image_newline`` parameter is not part of the alignment layer (it stays frozen in ``"align"`` mode).
"""

from __future__ import annotations

import math
from typing import Any, Optional

import torch
from torch import Tensor, nn

from spikelight.models.vlm.base import VLMAdapter

__all__ = ["LlavaOnevisionAdapter"]


class LlavaOnevisionAdapter(VLMAdapter):
    """:class:`VLMAdapter` over ``LlavaOnevisionForConditionalGeneration`` (see the module docstring)."""

    kind = "llava_onevision"

    def __init__(self, model: nn.Module, *, tokenizer: Any = None, source: Optional[str] = None) -> None:
        super().__init__(model, tokenizer=tokenizer, source=source)
        cfg = model.config
        self.image_token_id = int(cfg.video_token_id)
        side = cfg.vision_config.image_size // cfg.vision_config.patch_size
        self.image_size = (int(cfg.vision_config.image_size),) * 2
        self.tokens_per_frame = math.ceil(side / 2) ** 2

    def vision_features(self, pixel_values: Tensor) -> Tensor:
        """``[N, 3, H, W]`` -> ``[N, patches, C * layers]`` SigLIP tokens (before the projector)."""
        cfg = self.model.config
        layer, strategy = cfg.vision_feature_layer, cfg.vision_feature_select_strategy
        out = self.vision_tower(pixel_values, return_dict=True, output_hidden_states=layer)
        if isinstance(layer, int):
            feats = out.hidden_states[layer]
        else:
            feats = torch.cat([out.hidden_states[i] for i in layer], dim=-1)
        if strategy == "default":
            feats = feats[:, 1:]
        return feats

    def align(self, features: Tensor) -> Tensor:
        lead = features.shape[:-2]
        x = self.alignment_layer(features.reshape(-1, *features.shape[-2:]))
        x = self.model.model.apply_pooling(x)
        return x.reshape(*lead, *x.shape[-2:])

    def num_placeholders(self, num_frames: int) -> int:
        return int(num_frames) * self.tokens_per_frame + 1  # + the video's image_newline token

    def visual_prompt(self, num_frames: int) -> str:
        if self.tokenizer is None:
            raise ValueError(f"{type(self).__name__}: no tokenizer given (load the adapter with load_vlm)")
        return self.tokenizer.video_token * self.num_placeholders(num_frames)

    def video_token_sequence(self, frames: Tensor) -> Tensor:
        newline = self.model.model.image_newline.to(frames.device, frames.dtype)
        return torch.cat([frames.reshape(-1, frames.shape[-1]), newline[None]], dim=0)
