"""spikelight models: one file per family, variants registered where they are defined.

``create_model(name, **kw)`` builds any variant, ``list_models(pattern)`` lists them (every family has
a tiny ``*_test`` variant), ``build_model(spec)`` resolves the network spec a task receives from its
config (a registered name, ``{name: ..., **kwargs}`` or ``{class_path: ..., init_args: ...}``).
"""

from spikelight.models.registry import (
    ModelConfig,
    ModelSpec,
    build_model,
    create_model,
    is_model,
    list_models,
    model_family,
    register_model,
    spec_name,
)

__all__ = [
    "ModelConfig",
    "ModelSpec",
    "build_model",
    "create_model",
    "is_model",
    "list_models",
    "model_family",
    "register_model",
    "spec_name",
]
