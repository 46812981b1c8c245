"""Class names, prompt templates and taxonomies of the point-cloud datasets (ULIP / ShapeNet formats)."""

from __future__ import annotations

import json
from pathlib import Path

from spikelight.datamodules.pointcloud.io import bad, require_file

__all__ = [
    "PROMPT_TEMPLATES",
    "SCANOBJECTNN_CLASSES",
    "humanize",
    "read_list_file",
    "load_templates",
    "load_labels",
    "load_shapenet_taxonomy",
]

#: spikelight's own zero-shot prompt templates (one ``{}`` = class name). Averaged by the zero-shot head.
PROMPT_TEMPLATES: list[str] = [
    "a point cloud model of {}.",
    "a 3D model of the {}.",
    "a point cloud of the {}.",
    "a rendering of the {}.",
    "a 3D rendering of the {}.",
    "a CAD model of the {}.",
    "a 3D scan of the {}.",
    "a photo of the {}.",
    "the {} as a set of 3D points.",
    "a sparse point cloud of the {}.",
    "a low-poly 3D shape of the {}.",
    "an object of the category {}.",
]

#: ScanObjectNN's 15 categories in label order
SCANOBJECTNN_CLASSES: list[str] = [
    "bag", "bin", "box", "cabinet", "chair", "desk", "display", "door",
    "shelf", "table", "bed", "pillow", "sink", "sofa", "toilet",
]  # fmt: skip

def humanize(name: str) -> str:
    """``"night_stand"`` -> ``"night stand"`` (underscores to spaces, trimmed)."""
    return " ".join(name.replace("_", " ").split())


def read_list_file(path: Path) -> list[str]:
    """Non-empty lines of a text file, stripped, ``#`` comment lines skipped."""
    return [ln.strip() for ln in path.read_text().splitlines() if ln.strip() and not ln.startswith("#")]


def _read_json(p: Path):
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise bad(p, f"invalid JSON ({e})") from e


def _pick_list(data, key: str | None, p: Path, what: str):
    """``data[key]`` of a ULIP-style ``{name: [...]}`` file (the only list when ``key`` is None)."""
    if not isinstance(data, dict):
        return data
    if key is None:
        if len(data) != 1:
            raise bad(p, f"holds several {what} lists {sorted(data)}; pass key=")
        key = next(iter(data))
    if key not in data:
        raise KeyError(f"{p}: no {what} list {key!r}; available: {sorted(data)}")
    return data[key]


def load_templates(path: str | Path, key: str | None = None) -> list[str]:
    """Prompt templates from a ULIP-format ``templates.json`` (``{"modelnet40_64": [...], ...}``).

    ``key`` selects the list; with ``key=None`` the file must hold a single list (or a dict with one
    key). Every template must contain ``{}``.
    """
    p = require_file(path, "a templates json file")
    data = _pick_list(_read_json(p), key, p, "template")
    if not isinstance(data, list) or not all(isinstance(t, str) and "{}" in t for t in data):
        raise bad(p, "expected a list of strings each containing '{}'")
    return list(data)


def load_labels(path: str | Path, key: str | None = None) -> list[str]:
    """Class names from a ULIP-format ``labels.json`` (``{"modelnet40": ["airplane", ...]}``) or from a
    plain text file with one name per line. Underscores become spaces."""
    p = require_file(path, "a labels file (json dict of lists, or one name per line)")
    if p.suffix.lower() == ".json":
        data = _pick_list(_read_json(p), key, p, "label")
        if not isinstance(data, list) or not all(isinstance(t, str) for t in data):
            raise bad(p, "expected a list of class-name strings")
        names = data
    else:
        names = read_list_file(p)
    return [humanize(n) for n in names]


def load_shapenet_taxonomy(path: str | Path) -> dict[str, str]:
    """ShapeNet synset id -> first name, from ``taxonomy.json`` (a list of ``{"synsetId", "name", ...}``)
    or ``shapenet_synset_dict.json`` (a ``{synset: name}`` dict). Names like ``"airplane,aeroplane,plane"``
    are kept whole (the first synonym is ``name.split(",")[0]``)."""
    p = require_file(path, "taxonomy.json (list of {synsetId, name}) or a {synset: name} json dict")
    data = _read_json(p)
    if isinstance(data, dict):
        out = {str(k): str(v) for k, v in data.items()}
    elif isinstance(data, list):
        try:
            out = {str(d["synsetId"]): str(d["name"]) for d in data}
        except (KeyError, TypeError) as e:
            raise bad(p, "expected a list of objects with 'synsetId' and 'name'") from e
    else:
        raise bad(p, "expected a JSON list or dict")
    if not out:
        raise bad(p, "empty taxonomy")
    return out
