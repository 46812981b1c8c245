"""Rep-VLI deploy models: a spiking 3D encoder plus one ``K x C`` linear layer, no text tower.

SVL's re-parameterizable vision-language integration (REFERENCE section 1): after pretraining, every
class prompt is encoded offline with the text tower (template-averaged), passed through the trained text
projection, normalised and multiplied by the logit scale. The resulting ``W [K, C]`` replaces the text
tower, the projections and the temperature::

    points [B, N, F] --encoder (T steps, mean over T)--> x [B, C] --W--> logits [B, K] --argmax--> class

Since the encoder's output is already the mean over ``T`` and ``W`` is linear, ``W (mean_t x_t) =
mean_t (W x_t)``: the prediction is the argmax of the time-averaged logits. ``x`` is not normalised
(``argmax`` is invariant to the positive per-sample factor); ``normalize_input=True`` restores the exact
zero-shot logits of the full model if calibrated scores are wanted.

Folder layout written by :func:`save_deploy` (``spikelight export``)::

    model.safetensors   encoder.<param/buffer> ... and head.weight [K, C] (float32)
    class_names.json    ["airplane", ...]  (row k of head.weight)
    config.json         format, encoder name + kwargs, timesteps, embed_dim, num_classes, how to predict,
                        plus provenance (teacher towers, templates, logit scale, full-model sizes)

:func:`export_repvli` writes it from the trained pieces (the class rows come from the shared
:class:`~spikelight.models.zero_shot.ZeroShotClassifier`, the same one the task validates with);
:func:`load_deploy` rebuilds the encoder from its model spec (:func:`spikelight.models.build_model`) and
needs only torch, safetensors and spikelight's models: neither open_clip nor transformers is imported
(a test checks ``sys.modules``). New classes: compute their rows offline
(``task.zero_shot.deploy_weights(names)``) and :meth:`RepVLIClassifier.swap_classes`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import torch
from torch import Tensor, nn

from spikelight.models.zero_shot import zero_shot_logits

__all__ = ["DEPLOY_FILES", "DEPLOY_FORMAT", "RepVLIClassifier", "export_repvli", "load_deploy", "read_deploy",
           "read_safetensors", "save_deploy"]

DEPLOY_FORMAT = "spikelight-repvli"
#: the files of a deploy folder
DEPLOY_FILES = ("config.json", "class_names.json", "model.safetensors")
DEPLOY_VERSION = 1


class RepVLIClassifier(nn.Module):
    """Encoder + bias-free ``K x C`` head.

    Args:
        encoder: maps ``points [B, N, F]`` (or ``[T, B, N, F]``) to ``[B, C]`` (time-averaged) or
            ``[T, B, C]`` (averaged here).
        weight: ``W [K, C]`` (logit scale folded in).
        class_names: ``K`` names, row order of ``weight``.
        normalize_input: L2-normalise the embedding before the head (off by default: argmax is the same).
        config: the deploy config (kept as ``self.config``).
    """

    def __init__(
        self,
        *,
        encoder: nn.Module,
        weight: Tensor,
        class_names: Sequence[str],
        normalize_input: bool = False,
        config: Optional[dict[str, Any]] = None,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.normalize_input = bool(normalize_input)
        self.config = dict(config or {})
        self.head = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
        self.class_names: list[str] = []
        self.swap_classes(weight, class_names)

    @property
    def num_classes(self) -> int:
        return self.head.out_features

    @property
    def embed_dim(self) -> int:
        return self.head.in_features

    def embed(self, points: Tensor) -> Tensor:
        """``[B, C]`` encoder output (mean over T when the encoder returns ``[T, B, C]``), not normalised."""
        x = self.encoder(points)
        return (x.mean(0) if x.dim() == 3 else x).float()

    def forward(self, points: Tensor) -> Tensor:
        """``points [B, N, F]`` -> logits ``[B, K]`` (:func:`~spikelight.models.zero_shot.zero_shot_logits`
        with the scale folded into the head)."""
        return zero_shot_logits(self.embed(points), self.head.weight, normalize=self.normalize_input)

    @torch.no_grad()
    def predict(self, points: Tensor) -> tuple[Tensor, list[str]]:
        """``(class indices [B] int64, class names)`` of ``points [B, N, F]`` (eval mode, no grad)."""
        was_training = self.training
        self.eval()
        device = self.head.weight.device
        idx = self(points.to(device)).argmax(dim=-1)
        self.train(was_training)
        return idx, [self.class_names[int(i)] for i in idx]

    def swap_classes(self, weight: Tensor, class_names: Sequence[str]) -> None:
        """Replace the head by ``weight [K', C]`` for ``class_names`` (``K'`` names); the encoder is kept."""
        class_names = [str(n) for n in class_names]
        if weight.dim() != 2:
            raise ValueError(f"weight must be [K, C], got shape {tuple(weight.shape)}")
        if len(class_names) != weight.shape[0]:
            raise ValueError(f"{len(class_names)} class names for a weight with {weight.shape[0]} rows")
        if self.class_names and weight.shape[1] != self.head.in_features:
            raise ValueError(
                f"weight has {weight.shape[1]} columns, the encoder gives {self.head.in_features}"
            )
        if not torch.isfinite(weight).all():
            raise ValueError("weight contains NaN or Inf")
        old = self.head.weight
        head = nn.Linear(weight.shape[1], weight.shape[0], bias=False).to(device=old.device, dtype=old.dtype)
        with torch.no_grad():
            head.weight.copy_(weight.to(device=old.device, dtype=old.dtype))
        head.weight.requires_grad_(False)
        self.head = head
        self.class_names = class_names

    def swap_classes_from(self, zero_shot: Any, class_names: Sequence[str], templates: Sequence[str]) -> None:
        """New classes from a :class:`~spikelight.models.zero_shot.ZeroShotClassifier` (needs its text tower)."""
        self.swap_classes(zero_shot.deploy_weights(list(class_names), list(templates)), class_names)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def _plain_state(module: nn.Module, prefix: str) -> dict[str, Tensor]:
    return {f"{prefix}{k}": v.detach().cpu().contiguous().clone() for k, v in module.state_dict().items()}


def save_deploy(
    out_dir: str | Path,
    *,
    encoder: nn.Module,
    encoder_spec: dict[str, Any],
    weight: Tensor,
    class_names: Sequence[str],
    normalize_input: bool = False,
    extra: Optional[dict[str, Any]] = None,
) -> Path:
    """Write ``model.safetensors``, ``class_names.json`` and ``config.json`` to ``out_dir`` (created)."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    class_names = [str(n) for n in class_names]
    if weight.dim() != 2 or weight.shape[0] != len(class_names):
        raise ValueError(f"weight {tuple(weight.shape)} does not match {len(class_names)} class names")
    tensors = _plain_state(encoder, "encoder.")
    tensors["head.weight"] = weight.detach().float().cpu().contiguous().clone()
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": DEPLOY_FORMAT})
    (out / "class_names.json").write_text(json.dumps(class_names, indent=1))
    n_enc = sum(p.numel() for p in encoder.parameters())
    config = {
        "format": DEPLOY_FORMAT,
        "version": DEPLOY_VERSION,
        "encoder": _jsonable(_spec_record(encoder_spec)),
        "embed_dim": int(weight.shape[1]),
        "num_classes": int(weight.shape[0]),
        "timesteps": int(getattr(encoder, "timesteps", 1)),
        "in_channels": int(getattr(encoder, "in_channels", 6)),
        "normalize_input": bool(normalize_input),
        "num_parameters": n_enc + int(weight.numel()),
        "input": "points float32 [B, N, F]: xyz normalised to the unit sphere (+ rgb in [0, 1])",
        "predict": "logits = head.weight @ mean_T(encoder(points)); class = argmax(logits); "
        "names in class_names.json",
        **(_jsonable(extra) if extra else {}),
    }
    (out / "config.json").write_text(json.dumps(config, indent=1))
    return out


