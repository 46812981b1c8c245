"""Tiny random VLMs in Hugging Face format, written to a local folder (tests, CPU runs; no download).

:func:`build_tiny_vlm` writes a complete model folder - ``config.json``, ``model.safetensors``, a
word-level tokenizer built here (``tokenizers`` ``WordLevel`` wrapped in ``PreTrainedTokenizerFast``, with
the model's special tokens incl. the visual placeholder), and the processor files (image + video
processor configs) - that :func:`spikelight.models.vlm.load_vlm` and ``transformers``'
``from_pretrained(folder, local_files_only=True)`` load::

    folder = build_tiny_vlm("internvl", tmp_path / "tiny-internvl")
    vlm = load_vlm(folder)                  # InternVLAdapter, 16 tokens per 64 px frame

:func:`tiny_vlm_config` gives the config alone (to build a model in memory, e.g. at a realistic width).
The tokenizer splits on whitespace, knows :data:`BASE_WORDS` plus the ``words`` given, and maps other
words to ``<unk>``; the visual placeholder tokens are special tokens and split off without spaces.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

__all__ = ["BASE_WORDS", "KINDS", "build_tiny_tokenizer", "build_tiny_vlm", "tiny_vlm_config"]

KINDS = ("internvl", "llava_onevision")

#: the tiny tokenizers' ordinary words (after the special tokens)
BASE_WORDS = tuple(
    "the a an is are was what which who how many where when did does do of in on to and or not first last "
    "after before then video frame question answer colour color red green blue yellow white black object "
    "moved left right up down flashed appeared times once twice three four none yes no A B C D . , ? : "
    "user assistant system".split()
) + tuple(str(i) for i in range(10))

_SPECIALS = {
    "internvl": {
        "start_image_token": "<img>",
        "end_image_token": "</img>",
        "context_image_token": "<IMG_CONTEXT>",
        "video_token": "<video>",
    },
    "llava_onevision": {"image_token": "<image>", "video_token": "<video>"},
}
_BASIC = ("<pad>", "<unk>", "<s>", "</s>")


def build_tiny_tokenizer(kind: str | None, words: Iterable[str] = ()) -> Any:
    """A word-level ``PreTrainedTokenizerFast``: ``<pad> <unk> <s> </s>``, the ``kind``'s visual special
    tokens (named attributes, e.g. ``tok.context_image_token_id``; ``kind=None``: none, for a text-only
    tiny LM, whose ``decode`` also joins words with spaces), then :data:`BASE_WORDS` and ``words``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = _special_tokens(kind) if kind is not None else {}
    vocab: dict[str, int] = {}
    for w in (*_BASIC, *specials.values(), *BASE_WORDS, *words):
        vocab.setdefault(w, len(vocab))
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    if kind is None:  # words joined by spaces in decode (no "##" continuation pieces in a word-level vocab)
        core.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token="<pad>",
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        extra_special_tokens=dict(specials),
    )


def _special_tokens(kind: str) -> dict[str, str]:
    if kind not in _SPECIALS:
        raise ValueError(f"unknown tiny VLM kind {kind!r}; choose one of {', '.join(KINDS)}")
    return _SPECIALS[kind]


