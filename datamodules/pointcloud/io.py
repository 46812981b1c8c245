"""Point-cloud readers: every reader raises :class:`~spikelight.datamodules.base.DataError` (a ``ValueError``,
``"<file>: <problem>"`` on one line, also through DataLoader workers) on corrupt input and
``FileNotFoundError`` naming the path when a file is missing.

* ModelNet40 ``normal_resampled`` text files (``x,y,z,nx,ny,nz`` per line), with an optional ``.npy`` cache;
* h5 point-cloud files (ModelNet40 ``ply_data_*.h5``, ScanObjectNN): ``data (N, P, 3)``, ``label (N,)``;
* ``.npy`` point arrays (ULIP ShapeNet-55) and OpenShape shape records (``.npz``, never unpickled);
* PLY through ``plyfile`` and OFF meshes through ``trimesh`` (both maintained readers: same vertices and
  triangles as the former hand parsers on the test and shared files; plyfile is 1.7x slower on a binary
  10k-point PLY (0.9 vs 0.5 ms) and 5x on an ASCII one (300 vs 60 ms), trimesh reads the 1,900-vertex
  ``ballA.off`` faster (31 vs 50 ms)); area-weighted surface sampling is ``trimesh.sample.sample_surface``;
* images (PNG / JPEG) for rendered views.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from spikelight.datamodules.base import DataError
from spikelight.datamodules.pointcloud.transforms import RGB_DEFAULT


def bad(path: Path | str, problem: str) -> DataError:
    return DataError(path, problem)


def check_finite(arr: np.ndarray, path: Path | str, what: str = "values") -> None:
    if not np.isfinite(arr).all():
        n = int((~np.isfinite(arr)).sum())
        raise bad(path, f"{n} non-finite (NaN/inf) {what}")


def require_dir(path: Path | str, expected: str) -> Path:
    p = Path(path).expanduser()
    if not p.is_dir():
        raise FileNotFoundError(f"{p}: directory not found (expected {expected})")
    return p


def require_file(path: Path | str, expected: str) -> Path:
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"{p}: file not found (expected {expected})")
    return p


def read_modelnet_txt(path: str | Path) -> np.ndarray:
    """A ModelNet40 ``normal_resampled`` text file -> float32 ``[M, C]`` (C = 6: xyz + normals).

    Comma- or whitespace-separated; raises ``ValueError`` naming the file when a line does not parse, the
    rows are ragged, there are fewer than 3 columns or any value is NaN/inf.
    """
    p = Path(path)
    try:
        with open(p) as f:
            first = next((line for line in f if line.strip()), "")
    except UnicodeDecodeError as e:
        raise bad(p, "not a text file") from e
    if not first:
        raise bad(p, "empty file (expected lines of comma-separated x,y,z,nx,ny,nz)")
    try:
        arr = np.loadtxt(p, delimiter="," if "," in first else None, dtype=np.float32, ndmin=2, comments="#")
    except ValueError as e:
        raise bad(p, f"cannot parse as numeric columns ({e})") from e
    if arr.shape[1] < 3:
        raise bad(p, f"expected at least 3 columns (x,y,z), found {arr.shape[1]}")
    check_finite(arr, p)
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
                raise bad(p, f"missing dataset {data_key!r} or {label_key!r} (has {sorted(f.keys())})")
            data = np.asarray(f[data_key][:], dtype=np.float32)
            label = np.asarray(f[label_key][:])
    except DataError:
        raise
    except (OSError, KeyError, RuntimeError, ValueError) as e:
        raise bad(p, f"unreadable or truncated h5 file ({e})") from e
    if data.ndim != 3 or data.shape[-1] < 3:
        raise bad(p, f"{data_key!r} must be (N, P, >=3), got {data.shape}")
    if label.ndim == 2 and label.shape[1] == 1:
        label = label[:, 0]
    if label.ndim != 1 or label.shape[0] != data.shape[0]:
        raise bad(p, f"{label_key!r} must be (N,) or (N, 1) with N={data.shape[0]}, got {label.shape}")
    return data, label.astype(np.int64)


_RGB_NAMES = (("red", "green", "blue"), ("r", "g", "b"), ("diffuse_red", "diffuse_green", "diffuse_blue"))


def _fan_triangulate(polygons: Any, nv: int, p: Path) -> np.ndarray:
    """Polygons (sequences of vertex indices) -> int64 triangles ``[F, 3]`` (fan from the first vertex)."""
    tris = []
    for f in polygons:
        f = np.asarray(f, dtype=np.int64)
        if len(f) < 3:
            raise bad(p, f"face with {len(f)} < 3 vertices: {f.tolist()}")
        tris.append(np.stack([np.full(len(f) - 2, f[0]), f[1:-1], f[2:]], 1))
    out = np.concatenate(tris, 0) if tris else np.zeros((0, 3), np.int64)
    if out.size and (out.min() < 0 or out.max() >= nv):
        raise bad(p, f"face index out of range [0, {nv})")
    return out


def read_ply(path: str | Path) -> dict[str, np.ndarray | None]:
    """Read a PLY point cloud or mesh (ascii / binary little / big endian) with ``plyfile``.

    Returns ``{"xyz": float32 [M, 3], "rgb": float32 [M, 3] in [0, 1] or None, "faces": int64 [F, 3]
    (polygons fan-triangulated) or None}``. Colour comes from ``red/green/blue`` (integers -> /255, floats
    kept). Truncated bodies, missing x/y/z and non-finite coordinates raise ``ValueError`` naming the file.
    """
    from plyfile import PlyData

    p = Path(path)
    try:
        ply = PlyData.read(str(p))
    except FileNotFoundError:
        raise
    except Exception as e:  # noqa: BLE001 - plyfile raises several types for malformed / truncated files
        raise bad(p, f"unreadable PLY file ({type(e).__name__}: {e})") from e
    if "vertex" not in ply:
        raise bad(p, "no 'vertex' element with x, y, z properties")
    v = ply["vertex"].data
    names = set(v.dtype.names or ())
    if not {"x", "y", "z"} <= names:
        raise bad(p, f"vertex element lacks x/y/z (has {sorted(names)})")
    xyz = np.stack([v["x"], v["y"], v["z"]], 1).astype(np.float32)
    check_finite(xyz, p, "coordinates")
    rgb = None
    cols = next((c for c in _RGB_NAMES if set(c) <= names), None)
    if cols is not None:
        rgb = np.stack([v[c] for c in cols], 1).astype(np.float64)
        if v.dtype[cols[0]].kind in "iu" or rgb.max(initial=0) > 1.0:
            rgb = rgb / 255.0
        rgb = np.clip(rgb, 0.0, 1.0).astype(np.float32)
        check_finite(rgb, p, "colours")
    faces = None
    if "face" in ply and ply["face"].count:
        prop = next(iter(ply["face"].data.dtype.names))
        faces = _fan_triangulate(ply["face"].data[prop], len(xyz), p)
    return {"xyz": xyz, "rgb": rgb, "faces": faces}


def read_off(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read an OFF mesh with ``trimesh`` -> ``vertices`` float32 ``[V, 3]``, ``faces`` int64 ``[F, 3]``
    (polygons triangulated). Handles ``#`` comments, blank lines, leading whitespace, the merged header
    ``OFF8 6 12`` (ModelNet40's ``OFF490 518 0`` quirk) and extra per-vertex / per-face values (colours).
    """
    import trimesh

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: OFF file not found")
    try:
        mesh = trimesh.load(p, file_type="off", process=False, force="mesh")
    except Exception as e:  # noqa: BLE001 - trimesh raises several types for malformed / truncated files
        raise bad(p, f"unreadable OFF file ({type(e).__name__}: {e})") from e
    verts = np.asarray(mesh.vertices, dtype=np.float32)
    check_finite(verts, p, "vertex coordinates")
    return verts, np.asarray(mesh.faces, dtype=np.int64).reshape(-1, 3)


