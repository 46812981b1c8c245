"""One way to build models: variants are small functions registered where they are defined (timm style).

::

    from spikelight.models import create_model, list_models, register_model

    @register_model(family="e3dsnn")          # or plain @register_model
    def e3dsnn_s(**kw) -> E3DSNN: ...

    net = create_model("e3dsnn_s", embed_dim=512)
    list_models("*_test")                     # every tiny test variant (fnmatch pattern)

Tasks receive their network as a config value (a :data:`ModelSpec`), resolved by :func:`build_model`:

* ``"trevsnn_tiny"``                                     a registered name, default arguments
* ``{"name": "trevsnn_tiny", "timesteps": 4}``           a registered name plus keyword arguments
* ``{"class_path": "pkg.Class", "init_args": {...}}``   any importable ``nn.Module`` class
* an ``nn.Module`` instance                              used as is (Python API only: not serialisable)

The spec is plain data, so it is saved in the task's hyper-parameters and in checkpoints, and a
checkpoint rebuilds the same network without any extra configuration. Tasks type their ``network``
argument with :data:`ModelConfig` (the plain-data forms), so LightningCLI accepts a YAML mapping, a
JSON string (``--model.init_args.network '{"name": "trevsnn_test", "timesteps": 2}'``) or a name.
"""

from __future__ import annotations

import fnmatch
import importlib
from collections.abc import Callable
from typing import Any, Union

from torch import nn

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

ModelSpec = Union[str, dict, nn.Module]
# the plain-data forms, for config signatures (dict first: jsonargparse then parses a JSON string as a dict)
ModelConfig = Union[dict[str, Any], str]

_MODELS: dict[str, Callable[..., nn.Module]] = {}
_FAMILY: dict[str, str] = {}

# family modules imported on first use of the registry (each registers its variants on import)
_FAMILY_MODULES = (
    "spikelight.models.pointnet_snn",
    "spikelight.models.e3dsnn",
    "spikelight.models.pointformer_snn",
    "spikelight.models.trevsnn",
    "spikelight.models.toy_snn",
)
_loaded = False


def _load_families() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for mod in _FAMILY_MODULES:
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as e:  # a family whose module does not exist (yet) or lacks an extra
            if e.name != mod:
                raise


def register_model(fn: Callable[..., nn.Module] | None = None, *, family: str | None = None):
    """Decorator: register ``fn`` under its ``__name__`` (``family`` defaults to the defining module)."""

    def deco(f: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        name = f.__name__
        if name in _MODELS and _MODELS[name] is not f:
            raise ValueError(f"model {name!r} is already registered (by {_MODELS[name].__module__})")
        _MODELS[name] = f
        _FAMILY[name] = family or f.__module__.rsplit(".", 1)[-1]
        return f

    return deco(fn) if fn is not None else deco


def list_models(pattern: str = "*", *, family: str | None = None) -> list[str]:
    """Sorted names of registered variants matching the fnmatch ``pattern`` (and ``family``)."""
    _load_families()
    return sorted(
        n for n in _MODELS if fnmatch.fnmatchcase(n, pattern) and (family is None or _FAMILY[n] == family)
    )


def is_model(name: str) -> bool:
    _load_families()
    return name in _MODELS


def model_family(name: str) -> str:
    _load_families()
    return _FAMILY[name]


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build the registered variant ``name``; ``kwargs`` override its defaults."""
    _load_families()
    try:
        fn = _MODELS[name]
    except KeyError:
        close = [n for n in _MODELS if n.split("_")[0] == name.split("_")[0]] or sorted(_MODELS)
        raise ValueError(f"unknown model {name!r}; registered: {', '.join(sorted(close))}") from None
    return fn(**kwargs)


def _import_class(path: str) -> type:
    mod, _, cls = path.rpartition(".")
    if not mod:
        raise ValueError(f"class_path must be 'package.module.Class', got {path!r}")
    try:
        return getattr(importlib.import_module(mod), cls)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"cannot import class_path {path!r}: {e}") from None


def build_model(spec: ModelSpec, **overrides: Any) -> nn.Module:
    """Build a network from a :data:`ModelSpec` (see the module docstring); ``overrides`` win."""
    if isinstance(spec, nn.Module):
        if overrides:
            raise ValueError(f"cannot apply {sorted(overrides)} to an already built module")
        return spec
    if isinstance(spec, str):
        return create_model(spec, **overrides)
    if isinstance(spec, dict):
        spec = dict(spec)
        if "class_path" in spec:
            cls = _import_class(spec.pop("class_path"))
            init_args = {**dict(spec.pop("init_args", None) or {}), **overrides}
            if spec:
                raise ValueError(f"unexpected keys next to class_path in a model spec: {sorted(spec)}")
            return cls(**init_args)
        if "name" in spec:
            name = spec.pop("name")
            kwargs = spec.pop("kwargs", None) or {}
            return create_model(name, **{**kwargs, **spec, **overrides})
    raise ValueError(
        f"a model spec is a registered name, {{name: ..., <kwargs>}} or {{class_path: ..., init_args: ...}}; "
        f"got {spec!r}"
    )


def spec_name(spec: ModelSpec) -> str:
    """Short human name of a spec (registered name or class name)."""
    if isinstance(spec, str):
        return spec
    if isinstance(spec, dict):
        return str(spec.get("name") or spec.get("class_path", "?")).rsplit(".", 1)[-1]
    return type(spec).__name__
