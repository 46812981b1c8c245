"""Phi-3.5-Vision through its remote code (``transformers`` has no class for it).

Loading needs ``trust_remote_code: true`` and a model folder that carries the remote code
(``config.json``'s ``auto_map`` naming ``modeling_phi3_v.Phi3VForCausalLM`` and the ``.py`` files next to
it); anything else is refused with a message naming the folder and the missing piece - nothing is
fetched from the hub.

The adapter follows the remote code's image embedding (``model.model.vision_embed_tokens``): CLIP
ViT-L/14-336 (``img_processor``), the penultimate layer's patch tokens (``get_img_features``: 24 x 24 x
1024), a 2 x 2 merge to 12 x 12 x 4096, one learned row separator (``sub_GN``) after each of the 12 rows
(156 tokens per frame), then the projector ``img_projection`` (Linear -> GELU -> Linear), the alignment
layer. Each frame is one 336 crop (all frames share that layout). Placeholder positions are the negative
ids the Phi-3.5-Vision processor writes (``-1``); the text embedding reads them as id 0 before the visual
tokens replace them.

Status: only the loading branch is exercised here (no Phi-3.5-Vision files on this machine); the
per-frame layout mirrors the published remote code and has not been run against it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import torch
from torch import Tensor, nn

from spikelight.hf import load_hf_model, load_hf_tokenizer, resolve_local_model
from spikelight.models.vlm.base import VLMAdapter

__all__ = ["Phi35VisionAdapter", "is_phi3_vision_folder", "load_phi35_vision"]

_MODEL_TYPES = ("phi3_v",)


def is_phi3_vision_folder(config: dict[str, Any]) -> bool:
    archs = config.get("architectures") or []
    return config.get("model_type") in _MODEL_TYPES or any(str(a).startswith("Phi3V") for a in archs)


def _remote_code_files(path: Path, config: dict[str, Any]) -> list[str]:
    """The ``.py`` files the folder's ``auto_map`` needs; error when it has none or points to another repo."""
    auto_map = config.get("auto_map") or {}
    targets = [auto_map.get(k) for k in ("AutoConfig", "AutoModelForCausalLM")]
    if not targets[1]:
        raise FileNotFoundError(
            f"{path}: config.json has no auto_map.AutoModelForCausalLM - the folder lacks Phi-3.5-Vision's "
            "remote code (modeling_phi3_v.py); download the complete model repository into the folder"
        )
    files = []
    for target in filter(None, targets):
        if "--" in target:
            raise FileNotFoundError(
                f"{path}: auto_map entry {target!r} points to code in another repository; spikelight loads "
                "local folders only - copy that code into the folder and point auto_map at it"
            )
        files.append(target.rsplit(".", 1)[0].replace(".", "/") + ".py")
    return files


def load_phi35_vision(
    name_or_path: Any, *, trust_remote_code: bool = False, **kwargs: Any
) -> "Phi35VisionAdapter":
    """Phi-3.5-Vision from a local folder with its remote code (``trust_remote_code`` must be ``True``)."""
    path = resolve_local_model(name_or_path)
    config = json.loads((path / "config.json").read_text())
    if not trust_remote_code:
        raise ValueError(
            f"{path}: Phi-3.5-Vision exists only as remote code (transformers has no class for it); set "
            "trust_remote_code: true to run the modeling code shipped in this folder"
        )
    missing = [f for f in _remote_code_files(path, config) if not (path / f).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{path}: the folder lacks the remote code {', '.join(missing)} named by config.json's auto_map; "
            "download the complete model repository into the folder"
        )
    model = load_hf_model(path, cls="AutoModelForCausalLM", trust_remote_code=True, **kwargs)
    tokenizer = load_hf_tokenizer(path, trust_remote_code=True)
    return Phi35VisionAdapter(model, tokenizer=tokenizer, source=str(path))


class Phi35VisionAdapter(VLMAdapter):
    """:class:`VLMAdapter` over the remote-code ``Phi3VForCausalLM`` (see the module docstring)."""

    kind = "phi3_v"
    image_token_id = -1

    def __init__(self, model: nn.Module, *, tokenizer: Any = None, source: Optional[str] = None) -> None:
        super().__init__(model, tokenizer=tokenizer, source=source)
        self.merged_side = 12  # 336 px / 14 = 24 patches -> 2 x 2 merge
        self.tokens_per_frame = self.merged_side * (self.merged_side + 1)  # + one row separator per row

    @property
    def _embed(self) -> nn.Module:
        return self.model.model.vision_embed_tokens

    @property
    def alignment_layer(self) -> nn.Module:
        return self._embed.img_projection

    @property
    def vision_tower(self) -> nn.Module:
        return self._embed.img_processor

    @property
    def language_model(self) -> nn.Module:
        return self.model.model

    def vision_features(self, pixel_values: Tensor) -> Tensor:
        """``[N, 3, 336, 336]`` -> ``[N, 156, 4096]``: merged CLIP tokens with the row separators."""
        feats = self._embed.get_img_features(pixel_values)  # [N, 576, 1024]
        n, tokens, c = feats.shape
        side = int(tokens**0.5)
        h = side // 2
        merged = feats.reshape(n, h, 2, h, 2, c).permute(0, 1, 3, 2, 4, 5).reshape(n, h, h, 4 * c)
        sep = self._embed.sub_GN.to(merged.dtype).reshape(1, 1, 1, -1).expand(n, h, 1, 4 * c)
        return torch.cat([merged, sep], dim=2).reshape(n, h * (h + 1), 4 * c)

    def align(self, features: Tensor) -> Tensor:
        return self.alignment_layer(features)

    def text_embeddings(self, input_ids: Tensor) -> Tensor:
        return self.model.get_input_embeddings()(input_ids.clamp_min(0))

    def num_placeholders(self, num_frames: int) -> int:
        return int(num_frames) * self.tokens_per_frame

    def visual_prompt(self, num_frames: int) -> str:
        raise NotImplementedError(
            "Phi-3.5-Vision placeholders are negative ids, not text: put num_placeholders(n) ids of -1 into "
            "input_ids where the video goes"
        )
