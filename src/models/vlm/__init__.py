"""VLM adapters: one interface over ``transformers`` vision-language models for LVC.

::

    from spikelight.models.vlm import build_tiny_vlm, load_vlm
    from spikelight.models.lvc import QueryAttentionCompression

    vlm = load_vlm("/models/InternVL2_5-1B-MPO-hf")      # or build_tiny_vlm("internvl", folder) first
    vlm.set_trainable("align")                           # only the projector trains
    out = vlm(input_ids, attention_mask, pixel_values=frames, frame_mask=mask, labels=labels,
              compression=QueryAttentionCompression(window=4), question_ids=q_ids, question_mask=q_mask)

:func:`load_vlm` reads the folder's ``config.json`` and picks the adapter: ``internvl``
(:class:`InternVLAdapter`), ``llava_onevision`` (:class:`LlavaOnevisionAdapter`), Phi-3.5-Vision
(:class:`Phi35VisionAdapter`, remote code, ``trust_remote_code=True`` only). Everything loads from local
folders through :mod:`spikelight.hf`.
"""

from __future__ import annotations

import json
import os
from typing import Any

from spikelight.hf import load_hf_model, load_hf_tokenizer, resolve_local_model
from spikelight.models.vlm.base import VLMAdapter
from spikelight.models.vlm.internvl import InternVLAdapter
from spikelight.models.vlm.llava_onevision import LlavaOnevisionAdapter
from spikelight.models.vlm.phi3_vision import Phi35VisionAdapter, is_phi3_vision_folder, load_phi35_vision
from spikelight.models.vlm.tiny import BASE_WORDS, build_tiny_tokenizer, build_tiny_vlm, tiny_vlm_config

__all__ = [
    "ADAPTERS",
    "BASE_WORDS",
    "InternVLAdapter",
    "LlavaOnevisionAdapter",
    "Phi35VisionAdapter",
    "VLMAdapter",
    "adapter_for",
    "build_tiny_tokenizer",
    "build_tiny_vlm",
    "load_vlm",
    "tiny_vlm_config",
]

#: config ``model_type`` -> (transformers class name, adapter class)
ADAPTERS: dict[str, tuple[str, type[VLMAdapter]]] = {
    "internvl": ("InternVLForConditionalGeneration", InternVLAdapter),
    "llava_onevision": ("LlavaOnevisionForConditionalGeneration", LlavaOnevisionAdapter),
}


def adapter_for(model: Any, *, tokenizer: Any = None, source: str | None = None, **kwargs: Any) -> VLMAdapter:
    """Wrap an already built ``transformers`` VLM in its adapter (chosen by ``model.config.model_type``)."""
    model_type = getattr(model.config, "model_type", None)
    if model_type not in ADAPTERS:
        raise ValueError(f"no VLM adapter for model_type {model_type!r}; supported: {', '.join(ADAPTERS)}")
    return ADAPTERS[model_type][1](model, tokenizer=tokenizer, source=source, **kwargs)


def load_vlm(
    name_or_path: str | os.PathLike,
    *,
    trust_remote_code: bool = False,
    dtype: Any = None,
    adapter_kwargs: dict[str, Any] | None = None,
    **model_kwargs: Any,
) -> VLMAdapter:
    """The adapter of the VLM in a local folder (model + tokenizer, offline).

    Args:
        name_or_path: a local Hugging Face model folder.
        trust_remote_code: required for remote-code models (Phi-3.5-Vision); never used otherwise.
        dtype: e.g. ``torch.bfloat16`` (``None`` = the checkpoint's / float32).
        adapter_kwargs: extra arguments of the adapter class (e.g. ``frame_labels`` for InternVL).
        model_kwargs: passed to ``from_pretrained``.
    """
    path = resolve_local_model(name_or_path)
    config = json.loads((path / "config.json").read_text())
    if dtype is not None:
        model_kwargs["dtype"] = dtype
    if is_phi3_vision_folder(config):
        return load_phi35_vision(path, trust_remote_code=trust_remote_code, **model_kwargs)
    model_type = config.get("model_type")
    if model_type not in ADAPTERS:
        hint = ""
        if model_type == "internvl_chat":
            hint = " (the original remote-code InternVL layout: use the transformers-format '-hf' checkpoint)"
        raise ValueError(
            f"{path}: model_type {model_type!r} has no VLM adapter{hint}; supported: "
            f"{', '.join(ADAPTERS)}, phi3_v (trust_remote_code)"
        )
    cls_name, adapter_cls = ADAPTERS[model_type]
    model = load_hf_model(path, cls=cls_name, **model_kwargs)
    tokenizer = load_hf_tokenizer(path)
    return adapter_cls(model.eval(), tokenizer=tokenizer, source=str(path), **(adapter_kwargs or {}))
