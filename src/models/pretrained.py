"""Load SVL-pretrained encoder weights into a spiking 3D encoder, and the Rep-VLI class matrix.

Downstream tasks (:class:`spikelight.tasks.point_classify.PointClassify`, benchmarks) start from one of two
artefacts of SVL pretraining:

* an **SVL Lightning checkpoint** (``.ckpt`` written while fitting
  :class:`~spikelight.tasks.svl_pretrain.SVLPretrain`): its ``state_dict`` holds the encoder under the prefix
  ``encoder.`` next to the alignment head (``align.``); the frozen CLIP towers are not in it. A
  :class:`~spikelight.tasks.point_classify.PointClassify` checkpoint keeps its encoder under ``encoder.``
  too, so a fine-tuned encoder loads the same way;
* a **Rep-VLI deploy model** (:mod:`spikelight.deploy`, ``spikelight export``): a folder with
  ``model.safetensors`` (``encoder.*`` and ``head.weight [K, C]``), ``class_names.json`` and ``config.json``.
  The folder or any of those three files may be given.

A plain ``state_dict`` file (``torch.save`` of a tensor dict, or a ``.safetensors`` file) works as well.

::

    from spikelight.models import create_model
    from spikelight.models.pretrained import load_pretrained_encoder, load_deploy_head, pretrained_encoder_spec

    enc = create_model("spike_pointnet", embed_dim=128)
    report = load_pretrained_encoder(enc, "runs/svl_synthetic/checkpoints/last.ckpt")
    # {'source': 'lightning_checkpoint', 'path': ..., 'prefix': 'encoder.', 'loaded': 38, ...}
    W, names = load_deploy_head("runs/svl_synthetic/deploy")   # [K, C] float32, K names

Loading is exact: every tensor of the encoder's ``state_dict`` (parameters and buffers such as BatchNorm
statistics) must be in the file under the prefix, with the same shape, and the file may hold no other key
under that prefix. Anything else raises ``ValueError`` naming the file and the first missing / unexpected /
mis-shaped keys (with shapes), before any weight is changed. ``prefix=None`` finds the prefix: the one
under which the most of the encoder's keys occur in the file (``encoder.`` for SVL / PointClassify
checkpoints and deploy models).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional, Union

import torch
from torch import Tensor, nn

from spikelight.deploy import DEPLOY_FILES, DEPLOY_FORMAT, read_deploy, read_safetensors

__all__ = [
    "describe_source",
    "load_deploy_head",
    "load_pretrained_encoder",
    "pretrained_encoder_spec",
    "read_source_state",
]

PathLike = Union[str, Path]
_SHOW = 5  # keys named in an error message


# ============================================================================ reading a source
def _deploy_folder(path: Path) -> Optional[Path]:
    """The Rep-VLI deploy folder ``path`` is (or is a file of), else ``None``."""
    folder = path if path.is_dir() else path.parent
    if path.is_file() and path.name not in DEPLOY_FILES:
        return None
    cfg = folder / "config.json"
    if not cfg.is_file():
        return None
    try:
        fmt = json.loads(cfg.read_text()).get("format")
    except (json.JSONDecodeError, AttributeError, OSError):
        return None

    return folder if fmt == DEPLOY_FORMAT else None


def describe_source(path: PathLike) -> str:
    """``"deploy"``, ``"safetensors"`` or ``"torch"`` (a ``.ckpt`` / ``.pt`` file); raises for a missing path."""
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"pretrained weights not found: '{p}' (an SVL .ckpt, a Rep-VLI deploy folder "
                                "or a state_dict file)")
    if _deploy_folder(p) is not None:
        return "deploy"
    if p.is_dir():
        missing = [n for n in DEPLOY_FILES if not (p / n).is_file()]
        raise ValueError(f"{p}: a folder but not a Rep-VLI deploy folder (missing or invalid: "
                         f"{missing or ['config.json format']}); give an SVL .ckpt file or a deploy folder")
    return "safetensors" if p.suffix == ".safetensors" else "torch"


def read_source_state(path: PathLike) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """``(state_dict, info)`` of a pretrained source; ``info`` has ``source`` (``svl_checkpoint``,
    ``lightning_checkpoint``, ``deploy``, ``state_dict``), ``path`` and, when known, ``hyper_parameters``
    (checkpoints) or ``config`` / ``class_names`` (deploy models)."""
    p = Path(path).expanduser()
    kind = describe_source(p)
    if kind == "deploy":
        folder = _deploy_folder(p)
        assert folder is not None
        config, names, state = read_deploy(folder)
        return state, {"source": "deploy", "path": str(folder / "model.safetensors"), "folder": str(folder),
                       "config": config, "class_names": names}
    if kind == "safetensors":
        return read_safetensors(p), {"source": "state_dict", "path": str(p)}
    from spikelight.checkpoint_io import load_checkpoint

    ckpt = load_checkpoint(p, map_location="cpu", weights_only=True)  # CheckpointError (a ValueError) names p
    if isinstance(ckpt.get("state_dict"), Mapping):
        hp = ckpt.get("hyper_parameters") or {}
        state = dict(ckpt["state_dict"])
        svl = any(k.startswith("align.") for k in state) and any(k.startswith("encoder.") for k in state)
        return state, {"source": "svl_checkpoint" if svl else "lightning_checkpoint", "path": str(p),
                       "hyper_parameters": dict(hp) if isinstance(hp, Mapping) else {}}
    tensors = {k: v for k, v in ckpt.items() if isinstance(v, Tensor)}
    if not tensors:
        raise ValueError(f"{p}: holds neither a Lightning 'state_dict' nor tensors (keys: {sorted(ckpt)[:8]})")
    return tensors, {"source": "state_dict", "path": str(p)}


# ============================================================================ matching
def _find_prefix(file_keys: list[str], model_keys: set[str]) -> tuple[str, int]:
    """The prefix under which the most model keys occur in the file, and that count (ties: shortest)."""
    votes: Counter[str] = Counter()
    for fk in file_keys:
        parts = fk.split(".")
        for i in range(len(parts)):
            if ".".join(parts[i:]) in model_keys:
                votes[".".join(parts[:i]) + "." if i else ""] += 1
    if not votes:
        return "", 0
    best = max(votes.items(), key=lambda kv: (kv[1], -len(kv[0])))
    return best


def _shape(t: Tensor) -> tuple[int, ...]:
    return tuple(int(s) for s in t.shape)


def _top_prefixes(keys: list[str]) -> list[str]:
    return sorted({k.split(".", 1)[0] + "." for k in keys if "." in k} | {k for k in keys if "." not in k})[:10]


def load_pretrained_encoder(encoder: nn.Module, path: PathLike, *, prefix: Optional[str] = None) -> dict:
    """Load the encoder weights of ``path`` into ``encoder`` exactly (see the module docstring).

    Args:
        encoder: the built encoder (same variant and arguments as the pretrained one; ``timesteps`` may
            differ: it does not change the weights).
        path: an SVL / PointClassify Lightning checkpoint, a Rep-VLI deploy folder (or one of its files), or
            a ``state_dict`` file (``.pt`` / ``.pth`` / ``.safetensors``).
        prefix: key prefix of the encoder in the file (e.g. ``"encoder."``; ``""``: none); ``None`` finds it.

    Returns:
        ``{"source", "path", "prefix", "loaded" (tensors copied), "parameters" (encoder parameter count),
        "skipped" (file keys outside the prefix)}``.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file cannot be read, or its weights do not match ``encoder`` (the message names the
            file, the prefix and the first mismatching keys with their shapes); ``encoder`` is unchanged.
    """
    state, info = read_source_state(path)
    where = info["path"]
    target = encoder.state_dict()
    model_keys = set(target)
    if prefix is None:
        prefix, hits = _find_prefix(list(state), model_keys)
        if hits == 0:
            raise ValueError(
                f"{where}: no tensor of the file matches the encoder {type(encoder).__name__} under any prefix "
                f"(file key groups: {_top_prefixes(list(state))}; encoder keys start {sorted(model_keys)[:3]}); "
                "wrong file or a different encoder variant"
            )
    sub = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    missing = sorted(model_keys - set(sub))
    unexpected = sorted(set(sub) - model_keys)
    shapes = [(k, _shape(sub[k]), _shape(target[k])) for k in sorted(model_keys & set(sub))
              if _shape(sub[k]) != _shape(target[k])]
    if missing or unexpected or shapes:
        parts = []
        if shapes:
            parts.append(f"{len(shapes)} shape mismatch(es) (key: file vs encoder) "
                         + ", ".join(f"{k}: {a} vs {b}" for k, a, b in shapes[:_SHOW]))
        if missing:
            parts.append(f"{len(missing)} missing from the file: {missing[:_SHOW]}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected in the file: {unexpected[:_SHOW]}")
        hint = ""
        spec = _spec_from_info(info)
        if spec is not None:
            dim = (info.get("hyper_parameters") or {}).get("embed_dim")
            hint = f"; the file's encoder spec is {spec}" + (f" with embed_dim {dim}" if dim is not None else "")
        raise ValueError(
            f"{where}: encoder weights under prefix {prefix!r} do not match {type(encoder).__name__}: "
            + "; ".join(parts) + hint
        )
    bad = [k for k, v in sub.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise ValueError(f"{where}: non-finite values in {len(bad)} encoder tensor(s), e.g. {bad[:_SHOW]}")
    encoder.load_state_dict(sub, strict=True)
    return {
        "source": info["source"],
        "path": where,
        "prefix": prefix,
        "loaded": len(sub),
        "parameters": sum(p.numel() for p in encoder.parameters()),
        "skipped": len(state) - len(sub),
    }


# ============================================================================ deploy head, specs
def load_deploy_head(path: PathLike) -> tuple[Tensor, list[str]]:
    """The Rep-VLI deploy model's class matrix ``W [K, C]`` (float32, logit scale folded in: the deployed
    logits are ``W @ x``) and its ``K`` class names (row order). ``path``: the deploy folder or one of its
    files. Raises ValueError naming the file when ``path`` is not a deploy model or the matrix is bad."""
    state, info = read_source_state(path)
    if info["source"] != "deploy":
        raise ValueError(f"{info['path']}: not a Rep-VLI deploy model (a folder with {', '.join(DEPLOY_FILES)} "
                         "written by `spikelight export`); only deploy models carry a class matrix")
    w = state.get("head.weight")
    names = info["class_names"]
    if w is None:
        raise ValueError(f"{info['path']}: no head.weight tensor")
    if w.dim() != 2 or w.shape[0] != len(names):
        raise ValueError(f"{info['path']}: head.weight {_shape(w)} does not match {len(names)} class names "
                         f"in class_names.json")
    if not torch.isfinite(w).all():
        raise ValueError(f"{info['path']}: head.weight contains NaN or Inf")
    return w.float().contiguous(), list(names)


def _spec_from_info(info: dict[str, Any]) -> Optional[dict[str, Any]]:
    """The encoder spec recorded in a source (None when it records none)."""
    if info["source"] == "deploy":
        enc = info["config"].get("encoder")
        if isinstance(enc, dict) and "name" in enc:
            return {"name": enc["name"], **dict(enc.get("kwargs") or {})}
        return dict(enc) if isinstance(enc, dict) else None
    hp = info.get("hyper_parameters") or {}
    for key in ("encoder_spec", "encoder"):
        spec = hp.get(key)
        if isinstance(spec, str):
            return {"name": spec}
        if isinstance(spec, Mapping):
            return dict(spec)
    return None


def pretrained_encoder_spec(path: PathLike) -> dict[str, Any]:
    """The encoder's model spec recorded in ``path`` (a deploy ``config.json`` or the checkpoint's
    hyper-parameters), with ``embed_dim`` resolved the way :class:`~spikelight.tasks.svl_pretrain.SVLPretrain`
    does (task ``embed_dim``, else the spec's, else the CLIP image feature size). ValueError when the
    source records no spec (a plain state_dict)."""
    _, info = read_source_state(path)
    spec = _spec_from_info(info)
    if spec is None:
        raise ValueError(f"{info['path']}: records no encoder spec (a plain state_dict?); give the encoder "
                         "spec explicitly")
    if info["source"] == "deploy" or "class_path" in spec:
        return spec
    hp = info.get("hyper_parameters") or {}
    if "embed_dim" not in spec:
        dim = hp.get("embed_dim") or hp.get("clip_image_dim")
        if dim is None and hp.get("clip_model"):
            from spikelight.models.clip_towers import tower_feature_dims

            dim = tower_feature_dims(hp["clip_model"], hp.get("text_model"))[0]
        if dim is not None:
            spec["embed_dim"] = int(dim)
    elif hp.get("embed_dim") is not None:
        spec["embed_dim"] = int(hp["embed_dim"])
    return spec
