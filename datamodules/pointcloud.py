"""Point-cloud datasets and DataModules for SVL (3D <-> CLIP alignment and zero-shot evaluation).

Batch convention (a ``dict`` with stable keys, shared by every point-cloud DataModule of spikelight)
--------------------------------------------------------------------------------------------------
=============  =========================  ==============================================================
key            type / layout              meaning
=============  =========================  ==============================================================
``points``     float32 ``[B, N, 6]``      xyz (normalised to the unit sphere, then augmented in
                                          training) + rgb in ``[0, 1]``; rgb is the constant 0.4 where a
                                          format has no colour (SVL recipe).
``image``      float32 ``[B, 3, H, W]``   one rendered view in ``[0, 1]`` (no CLIP normalisation: the
                                          task applies it). Triplet datasets only.
``text``       ``list[str]``              one caption per sample (for evaluation sets: a prompt with the
                                          class name).
``label``      int64 ``[B]``              class index into the dataset's ``class_names`` (-1: unknown).
``image_feat`` float32 ``[B, D]``         precomputed CLIP image feature (OpenShape-style data only).
``text_feat``  float32 ``[B, D]``         precomputed CLIP text feature (OpenShape-style data only).
=============  =========================  ==============================================================

Every dataset returns one such dict per sample (unbatched: ``points [N, 6]``, ``image [3, H, W]``,
``label`` int64 scalar tensor ...); :func:`collate_pointcloud` stacks them.

A DataModule used for zero-shot evaluation exposes ``class_names`` (human readable, spaces instead of
underscores) of its first evaluation set, ``val_sets: list[dict(name=..., class_names=[...])]`` aligned
with the list returned by ``val_dataloader()`` (``dataloader_idx``), and ``prompt_templates`` (strings
with one ``{}`` for the class name).

Formats read here (each reader raises ``ValueError("<file>: <problem>")`` on corrupt input):

* ModelNet40 ``modelnet40_normal_resampled/<class>/<class>_NNNN.txt`` (``x,y,z,nx,ny,nz`` per line) with
  ``modelnet40_shape_names.txt`` and ``modelnet40_{train,test}.txt`` id lists;
* ModelNet40 ``modelnet40_ply_hdf5_2048/ply_data_{train,test}*.h5`` (``data (N,2048,3)``, ``label (N,1)``)
  with ``shape_names.txt``;
* ScanObjectNN h5 (``data (N,2048,3)``, ``label (N,)``);
* ULIP ShapeNet-55 triplets (``<synset>-<model>.npy`` + ``<synset>-<model>_r_<deg>*.png`` + taxonomy);
* OpenShape-style triplets (per-shape ``<uid>.npy`` dict / ``<uid>.npz`` with xyz, rgb, image_feat,
  text_feat; see :class:`OpenShapeTripletDataset`);
* PLY (ascii, binary little / big endian; xyz + optional rgb, optional faces) and OFF meshes (with the
  ``OFF8 6 12`` merged header and ``#`` comments) sampled area-weighted.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from spikelight.datamodules.base import EvalSet
from spikelight.datamodules.pc_transforms import RGB_DEFAULT, PointCloudTransform, farthest_point_sample

__all__ = [
    "PROMPT_TEMPLATES",
    "SCANOBJECTNN_CLASSES",
    "farthest_point_sample",
    "collate_pointcloud",
    "load_templates",
    "load_labels",
    "load_shapenet_taxonomy",
    "humanize",
    "read_modelnet_txt",
    "read_h5_pointclouds",
    "read_ply",
    "read_off",
    "read_npy_points",
    "sample_mesh_surface",
    "load_point_cloud",
    "load_image",
    "PointCloudDataset",
    "ModelNet40Dataset",
    "H5PointCloudDataset",
    "ScanObjectNNDataset",
    "ShapeNet55TripletDataset",
    "OpenShapeTripletDataset",
    "PointCloudDataModuleBase",
    "ModelNet40DataModule",
    "ScanObjectNNDataModule",
    "ShapeNet55TripletDataModule",
    "OpenShapeTripletDataModule",
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

_SCANOBJECTNN_VARIANTS = {
    # name: (sub folder, file stem)  -> <sub>/{training,test}_<stem>.h5
    "hardest": ("main_split", "objectdataset_augmentedrot_scale75"),  # PB_T50_RS
    "obj_bg": ("main_split", "objectdataset"),
    "obj_only": ("main_split_nobg", "objectdataset"),
}


# ----------------------------------------------------------------------------------------------------
# small helpers
# ----------------------------------------------------------------------------------------------------
def humanize(name: str) -> str:
    """``"night_stand"`` -> ``"night stand"`` (underscores to spaces, trimmed)."""
    return " ".join(name.replace("_", " ").split())


def _bad(path: Path | str, problem: str) -> ValueError:
    return ValueError(f"{path}: {problem}")


def _check_finite(arr: np.ndarray, path: Path | str, what: str = "values") -> None:
    if not np.isfinite(arr).all():
        n = int((~np.isfinite(arr)).sum())
        raise _bad(path, f"{n} non-finite (NaN/inf) {what}")


def _require_dir(path: Path | str, expected: str) -> Path:
    p = Path(path).expanduser()
    if not p.is_dir():
        raise FileNotFoundError(f"{p}: directory not found (expected {expected})")
    return p


def _require_file(path: Path | str, expected: str) -> Path:
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"{p}: file not found (expected {expected})")
    return p


def _read_list_file(path: Path) -> list[str]:
    return [ln.strip() for ln in path.read_text().splitlines() if ln.strip() and not ln.startswith("#")]


def load_templates(path: str | Path, key: str | None = None) -> list[str]:
    """Prompt templates from a ULIP-format ``templates.json`` (``{"modelnet40_64": [...], ...}``).

    ``key`` selects the list; with ``key=None`` the file must hold a single list (or a dict with one
    key). Every template must contain ``{}``.
    """
    p = _require_file(path, "a templates json file")
    try:
        data = json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise _bad(p, f"invalid JSON ({e})") from e
    if isinstance(data, dict):
        if key is None:
            if len(data) != 1:
                raise _bad(p, f"holds several template lists {sorted(data)}; pass key=")
            key = next(iter(data))
        if key not in data:
            raise KeyError(f"{p}: no template list {key!r}; available: {sorted(data)}")
        data = data[key]
    if not isinstance(data, list) or not all(isinstance(t, str) and "{}" in t for t in data):
        raise _bad(p, "expected a list of strings each containing '{}'")
    return list(data)


def load_labels(path: str | Path, key: str | None = None) -> list[str]:
    """Class names from a ULIP-format ``labels.json`` (``{"modelnet40": ["airplane", ...]}``) or from a
    plain text file with one name per line. Underscores become spaces."""
    p = _require_file(path, "a labels file (json dict of lists, or one name per line)")
    if p.suffix.lower() == ".json":
        try:
            data = json.loads(p.read_text())
        except json.JSONDecodeError as e:
            raise _bad(p, f"invalid JSON ({e})") from e
        if isinstance(data, dict):
            if key is None:
                if len(data) != 1:
                    raise _bad(p, f"holds several label lists {sorted(data)}; pass key=")
                key = next(iter(data))
            if key not in data:
                raise KeyError(f"{p}: no label list {key!r}; available: {sorted(data)}")
            data = data[key]
        if not isinstance(data, list) or not all(isinstance(t, str) for t in data):
            raise _bad(p, "expected a list of class-name strings")
        names = data
    else:
        names = _read_list_file(p)
    return [humanize(n) for n in names]


def load_shapenet_taxonomy(path: str | Path) -> dict[str, str]:
    """ShapeNet synset id -> first name, from ``taxonomy.json`` (a list of ``{"synsetId", "name", ...}``)
    or ``shapenet_synset_dict.json`` (a ``{synset: name}`` dict). Names like ``"airplane,aeroplane,plane"``
    are kept whole (the first synonym is ``name.split(",")[0]``)."""
    p = _require_file(path, "taxonomy.json (list of {synsetId, name}) or a {synset: name} json dict")
    try:
        data = json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise _bad(p, f"invalid JSON ({e})") from e
    if isinstance(data, dict):
        out = {str(k): str(v) for k, v in data.items()}
    elif isinstance(data, list):
        try:
            out = {str(d["synsetId"]): str(d["name"]) for d in data}
        except (KeyError, TypeError) as e:
            raise _bad(p, "expected a list of objects with 'synsetId' and 'name'") from e
    else:
        raise _bad(p, "expected a JSON list or dict")
    if not out:
        raise _bad(p, "empty taxonomy")
    return out


# ----------------------------------------------------------------------------------------------------
# readers
# ----------------------------------------------------------------------------------------------------
def read_modelnet_txt(path: str | Path) -> np.ndarray:
    """A ModelNet40 ``normal_resampled`` text file -> float32 ``[M, C]`` (C = 6: xyz + normals).

    Comma- or whitespace-separated; raises ``ValueError`` naming the file when a line does not parse, the
    rows are ragged, there are fewer than 3 columns or any value is NaN/inf.
    """
    p = Path(path)
    try:
        with open(p) as f:
            first = ""
            for line in f:
                if line.strip():
                    first = line
                    break
    except UnicodeDecodeError as e:
        raise _bad(p, "not a text file") from e
    if not first:
        raise _bad(p, "empty file (expected lines of comma-separated x,y,z,nx,ny,nz)")
    delim = "," if "," in first else None
    try:
        arr = np.loadtxt(p, delimiter=delim, dtype=np.float32, ndmin=2, comments="#")
    except ValueError as e:
        raise _bad(p, f"cannot parse as numeric columns ({e})") from e
    if arr.shape[1] < 3:
        raise _bad(p, f"expected at least 3 columns (x,y,z), found {arr.shape[1]}")
    _check_finite(arr, p)
    return arr


def read_modelnet_txt_cached(path: str | Path, cache_dir: str | Path | None = None) -> np.ndarray:
    """:func:`read_modelnet_txt` with a binary cache: the first read parses the text file and stores the
    array as ``<cache_dir>/<stem>-<key>.npy`` (key = hash of the absolute path, size and mtime, so an edited
    file is parsed again); later reads load the ``.npy`` (~100x faster than parsing 10k text lines).
    ``cache_dir=None`` parses every time. A damaged cache file is ignored and rewritten.
    """
    p = Path(path)
    if cache_dir is None:
        return read_modelnet_txt(p)
    st = p.stat()
    key = hashlib.sha1(f"{p.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]
    cached = Path(cache_dir).expanduser() / f"{p.stem}-{key}.npy"
    if cached.is_file():
        try:
            arr = np.load(cached, allow_pickle=False)
            if arr.ndim == 2 and arr.shape[1] >= 3 and np.isfinite(arr).all():
                return arr
        except (OSError, ValueError):
            pass
    arr = read_modelnet_txt(p)
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_name(f"{cached.stem}.tmp{os.getpid()}.npy")
    np.save(tmp, arr)
    os.replace(tmp, cached)  # atomic: concurrent workers never see a half-written file
    return arr


def read_h5_pointclouds(
    path: str | Path, *, data_key: str = "data", label_key: str = "label"
) -> tuple[np.ndarray, np.ndarray]:
    """An h5 point-cloud file (ModelNet40 ``ply_data_*.h5``, ScanObjectNN) -> ``data`` float32
    ``[N, P, C]`` (C >= 3) and ``label`` int64 ``[N]`` (``(N, 1)`` labels are flattened).

    Non-finite rows are *not* rejected here (datasets decide per sample); an unreadable / truncated file,
    a missing key or a wrong shape raises ``ValueError`` naming the file.
    """
    import h5py

    p = Path(path)
    try:
        with h5py.File(p, "r") as f:
            if data_key not in f or label_key not in f:
                raise _bad(p, f"missing dataset {data_key!r} or {label_key!r} (has {sorted(f.keys())})")
            data = np.asarray(f[data_key][:], dtype=np.float32)
            label = np.asarray(f[label_key][:])
    except ValueError:
        raise
    except (OSError, KeyError, RuntimeError) as e:
        raise _bad(p, f"unreadable or truncated h5 file ({e})") from e
    if data.ndim != 3 or data.shape[-1] < 3:
        raise _bad(p, f"{data_key!r} must be (N, P, >=3), got {data.shape}")
    if label.ndim == 2 and label.shape[1] == 1:
        label = label[:, 0]
    if label.ndim != 1 or label.shape[0] != data.shape[0]:
        raise _bad(p, f"{label_key!r} must be (N,) or (N, 1) with N={data.shape[0]}, got {label.shape}")
    return data, label.astype(np.int64)


_PLY_TYPES = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1",
    "short": "i2", "int16": "i2", "ushort": "u2", "uint16": "u2",
    "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
    "float": "f4", "float32": "f4", "double": "f8", "float64": "f8",
}  # fmt: skip


def _ply_header(raw: bytes, p: Path) -> tuple[str, list[dict], int]:
    if not raw.startswith(b"ply"):
        raise _bad(p, "not a PLY file (missing 'ply' magic)")
    end = raw.find(b"end_header")
    if end < 0:
        raise _bad(p, "PLY header has no 'end_header'")
    body_start = raw.find(b"\n", end) + 1
    if body_start == 0:
        body_start = len(raw)
    fmt = None
    elements: list[dict] = []
    for line in raw[:end].decode("ascii", errors="replace").splitlines()[1:]:
        tok = line.split()
        if not tok or tok[0] in ("comment", "obj_info"):
            continue
        if tok[0] == "format":
            fmt = tok[1] if len(tok) > 1 else None
        elif tok[0] == "element":
            if len(tok) != 3 or not tok[2].isdigit():
                raise _bad(p, f"bad PLY element line {line!r}")
            elements.append({"name": tok[1], "count": int(tok[2]), "props": []})
        elif tok[0] == "property":
            if not elements:
                raise _bad(p, "PLY property before any element")
            try:
                if tok[1] == "list":
                    prop = (tok[4], "list", _PLY_TYPES[tok[2]], _PLY_TYPES[tok[3]])
                else:
                    prop = (tok[2], "scalar", _PLY_TYPES[tok[1]], None)
            except (KeyError, IndexError) as e:
                raise _bad(p, f"bad PLY property line {line!r}") from e
            elements[-1]["props"].append(prop)
    if fmt not in ("ascii", "binary_little_endian", "binary_big_endian"):
        raise _bad(p, f"unsupported PLY format {fmt!r}")
    return fmt, elements, body_start


def read_ply(path: str | Path) -> dict[str, np.ndarray | None]:
    """Read a PLY point cloud or mesh (ascii / binary_little_endian / binary_big_endian).

    Returns ``{"xyz": float32 [M, 3], "rgb": float32 [M, 3] in [0, 1] or None, "faces": int64 [F, 3]
    (polygons fan-triangulated) or None}``. Colour comes from ``red/green/blue`` (uchar -> /255, float
    kept). Truncated bodies, missing x/y/z and non-finite coordinates raise ``ValueError``.
    """
    p = Path(path)
    raw = p.read_bytes()
    fmt, elements, pos = _ply_header(raw, p)
    out: dict[str, np.ndarray | None] = {"xyz": None, "rgb": None, "faces": None}
    if fmt == "ascii":
        lines = raw[pos:].decode("ascii", errors="replace").splitlines()
        lines = [ln for ln in lines if ln.strip()]
        li = 0
        for el in elements:
            n = el["count"]
            if li + n > len(lines):
                raise _bad(p, f"truncated: element {el['name']!r} needs {n} lines, {len(lines) - li} left")
            block = lines[li : li + n]
            li += n
            has_list = any(kind == "list" for _, kind, _, _ in el["props"])
            if not has_list:
                k = len(el["props"])
                try:
                    vals = np.array(" ".join(block).split(), dtype=np.float64)
                except ValueError as e:
                    raise _bad(p, f"unparseable value in element {el['name']!r} ({e})") from e
                if vals.size != n * k:
                    raise _bad(p, f"element {el['name']!r}: expected {n}x{k} values, found {vals.size}")
                cols = {name: vals.reshape(n, k)[:, j] for j, (name, _, _, _) in enumerate(el["props"])}
                types = {name: t for name, _, t, _ in el["props"]}
                _ply_store(out, el["name"], cols, types, p)
            elif el["name"] == "face":
                faces = []
                for ln in block:
                    tok = ln.split()
                    try:
                        k = int(tok[0])
                        faces.append([int(t) for t in tok[1 : 1 + k]])
                    except (ValueError, IndexError) as e:
                        raise _bad(p, f"bad face line {ln!r}") from e
                out["faces"] = _triangulate(faces, p)
    else:
        endian = "<" if fmt == "binary_little_endian" else ">"
        for el in elements:
            n = el["count"]
            has_list = any(kind == "list" for _, kind, _, _ in el["props"])
            if not has_list:
                dt = np.dtype([(name, endian + t) for name, _, t, _ in el["props"]])
                need = dt.itemsize * n
                if pos + need > len(raw):
                    raise _bad(
                        p, f"truncated: element {el['name']!r} needs {need} bytes, {len(raw) - pos} left"
                    )
                rec = np.frombuffer(raw, dtype=dt, count=n, offset=pos)
                pos += need
                cols = {name: rec[name].astype(np.float64) for name in dt.names}
                types = {name: t for name, _, t, _ in el["props"]}
                _ply_store(out, el["name"], cols, types, p)
            else:
                if n == 0:
                    continue
                if el["name"] != "face" or len(el["props"]) != 1:
                    break  # an element we do not need and cannot skip cheaply: stop here
                _, _, ct, it = el["props"][0]
                ct_dt, it_dt = np.dtype(endian + ct), np.dtype(endian + it)
                if pos + ct_dt.itemsize > len(raw):
                    raise _bad(p, "truncated face element")
                k0 = int(np.frombuffer(raw, ct_dt, 1, pos)[0])
                dt = np.dtype([("k", ct_dt), ("idx", it_dt, (k0,))])
                if pos + dt.itemsize * n <= len(raw):
                    rec = np.frombuffer(raw, dt, n, pos)
                    if (rec["k"] == k0).all():
                        out["faces"] = _triangulate(rec["idx"].astype(np.int64), p)
                        pos += dt.itemsize * n
                        continue
                faces = []
                for _ in range(n):  # mixed polygon sizes: slow path
                    if pos + ct_dt.itemsize > len(raw):
                        raise _bad(p, "truncated face element")
                    k = int(np.frombuffer(raw, ct_dt, 1, pos)[0])
                    pos += ct_dt.itemsize
                    if pos + k * it_dt.itemsize > len(raw):
                        raise _bad(p, "truncated face element")
                    faces.append(np.frombuffer(raw, it_dt, k, pos).astype(np.int64).tolist())
                    pos += k * it_dt.itemsize
                out["faces"] = _triangulate(faces, p)
    if out["xyz"] is None:
        raise _bad(p, "no 'vertex' element with x, y, z properties")
    if out["faces"] is not None and out["faces"].size:
        nv = out["xyz"].shape[0]
        if out["faces"].min() < 0 or out["faces"].max() >= nv:
            raise _bad(p, f"face index out of range [0, {nv})")
    return out


def _ply_store(out: dict, name: str, cols: dict, types: dict, p: Path) -> None:
    if name != "vertex":
        return
    if not all(c in cols for c in "xyz"):
        raise _bad(p, f"vertex element lacks x/y/z (has {sorted(cols)})")
    xyz = np.stack([cols["x"], cols["y"], cols["z"]], 1).astype(np.float32)
    _check_finite(xyz, p, "coordinates")
    out["xyz"] = xyz
    for names in (
        ("red", "green", "blue"),
        ("r", "g", "b"),
        ("diffuse_red", "diffuse_green", "diffuse_blue"),
    ):
        if all(c in cols for c in names):
            rgb = np.stack([cols[c] for c in names], 1)
            if types[names[0]].startswith("u") or types[names[0]].startswith("i") or rgb.max(initial=0) > 1.0:
                rgb = rgb / 255.0
            rgb = np.clip(rgb, 0.0, 1.0).astype(np.float32)
            _check_finite(rgb, p, "colours")
            out["rgb"] = rgb
            break


def _triangulate(faces: Sequence[Sequence[int]] | np.ndarray, p: Path) -> np.ndarray:
    """Fan-triangulate polygons -> int64 ``[F, 3]``."""
    if isinstance(faces, np.ndarray) and faces.ndim == 2:
        k = faces.shape[1]
        if k < 3:
            raise _bad(p, f"faces with {k} < 3 vertices")
        tris = [np.stack([faces[:, 0], faces[:, j], faces[:, j + 1]], 1) for j in range(1, k - 1)]
        return np.concatenate(tris, 0).astype(np.int64) if tris else np.zeros((0, 3), np.int64)
    tris = []
    for f in faces:
        if len(f) < 3:
            raise _bad(p, f"face with {len(f)} < 3 vertices: {list(f)}")
        for j in range(1, len(f) - 1):
            tris.append((f[0], f[j], f[j + 1]))
    return np.asarray(tris, dtype=np.int64).reshape(-1, 3)


def read_off(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read an OFF mesh -> ``vertices`` float32 ``[V, 3]``, ``faces`` int64 ``[F, 3]`` (fan-triangulated).

    Handles ``#`` comments (whole-line and trailing), blank lines, leading whitespace, the merged
    header ``OFF8 6 12`` (ModelNet40's ``OFF490 518 0`` quirk), ``COFF``/``NOFF`` headers and extra
    per-vertex / per-face values (colours), which are ignored.
    """
    p = Path(path)
    try:
        text = p.read_text()
    except UnicodeDecodeError as e:
        raise _bad(p, "not a text OFF file (binary OFF is not supported)") from e
    lines = []
    for ln in text.splitlines():
        ln = ln.split("#", 1)[0].strip()
        if ln:
            lines.append(ln)
    if not lines:
        raise _bad(p, "empty OFF file")
    m = re.match(r"^([A-Z]*OFF)(.*)$", lines[0])
    if m is None:
        raise _bad(p, f"missing OFF header (first line {lines[0][:40]!r})")
    rest = m.group(2).split()
    li = 1
    while len(rest) < 3 and li < len(lines):
        rest += lines[li].split()
        li += 1
    try:
        nv, nf = int(rest[0]), int(rest[1])
    except (ValueError, IndexError) as e:
        raise _bad(p, f"bad OFF counts line {rest!r}") from e
    if li + nv + nf > len(lines):
        raise _bad(p, f"truncated: header says {nv} vertices + {nf} faces, file has {len(lines) - li} lines")
    vblock = lines[li : li + nv]
    try:
        verts = np.array([ln.split()[:3] for ln in vblock], dtype=np.float32).reshape(nv, 3)
    except ValueError as e:
        raise _bad(p, f"unparseable vertex line ({e})") from e
    _check_finite(verts, p, "vertex coordinates")
    faces = []
    for ln in lines[li + nv : li + nv + nf]:
        tok = ln.split()
        try:
            k = int(tok[0])
            idx = [int(t) for t in tok[1 : 1 + k]]
        except (ValueError, IndexError) as e:
            raise _bad(p, f"bad face line {ln!r}") from e
        if len(idx) != k:
            raise _bad(p, f"face line {ln!r} lists fewer than {k} indices")
        faces.append(idx)
    tris = _triangulate(faces, p)
    if tris.size and (tris.min() < 0 or tris.max() >= nv):
        raise _bad(p, f"face index out of range [0, {nv})")
    return verts, tris


