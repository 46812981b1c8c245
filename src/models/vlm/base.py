"""The one interface LVC needs from a vision-language model (:class:`VLMAdapter`).

An adapter wraps a ``transformers`` VLM (``self.model``) and exposes the pieces of its forward pass
separately, so that the query-attention compression (:mod:`spikelight.models.lvc`) can sit between the
alignment layer and the LLM::

    pixel_values [B, M, 3, H, W] --vision_features--> [B, M, t_raw, C]   (frozen vision tower; cacheable)
                                 --align-----------> [B, M, t, d]        (alignment layer = projector, trained)
                                 --compression-----> [B, ceil(M/w), t, d] + pseudo-frame mask
                                 --inputs_embeds---> text embeddings with the visual tokens scattered into
                                                     the placeholder positions (as the model itself does)
                                 --LLM-------------> logits / loss

``forward(input_ids, attention_mask, pixel_values=... | features=..., labels=..., compression=...)`` runs
the whole chain; with no compression (or ``w = 1``) it reproduces the model's own forward exactly.
The prompt must hold :meth:`num_placeholders` placeholder tokens per video, for the number of frames
that reach the LLM (``ceil(M / w)`` with compression): :meth:`visual_prompt` writes them as text.

Subclasses implement :meth:`vision_features`, :meth:`align`, :meth:`num_placeholders` and
:meth:`visual_prompt`, set :attr:`tokens_per_frame` and may override :meth:`video_token_sequence` (how a
video's frames are laid out in the placeholder run, e.g. LLaVA-OneVision's trailing newline token).
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import Tensor, nn

from spikelight.models.lvc import QueryAttentionCompression, question_query

__all__ = ["VLMAdapter"]


class VLMAdapter(nn.Module):
    """Base class of the VLM adapters (see the module docstring).

    Args:
        model: the ``transformers`` model (``...ForConditionalGeneration`` / remote-code ``...ForCausalLM``).
        tokenizer: its tokenizer (optional; needed by :meth:`visual_prompt`).
        source: where the model came from (a folder; recorded by tasks in checkpoints).

    Attributes:
        image_token_id: the placeholder id whose positions receive visual tokens.
        tokens_per_frame: ``t``, visual tokens one frame gives the LLM (after the alignment layer).
        hidden_size: ``d``, the LLM's embedding width.
    """

    kind: str = "?"
    image_token_id: int
    tokens_per_frame: int

    def __init__(self, model: nn.Module, *, tokenizer: Any = None, source: Optional[str] = None) -> None:
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.source = source
        self.trainable_mode = "all"
        self.gradient_checkpointing = False

    # ------------------------------------------------------------------ parts
    @property
    def alignment_layer(self) -> nn.Module:
        """The module LVC trains (the projector between vision tower and LLM); transformers' VLMs name it
        ``model.multi_modal_projector``."""
        return self.model.model.multi_modal_projector

    @property
    def vision_tower(self) -> nn.Module:
        return self.model.model.vision_tower

    @property
    def language_model(self) -> nn.Module:
        """The LLM's decoder (without the LM head)."""
        return self.model.model.language_model

    @property
    def hidden_size(self) -> int:
        return int(self.model.get_input_embeddings().embedding_dim)

    def vision_features(self, pixel_values: Tensor) -> Tensor:
        """``[N, 3, H, W]`` frames -> ``[N, t_raw, C]`` vision-tower tokens *before* the alignment layer."""
        raise NotImplementedError

    def align(self, features: Tensor) -> Tensor:
        """``[..., t_raw, C]`` -> ``[..., t, d]``: the alignment layer (plus the model's parameter-free steps
        that follow it, e.g. LLaVA-OneVision's 2x2 pooling); leading dims are kept."""
        raise NotImplementedError

    def text_embeddings(self, input_ids: Tensor) -> Tensor:
        """``[B, L]`` ids -> ``[B, L, d]`` through the LLM's input embedding layer (placeholders included)."""
        return self.model.get_input_embeddings()(input_ids)

    def question_query(self, question_ids: Tensor, question_mask: Optional[Tensor] = None) -> Tensor:
        """The LVC query ``[B, d]``: mean of the question's token embeddings (:func:`question_query`)."""
        return question_query(question_ids, question_mask, self.text_embeddings)

    # ------------------------------------------------------------------ prompt layout
    def num_placeholders(self, num_frames: int) -> int:
        """Placeholder tokens one video of ``num_frames`` (pseudo-)frames occupies in ``input_ids``."""
        raise NotImplementedError

    def visual_prompt(self, num_frames: int) -> str:
        """The placeholder text of one video of ``num_frames`` (pseudo-)frames, for the tokenizer."""
        raise NotImplementedError

    def video_token_sequence(self, frames: Tensor) -> Tensor:
        """``[n, t, d]`` (pseudo-)frames of one video -> ``[num_placeholders(n), d]`` tokens in prompt order."""
        return frames.reshape(-1, frames.shape[-1])

    # ------------------------------------------------------------------ training modes
    def set_trainable(self, mode: str = "align") -> "VLMAdapter":
        """``"align"``: only the alignment layer trains (vision tower, LLM and the rest frozen and in eval
        mode); ``"all"``: everything trains; ``"none"``: everything frozen. Returns ``self``."""
        if mode not in ("align", "all", "none"):
            raise ValueError(f"trainable mode must be 'align', 'all' or 'none', got {mode!r}")
        self.model.requires_grad_(mode == "all")
        if mode == "align":
            self.alignment_layer.requires_grad_(True)
        self.trainable_mode = mode
        self.train(self.training)
        return self

    def train(self, mode: bool = True) -> "VLMAdapter":
        super().train(mode)
        if self.trainable_mode != "all":  # frozen parts stay in eval mode (no dropout)
            self.model.eval()
            if mode and self.trainable_mode == "align":
                self.alignment_layer.train()
                if self.gradient_checkpointing:  # transformers checkpoints a layer only in training mode
                    self.language_model.train()
        return self

    def enable_gradient_checkpointing(self) -> "VLMAdapter":
        """Recompute the LLM's decoder layers during backward instead of keeping their activations (the
        gradient of the alignment layer flows through the whole frozen LLM). ``transformers`` checkpoints a
        layer only in training mode, so in ``"align"`` mode the LLM's modules then run in train mode (its
        weights stay frozen; Qwen2 / InternLM2 / Phi-3 use no dropout at their released settings)."""
        kwargs = {"use_reentrant": False}
        enable = getattr(self.model, "activation_checkpointing_enable", None)  # transformers >= 5.x name
        if enable is not None:
            enable(activation_checkpointing_kwargs=kwargs)
        else:
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        self.gradient_checkpointing = True
        return self.train(self.training)

    def trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    # ------------------------------------------------------------------ forward pieces
    def visual_tokens(
        self,
        *,
        pixel_values: Optional[Tensor] = None,
        features: Optional[Tensor] = None,
        frame_mask: Optional[Tensor] = None,
    ) -> Tensor:
        """``[B, M, t, d]`` aligned visual tokens from ``pixel_values [B, M, 3, H, W]`` or precomputed
        ``features [B, M, t_raw, C]`` (:meth:`vision_features` output, e.g. from a cache). The vision tower
        runs on the real frames only; padded frames (``frame_mask`` False) get zero tokens."""
        if (pixel_values is None) == (features is None):
            raise ValueError("give exactly one of pixel_values [B, M, 3, H, W] or features [B, M, t_raw, C]")
        if features is None:
            if pixel_values.dim() != 5:
                raise ValueError(f"pixel_values must be [B, M, 3, H, W], got {tuple(pixel_values.shape)}")
            b, m = pixel_values.shape[:2]
            if frame_mask is None:
                feats = self.vision_features(pixel_values.flatten(0, 1))
                features = feats.view(b, m, *feats.shape[1:])
            else:
                feats = self.vision_features(pixel_values[frame_mask.to(torch.bool)])
                features = feats.new_zeros(b, m, *feats.shape[1:])
                features[frame_mask.to(torch.bool)] = feats
        elif features.dim() != 4:
            raise ValueError(f"features must be [B, M, t_raw, C], got {tuple(features.shape)}")
        visual = self.align(features)
        if frame_mask is not None:
            visual = visual.masked_fill(~frame_mask.to(torch.bool)[..., None, None], 0.0)
        return visual

    def inputs_embeds(self, input_ids: Tensor, visual: Tensor, frame_mask: Optional[Tensor] = None) -> Tensor:
        """Text embeddings of ``input_ids [B, L]`` with the valid (pseudo-)frames of ``visual [B, n, t, d]``
        scattered, in order, into each row's placeholder positions (``masked_scatter``, as the models do).
        Row ``b`` must hold exactly ``num_placeholders(valid frames of b)`` placeholders."""
        embeds = self.text_embeddings(input_ids)
        b, n = visual.shape[:2]
        if frame_mask is None:
            frame_mask = torch.ones(b, n, dtype=torch.bool, device=visual.device)
        frame_mask = frame_mask.to(torch.bool)
        placeholder = input_ids == self.image_token_id
        found = placeholder.sum(dim=1).tolist()
        seqs = []
        for i in range(b):
            n_i = int(frame_mask[i].sum())
            need = self.num_placeholders(n_i) if n_i else 0
            if found[i] != need:
                raise ValueError(
                    f"{type(self).__name__}: row {i} of input_ids has {found[i]} visual placeholder tokens "
                    f"(id {self.image_token_id}) but its video gives {n_i} (pseudo-)frames = {need} tokens; build "
                    "the prompt with visual_prompt(num_frames) for the frames that reach the LLM "
                    "(ceil(M / w) with compression)"
                )
            if n_i:
                seqs.append(self.video_token_sequence(visual[i][frame_mask[i]]))
        if not seqs:
            return embeds
        tokens = torch.cat(seqs, dim=0).to(embeds.device, embeds.dtype)
        return embeds.masked_scatter(placeholder.unsqueeze(-1).to(embeds.device), tokens)

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Optional[Tensor] = None,
        *,
        pixel_values: Optional[Tensor] = None,
        features: Optional[Tensor] = None,
        frame_mask: Optional[Tensor] = None,
        labels: Optional[Tensor] = None,
        compression: Optional[QueryAttentionCompression] = None,
        query: Optional[Tensor] = None,
        question_ids: Optional[Tensor] = None,
        question_mask: Optional[Tensor] = None,
        **lm_kwargs: Any,
    ) -> Any:
        """vision -> alignment layer -> (compression) -> LLM; returns the model's output (``.logits``,
        ``.loss`` when ``labels`` is given; ``lm_kwargs`` go to the model, e.g. ``logits_to_keep``).

        Args:
            input_ids / attention_mask / labels: ``[B, L]``, with the placeholders of the frames that reach
                the LLM (see :meth:`inputs_embeds`); ``labels`` use ``-100`` for ignored positions and are
                shifted inside the model, as in ``transformers``.
            pixel_values / features: the video frames ``[B, M, 3, H, W]`` or cached vision features.
            frame_mask: ``[B, M]`` bool, real frames (videos of different lengths in one batch).
            compression: e.g. ``QueryAttentionCompression(window=4)``; its query is ``query [B, d]`` or the
                mean embedding of ``question_ids`` / ``question_mask``.
        """
        visual = self.visual_tokens(pixel_values=pixel_values, features=features, frame_mask=frame_mask)
        if compression is not None:
            if query is None:
                if question_ids is None:
                    raise ValueError(
                        "compression needs the question: pass question_ids (and question_mask) or query"
                    )
                query = self.question_query(question_ids, question_mask)
            visual, frame_mask = compression(visual, query, frame_mask)
        embeds = self.inputs_embeds(input_ids, visual, frame_mask)
        return self.model(inputs_embeds=embeds, attention_mask=attention_mask, labels=labels, **lm_kwargs)
