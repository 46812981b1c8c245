"""The trainable alignment head of SVL: projections of the frozen tower features and the temperature.

MTA (REFERENCE section 1) compares a 3D embedding ``x [B, C]`` with the frozen CLIP text and image
features through *trainable* linear projections ``D -> C`` and ONE learnable logit scale
``s = 1 / temperature`` (init ``1 / 0.07``, stored as ``log s`` and clamped to ``[0, log 100]`` like
CLIP). Those parameters live here, in a module the task owns, so that the loss
(:class:`spikelight.losses.MTALoss`) is stateless like open_clip's ``ClipLoss`` and the zero-shot
classifier (:mod:`spikelight.models.zero_shot`) uses the same projection and scale::

    image_emb, text_emb, logit_scale = head(image_feat, text_feat)   # normalised [B, C] each, 0-d scale
    out = mta(pc_feat, image_emb, text_emb, logit_scale)
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["AlignmentHead"]


class AlignmentHead(nn.Module):
    """Projections ``D_img -> C`` and ``D_txt -> C`` plus the learnable logit scale.

    Args:
        embed_dim: ``C``, the size of the 3D embedding and of the shared space.
        image_dim, text_dim: feature sizes of the frozen towers (default ``embed_dim``).
        project: trainable ``nn.Linear(D, C)`` projections; ``False`` (identity) needs ``D == C``.
        proj_bias: give the projections a bias (default: a pure linear map, like CLIP's).
        init_temperature: initial temperature (logit scale ``1 / init_temperature``).
        max_logit_scale: clamp of the logit scale (CLIP: 100); the stored ``log`` scale is clamped in
            place at every :meth:`forward`, as CLIP does after each optimizer step.
        learnable_temperature: ``False`` keeps the temperature fixed (a buffer).
    """

    def __init__(
        self,
        *,
        embed_dim: int,
        image_dim: Optional[int] = None,
        text_dim: Optional[int] = None,
        project: bool = True,
        proj_bias: bool = False,
        init_temperature: float = 0.07,
        max_logit_scale: float = 100.0,
        learnable_temperature: bool = True,
    ) -> None:
        super().__init__()
        self.embed_dim = int(embed_dim)
        self.image_dim = int(embed_dim if image_dim is None else image_dim)
        self.text_dim = int(embed_dim if text_dim is None else text_dim)
        if not init_temperature > 0:
            raise ValueError(f"AlignmentHead: init_temperature must be > 0, got {init_temperature}")
        if max_logit_scale < 1.0:
            raise ValueError(f"AlignmentHead: max_logit_scale must be >= 1, got {max_logit_scale}")
        self.max_log_scale = math.log(max_logit_scale)
        if project:
            self.proj_image: nn.Module = nn.Linear(self.image_dim, self.embed_dim, bias=proj_bias)
            self.proj_text: nn.Module = nn.Linear(self.text_dim, self.embed_dim, bias=proj_bias)
        else:
            if self.image_dim != self.embed_dim or self.text_dim != self.embed_dim:
                raise ValueError(
                    "AlignmentHead: project=False needs image_dim == text_dim == embed_dim, got "
                    f"image_dim={self.image_dim}, text_dim={self.text_dim}, embed_dim={self.embed_dim}"
                )
            self.proj_image = nn.Identity()
            self.proj_text = nn.Identity()
        init = torch.tensor(math.log(1.0 / init_temperature)).clamp(0.0, self.max_log_scale)
        if learnable_temperature:
            self.logit_scale = nn.Parameter(init)
        else:
            self.register_buffer("logit_scale", init)

    def _project(self, proj: nn.Module, feat: Tensor, dim: int, name: str) -> Tensor:
        if feat.ndim != 2 or feat.shape[1] != dim:
            raise ValueError(f"AlignmentHead: {name} must be [B, {dim}], got {tuple(feat.shape)}")
        return F.normalize(proj(feat.to(self.logit_scale.dtype)), dim=-1)

    def project_text(self, text_feat: Tensor) -> Tensor:
        """``normalise(proj_t(text_feat))``: ``[K, D_txt] -> [K, C]`` (zero-shot class weights use this)."""
        return self._project(self.proj_text, text_feat, self.text_dim, "text_feat")

    def project_image(self, image_feat: Tensor) -> Tensor:
        """``normalise(proj_i(image_feat))``: ``[B, D_img] -> [B, C]``."""
        return self._project(self.proj_image, image_feat, self.image_dim, "image_feat")

    def clamp_logit_scale_(self) -> None:
        """Clamp the stored log logit scale to ``[0, log(max_logit_scale)]`` in place (CLIP)."""
        with torch.no_grad():
            self.logit_scale.clamp_(0.0, self.max_log_scale)

    @property
    def scale(self) -> Tensor:
        """The logit scale ``1 / temperature`` (0-d, differentiable)."""
        return self.logit_scale.exp()

    def forward(
        self, image_feat: Optional[Tensor] = None, text_feat: Optional[Tensor] = None
    ) -> tuple[Optional[Tensor], Optional[Tensor], Tensor]:
        """``(image_emb, text_emb, logit_scale)``: normalised projections (``None`` stays ``None``) and the
        (clamped) logit scale, the inputs of :class:`spikelight.losses.MTALoss`."""
        if isinstance(self.logit_scale, nn.Parameter):
            self.clamp_logit_scale_()
        image_emb = self.project_image(image_feat) if image_feat is not None else None
        text_emb = self.project_text(text_feat) if text_feat is not None else None
        return image_emb, text_emb, self.scale

    def extra_repr(self) -> str:
        return f"embed_dim={self.embed_dim}, image_dim={self.image_dim}, text_dim={self.text_dim}"