def sample_mesh_surface(
    vertices: np.ndarray,
    faces: np.ndarray,
    n: int,
    *,
    rng: np.random.Generator | int | None = None,
    return_face_index: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Area-weighted uniform sampling of ``n`` points on a triangle mesh.

    ``vertices`` ``[V, 3]``, ``faces`` ``[F, 3]`` -> ``points`` float32 ``[n, 3]`` (and the int64 face index
    ``[n]`` of each point when ``return_face_index``). A face is drawn with probability proportional to
    its area, then a uniform barycentric point in it (reflection trick for ``u + v > 1``).
    """
    rng = np.random.default_rng(rng)
    v = np.asarray(vertices, dtype=np.float64)
    f = np.asarray(faces, dtype=np.int64)
    a, b, c = v[f[:, 0]], v[f[:, 1]], v[f[:, 2]]
    area = 0.5 * np.linalg.norm(np.cross(b - a, c - a), axis=1)
    total = area.sum()
    if not np.isfinite(total) or total <= 0:
        raise ValueError("sample_mesh_surface: mesh has zero total area")
    fi = rng.choice(len(f), size=n, p=area / total)
    u, w = rng.random(n), rng.random(n)
    flip = u + w > 1
    u[flip], w[flip] = 1 - u[flip], 1 - w[flip]
    pts = a[fi] + u[:, None] * (b[fi] - a[fi]) + w[:, None] * (c[fi] - a[fi])
    pts = pts.astype(np.float32)
    return (pts, fi) if return_face_index else pts


def read_npy_points(path: str | Path) -> np.ndarray:
    """A ``.npy`` array ``[M, 3]`` / ``[M, >=6]`` (ULIP ShapeNet-55 ``8192 x 3``) -> float32; raises on a
    wrong shape, a pickled object, a truncated file or non-finite values."""
    p = Path(path)
    try:
        arr = np.load(p, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise _bad(p, f"unreadable npy file ({e})") from e
    if arr.ndim != 2 or arr.shape[1] < 3:
        raise _bad(p, f"expected a point array of shape (M, 3) or (M, 6), got {arr.shape}")
    arr = arr.astype(np.float32)
    _check_finite(arr, p)
    return arr


def load_point_cloud(
    path: str | Path,
    *,
    mesh_points: int = 10000,
    rng: np.random.Generator | int | None = 0,
    rgb_default: float = RGB_DEFAULT,
) -> np.ndarray:
    """Any supported point file -> float32 ``[M, 6]`` (xyz + rgb in [0, 1], ``rgb_default`` if uncoloured).

    ``.txt`` (ModelNet40; normals dropped), ``.npy`` / ``.npz`` (``xyz`` [+ ``rgb``] or one array), ``.ply``
    (points; a mesh with faces is sampled), ``.off`` (mesh sampled area-weighted with ``mesh_points``).
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: point file not found")
    ext = p.suffix.lower()
    rgb = None
    if ext == ".txt":
        xyz = read_modelnet_txt(p)[:, :3]
    elif ext == ".npy":
        arr = read_npy_points(p)
        xyz = arr[:, :3]
        if arr.shape[1] >= 6:
            rgb = arr[:, 3:6]
    elif ext == ".npz":
        d = _load_shape_record(p)
        xyz, rgb = d["xyz"], d.get("rgb")
    elif ext == ".ply":
        d = read_ply(p)
        if d["faces"] is not None and len(d["faces"]) > 0:
            xyz = sample_mesh_surface(d["xyz"], d["faces"], mesh_points, rng=rng)
        else:
            xyz, rgb = d["xyz"], d["rgb"]
    elif ext == ".off":
        v, f = read_off(p)
        xyz = sample_mesh_surface(v, f, mesh_points, rng=rng)
    else:
        raise ValueError(f"{p}: unsupported point-cloud extension {ext!r} (txt, npy, npz, ply, off)")
    if rgb is None:
        rgb = np.full_like(xyz, rgb_default)
    else:
        rgb = np.asarray(rgb, dtype=np.float32)
        if rgb.max(initial=0) > 1.0:
            rgb = rgb / 255.0
    return np.concatenate([xyz, rgb], 1).astype(np.float32)


def load_image(path: str | Path, size: int | None = None, background: float = 1.0) -> Tensor:
    """PNG/JPEG -> float32 ``[3, H, W]`` in [0, 1]; an alpha channel is composited on ``background``;
    ``size`` resizes the short side (bicubic) and centre-crops to ``size x size``."""
    from PIL import Image, UnidentifiedImageError

    p = Path(path)
    try:
        with Image.open(p) as im:
            im.load()
            if im.mode in ("RGBA", "LA") or (im.mode == "P" and "transparency" in im.info):
                im = im.convert("RGBA")
                bg = Image.new("RGBA", im.size, tuple([int(round(background * 255))] * 3) + (255,))
                im = Image.alpha_composite(bg, im)
            im = im.convert("RGB")
            if size is not None:
                w, h = im.size
                s = size / min(w, h)
                im = im.resize((max(size, round(w * s)), max(size, round(h * s))), Image.BICUBIC)
                w, h = im.size
                left, top = (w - size) // 2, (h - size) // 2
                im = im.crop((left, top, left + size, top + size))
            arr = np.asarray(im, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise _bad(p, f"unreadable image ({e})") from e
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255.0)


def collate_pointcloud(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack per-sample dicts into the batch convention (tensors stacked on a new dim 0, strings into
    lists, ints into an int64 tensor). All samples must have the same keys."""
    if not samples:
        raise ValueError("collate_pointcloud: empty batch")
    keys = list(samples[0].keys())
    out: dict[str, Any] = {}
    for k in keys:
        vals = [s[k] for s in samples]
        v0 = vals[0]
        if torch.is_tensor(v0):
            out[k] = torch.stack(vals, 0)
        elif isinstance(v0, np.ndarray):
            out[k] = torch.from_numpy(np.stack(vals, 0))
        elif isinstance(v0, bool | int | np.integer):
            out[k] = torch.as_tensor(vals, dtype=torch.int64)
        elif isinstance(v0, float | np.floating):
            out[k] = torch.as_tensor(vals, dtype=torch.float32)
        else:
            out[k] = list(vals)
    if "label" in out:
        out["label"] = out["label"].long()
    return out


# ----------------------------------------------------------------------------------------------------
# datasets
# ----------------------------------------------------------------------------------------------------
class PointCloudDataset(Dataset):
    """Base class: per-item loading with corrupt-item handling, transforms and captions.

    Subclasses implement ``__len__``, ``_load(i) -> dict`` (raw sample; ``points`` float32 ``[M, 3|6]``
    numpy/tensor, ``label`` int, optional ``name`` (class name for the caption), ``image``, ``image_feat``,
    ``text_feat``, ``text``) which raises ``ValueError`` for a corrupt item.

    ``memoize=True`` keeps every assembled sample in memory (for deterministic evaluation transforms,
    e.g. farthest point sampling, which then runs once per shape instead of once per epoch).

    ``skip_bad=True``: a corrupt item is skipped (the next valid item is returned instead), counted in
    ``num_skipped`` and reported with one warning. Items are read lazily, so ``num_skipped`` grows as bad
    items are met; ``validate()`` reads every item once up front and makes it exact.
    """

    def __init__(
        self,
        *,
        transform: Callable[..., Tensor] | None,
        caption_templates: Sequence[str] | None = None,
        random_caption: bool = False,
        skip_bad: bool = False,
        memoize: bool = False,
    ) -> None:
        self.transform = transform
        self.memoize = memoize
        self._memo: dict[int, dict[str, Any]] = {}
        self.caption_templates = list(caption_templates) if caption_templates else list(PROMPT_TEMPLATES)
        self.random_caption = random_caption
        self.skip_bad = skip_bad
        self._bad: set[int] = set()
        self._warned = False
        self.generator: torch.Generator | None = None  # set for reproducible tests; None = global RNG

    # -- subclass API
    def __len__(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def _load(self, i: int) -> dict[str, Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    # -- bad-item bookkeeping
    @property
    def num_skipped(self) -> int:
        return len(self._bad) + getattr(self, "_pre_skipped", 0)

    def _note_bad(self, i: int, err: Exception) -> None:
        self._bad.add(i)
        if not self._warned:
            self._warned = True
            warnings.warn(
                f"{type(self).__name__}: skipping corrupt item(s) (skip_bad=True); "
                f"{self.num_skipped} skipped so far, first: {err}",
                RuntimeWarning,
                stacklevel=3,
            )

    def _warn_skipped(self) -> None:
        if self.num_skipped and not self._warned:
            self._warned = True
            warnings.warn(
                f"{type(self).__name__}: skipped {self.num_skipped} corrupt item(s) (skip_bad=True)",
                RuntimeWarning,
                stacklevel=3,
            )

    def validate(self) -> int:
        """Load every item once: raise on the first corrupt one, or with ``skip_bad`` mark every corrupt
        one (never returned afterwards) and return the exact ``num_skipped``."""
        for i in range(len(self)):
            if i in self._bad:
                continue
            try:
                self._load(i)
            except ValueError:
                if not self.skip_bad:
                    raise
                self._bad.add(i)
        self._warn_skipped()
        return self.num_skipped

    # -- sample assembly
    def _caption(self, name: str) -> str:
        if self.random_caption and len(self.caption_templates) > 1:
            j = int(torch.randint(len(self.caption_templates), (1,), generator=self.generator))
        else:
            j = 0
        return self.caption_templates[j].format(name)

    def __getitem__(self, i: int) -> dict[str, Any]:
        n = len(self)
        if n == 0:
            raise IndexError("empty dataset")
        for attempt in range(n):
            j = (i + attempt) % n
            if j in self._bad:
                continue
            if j in self._memo:
                return dict(self._memo[j])
            try:
                raw = self._load(j)
            except ValueError as e:
                if not self.skip_bad:
                    raise
                self._note_bad(j, e)
                continue
            out = self._assemble(raw)
            if self.memoize:
                self._memo[j] = out
                out = dict(out)
            return out
        raise RuntimeError(f"{type(self).__name__}: every item is corrupt ({self.num_skipped} skipped)")

    def _assemble(self, raw: dict[str, Any]) -> dict[str, Any]:
        pts = torch.as_tensor(np.asarray(raw["points"], dtype=np.float32))
        if self.transform is not None:
            pts = self.transform(pts, generator=self.generator)
        out: dict[str, Any] = {"points": pts.float()}
        if "image" in raw and raw["image"] is not None:
            out["image"] = raw["image"]
        if "text" in raw and raw["text"] is not None:
            out["text"] = raw["text"]
        else:
            out["text"] = self._caption(raw.get("name", "object"))
        out["label"] = torch.tensor(int(raw.get("label", -1)), dtype=torch.int64)
        for k in ("image_feat", "text_feat"):
            if k in raw and raw[k] is not None:
                out[k] = torch.as_tensor(raw[k], dtype=torch.float32)
        if not torch.isfinite(out["points"]).all():  # never return NaN
            raise ValueError(f"{type(self).__name__}: non-finite points after transform")
        return out


def _find_dir_with(root: Path, filename: str, subdirs: Iterable[str]) -> Path | None:
    for cand in [root, *[root / s for s in subdirs]]:
        if (cand / filename).is_file():
            return cand
    return None


def _eval_transform(num_points: int | None, sampling: str) -> PointCloudTransform:
    return PointCloudTransform(num_points=num_points, sampling=sampling, augment=False)


def _pick_transform(
    transform: Callable[..., Tensor] | None, num_points: int | None, sampling: str, augment: bool
) -> Callable[..., Tensor]:
    """The given transform, else the SVL training recipe (``augment``) or the evaluation transform."""
    if transform is not None:
        return transform
    return _train_transform(num_points, sampling, augment) if augment else _eval_transform(num_points, sampling)


def _train_transform(num_points: int | None, sampling: str, augment: bool) -> PointCloudTransform:
    return PointCloudTransform(num_points=num_points, sampling=sampling, augment=augment)


class ModelNet40Dataset(PointCloudDataset):
    """ModelNet40 in the ``normal_resampled`` text format or the ``ply_hdf5_2048`` h5 format.

    ``format="txt"``: ``root`` is (or contains) ``modelnet40_normal_resampled/`` with
    ``modelnet40_shape_names.txt``, ``modelnet40_{split}.txt`` (ids like ``airplane_0126``) and
    ``<class>/<id>.txt``. ``format="h5"``: ``root`` is (or contains) ``modelnet40_ply_hdf5_2048/`` with
    ``ply_data_{split}*.h5`` and ``shape_names.txt`` (or ``modelnet40_shape_names.txt``).

    Labels are line indices in the shape-names file; ``class_names`` are those names with spaces. Samples
    have ``points [N, 6]`` (normals dropped, rgb = 0.4), ``text`` (a prompt with the class name) and
    ``label``. ``preload=True`` parses every text file at construction (exact ``num_skipped``; keeps the
    raw xyz in memory). ``memoize`` (default: on for deterministic evaluation, i.e. no augmentation and
    ``sampling`` "fps" / "first") keeps each sampled cloud after its first use.
    """

    def __init__(
        self,
        *,
        root: str | Path,
        split: str = "test",
        format: str = "txt",
        num_points: int | None = 1024,
        sampling: str = "fps",
        augment: bool = False,
        transform: Callable[..., Tensor] | None = None,
        caption_templates: Sequence[str] | None = None,
        preload: bool = False,
        skip_bad: bool = False,
        memoize: bool | None = None,
        cache_dir: str | Path | None = None,
    ) -> None:
        if memoize is None:
            memoize = transform is None and not augment and sampling != "random"
        self.cache_dir = cache_dir
        super().__init__(
            memoize=memoize if format == "txt" else False,
            transform=_pick_transform(transform, num_points, sampling, augment),
            caption_templates=caption_templates,
            random_caption=augment,
            skip_bad=skip_bad,
        )
        if format not in ("txt", "h5"):
            raise ValueError(f"ModelNet40Dataset: format must be 'txt' or 'h5', got {format!r}")
        self.format = format
        self.split = split
        root = _require_dir(root, "the ModelNet40 data directory")
        if format == "txt":
            d = _find_dir_with(root, "modelnet40_shape_names.txt", ["modelnet40_normal_resampled"])
            if d is None:
                raise FileNotFoundError(
                    f"{root}: no modelnet40_shape_names.txt here or in modelnet40_normal_resampled/ "
                    "(expected the ModelNet40 normal_resampled release)"
                )
            self.root = d
            self.shape_names = _read_list_file(d / "modelnet40_shape_names.txt")
            list_file = _require_file(d / f"modelnet40_{split}.txt", f"the {split} id list (one id per line)")
            ids = _read_list_file(list_file)
            index = {n: i for i, n in enumerate(self.shape_names)}
            self.items: list[tuple[Path, int]] = []
            for sid in ids:
                cls = sid.rsplit("_", 1)[0]
                if cls not in index:
                    raise _bad(list_file, f"id {sid!r} has class {cls!r} not in modelnet40_shape_names.txt")
                f = d / cls / f"{sid}.txt"
                if not f.is_file():
                    raise FileNotFoundError(f"{f}: point file listed in {list_file.name} not found")
                self.items.append((f, index[cls]))
            self._cache: dict[int, np.ndarray] | None = None
            if preload:
                self.validate()
        else:
            d = None
            for cand in [root, root / "modelnet40_ply_hdf5_2048"]:
                if sorted(cand.glob(f"ply_data_{split}*.h5")):
                    d = cand
                    break
            if d is None:
                raise FileNotFoundError(
                    f"{root}: no ply_data_{split}*.h5 here or in modelnet40_ply_hdf5_2048/ "
                    "(expected the ModelNet40 ply_hdf5_2048 release)"
                )
            self.root = d
            names_file = d / "shape_names.txt"
            if not names_file.is_file():
                names_file = d / "modelnet40_shape_names.txt"
            self.shape_names = _read_list_file(_require_file(names_file, "40 class names, one per line"))
            self._h5 = H5PointCloudDataset(
                files=sorted(d.glob(f"ply_data_{split}*.h5")),
                class_names=[humanize(n) for n in self.shape_names],
                transform=self.transform,
                caption_templates=self.caption_templates,
                random_caption=augment,
                skip_bad=skip_bad,
                memoize=memoize,
            )
        self.class_names = [humanize(n) for n in self.shape_names]

    @property
    def num_skipped(self) -> int:
        if self.format == "h5":
            return self._h5.num_skipped
        return super().num_skipped

    def __len__(self) -> int:
        return len(self._h5) if self.format == "h5" else len(self.items)

    def _load(self, i: int) -> dict[str, Any]:
        if self.format == "h5":
            return self._h5._load(i)
        f, label = self.items[i]
        if self._cache is not None and i in self._cache:
            pts = self._cache[i]
        else:
            pts = read_modelnet_txt_cached(f, self.cache_dir)[:, :3]
        return {"points": pts, "label": label, "name": self.class_names[label]}

    def validate(self) -> int:
        if self.format == "h5":
            return self._h5.num_skipped
        cache: dict[int, np.ndarray] = {}
        good: list[tuple[Path, int]] = []
        from tqdm.auto import tqdm

        for f, label in tqdm(
            self.items, desc=f"ModelNet40 {self.split}", leave=False, disable=len(self.items) < 200
        ):
            try:
                pts = read_modelnet_txt_cached(f, self.cache_dir)[:, :3]
            except ValueError:
                if not self.skip_bad:
                    raise
                self._pre_skipped = getattr(self, "_pre_skipped", 0) + 1
                continue
            cache[len(good)] = pts
            good.append((f, label))
        self.items = good
        self._cache = cache
        self._warn_skipped()
        return self.num_skipped

    def __getitem__(self, i: int) -> dict[str, Any]:
        if self.format == "h5":
            return self._h5[i]
        return super().__getitem__(i)


class H5PointCloudDataset(PointCloudDataset):
    """Point clouds from one or more h5 files (``data (N, P, 3)``, ``label (N,)`` or ``(N, 1)``), all loaded
    into memory. Unreadable files and samples with non-finite values raise ``ValueError`` naming the file,
    or are skipped and counted (``num_skipped``) with ``skip_bad=True``."""

    def __init__(
        self,
        *,
        files: Sequence[str | Path],
        class_names: Sequence[str],
        transform: Callable[..., Tensor] | None,
        caption_templates: Sequence[str] | None = None,
        random_caption: bool = False,
        skip_bad: bool = False,
        memoize: bool = False,
        data_key: str = "data",
        label_key: str = "label",
    ) -> None:
        super().__init__(
            transform=transform,
            caption_templates=caption_templates,
            random_caption=random_caption,
            skip_bad=skip_bad,
            memoize=memoize,
        )
        self.class_names = list(class_names)
        self.files = [Path(f) for f in files]
        datas, labels, srcs = [], [], []
        skipped = 0
        for f in self.files:
            if not f.is_file():
                raise FileNotFoundError(f"{f}: h5 point-cloud file not found")
            try:
                data, label = read_h5_pointclouds(f, data_key=data_key, label_key=label_key)
                if label.size and (label.min() < 0 or label.max() >= len(self.class_names)):
                    raise _bad(f, f"labels outside [0, {len(self.class_names)})")
            except ValueError:
                if not skip_bad:
                    raise
                skipped += 1
                continue
            finite = np.isfinite(data).all(axis=(1, 2))
            if not finite.all():
                if not skip_bad:
                    raise _bad(
                        f,
                        f"{int((~finite).sum())} sample(s) with NaN/inf values (first: {int(np.argmin(finite))})",
                    )
                skipped += int((~finite).sum())
                data, label = data[finite], label[finite]
            datas.append(data[..., :3])
            labels.append(label)
            srcs.extend((f, k) for k in np.nonzero(finite)[0].tolist())
        self._pre_skipped = skipped
        self.data = np.concatenate(datas, 0) if datas else np.zeros((0, 1, 3), np.float32)
        self.labels = np.concatenate(labels, 0) if labels else np.zeros((0,), np.int64)
        self._src = srcs
        self._warn_skipped()

    def __len__(self) -> int:
        return len(self.data)

    def _load(self, i: int) -> dict[str, Any]:
        label = int(self.labels[i])
        return {"points": self.data[i], "label": label, "name": self.class_names[label]}


class ScanObjectNNDataset(H5PointCloudDataset):
    """ScanObjectNN h5 files (``data (N, 2048, 3)``, ``label (N,)``), 15 classes.

    ``root`` holds ``<sub>/{training,test}_<stem>.h5`` (or the file directly); ``variant`` picks the
    standard file: ``"hardest"`` (PB_T50_RS, ``main_split/*_objectdataset_augmentedrot_scale75.h5``),
    ``"obj_bg"`` (``main_split/*_objectdataset.h5``) or ``"obj_only"`` (``main_split_nobg/...``). ``file``
    overrides the search with an explicit path.
    """

    def __init__(
        self,
        *,
        root: str | Path,
        split: str = "test",
        variant: str = "hardest",
        file: str | Path | None = None,
        num_points: int | None = 1024,
        sampling: str = "fps",
        augment: bool = False,
        transform: Callable[..., Tensor] | None = None,
        caption_templates: Sequence[str] | None = None,
        class_names: Sequence[str] | None = None,
        skip_bad: bool = False,
        memoize: bool | None = None,
    ) -> None:
        if memoize is None:
            memoize = transform is None and not augment and sampling != "random"
        if file is None:
            root = _require_dir(root, "the ScanObjectNN h5_files directory")
            if variant not in _SCANOBJECTNN_VARIANTS:
                raise ValueError(
                    f"unknown ScanObjectNN variant {variant!r}; choose from {sorted(_SCANOBJECTNN_VARIANTS)}"
                )
            sub, stem = _SCANOBJECTNN_VARIANTS[variant]
            name = f"{'training' if split == 'train' else 'test'}_{stem}.h5"
            cands = [root / sub / name, root / "h5_files" / sub / name, root / name]
            file = next((c for c in cands if c.is_file()), None)
            if file is None:
                raise FileNotFoundError(
                    f"{cands[0]}: ScanObjectNN file not found (also looked for {cands[1]}, {cands[2]})"
                )
        transform = _pick_transform(transform, num_points, sampling, augment)
        super().__init__(
            files=[file],
            class_names=list(class_names) if class_names else list(SCANOBJECTNN_CLASSES),
            transform=transform,
            caption_templates=caption_templates,
            random_caption=augment,
            skip_bad=skip_bad,
            memoize=memoize,
        )
        self.split = split


class ShapeNet55TripletDataset(PointCloudDataset):
    """ULIP ShapeNet-55 triplets: point cloud + one rendered view + caption.

    Layout (ULIP)::

        <root>/shapenet_pc/<synset>-<model>.npy      (8192, 3) or (8192, 6) float ("shapenet_pc/" optional)
        <root>/rendered_images/<synset>-<model>_r_<deg>[_depth0001].png
               (or rendered_images/<synset>-<model>/<...>_r_<deg>*.png; "rendered_images/" = image_dir)
        <root>/taxonomy.json                        list of {"synsetId", "name"} (or shapenet_synset_dict.json)
        <root>/ShapeNet-55/{train,test}.txt         lines "<synset>-<model>.npy"
               (or <root>/ShapeNet-55_{split}.txt, <root>/{split}.txt; or split_file=)

    Labels index the sorted synset ids of the taxonomy; ``class_names`` are the first synonyms. In
    training (``augment=True``) a random view, a random synonym and a random caption template are used;
    otherwise view 0 (sorted by degree), the first synonym and the first template. ``with_images=False``
    drops the ``image`` key (e.g. for zero-shot evaluation on ShapeNet-55).
    """

    def __init__(
        self,
        *,
        root: str | Path,
        split: str = "train",
        split_file: str | Path | None = None,
        pc_dir: str | Path | None = None,
        image_dir: str | Path | None = None,
        taxonomy_file: str | Path | None = None,
        with_images: bool = True,
        image_size: int = 224,
        num_points: int | None = 8192,
        sampling: str = "random",
        augment: bool = True,
        transform: Callable[..., Tensor] | None = None,
        caption_templates: Sequence[str] | None = None,
        skip_bad: bool = False,
    ) -> None:
        transform = _pick_transform(transform, num_points, sampling, augment)
        super().__init__(
            transform=transform,
            caption_templates=caption_templates,
            random_caption=augment,
            skip_bad=skip_bad,
        )
        root = _require_dir(root, "the ULIP ShapeNet-55 directory (shapenet_pc/, rendered_images/, taxonomy)")
        self.root, self.split, self.augment, self.image_size = root, split, augment, image_size
        # split list
        if split_file is None:
            cands = [
                root / "ShapeNet-55" / f"{split}.txt",
                root / f"ShapeNet-55_{split}.txt",
                root / f"{split}.txt",
            ]
            split_file = next((c for c in cands if c.is_file()), None)
            if split_file is None:
                raise FileNotFoundError(
                    f"{cands[0]}: ShapeNet-55 split list not found (also tried {cands[1].name}, {cands[2].name})"
                )
        split_file = _require_file(split_file, "lines '<synset>-<model>.npy'")
        # taxonomy
        if taxonomy_file is None:
            cands = [
                root / "taxonomy.json",
                root / "shapenet_synset_dict.json",
                root / "ShapeNet-55" / "taxonomy.json",
            ]
            taxonomy_file = next((c for c in cands if c.is_file()), None)
            if taxonomy_file is None:
                raise FileNotFoundError(f"{cands[0]}: ShapeNet taxonomy not found (or {cands[1].name})")
        tax = load_shapenet_taxonomy(taxonomy_file)
        self.synsets = sorted(tax)
        self.synonyms = [[humanize(s) for s in tax[k].split(",") if s.strip()] for k in self.synsets]
        self.class_names = [syn[0] for syn in self.synonyms]
        syn_index = {s: i for i, s in enumerate(self.synsets)}
        self.pc_dir = (
            Path(pc_dir) if pc_dir else (root / "shapenet_pc" if (root / "shapenet_pc").is_dir() else root)
        )
        _require_dir(self.pc_dir, "ShapeNet-55 point files <synset>-<model>.npy")
        self.with_images = with_images
        self.image_dir = Path(image_dir) if image_dir else root / "rendered_images"
        views: dict[str, list[Path]] = {}
        if with_images:
            _require_dir(self.image_dir, "rendered views <synset>-<model>_r_<deg>.png")
            pat = re.compile(r"^(\d+-[0-9A-Za-z]+)_r_(\d+)")
            for f in sorted(self.image_dir.rglob("*_r_*.png")):
                m = pat.match(f.name)
                if m:
                    views.setdefault(m.group(1), []).append((int(m.group(2)), f))
            views = {k: [f for _, f in sorted(v)] for k, v in views.items()}
        self.items: list[tuple[Path, int, list[Path]]] = []
        skipped = 0
        for line in _read_list_file(split_file):
            sid = line[:-4] if line.endswith(".npy") else line
            synset = sid.split("-", 1)[0]
            if synset not in syn_index:
                raise _bad(split_file, f"synset {synset!r} of {line!r} not in the taxonomy")
            f = self.pc_dir / f"{sid}.npy"
            v = views.get(sid, [])
            problem = None
            if not f.is_file():
                problem = FileNotFoundError(f"{f}: point file listed in {split_file.name} not found")
            elif with_images and not v:
                problem = FileNotFoundError(
                    f"{self.image_dir}: no rendered view {sid}_r_<deg>*.png for {sid}"
                )
            if problem is not None:
                if not skip_bad:
                    raise problem
                skipped += 1
                continue
            self.items.append((f, syn_index[synset], v))
        self._pre_skipped = skipped
        self._warn_skipped()

    def __len__(self) -> int:
        return len(self.items)

    def _load(self, i: int) -> dict[str, Any]:
        f, label, views = self.items[i]
        pts = read_npy_points(f)
        syn = self.synonyms[label]
        if self.augment:
            name = syn[int(torch.randint(len(syn), (1,), generator=self.generator))]
        else:
            name = syn[0]
        out: dict[str, Any] = {"points": pts, "label": label, "name": name}
        if self.with_images:
            k = int(torch.randint(len(views), (1,), generator=self.generator)) if self.augment else 0
            out["image"] = load_image(views[k], self.image_size)
        return out


def _load_shape_record(path: Path) -> dict[str, Any]:
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                d = {k: z[k] for k in z.files}
        else:
            obj = np.load(path, allow_pickle=True)
            d = obj.item() if obj.dtype == object and obj.shape == () else {"xyz": obj}
    except (ValueError, OSError, EOFError) as e:
        raise _bad(path, f"unreadable shape record ({e})") from e
    if not isinstance(d, dict) or "xyz" not in d:
        raise _bad(path, "expected a dict with at least 'xyz'")
    xyz = np.asarray(d["xyz"], dtype=np.float32)
    if xyz.ndim != 2 or xyz.shape[1] != 3:
        raise _bad(path, f"'xyz' must be (M, 3), got {xyz.shape}")
    d["xyz"] = xyz
    if d.get("rgb") is not None:
        rgb = np.asarray(d["rgb"], dtype=np.float32)
        if rgb.shape != xyz.shape:
            raise _bad(path, f"'rgb' must match xyz {xyz.shape}, got {rgb.shape}")
        d["rgb"] = rgb / 255.0 if rgb.max(initial=0) > 1.0 else rgb
    return d


class OpenShapeTripletDataset(PointCloudDataset):
    """OpenShape-style triplets with precomputed CLIP features.

    Layout::

        <root>/<split>.txt          one uid per line (may contain sub folders, e.g. "objaverse/000-001/abc");
                                    if absent and split == "all": every *.npy / *.npz under <root>
        <root>/<uid>.npy            np.save(dict(...)) (loaded with allow_pickle) or <root>/<uid>.npz with keys:
            xyz         float [M, 3]                     (required)
            rgb         float [M, 3] in [0, 1] or 0-255  (optional; 0.4 when absent)
            image_feat  float [D] or [V, D]              (required; one row per rendered view)
            text_feat   float [D] or [K, D]              (required; one row per caption)
            text        str or list[str] of K captions   (optional; else a template with `name`)
            name        str class / object name          (optional)
            label       int                              (optional; -1 when absent)
        <root>/class_names.txt      (optional) names for `label`

    In training (``augment=True``) a random view row of ``image_feat`` and a random caption row of
    ``text_feat`` (with the matching ``text``) are used; otherwise row 0. All feature rows must have the
    same ``D`` within a dataset (checked per sample against the first one loaded).
    """

    def __init__(
        self,
        *,
        root: str | Path,
        split: str = "train",
        num_points: int | None = 10000,
        sampling: str = "random",
        augment: bool = True,
        transform: Callable[..., Tensor] | None = None,
        caption_templates: Sequence[str] | None = None,
        skip_bad: bool = False,
    ) -> None:
        transform = _pick_transform(transform, num_points, sampling, augment)
        super().__init__(
            transform=transform,
            caption_templates=caption_templates,
            random_caption=augment,
            skip_bad=skip_bad,
        )
        root = _require_dir(
            root, "an OpenShape-style triplet directory (<uid>.npy / <uid>.npz + <split>.txt)"
        )
        self.root, self.split, self.augment = root, split, augment
        list_file = root / f"{split}.txt"
        if list_file.is_file():
            uids = _read_list_file(list_file)
        elif split == "all":
            uids = sorted(str(p.relative_to(root).with_suffix("")) for p in root.rglob("*.np[yz]"))
        else:
            raise FileNotFoundError(
                f"{list_file}: split list not found (one uid per line; or use split='all')"
            )
        self.items: list[Path] = []
        for uid in uids:
            f = next(
                (root / f"{uid}{ext}" for ext in (".npy", ".npz") if (root / f"{uid}{ext}").is_file()), None
            )
            if f is None:
                raise FileNotFoundError(
                    f"{root / uid}.npy: shape record listed in {list_file.name} not found"
                )
            self.items.append(f)
        names = root / "class_names.txt"
        self.class_names = [humanize(n) for n in _read_list_file(names)] if names.is_file() else []
        self.feat_dim: int | None = None

    def __len__(self) -> int:
        return len(self.items)

    def _pick_row(self, arr: Any, what: str, f: Path) -> tuple[np.ndarray, int]:
        a = np.asarray(arr, dtype=np.float32)
        if a.ndim == 1:
            a = a[None]
        if a.ndim != 2 or a.shape[0] == 0:
            raise _bad(f, f"{what!r} must be (D,) or (K, D), got {np.shape(arr)}")
        _check_finite(a, f, what)
        if self.feat_dim is None:
            self.feat_dim = a.shape[1]
        elif a.shape[1] != self.feat_dim:
            raise _bad(f, f"{what!r} has dim {a.shape[1]}, expected {self.feat_dim} like the other shapes")
        k = int(torch.randint(a.shape[0], (1,), generator=self.generator)) if self.augment else 0
        return a[k], k

    def _load(self, i: int) -> dict[str, Any]:
        f = self.items[i]
        d = _load_shape_record(f)
        _check_finite(d["xyz"], f, "xyz")
        for k in ("image_feat", "text_feat"):
            if d.get(k) is None:
                raise _bad(f, f"missing {k!r}")
        img, _ = self._pick_row(d["image_feat"], "image_feat", f)
        txt, k = self._pick_row(d["text_feat"], "text_feat", f)
        text = d.get("text")
        if isinstance(text, np.ndarray):
            text = text.tolist()
        if isinstance(text, list | tuple):
            text = str(text[k]) if k < len(text) else str(text[0])
        pts = d["xyz"] if d.get("rgb") is None else np.concatenate([d["xyz"], d["rgb"]], 1)
        label = int(d["label"]) if d.get("label") is not None else -1
        name = (
            str(d["name"])
            if d.get("name") is not None
            else (self.class_names[label] if 0 <= label < len(self.class_names) else "object")
        )
        return {
            "points": pts,
            "label": label,
            "name": name,
            "text": text,
            "image_feat": img,
            "text_feat": txt,
        }


# ----------------------------------------------------------------------------------------------------
# DataModules
# ----------------------------------------------------------------------------------------------------
class PointCloudDataModuleBase(L.LightningDataModule):
    """Shared loader plumbing for the point-cloud DataModules (batch convention in the module docstring).

    Subclasses fill ``self._train`` (a dataset or None) and ``self._val`` (list of ``(name, dataset)``) in
    ``setup``; ``val_sets`` mirrors ``_val``; ``test_dataloader`` serves the validation sets.
    """

    def __init__(
        self,
        *,
        batch_size: int = 32,
        num_workers: int = 0,
        pin_memory: bool = False,
        prompt_templates: Sequence[str] | None = None,
        templates_file: str | Path | None = None,
        templates_key: str | None = None,
    ) -> None:
        super().__init__()
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self._prompt_templates = list(prompt_templates) if prompt_templates else None
        self.templates_file = templates_file
        self.templates_key = templates_key
        self._train: Dataset | None = None
        self._val: list[tuple[str, Dataset]] = []

    @property
    def prompt_templates(self) -> list[str]:
        if self._prompt_templates is None:
            if self.templates_file is not None:
                self._prompt_templates = load_templates(self.templates_file, self.templates_key)
            else:
                self._prompt_templates = list(PROMPT_TEMPLATES)
        return self._prompt_templates

    @property
    def val_sets(self) -> list[dict[str, Any]]:
        if not self._val:
            self.setup("validate")
        return [{"name": n, "class_names": list(ds.class_names)} for n, ds in self._val]

    def eval_sets(self) -> list[EvalSet]:
        """The evaluation sets, aligned with ``val_dataloader()`` (name, class names, prompt templates)."""
        if not self._val:
            self.setup("validate")
        return [EvalSet(n, ds.class_names, self.prompt_templates) for n, ds in self._val]

    @property
    def class_names(self) -> list[str]:
        sets = self.val_sets
        return sets[0]["class_names"] if sets else []

    def _loader(self, ds: Dataset, *, shuffle: bool, drop_last: bool = False) -> DataLoader:
        return DataLoader(
            ds,
            batch_size=self.batch_size,
            shuffle=shuffle,
            drop_last=drop_last and len(ds) >= self.batch_size,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
            collate_fn=collate_pointcloud,
        )

    def train_dataloader(self) -> DataLoader:
        if self._train is None:
            self.setup("fit")
        if self._train is None:
            raise RuntimeError(f"{type(self).__name__} has no training split configured")
        return self._loader(self._train, shuffle=True, drop_last=True)

    def val_dataloader(self) -> list[DataLoader]:
        if not self._val:
            self.setup("validate")
        return [self._loader(ds, shuffle=False) for _, ds in self._val]

    def test_dataloader(self) -> list[DataLoader]:
        return self.val_dataloader()

    def predict_dataloader(self) -> list[DataLoader]:
        return self.val_dataloader()


def _zero_shot_sets(
    *,
    modelnet40: str | Path | None,
    modelnet40_format: str,
    scanobjectnn: str | Path | None,
    scanobjectnn_variant: str,
    num_points: int,
    templates: Sequence[str],
    skip_bad: bool,
) -> list[tuple[str, Dataset]]:
    out: list[tuple[str, Dataset]] = []
    if modelnet40 is not None:
        out.append((
            "modelnet40",
            ModelNet40Dataset(root=modelnet40, split="test", format=modelnet40_format, num_points=num_points,
                              caption_templates=templates, skip_bad=skip_bad),
        ))  # fmt: skip
    if scanobjectnn is not None:
        out.append((
            "scanobjectnn",
            ScanObjectNNDataset(root=scanobjectnn, split="test", variant=scanobjectnn_variant, num_points=num_points,
                                caption_templates=templates, skip_bad=skip_bad),
        ))  # fmt: skip
    return out


class ModelNet40DataModule(PointCloudDataModuleBase):
    """ModelNet40 zero-shot evaluation (val = test = the test split) and optional fine-tuning
    (``with_train=True``: the train split with SVL augmentation).

    ``labels_file`` (ULIP ``labels.json``, key ``labels_key``) overrides the class names taken from the
    shape-names file; ``templates_file`` (ULIP ``templates.json``, key ``templates_key``) overrides
    :data:`PROMPT_TEMPLATES`. ``class_names`` / ``val_sets`` read the names file lazily, so building the
    module does not need the data. ``cache_dir`` (e.g. ``~/.cache/spikelight/modelnet40``) stores each parsed
    text file as ``.npy`` on first read, so later epochs and runs are not parse-bound (txt format only).
    """

    def __init__(
        self,
        *,
        data_dir: str | Path,
        format: str = "txt",
        num_points: int = 1024,
        sampling: str = "fps",
        with_train: bool = False,
        augment: bool = True,
        preload: bool = False,
        skip_bad: bool = False,
        cache_dir: str | None = None,
        batch_size: int = 32,
        num_workers: int = 0,
        pin_memory: bool = False,
        labels_file: str | Path | None = None,
        labels_key: str | None = "modelnet40",
        prompt_templates: Sequence[str] | None = None,
        templates_file: str | Path | None = None,
        templates_key: str | None = "modelnet40_64",
    ) -> None:
        super().__init__(
            batch_size=batch_size, num_workers=num_workers, pin_memory=pin_memory,
            prompt_templates=prompt_templates, templates_file=templates_file, templates_key=templates_key,
        )  # fmt: skip
        self.save_hyperparameters(logger=False)
        self.data_dir, self.format, self.num_points, self.sampling = data_dir, format, num_points, sampling
        self.with_train, self.augment, self.preload, self.skip_bad = with_train, augment, preload, skip_bad
        self.labels_file, self.labels_key = labels_file, labels_key
        self.cache_dir = cache_dir

    def _apply_labels(self, ds: ModelNet40Dataset) -> None:
        if self.labels_file is not None:
            names = load_labels(self.labels_file, self.labels_key)
            if len(names) != len(ds.class_names):
                raise ValueError(
                    f"{self.labels_file}: {len(names)} labels but the dataset has {len(ds.class_names)} classes"
                )
            ds.class_names = names

    def setup(self, stage: str | None = None) -> None:
        if not self._val:
            ds = ModelNet40Dataset(
                root=self.data_dir, split="test", format=self.format, num_points=self.num_points,
                sampling=self.sampling, caption_templates=self.prompt_templates, preload=self.preload,
                skip_bad=self.skip_bad, cache_dir=self.cache_dir,
            )  # fmt: skip
            self._apply_labels(ds)
            self._val = [("modelnet40", ds)]
        if self.with_train and self._train is None and stage in (None, "fit"):
            ds = ModelNet40Dataset(
                root=self.data_dir, split="train", format=self.format, num_points=self.num_points,
                sampling="random" if self.augment else self.sampling, augment=self.augment,
                caption_templates=self.prompt_templates, preload=self.preload, skip_bad=self.skip_bad,
                cache_dir=self.cache_dir,
            )  # fmt: skip
            self._apply_labels(ds)
            self._train = ds

    def train_dataloader(self) -> DataLoader:
        if not self.with_train:
            raise RuntimeError(
                "ModelNet40DataModule(with_train=False) is evaluation-only; set with_train=True to fine-tune"
            )
        return super().train_dataloader()


class ScanObjectNNDataModule(PointCloudDataModuleBase):
    """ScanObjectNN (15 classes) zero-shot evaluation (val = test split) and optional fine-tuning."""

    def __init__(
        self,
        *,
        data_dir: str | Path,
        variant: str = "hardest",
        train_file: str | Path | None = None,
        test_file: str | Path | None = None,
        num_points: int = 1024,
        sampling: str = "fps",
        with_train: bool = False,
        augment: bool = True,
        skip_bad: bool = False,
        batch_size: int = 32,
        num_workers: int = 0,
        pin_memory: bool = False,
        prompt_templates: Sequence[str] | None = None,
        templates_file: str | Path | None = None,
        templates_key: str | None = None,
    ) -> None:
        super().__init__(
            batch_size=batch_size, num_workers=num_workers, pin_memory=pin_memory,
            prompt_templates=prompt_templates, templates_file=templates_file, templates_key=templates_key,
        )  # fmt: skip
        self.save_hyperparameters(logger=False)
        self.data_dir, self.variant, self.train_file, self.test_file = (
            data_dir,
            variant,
            train_file,
            test_file,
        )
        self.num_points, self.sampling, self.with_train, self.augment = (
            num_points,
            sampling,
            with_train,
            augment,
        )
        self.skip_bad = skip_bad

    def setup(self, stage: str | None = None) -> None:
        if not self._val:
            ds = ScanObjectNNDataset(
                root=self.data_dir, split="test", variant=self.variant, file=self.test_file,
                num_points=self.num_points, sampling=self.sampling, caption_templates=self.prompt_templates,
                skip_bad=self.skip_bad,
            )  # fmt: skip
            self._val = [("scanobjectnn", ds)]
        if self.with_train and self._train is None and stage in (None, "fit"):
            self._train = ScanObjectNNDataset(
                root=self.data_dir, split="train", variant=self.variant, file=self.train_file,
                num_points=self.num_points, sampling="random" if self.augment else self.sampling,
                augment=self.augment, caption_templates=self.prompt_templates, skip_bad=self.skip_bad,
            )  # fmt: skip

    @property
    def class_names(self) -> list[str]:  # known without reading data
        return list(SCANOBJECTNN_CLASSES)

    def train_dataloader(self) -> DataLoader:
        if not self.with_train:
            raise RuntimeError(
                "ScanObjectNNDataModule(with_train=False) is evaluation-only; set with_train=True to fine-tune"
            )
        return super().train_dataloader()


class ShapeNet55TripletDataModule(PointCloudDataModuleBase):
    """ULIP ShapeNet-55 pretraining triplets (``points``, ``image``, ``text``, ``label``).

    Validation: zero-shot sets from other datasets' roots (``zero_shot_modelnet40``,
    ``zero_shot_scanobjectnn``) in that order, then (``val_split``, e.g. ``"test"``) ShapeNet-55's own
    split as a 55-way zero-shot set without images. ``val_sets`` lists them in ``val_dataloader()`` order.
    """

    def __init__(
        self,
        *,
        data_dir: str | Path,
        train_split: str = "train",
        val_split: str | None = None,
        taxonomy_file: str | Path | None = None,
        image_dir: str | Path | None = None,
        image_size: int = 224,
        num_points: int = 8192,
        eval_num_points: int | None = None,
        augment: bool = True,
        zero_shot_modelnet40: str | Path | None = None,
        zero_shot_modelnet40_format: str = "txt",
        zero_shot_scanobjectnn: str | Path | None = None,
        zero_shot_scanobjectnn_variant: str = "hardest",
        skip_bad: bool = False,
        batch_size: int = 32,
        num_workers: int = 0,
        pin_memory: bool = False,
        prompt_templates: Sequence[str] | None = None,
        templates_file: str | Path | None = None,
        templates_key: str | None = None,
        caption_templates: Sequence[str] | None = None,
    ) -> None:
        super().__init__(
            batch_size=batch_size, num_workers=num_workers, pin_memory=pin_memory,
            prompt_templates=prompt_templates, templates_file=templates_file, templates_key=templates_key,
        )  # fmt: skip
        self.save_hyperparameters(logger=False)
        self.hp = dict(self.hparams)

    def setup(self, stage: str | None = None) -> None:
        h = self.hp
        npts = h["eval_num_points"] or h["num_points"]
        if self._train is None and stage in (None, "fit"):
            self._train = ShapeNet55TripletDataset(
                root=h["data_dir"], split=h["train_split"], taxonomy_file=h["taxonomy_file"],
                image_dir=h["image_dir"], image_size=h["image_size"], num_points=h["num_points"],
                augment=h["augment"], caption_templates=h["caption_templates"] or self.prompt_templates,
                skip_bad=h["skip_bad"],
            )  # fmt: skip
        if not self._val:
            sets = _zero_shot_sets(
                modelnet40=h["zero_shot_modelnet40"], modelnet40_format=h["zero_shot_modelnet40_format"],
                scanobjectnn=h["zero_shot_scanobjectnn"], scanobjectnn_variant=h["zero_shot_scanobjectnn_variant"],
                num_points=npts, templates=self.prompt_templates, skip_bad=h["skip_bad"],
            )  # fmt: skip
            if h["val_split"]:
                sets.append((
                    "shapenet55",
                    ShapeNet55TripletDataset(
                        root=h["data_dir"], split=h["val_split"], taxonomy_file=h["taxonomy_file"], with_images=False,
                        num_points=npts, sampling="fps", augment=False, caption_templates=self.prompt_templates,
                        skip_bad=h["skip_bad"],
                    ),
                ))  # fmt: skip
            self._val = sets


class OpenShapeTripletDataModule(PointCloudDataModuleBase):
    """OpenShape-style triplets with precomputed CLIP features (``points``, ``text``, ``label``,
    ``image_feat``, ``text_feat``); layout in :class:`OpenShapeTripletDataset`. Validation: zero-shot sets
    from other roots (``zero_shot_modelnet40``, ``zero_shot_scanobjectnn``)."""

    def __init__(
        self,
        *,
        data_dir: str | Path,
        train_split: str = "train",
        num_points: int = 10000,
        eval_num_points: int | None = None,
        augment: bool = True,
        zero_shot_modelnet40: str | Path | None = None,
        zero_shot_modelnet40_format: str = "txt",
        zero_shot_scanobjectnn: str | Path | None = None,
        zero_shot_scanobjectnn_variant: str = "hardest",
        skip_bad: bool = False,
        batch_size: int = 32,
        num_workers: int = 0,
        pin_memory: bool = False,
        prompt_templates: Sequence[str] | None = None,
        templates_file: str | Path | None = None,
        templates_key: str | None = None,
    ) -> None:
        super().__init__(
            batch_size=batch_size, num_workers=num_workers, pin_memory=pin_memory,
            prompt_templates=prompt_templates, templates_file=templates_file, templates_key=templates_key,
        )  # fmt: skip
        self.save_hyperparameters(logger=False)
        self.hp = dict(self.hparams)

    def setup(self, stage: str | None = None) -> None:
        h = self.hp
        if self._train is None and stage in (None, "fit"):
            self._train = OpenShapeTripletDataset(
                root=h["data_dir"], split=h["train_split"], num_points=h["num_points"], augment=h["augment"],
                caption_templates=self.prompt_templates, skip_bad=h["skip_bad"],
            )  # fmt: skip
        if not self._val:
            self._val = _zero_shot_sets(
                modelnet40=h["zero_shot_modelnet40"], modelnet40_format=h["zero_shot_modelnet40_format"],
                scanobjectnn=h["zero_shot_scanobjectnn"], scanobjectnn_variant=h["zero_shot_scanobjectnn_variant"],
                num_points=h["eval_num_points"] or h["num_points"], templates=self.prompt_templates,
                skip_bad=h["skip_bad"],
            )  # fmt: skip
