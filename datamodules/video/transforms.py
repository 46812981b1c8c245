"""Frame transforms: uint8 RGB frames ``[M, H, W, 3]`` -> the VLM's pixel tensor ``[M, 3, S, S]`` (float32).

* :class:`HFFrameProcessor` uses the model's own processor from its local folder (or a processor object):
  the video processor when the model has one (``InternVLVideoProcessor``, ``LlavaOnevisionVideoProcessor``:
  every frame resized to the model's tile, e.g. 448 for InternVL2, and normalised with its mean / std), else
  the image processor with one tile per frame (``GotOcr2ImageProcessor`` with ``crop_to_patches=False``; an
  any-resolution processor such as LLaVA-OneVision's image processor gives several views per image: the
  first, the whole frame resized, is kept).
* :class:`FrameTransform` is the torch fallback for tests and synthetic runs without a processor: resize
  (bicubic with antialiasing by default) to ``size`` and normalise with ``mean`` / ``std``.

Both are callables ``transform(frames) -> torch.Tensor`` taking numpy or torch uint8 ``[M, H, W, 3]``, and
expose ``fingerprint`` (a string naming every setting) for :class:`~spikelight.datamodules.video.cache.
VisionFeatureCache` keys.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["FrameTransform", "HFFrameProcessor", "make_frame_transform", "CLIP_MEAN", "CLIP_STD",
           "IMAGENET_MEAN", "IMAGENET_STD"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # InternVL
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # LLaVA-OneVision (SigLIP uses 0.5)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _as_uint8_thwc(frames: np.ndarray | torch.Tensor) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(frames)) if isinstance(frames, np.ndarray) else frames
    if t.dim() != 4 or t.shape[-1] != 3 or t.dtype != torch.uint8:
        raise ValueError(f"frames must be uint8 [M, H, W, 3], got {t.dtype} {tuple(t.shape)}")
    return t


class FrameTransform:
    """Resize to ``size`` (an int for a square, or ``(h, w)``) and normalise: ``(x / 255 - mean) / std``.

    ``interpolation``: ``"bicubic"`` (default, antialiased like PIL's resize when shrinking), ``"bilinear"``
    or ``"nearest"``. Output float32 ``[M, 3, h, w]``."""

    def __init__(self, size: int | Sequence[int] = 448, *, mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD, interpolation: str = "bicubic", antialias: bool = True) -> None:
        self.size = (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))
        if interpolation not in ("bicubic", "bilinear", "nearest"):
            raise ValueError(f"interpolation must be bicubic, bilinear or nearest, got {interpolation!r}")
        self.mean = torch.tensor([float(m) for m in mean]).view(1, 3, 1, 1)
        self.std = torch.tensor([float(s) for s in std]).view(1, 3, 1, 1)
        self.interpolation, self.antialias = interpolation, bool(antialias)

    @property
    def fingerprint(self) -> str:
        return json.dumps({"transform": "FrameTransform", "size": self.size, "mean": self.mean.flatten().tolist(),
                           "std": self.std.flatten().tolist(), "interpolation": self.interpolation,
                           "antialias": self.antialias})

    def __call__(self, frames: np.ndarray | torch.Tensor) -> torch.Tensor:
        x = _as_uint8_thwc(frames).permute(0, 3, 1, 2).float().div_(255.0)
        if tuple(x.shape[-2:]) != self.size:
            aa = self.antialias and self.interpolation != "nearest"
            x = F.interpolate(x, size=self.size, mode=self.interpolation, antialias=aa,
                              **({} if self.interpolation == "nearest" else {"align_corners": False}))
            x = x.clamp_(0.0, 1.0)
        return (x - self.mean) / self.std


class HFFrameProcessor:
    """A VLM's own processor applied to video frames, one tile per frame -> float32 ``[M, 3, S, S]``.

    Args:
        processor: a local model folder (loaded offline through :func:`spikelight.hf.load_hf_processor`,
            falling back to ``AutoVideoProcessor`` / ``AutoImageProcessor``), or a processor / video
            processor / image processor object.
        use_video_processor: prefer the model's video processor when it has one (default True).
        kwargs: settings passed on every call (e.g. ``size={"height": 448, "width": 448}``).
    """

    def __init__(self, processor: Any, *, use_video_processor: bool = True, **kwargs: Any) -> None:
        self.source = str(processor) if isinstance(processor, (str, os.PathLike)) else type(processor).__name__
        if isinstance(processor, (str, os.PathLike)):
            processor = _load_processor(processor)
        video = getattr(processor, "video_processor", None)
        image = getattr(processor, "image_processor", None)
        if video is None and image is None:  # a bare video / image processor
            video = processor if "VideoProcessor" in type(processor).__name__ else None
            image = None if video is not None else processor
        if use_video_processor and video is not None:
            self.kind, self.proc = "video", video
        elif image is not None:
            self.kind, self.proc = "image", image
        else:
            raise ValueError(f"{self.source}: no image processor (found only a video processor; "
                             "set use_video_processor=True)")
        self.kwargs = dict(kwargs)

    @property
    def fingerprint(self) -> str:
        cfg = self.proc.to_dict() if hasattr(self.proc, "to_dict") else {}
        return json.dumps({"transform": "HFFrameProcessor", "kind": self.kind, "class": type(self.proc).__name__,
                           "config": cfg, "kwargs": self.kwargs}, sort_keys=True, default=str)

    def __call__(self, frames: np.ndarray | torch.Tensor) -> torch.Tensor:
        t = _as_uint8_thwc(frames)
        if self.kind == "video":
            kw = {"do_sample_frames": False, **self.kwargs}
            out = self.proc(videos=[t.permute(0, 3, 1, 2)], return_tensors="pt", **kw)
            x = out["pixel_values_videos"][0]
        else:
            kw = dict(self.kwargs)
            if hasattr(self.proc, "crop_to_patches"):  # InternVL / GOT-OCR2: one tile, no cropping
                kw.setdefault("crop_to_patches", False)
            out = self.proc(images=list(t.permute(0, 3, 1, 2)), return_tensors="pt", **kw)
            x = out["pixel_values"]
            if x.dim() == 5:  # any-resolution views per image: keep the whole frame (the first view)
                x = x[:, 0]
        if x.dim() != 4 or x.shape[0] != t.shape[0]:
            raise ValueError(f"{self.source}: the processor returned {tuple(x.shape)} for {t.shape[0]} frames; "
                             "expected one tile per frame [M, 3, S, S]")
        return x.float()


def _load_processor(path: str | os.PathLike) -> Any:
    from spikelight.hf import load_hf_processor, resolve_local_model

    folder = resolve_local_model(path, require=())
    errors = []
    try:
        return load_hf_processor(folder)
    except (FileNotFoundError, OSError, ValueError, TypeError, KeyError) as e:
        errors.append(f"AutoProcessor: {e}")
    import transformers

    for name in ("AutoVideoProcessor", "AutoImageProcessor"):
        try:
            return getattr(transformers, name).from_pretrained(str(folder), local_files_only=True)
        except (OSError, ValueError, TypeError, KeyError) as e:
            errors.append(f"{name}: {e}")
    raise FileNotFoundError(f"{folder}: no image or video processor could be loaded ({'; '.join(errors)})")


def make_frame_transform(processor: str | os.PathLike | None = None, *, image_size: int = 448,
                         mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD):
    """``HFFrameProcessor(processor)`` when a processor folder is given, else ``FrameTransform``."""
    if processor is not None:
        return HFFrameProcessor(processor)
    return FrameTransform(image_size, mean=mean, std=std)
