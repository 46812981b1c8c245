"""Procedural 3D triplets (point cloud + rendered view + caption): SVL's embedded, download-free default.

Every object is assembled (:mod:`.procedural`) from primitive triangle meshes (box, frustum / cylinder / cone, sphere patch,
torus arc, pyramid, prism) with random proportions, a random yaw and a random named colour per object
(some parts get a fixed material colour: wooden legs, black wheels, a brown trunk ...). From the mesh:

* ``points``: ``num_points`` surface samples, area-weighted, xyz normalised to the unit sphere, rgb = the
  albedo of the part the point lies on;
* ``image``: a real rendering of the same mesh from a random view (azimuth, elevation 10-40 degrees):
  dense area-weighted surface samples, orthographic projection fitted to the image, z-buffered splats,
  two-sided Lambert shading from the face normals, white background;
* ``text``: a caption from templates with the colour and category name ("a red chair",
  "a photo of an orange airplane" ...).

The y axis is up (as in ModelNet40 / ShapeNet). Generation is deterministic: sample ``k`` of category
``c`` in split ``s`` uses ``numpy.random.default_rng([seed, s, c, k])``. The three splits are generated once
(tqdm progress bar) and cached as ``.npz`` in ``cache_dir`` (default
``~/.cache/spikelight/synthetic3d/<hash of the generation parameters>``); later instances load the cache.

Splits: ``train`` (pretraining categories), ``val_objects`` (new objects of the pretraining categories)
and ``val_categories`` (held-out categories, never seen in training).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from spikelight.datamodules.base import DataError, EvalSet
from spikelight.datamodules.pointcloud.base import PointCloudDataModule
from spikelight.datamodules.pointcloud.procedural import (
    CATEGORIES,
    COLOUR_NAMES,
    COLOURS,
    make_object,
    render_points,
    sample_object,
)
from spikelight.datamodules.pointcloud.transforms import PointCloudTransform

__all__ = [
    "CATEGORIES",
    "COLOURS",
    "DEFAULT_HELDOUT",
    "CAPTION_TEMPLATES",
    "GENERATOR_VERSION",
    "make_object",
    "sample_object",
    "render_points",
    "generate_sample",
    "make_caption",
    "generate_split",
    "Synthetic3DDataset",
    "Synthetic3DDataModule",
]

GENERATOR_VERSION = 1

#: caption templates; fields: {c} colour, {n} name, {a_c} / {a_n} the article for colour / name
CAPTION_TEMPLATES: list[str] = [
    "{a_c} {c} {n}",
    "a photo of {a_c} {c} {n}",
    "a 3D model of {a_c} {c} {n}",
    "a rendering of {a_c} {c} {n}",
    "{a_n} {n} painted {c}",
    "a point cloud of {a_c} {c} {n}",
    "{a_c} {c} {n} on a white background",
    "a small {c} {n}",
    "the {n}, in {c}",
]

#: default held-out ("unseen") categories for the val_categories split
DEFAULT_HELDOUT: tuple[str, ...] = ("mug", "bench", "lamp", "sofa")


def _article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


def make_caption(colour: str, name: str, template: int | str = 0) -> str:
    """Caption for a ``colour`` ``name`` object from :data:`CAPTION_TEMPLATES` (index or a format string)."""
    t = CAPTION_TEMPLATES[template] if isinstance(template, int) else template
    return t.format(c=colour, n=name, a_c=_article(colour), a_n=_article(name))


def _normalise(xyz: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    centre = xyz.mean(0)
    r = float(np.linalg.norm(xyz - centre, axis=1).max())
    return (xyz - centre) / max(r, 1e-9), centre, max(r, 1e-9)


def generate_sample(
    category: str,
    rng: np.random.Generator,
    *,
    num_points: int,
    image_size: int,
    render_density: float = 2.0,
) -> dict[str, Any]:
    """One triplet: ``points`` float32 ``[num_points, 6]`` (unit sphere xyz + albedo rgb), ``image`` uint8
    ``[image_size, image_size, 3]``, ``colour`` name."""
    v, f, fc, cname = make_object(category, rng)
    n_render = int(render_density * image_size * image_size)
    xyz, nrm, alb = sample_object(v, f, fc, num_points + n_render, rng)
    xyz_n, centre, r = _normalise(xyz[:num_points])
    pts = np.concatenate([xyz_n, alb[:num_points]], 1).astype(np.float32)
    az, el = float(rng.uniform(0, 2 * math.pi)), float(rng.uniform(math.radians(10), math.radians(40)))
    img = render_points((xyz[num_points:] - centre) / r, nrm[num_points:], alb[num_points:],
                        size=image_size, azimuth=az, elevation=el)  # fmt: skip
    return {"points": pts, "image": img, "colour": cname}


def generate_split(
    categories: Sequence[str],
    per_class: int,
    *,
    split_id: int,
    seed: int,
    num_points: int,
    image_size: int,
    desc: str = "synthetic3d",
    progress: bool = True,
) -> dict[str, np.ndarray]:
    """Generate ``per_class`` objects of each category. Returns arrays ``points [S, P, 6]`` float32,
    ``images [S, H, W, 3]`` uint8, ``labels [S]`` (index into ``categories``), ``category [S]`` (index into
    :data:`CATEGORIES`), ``colour [S]`` (index into :data:`COLOURS`)."""
    from tqdm.auto import tqdm

    all_names = list(CATEGORIES)
    S = len(categories) * per_class
    points = np.empty((S, num_points, 6), np.float32)
    images = np.empty((S, image_size, image_size, 3), np.uint8)
    labels = np.empty(S, np.int64)
    cat = np.empty(S, np.int64)
    colour = np.empty(S, np.int64)
    jobs = [(li, name, k) for li, name in enumerate(categories) for k in range(per_class)]
    for s, (li, name, k) in enumerate(tqdm(jobs, desc=desc, disable=not progress, leave=False)):
        ci = all_names.index(name)
        rng = np.random.default_rng([seed, split_id, ci, k])
        out = generate_sample(name, rng, num_points=num_points, image_size=image_size)
        points[s], images[s] = out["points"], out["image"]
        labels[s], cat[s], colour[s] = li, ci, COLOUR_NAMES.index(out["colour"])
    return {"points": points, "images": images, "labels": labels, "category": cat, "colour": colour}


# ----------------------------------------------------------------------------------------------------
# dataset + DataModule
# ----------------------------------------------------------------------------------------------------
class Synthetic3DDataset(Dataset):
    """One cached split. Items follow the batch convention: ``points [N, 6]``, ``image [3, H, W]`` float in
    [0, 1], ``text`` (a random caption template when ``augment``, else template 0), ``label`` (index into
    ``class_names``)."""

    def __init__(
        self,
        arrays: dict[str, np.ndarray],
        class_names: Sequence[str],
        *,
        augment: bool = False,
        transform: Callable | None = None,
    ) -> None:
        self.points = arrays["points"]
        self.images = arrays["images"]
        self.labels = arrays["labels"]
        self.colour = arrays["colour"]
        self.class_names = list(class_names)
        self.augment = augment
        self.transform = transform or PointCloudTransform(num_points=None, normalize=True, augment=augment)
        self.generator: torch.Generator | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def caption(self, i: int, template: int = 0) -> str:
        return make_caption(
            COLOUR_NAMES[int(self.colour[i])], self.class_names[int(self.labels[i])], template
        )

    def __getitem__(self, i: int) -> dict[str, Any]:
        pts = self.transform(torch.from_numpy(self.points[i]), generator=self.generator)
        img = torch.from_numpy(self.images[i]).permute(2, 0, 1).float().div_(255.0)
        t = int(torch.randint(len(CAPTION_TEMPLATES), (1,), generator=self.generator)) if self.augment else 0
        return {
            "points": pts,
            "image": img,
            "text": self.caption(i, t),
            "label": torch.tensor(int(self.labels[i])),
        }


class Synthetic3DDataModule(PointCloudDataModule):
    """Embedded SVL default: procedural 3D triplets (no download).

    * ``train``: ``train_per_class`` objects of each pretraining category (all of ``categories`` except
      ``heldout_categories``), augmented;
    * ``val_objects``: ``val_per_class`` new objects of the pretraining categories (labels index
      ``train_class_names``);
    * ``val_categories``: ``val_per_class`` objects of the held-out categories (labels index
      ``heldout_class_names``; zero-shot among the held-out names).

    ``val_dataloader()`` returns ``[val_objects, val_categories]`` (``eval_sets()`` names them, in that order);
    ``test_dataloader()`` the same. ``class_names`` is the first set's list. Data are generated on first use
    (``prepare_data`` / ``setup``) and cached under ``cache_dir`` (default
    ``~/.cache/spikelight/synthetic3d/<hash>``).
    """

    def __init__(
        self,
        *,
        num_points: int = 1024,
        image_size: int = 64,
        train_per_class: int = 64,
        val_per_class: int = 16,
        heldout_categories: Sequence[str] = DEFAULT_HELDOUT,
        categories: Sequence[str] | None = None,
        seed: int = 0,
        cache_dir: str | Path | None = None,
        augment: bool = True,
        progress: bool = True,
        **kwargs: Any,
    ) -> None:
        """``**kwargs``: :class:`PointCloudDataModule` (batch size, workers, prompt templates)."""
        super().__init__(**kwargs)
        self.save_hyperparameters(logger=False)
        cats = list(categories) if categories is not None else list(CATEGORIES)
        unknown = [c for c in [*cats, *heldout_categories] if c not in CATEGORIES]
        if unknown:
            raise ValueError(f"unknown synthetic categories {unknown}; available: {list(CATEGORIES)}")
        missing = [c for c in heldout_categories if c not in cats]
        if missing:
            raise ValueError(f"held-out categories {missing} are not in categories")
        self.categories = cats
        self.heldout_class_names = [c for c in cats if c in set(heldout_categories)]
        self.train_class_names = [c for c in cats if c not in set(heldout_categories)]
        if not self.train_class_names:
            raise ValueError("every category is held out: nothing to train on")
        self.num_points, self.image_size = num_points, image_size
        self.train_per_class, self.val_per_class, self.seed = train_per_class, val_per_class, seed
        self.augment, self.progress = augment, progress
        self.params = {
            "version": GENERATOR_VERSION, "num_points": num_points, "image_size": image_size,
            "train_per_class": train_per_class, "val_per_class": val_per_class, "seed": seed,
            "train": self.train_class_names, "heldout": self.heldout_class_names,
        }  # fmt: skip
        digest = hashlib.sha1(json.dumps(self.params, sort_keys=True).encode()).hexdigest()[:16]
        base = (
            Path(cache_dir).expanduser()
            if cache_dir is not None
            else Path.home() / ".cache" / "spikelight" / "synthetic3d"
        )
        self.cache_path = base / digest
        self._arrays: dict[str, dict[str, np.ndarray]] | None = None

    # -- generation + cache
    _SPLITS = ("train", "val_objects", "val_categories")

    def _split_spec(self, name: str) -> tuple[list[str], int, int]:
        return {
            "train": (self.train_class_names, self.train_per_class, 0),
            "val_objects": (self.train_class_names, self.val_per_class, 1),
            "val_categories": (self.heldout_class_names, self.val_per_class, 2),
        }[name]

    def is_cached(self) -> bool:
        return all((self.cache_path / f"{s}.npz").is_file() for s in self._SPLITS)

    def prepare_data(self) -> None:
        """Generate and cache the three splits unless the cache exists (atomic: a temp dir is renamed)."""
        if self.is_cached():
            return
        self.cache_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=self.cache_path.parent))
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; the cache is an ordinary folder
        try:
            for s in self._SPLITS:
                cats, per_class, sid = self._split_spec(s)
                arrs = generate_split(
                    cats, per_class, split_id=sid, seed=self.seed, num_points=self.num_points,
                    image_size=self.image_size, desc=f"synthetic3d {s}", progress=self.progress,
                )  # fmt: skip
                np.savez(tmp / f"{s}.npz", **arrs)
            (tmp / "meta.json").write_text(
                json.dumps({**self.params, "categories": list(CATEGORIES)}, indent=1)
            )
            try:
                os.replace(tmp, self.cache_path)
            except OSError:  # another process won the race (target exists and is not empty)
                if not self.is_cached():
                    shutil.rmtree(self.cache_path, ignore_errors=True)
                    os.replace(tmp, self.cache_path)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

    def load_arrays(self) -> dict[str, dict[str, np.ndarray]]:
        if self._arrays is None:
            self.prepare_data()
            out = {}
            for s in self._SPLITS:
                f = self.cache_path / f"{s}.npz"
                try:
                    with np.load(f, allow_pickle=False) as z:
                        out[s] = {k: z[k] for k in z.files}
                except (OSError, ValueError, EOFError) as e:
                    raise DataError(f, f"corrupt synthetic3d cache ({e}); delete {self.cache_path}") from e
            self._arrays = out
        return self._arrays

    def setup(self, stage: str | None = None) -> None:
        arrs = self.load_arrays()
        if self.train_set is None:
            self.train_set = Synthetic3DDataset(arrs["train"], self.train_class_names, augment=self.augment)
        if self.val_set is None:
            self.val_set = {
                "val_objects": Synthetic3DDataset(arrs["val_objects"], self.train_class_names),
                "val_categories": Synthetic3DDataset(arrs["val_categories"], self.heldout_class_names),
            }

    def eval_sets(self) -> list[EvalSet]:  # known without generating the data
        t = self.prompt_templates
        return [EvalSet("val_objects", self.train_class_names, t), EvalSet("val_categories", self.heldout_class_names, t)]
