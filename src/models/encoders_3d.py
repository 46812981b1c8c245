"""Backwards-compatible names for SVL's 3D encoders, which now live in the model registry.

Use :mod:`spikelight.models` instead: ``create_model("e3dsnn_s", embed_dim=1280)``,
``list_models("e3dsnn_*")``. The variants, their sizes and the common encoder interface are
documented in :mod:`spikelight.models` and in each family file (``pointnet_snn``, ``e3dsnn``,
``pointformer_snn``).
"""

from __future__ import annotations

from spikelight.models.registry import create_model, list_models

__all__ = ["ENCODER_FAMILIES", "build_encoder", "list_encoders"]

ENCODER_FAMILIES = ("pointnet_snn", "e3dsnn", "pointformer_snn")

build_encoder = create_model


def list_encoders() -> list[str]:
    """Registered 3D encoder variants (every family in :data:`ENCODER_FAMILIES`)."""
    return sorted(n for f in ENCODER_FAMILIES for n in list_models(family=f))
