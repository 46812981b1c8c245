"""Adapter for ``transformers``' ``InternVLForConditionalGeneration`` (the ``-hf`` InternVL2/2.5/3 checkpoints).

InternVL's image path (``InternVLModel.get_image_features``): InternViT -> the configured layer
(``vision_feature_layer``; ``-1`` = last hidden state) -> drop the CLS token (``"default"`` strategy) ->
``[N, h, w, C]`` -> pixel shuffle by ``downsample_ratio`` (0.5: ``[N, h/2, w/2, 4C]``) -> projector
``multi_modal_projector`` (LayerNorm -> Linear -> GELU -> Linear). A video is a list of frames, each one
448 tile = 256 tokens, each frame written ``<img><IMG_CONTEXT> x 256</img>`` in the prompt; the model
scatters the projected tokens into the ``<IMG_CONTEXT>`` (``config.image_token_id``) positions.

Here :meth:`vision_features` stops after the pixel shuffle (everything before the alignment layer: that is
what a feature cache stores) and :meth:`align` is the projector.
"""

from __future__ import annotations

from typing import Any, Optional

from torch import Tensor, nn

from spikelight.models.vlm.base import VLMAdapter

__all__ = ["InternVLAdapter"]


class InternVLAdapter(VLMAdapter):
    """:class:`VLMAdapter` over ``InternVLForConditionalGeneration`` (see the module docstring).

    Args:
        frame_labels: write ``Frame{i}: `` before each frame in :meth:`visual_prompt` (as InternVL's
            processor does for videos); off by default (pseudo-frames have no single index).
    """

    kind = "internvl"

    def __init__(
        self,
        model: nn.Module,
        *,
        tokenizer: Any = None,
        source: Optional[str] = None,
        frame_labels: bool = False,
    ) -> None:
        super().__init__(model, tokenizer=tokenizer, source=source)
        cfg = model.config
        self.image_token_id = int(cfg.image_token_id)
        vcfg = cfg.vision_config
        size = vcfg.image_size if isinstance(vcfg.image_size, (list, tuple)) else (vcfg.image_size,) * 2
        patch = vcfg.patch_size if isinstance(vcfg.patch_size, (list, tuple)) else (vcfg.patch_size,) * 2
        grid = (size[0] // patch[0]) * (size[1] // patch[1])
        self.image_size = tuple(int(s) for s in size)
        self.tokens_per_frame = int(round(grid * cfg.downsample_ratio**2))
        self.frame_labels = bool(frame_labels)

    def vision_features(self, pixel_values: Tensor) -> Tensor:
        """``[N, 3, H, W]`` -> ``[N, t, 4C]`` (InternViT tokens after the pixel shuffle, before the projector)."""
        inner = self.model.model
        cfg = self.model.config
        layer, strategy = cfg.vision_feature_layer, cfg.vision_feature_select_strategy
        pixel_values = pixel_values.to(dtype=inner.dtype)
        if layer == -1:
            feats = self.vision_tower(pixel_values=pixel_values, return_dict=True).last_hidden_state
        else:
            out = self.vision_tower(pixel_values=pixel_values, return_dict=True, output_hidden_states=layer)
            feats = out.hidden_states[layer]
        if strategy == "default":
            feats = feats[:, 1:, :]
        n, tokens = feats.shape[:2]
        side = int(tokens**0.5)
        if side * side != tokens:
            raise ValueError(f"InternVL vision tokens {tokens} do not form a square grid")
        feats = inner.pixel_shuffle(feats.reshape(n, side, side, -1), scale_factor=cfg.downsample_ratio)
        return feats.reshape(n, -1, feats.shape[-1])

    def align(self, features: Tensor) -> Tensor:
        return self.alignment_layer(features)

    def num_placeholders(self, num_frames: int) -> int:
        return int(num_frames) * self.tokens_per_frame

    def visual_prompt(self, num_frames: int) -> str:
        tok = self._require_tokenizer()
        frame = (
            f"{tok.start_image_token}{tok.context_image_token * self.tokens_per_frame}{tok.end_image_token}"
        )
        if self.frame_labels:
            return "\n".join(f"Frame{i + 1}: {frame}" for i in range(num_frames))
        return "\n".join([frame] * int(num_frames))

    def _require_tokenizer(self) -> Any:
        if self.tokenizer is None:
            raise ValueError(f"{type(self).__name__}: no tokenizer given (load the adapter with load_vlm)")
        return self.tokenizer