def _spec_record(spec: dict[str, Any]) -> dict[str, Any]:
    """A model spec as stored in ``config.json``: ``{name, kwargs}`` or ``{class_path, init_args}``."""
    if "class_path" in spec:
        return {"class_path": spec["class_path"], "init_args": dict(spec.get("init_args") or {})}
    kwargs = {**dict(spec.get("kwargs") or {}), **{k: v for k, v in spec.items() if k not in ("name", "kwargs")}}
    return {"name": spec["name"], "kwargs": kwargs}


def _num_params(*modules: Optional[nn.Module]) -> int:
    return sum(p.numel() for m in modules if m is not None for p in m.parameters())


def export_repvli(
    out_dir: str | Path,
    *,
    encoder: nn.Module,
    encoder_spec: dict[str, Any],
    zero_shot: Any,
    class_names: Sequence[str],
    templates: Sequence[str],
    teacher: Optional[dict[str, Any]] = None,
    full_model: Optional[dict[str, Optional[nn.Module]]] = None,
) -> Path:
    """Write the Rep-VLI deploy model: ``encoder`` plus ``zero_shot.deploy_weights(class_names, templates)``.

    ``zero_shot``: a :class:`~spikelight.models.zero_shot.ZeroShotClassifier`; ``teacher``: provenance of
    the text tower; ``full_model``: the other modules of the full zero-shot model (``alignment_head``,
    ``text_tower``, ``image_tower``), whose parameter counts are recorded next to the deploy model's.
    """
    was_training = encoder.training
    encoder.eval()
    weight = zero_shot.deploy_weights(list(class_names), list(templates)).cpu()
    encoder.train(was_training)
    extra: dict[str, Any] = {"logit_scale": float(zero_shot.align.scale), "templates": list(templates)}
    if teacher is not None:
        extra["teacher"] = teacher
    if full_model is not None:
        n = {k: _num_params(m) for k, m in full_model.items()}
        n_enc, n_head, n_text = _num_params(encoder), n.get("alignment_head", 0), n.get("text_tower", 0)
        extra["full_model_parameters"] = {
            "encoder": n_enc, "alignment_head": n_head, "text_tower": n_text, "image_tower": n.get("image_tower", 0),
            "zero_shot_inference": n_enc + n_head + n_text, "training": n_enc + sum(n.values()),
        }  # fmt: skip
    return save_deploy(out_dir, encoder=encoder, encoder_spec=encoder_spec, weight=weight,
                       class_names=class_names, extra=extra)  # fmt: skip


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, Tensor):
        return obj.tolist()
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return str(obj)