def tiny_vlm_config(
    kind: str,
    *,
    vocab_size: int,
    image_token_id: int,
    video_token_id: int | None = None,
    vision_hidden: int = 32,
    vision_layers: int = 2,
    vision_heads: int = 4,
    vision_intermediate: int = 64,
    image_size: int = 64,
    patch_size: int = 8,
    text_hidden: int = 64,
    text_layers: int = 2,
    text_heads: int = 4,
    text_kv_heads: int = 2,
    text_intermediate: int = 128,
    max_position_embeddings: int = 32768,
) -> Any:
    """The ``transformers`` config of a ``kind`` VLM with these sizes (Qwen2 LLM, as the real ones)."""
    text = dict(
        model_type="qwen2",
        hidden_size=text_hidden,
        num_hidden_layers=text_layers,
        num_attention_heads=text_heads,
        num_key_value_heads=text_kv_heads,
        intermediate_size=text_intermediate,
        vocab_size=vocab_size,
        max_position_embeddings=max_position_embeddings,
    )
    if kind == "internvl":
        from transformers import InternVLConfig

        vision = dict(
            hidden_size=vision_hidden,
            num_hidden_layers=vision_layers,
            num_attention_heads=vision_heads,
            intermediate_size=vision_intermediate,
            image_size=[image_size, image_size],
            patch_size=[patch_size, patch_size],
        )
        tokens = (image_size // patch_size) ** 2 // 4
        return InternVLConfig(
            vision_config=vision, text_config=text, image_token_id=image_token_id, image_seq_length=tokens
        )
    if kind == "llava_onevision":
        from transformers import LlavaOnevisionConfig

        vision = dict(
            model_type="siglip_vision_model",
            hidden_size=vision_hidden,
            num_hidden_layers=vision_layers,
            num_attention_heads=vision_heads,
            intermediate_size=vision_intermediate,
            image_size=image_size,
            patch_size=patch_size,
        )
        return LlavaOnevisionConfig(
            vision_config=vision,
            text_config=text,
            image_token_index=image_token_id,
            video_token_index=video_token_id if video_token_id is not None else image_token_id,
            image_grid_pinpoints=[[image_size, image_size]],
            vision_feature_layer=-1,
            vision_feature_select_strategy="full",
        )
    _special_tokens(kind)  # raises for an unknown kind
    raise AssertionError("unreachable")


def _processor(kind: str, tokenizer: Any, image_size: int, tokens_per_frame: int) -> Any:
    size = {"height": image_size, "width": image_size}
    if kind == "internvl":
        from transformers import GotOcr2ImageProcessor, InternVLProcessor, InternVLVideoProcessor

        image = GotOcr2ImageProcessor(size=size, crop_to_patches=False)
        video = InternVLVideoProcessor(size=size)
        return InternVLProcessor(image, tokenizer, video, image_seq_length=tokens_per_frame)
    from transformers import (
        LlavaOnevisionImageProcessor,
        LlavaOnevisionProcessor,
        LlavaOnevisionVideoProcessor,
    )

    image = LlavaOnevisionImageProcessor(size=size, image_grid_pinpoints=[[image_size, image_size]])
    video = LlavaOnevisionVideoProcessor(size=size)
    return LlavaOnevisionProcessor(
        image,
        tokenizer,
        video,
        num_image_tokens=(image_size // 8) ** 2,
        vision_feature_select_strategy="full",
    )


def build_tiny_vlm(
    kind: str,
    out_dir: str | os.PathLike,
    *,
    words: Iterable[str] = (),
    seed: int = 0,
    **sizes: Any,
) -> Path:
    """Write a tiny random ``kind`` VLM (``"internvl"`` or ``"llava_onevision"``) as a complete local HF
    folder (config, safetensors weights, tokenizer, processor configs) and return the folder.

    ``sizes``: :func:`tiny_vlm_config` keywords (``vision_hidden``, ``image_size``, ``patch_size``,
    ``text_hidden``, ``text_layers`` ...); ``words``: extra tokenizer words; ``seed``: weight init seed.
    """
    out = Path(out_dir)
    tok = build_tiny_tokenizer(kind, words)
    specials = _special_tokens(kind)
    if kind == "internvl":
        from transformers import InternVLForConditionalGeneration as cls

        image_id = tok.convert_tokens_to_ids(specials["context_image_token"])
        video_id = None
    else:
        from transformers import LlavaOnevisionForConditionalGeneration as cls

        image_id = tok.convert_tokens_to_ids(specials["image_token"])
        video_id = tok.convert_tokens_to_ids(specials["video_token"])
    cfg = tiny_vlm_config(
        kind, vocab_size=len(tok), image_token_id=image_id, video_token_id=video_id, **sizes
    )
    cfg.text_config.pad_token_id = tok.pad_token_id
    cfg.text_config.bos_token_id = tok.bos_token_id
    cfg.text_config.eos_token_id = tok.eos_token_id
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = cls(cfg).eval()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    image_size = int(sizes.get("image_size", 64))
    patch = int(sizes.get("patch_size", 8))
    tokens = (image_size // patch) ** 2 // 4 if kind == "internvl" else -((-(image_size // patch) // 2) ** 2)
    _processor(kind, tok, image_size, tokens).save_pretrained(out)
    tok.save_pretrained(out)
    return out
