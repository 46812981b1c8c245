"""On-disk cache of frozen vision-tower outputs (opt-in).

During LVC alignment tuning the vision tower and the LLM are frozen, so the vision-tower output of a video
(``[M, t, C]``: M sampled frames, t tokens per frame) is the same in every epoch. :class:`VisionFeatureCache`
stores it once per (video file, sampling, model) and later epochs (and runs) read it back, leaving only the
projector, the compression and the LLM to run.

Key: the video's resolved path, size and modification time (a re-encoded or replaced file is a miss), the
sampling parameters (any JSON-able value; :meth:`VideoSampling.cache_key` is the usual one) and a model
fingerprint string given by the caller, which must name everything between the decoded frames and the
features: model folder and revision, vision-feature layer, image processor settings (e.g.
``f"{folder}@{revision}|{transform.fingerprint}"``). Files are ``<root>/<2 hex>/<sha256>.safetensors``
(safetensors: no pickle), written atomically (temp file + rename), with the key's parts in the metadata
(checked on read). An unreadable entry is a miss (and is removed), never an error.

::

    cache = VisionFeatureCache("runs/lvc/feature_cache")
    feats = cache.get(video, sampling, model_fp)         # None on a miss
    if feats is None:
        feats = vision_tower(pixels)                      # [M, t, C]
        cache.put(video, sampling, model_fp, feats)
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

__all__ = ["VisionFeatureCache"]


class VisionFeatureCache:
    """``get`` / ``put`` of feature tensors keyed by (file path + size + mtime, sampling, model fingerprint).

    ``hits`` / ``misses`` / ``writes`` count this object's lookups. Tensors come back on the CPU with their
    stored dtype (bf16 allowed); ``dtype=`` converts on read."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root).expanduser()
        self.root.mkdir(parents=True, exist_ok=True)
        self.hits = self.misses = self.writes = 0

    # -- keys -----------------------------------------------------------------------------------------
    @staticmethod
    def _sampling(sampling: Any) -> Any:
        key = sampling.cache_key() if hasattr(sampling, "cache_key") else sampling
        return json.loads(json.dumps(key, sort_keys=True, default=str))

    def key_parts(self, video: str | os.PathLike, sampling: Any, model: str) -> dict[str, str]:
        """The strings the key is made of (also stored as the entry's metadata)."""
        p = Path(video).expanduser().resolve()
        st = p.stat()  # FileNotFoundError for a missing video
        return {"video": str(p), "size": str(st.st_size), "mtime_ns": str(st.st_mtime_ns),
                "sampling": json.dumps(self._sampling(sampling), sort_keys=True), "model": str(model)}

    def key(self, video: str | os.PathLike, sampling: Any, model: str) -> str:
        """sha256 hex of the key parts."""
        parts = self.key_parts(video, sampling, model)
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()

    def path(self, video: str | os.PathLike, sampling: Any, model: str) -> Path:
        k = self.key(video, sampling, model)
        return self.root / k[:2] / f"{k}.safetensors"

    # -- get / put ------------------------------------------------------------------------------------
    def get(self, video: str | os.PathLike, sampling: Any, model: str, *,
            dtype: torch.dtype | None = None) -> torch.Tensor | None:
        """The cached features, or ``None`` (a miss)."""
        from safetensors import safe_open

        parts = self.key_parts(video, sampling, model)
        k = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()
        f = self.root / k[:2] / f"{k}.safetensors"
        if not f.is_file():
            self.misses += 1
            return None
        try:
            with safe_open(str(f), framework="pt") as fh:
                meta = fh.metadata() or {}
                t = fh.get_tensor("features")
        except Exception:  # noqa: BLE001 - a damaged entry (partial copy, other writer) is a miss
            f.unlink(missing_ok=True)
            self.misses += 1
            return None
        if any(meta.get(name) != value for name, value in parts.items()):
            self.misses += 1
            return None
        self.hits += 1
        return t if dtype is None else t.to(dtype)

    def put(self, video: str | os.PathLike, sampling: Any, model: str, features: torch.Tensor) -> Path:
        """Store ``features`` (any shape, usually ``[M, t, C]``; copied to the CPU, contiguous)."""
        from safetensors.torch import save_file

        parts = self.key_parts(video, sampling, model)
        k = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()
        f = self.root / k[:2] / f"{k}.safetensors"
        f.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=f.parent, suffix=".tmp")
        os.close(fd)
        try:
            save_file({"features": features.detach().to("cpu").contiguous()}, tmp, metadata=parts)
            os.replace(tmp, f)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        self.writes += 1
        return f

    def __contains__(self, key: tuple) -> bool:
        video, sampling, model = key
        return self.path(video, sampling, model).is_file()

    def clear(self) -> None:
        """Remove every entry."""
        for f in self.root.glob("*/*.safetensors"):
            f.unlink(missing_ok=True)

    def __repr__(self) -> str:
        return f"VisionFeatureCache({str(self.root)!r}, hits={self.hits}, misses={self.misses})"