def read_deploy(path: str | Path) -> tuple[dict[str, Any], list[str], dict[str, Tensor]]:
    """``(config, class names, state dict)`` of a folder written by :func:`save_deploy`; every problem (a
    missing file, corrupt json, another format, an unreadable safetensors file) is one error naming the file."""
    folder = Path(path)
    for name in DEPLOY_FILES:
        if not (folder / name).is_file():
            raise FileNotFoundError(f"{folder}: not a Rep-VLI deploy folder (missing {name})")
    try:
        config = json.loads((folder / "config.json").read_text())
        class_names = json.loads((folder / "class_names.json").read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{folder}: corrupt deploy json ({e})") from e
    if config.get("format") != DEPLOY_FORMAT:
        raise ValueError(
            f"{folder / 'config.json'}: format {config.get('format')!r} is not {DEPLOY_FORMAT!r}"
        )
    return config, [str(n) for n in class_names], read_safetensors(folder / "model.safetensors")


def read_safetensors(path: str | Path) -> dict[str, Tensor]:
    """The tensors of a safetensors file; an unreadable file is a ``ValueError`` naming it."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(f"{path}: not a readable safetensors file ({type(e).__name__}: {e})") from None


def load_deploy(
    path: str | Path, *, device: str | torch.device = "cpu", strict: bool = True
) -> RepVLIClassifier:
    """Load a folder written by :func:`save_deploy` into an eval-mode :class:`RepVLIClassifier`.

    Imports only torch, safetensors and the encoder registry (no open_clip, no transformers).
    """
    from spikelight.models import build_model, spec_name

    folder = Path(path)
    config, class_names, state = read_deploy(folder)
    if "head.weight" not in state:
        raise ValueError(f"{folder / 'model.safetensors'}: no head.weight")
    weight = state.pop("head.weight")
    enc_cfg = config["encoder"]
    encoder = build_model(enc_cfg)
    enc_state = {k[len("encoder.") :]: v for k, v in state.items() if k.startswith("encoder.")}
    missing, unexpected = encoder.load_state_dict(enc_state, strict=False)
    if strict and (missing or unexpected):
        raise ValueError(
            f"{folder / 'model.safetensors'}: encoder weights do not match {spec_name(enc_cfg)}: "
            f"missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    model = RepVLIClassifier(
        encoder=encoder,
        weight=weight,
        class_names=class_names,
        normalize_input=bool(config.get("normalize_input", False)),
        config=config,
    )
    for p in model.parameters():
        p.requires_grad_(False)
    return model.to(device).eval()
