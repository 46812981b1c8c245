"""LVC: parameter-free query-attention video compression (REFERENCE.md section 3).

A densely sampled video of ``M`` frames, each already turned into ``t`` visual tokens of width ``d`` by the
VLM's vision tower and alignment layer (so the tokens live in the LLM's input-embedding space), is
compressed to ``ceil(M / w)`` pseudo-frames of ``t`` tokens each before it enters the LLM::

    q = mean_j E(question)_j                              # [B, d]  (question_query)
    windows i of w consecutive frames, spatial token k:
        s_f = <V[f, k], q> * scale / temperature          # scale = 1/sqrt(d) by default
        a   = softmax over the valid frames f of window i
        P[i, k] = (1 - r) * sum_f a_f V[f, k] + r * mean_f V[f, k]     # r = mean_residual (default 0)

The module has no parameters (its options are plain attributes); the LM loss flows through it into the
alignment layer. Videos of different lengths share a batch through ``frame_mask`` ``[B, M]`` (``True`` =
real frame): padded frames get ``-inf`` scores and are zeroed before weighting, so padding never leaks
into a pseudo-frame; a window holding only padding is masked out of the output mask (and its tokens are
zero). With ``w = 1`` each pseudo-frame is exactly its frame (the softmax over one element is ``1.0``).

::

    from spikelight.models.lvc import QueryAttentionCompression, question_query

    q = question_query(question_ids, question_mask, vlm.get_input_embeddings())   # [B, d]
    lvc = QueryAttentionCompression(window=4)
    pseudo, pseudo_mask = lvc(visual, q, frame_mask)     # [B, ceil(M/4), t, d], [B, ceil(M/4)]
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor, nn

__all__ = ["QueryAttentionCompression", "compressed_length", "question_query"]


def compressed_length(num_frames: int, window: int) -> int:
    """Pseudo-frames produced from ``num_frames`` frames with windows of ``window`` frames: ``ceil(M / w)``."""
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    return -(-int(num_frames) // int(window))


def question_query(input_ids: Tensor, attention_mask: Optional[Tensor], embedding: nn.Module) -> Tensor:
    """The LVC query: mean of the question's token embeddings from the LLM's input embedding layer.

    Args:
        input_ids: ``[B, L]`` token ids of the question alone (no visual placeholders).
        attention_mask: ``[B, L]`` (1 = token of the question, 0 = padding); ``None`` = all tokens.
        embedding: the LLM's input embedding layer (``model.get_input_embeddings()``).

    Returns:
        ``[B, d]`` in the embedding's dtype. A question with no valid token is an error.
    """
    emb = embedding(input_ids)  # [B, L, d]
    if attention_mask is None:
        return emb.mean(dim=1)
    mask = attention_mask.to(emb.dtype).unsqueeze(-1)
    count = mask.sum(dim=1)
    if bool((count == 0).any()):
        raise ValueError(
            "question_query: a question has no valid token (attention_mask is all zero in a row)"
        )
    return (emb * mask).sum(dim=1) / count


class QueryAttentionCompression(nn.Module):
    """Compress ``[B, M, t, d]`` visual tokens to ``[B, ceil(M/w), t, d]`` pseudo-frames (no parameters).

    Args:
        window: ``w``, consecutive frames per pseudo-frame (``1`` = no compression, output == input).
        scale: multiplies the dot products; ``None`` = ``1 / sqrt(d)``.
        temperature: divides the scaled dot products (``< 1`` sharpens the softmax towards one frame).
        mean_residual: ``r`` in ``[0, 1]``: output = ``(1 - r) * attention + r * window mean``.
        softmax_dtype: dtype of the scores / softmax (float32 by default, also for bf16 tokens); the
            weighted sum runs in the tokens' dtype.
    """

    def __init__(
        self,
        *,
        window: int = 4,
        scale: Optional[float] = None,
        temperature: float = 1.0,
        mean_residual: float = 0.0,
        softmax_dtype: Optional[torch.dtype] = torch.float32,
    ) -> None:
        super().__init__()
        if int(window) < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if not 0.0 <= mean_residual <= 1.0:
            raise ValueError(f"mean_residual must be in [0, 1], got {mean_residual}")
        self.window = int(window)
        self.scale = None if scale is None else float(scale)
        self.temperature = float(temperature)
        self.mean_residual = float(mean_residual)
        self.softmax_dtype = softmax_dtype

    def extra_repr(self) -> str:
        return (
            f"window={self.window}, scale={self.scale}, temperature={self.temperature}, "
            f"mean_residual={self.mean_residual}"
        )

    def output_frames(self, num_frames: int) -> int:
        """``ceil(num_frames / window)``."""
        return compressed_length(num_frames, self.window)

    def forward(
        self, visual: Tensor, query: Tensor, frame_mask: Optional[Tensor] = None
    ) -> tuple[Tensor, Tensor]:
        """Compress the frames window by window.

        Args:
            visual: ``[B, M, t, d]`` visual tokens after the alignment layer.
            query: ``[B, d]`` (see :func:`question_query`).
            frame_mask: ``[B, M]`` bool, ``True`` = real frame; ``None`` = all frames real.

        Returns:
            ``(pseudo_frames [B, ceil(M/w), t, d], pseudo_mask [B, ceil(M/w)] bool)``; a pseudo-frame is
            valid when its window holds at least one real frame, and invalid ones are all zeros.
        """
        if visual.dim() != 4:
            raise ValueError(f"visual tokens must be [B, M, t, d], got shape {tuple(visual.shape)}")
        b, m, t, d = visual.shape
        if query.shape != (b, d):
            raise ValueError(f"query must be [B, d] = [{b}, {d}], got {tuple(query.shape)}")
        if frame_mask is None:
            frame_mask = torch.ones(b, m, dtype=torch.bool, device=visual.device)
        elif frame_mask.shape != (b, m):
            raise ValueError(f"frame_mask must be [B, M] = [{b}, {m}], got {tuple(frame_mask.shape)}")
        frame_mask = frame_mask.to(device=visual.device, dtype=torch.bool)
        w = self.window
        n = compressed_length(m, w)
        pad = n * w - m
        if pad:  # M not divisible by w: the last window is filled with padding frames
            visual = torch.cat([visual, visual.new_zeros(b, pad, t, d)], dim=1)
            frame_mask = torch.cat([frame_mask, frame_mask.new_zeros(b, pad)], dim=1)
        mask = frame_mask.view(b, n, w)
        v = visual.view(b, n, w, t, d)
        if not bool(mask.all()):
            # zero the padded frames: whatever they hold (even NaN / inf) cannot reach a pseudo-frame
            v = v.masked_fill(~mask[..., None, None], 0.0)

        sdt = self.softmax_dtype or v.dtype
        scale = self.scale if self.scale is not None else 1.0 / math.sqrt(d)
        # <V[f, k], q> for every frame and token: one matrix-vector product per video
        scores = torch.bmm(v.reshape(b, n * w * t, d).to(sdt), query.to(sdt).unsqueeze(-1)).view(b, n, w, t)
        scores = scores * (scale / self.temperature)
        scores = scores.masked_fill(~mask[..., None], float("-inf"))
        attn = torch.softmax(scores, dim=2)
        valid = mask.any(dim=2)  # [B, n]
        # an all-padding window: softmax of all -inf is NaN -> weights 0 (the pseudo-frame is zeros)
        attn = torch.where(
            valid[:, :, None, None], attn, torch.zeros((), dtype=attn.dtype, device=attn.device)
        )
        attn = attn.to(v.dtype).unsqueeze(-1)  # [B, n, w, t, 1]
        out = v[:, :, 0] * attn[:, :, 0]  # weighted sum over the window, one frame at a time (w is small)
        for j in range(1, w):
            out = out + v[:, :, j] * attn[:, :, j]
        if self.mean_residual > 0.0:
            count = mask.sum(dim=2).clamp_min(1).to(v.dtype)  # [B, n]
            mean = v.sum(dim=2) / count[..., None, None]
            out = (1.0 - self.mean_residual) * out + self.mean_residual * mean
        return out, valid