def sample_mesh_surface(
    vertices: np.ndarray,
    faces: np.ndarray,
    n: int,
    *,
    rng: np.random.Generator | int | None = None,
    return_face_index: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Area-weighted uniform sampling of ``n`` points on a triangle mesh (``trimesh.sample.sample_surface``).

    ``vertices`` ``[V, 3]``, ``faces`` ``[F, 3]`` -> ``points`` float32 ``[n, 3]`` (and the int64 face index
    ``[n]`` of each point when ``return_face_index``). ``rng``: a seed or a numpy Generator.
    """
    import trimesh

    mesh = trimesh.Trimesh(np.asarray(vertices, np.float64), np.asarray(faces, np.int64), process=False)
    total = float(mesh.area_faces.sum()) if len(mesh.faces) else 0.0
    if not np.isfinite(total) or total <= 0:
        raise ValueError("sample_mesh_surface: mesh has zero total area")
    pts, fi = trimesh.sample.sample_surface(mesh, n, seed=rng)
    pts = np.asarray(pts, dtype=np.float32)
    return (pts, np.asarray(fi, np.int64)) if return_face_index else pts


def read_npy_points(path: str | Path) -> np.ndarray:
    """A ``.npy`` array ``[M, 3]`` / ``[M, >=6]`` (ULIP ShapeNet-55 ``8192 x 3``) -> float32; raises on a
    wrong shape, a pickled object, a truncated file or non-finite values."""
    p = Path(path)
    try:
        arr = np.load(p, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise bad(p, f"unreadable npy file ({e})") from e
    if arr.ndim != 2 or arr.shape[1] < 3:
        raise bad(p, f"expected a point array of shape (M, 3) or (M, 6), got {arr.shape}")
    arr = arr.astype(np.float32)
    check_finite(arr, p)
    return arr


def read_shape_record(path: str | Path) -> dict[str, Any]:
    """An OpenShape-style shape record, read **without unpickling**: ``<uid>.npz`` with named arrays
    (``xyz`` required; ``rgb``, ``image_feat``, ``text_feat``, ``text``, ``name``, ``label`` optional) or a plain
    ``<uid>.npy`` ``xyz`` array. A pickled file (OpenShape's ``np.save(dict)`` records) is refused with a
    ``ValueError`` naming the file; convert such records once, in a trusted environment::

        d = np.load("uid.npy", allow_pickle=True).item()   # only for files you trust
        np.savez("uid.npz", **{k: np.asarray(v) for k, v in d.items()})
    """
    p = Path(path)
    try:
        if p.suffix == ".npz":
            with np.load(p, allow_pickle=False) as z:
                d = {k: z[k] for k in z.files}
        else:
            d = {"xyz": np.load(p, allow_pickle=False)}
    except ValueError as e:
        if "pickle" in str(e).lower():
            raise bad(p, "pickled shape record refused (loading it could run code); store the record as an "
                         ".npz of named arrays (see read_shape_record)") from e
        raise bad(p, f"unreadable shape record ({e})") from e
    except (OSError, EOFError) as e:
        raise bad(p, f"unreadable shape record ({e})") from e
    xyz = np.asarray(d["xyz"], dtype=np.float32) if "xyz" in d else None
    if xyz is None:
        raise bad(p, "expected a record with at least 'xyz'")
    if xyz.ndim != 2 or xyz.shape[1] != 3:
        raise bad(p, f"'xyz' must be (M, 3), got {xyz.shape}")
    d["xyz"] = xyz
    for k in ("text", "name", "label"):  # 0-d arrays from np.savez -> python scalars
        if isinstance(d.get(k), np.ndarray) and d[k].ndim == 0:
            d[k] = d[k].item()
    if d.get("rgb") is not None:
        rgb = np.asarray(d["rgb"], dtype=np.float32)
        if rgb.shape != xyz.shape:
            raise bad(p, f"'rgb' must match xyz {xyz.shape}, got {rgb.shape}")
        d["rgb"] = rgb / 255.0 if rgb.max(initial=0) > 1.0 else rgb
    return d


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
    try:
        xyz, rgb = _read_points(p, ext, mesh_points, rng)
    except DataError:
        raise
    except ValueError as e:  # e.g. a degenerate mesh (zero area): name the file
        raise bad(p, str(e)) from e
    if rgb is None:
        rgb = np.full_like(xyz, rgb_default)
    else:
        rgb = np.asarray(rgb, dtype=np.float32)
        if rgb.max(initial=0) > 1.0:
            rgb = rgb / 255.0
    return np.concatenate([xyz, rgb], 1).astype(np.float32)


def _read_points(p: Path, ext: str, mesh_points: int, rng: Any) -> tuple[np.ndarray, np.ndarray | None]:
    """``xyz`` ``[M, 3]`` and ``rgb`` (or None) of a point file, by extension (see :func:`load_point_cloud`)."""
    rgb = None
    if ext == ".txt":
        xyz = read_modelnet_txt(p)[:, :3]
    elif ext == ".npy":
        arr = read_npy_points(p)
        xyz, rgb = arr[:, :3], (arr[:, 3:6] if arr.shape[1] >= 6 else None)
    elif ext == ".npz":
        d = read_shape_record(p)
        xyz, rgb = d["xyz"], d.get("rgb")
    elif ext == ".ply":
        d = read_ply(p)
        if d["faces"] is not None and len(d["faces"]) > 0:
            xyz = sample_mesh_surface(d["xyz"], d["faces"], mesh_points, rng=rng)
        else:
            xyz, rgb = d["xyz"], d["rgb"]
    elif ext == ".off":
        xyz = sample_mesh_surface(*read_off(p), mesh_points, rng=rng)
    else:
        raise bad(p, f"unsupported point-cloud extension {ext!r} (txt, npy, npz, ply, off)")
    return xyz, rgb


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
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise bad(p, f"unreadable image ({type(e).__name__}: {e})") from e
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255.0)
