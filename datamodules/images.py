"""Image DataModules: ImageNet-1k (ImageFolder, timm recipe) and procedurally drawn synthetic shapes.

Batch convention (both modules)::

    {"image": float32 [B, 3, H, W]   normalised with the dataset mean / std (channels RGB),
     "label": int64   [B]}           class index in [0, num_classes)

Every DataModule here exposes ``num_classes`` and ``class_names`` (a list, index = label).

* :class:`ImageNetDataModule` reads the standard ImageFolder layout ``<data_dir>/train/<wnid>/*.JPEG``
  and ``<data_dir>/val/<wnid>/*.JPEG`` with the T-RevSNN / timm recipe transforms (RandAugment
  ``rand-m9-mstd0.5-inc1``, random erasing 0.25, bicubic; eval resize 232 + centre crop 224) and
  divides the recipe's *global* batch (4096) across devices.
* :class:`SyntheticImageDataModule` draws shapes and textures (circle, square, triangle, stripes ...)
  on the fly from the sample index: no files, deterministic by seed, learnable by a tiny CNN in
  seconds on CPU. It is the embedded default of the T-RevSNN experiments.
"""

from __future__ import annotations

import functools
import math
import os
import re
import warnings
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from torchvision.datasets import ImageFolder

__all__ = [
    "BadImageError",
    "BadImageWarning",
    "FixedClassImageFolder",
    "ImageFolderDataset",
    "ImageNetDataModule",
    "read_synsets",
    "read_label_list",
    "SYNTHETIC_CLASSES",
    "SYNTHETIC_MEAN",
    "SYNTHETIC_STD",
    "shape_mask",
    "render_synthetic_image",
    "SyntheticImageDataset",
    "SyntheticImageDataModule",
]

IMAGENET_DEFAULT_MEAN = (0.485, 0.456, 0.406)
IMAGENET_DEFAULT_STD = (0.229, 0.224, 0.225)
IMAGENET_LAYOUT = (
    "Expected the ImageFolder layout\n"
    "  <data_dir>/train/<wnid>/*.JPEG   e.g. train/n01440764/n01440764_10026.JPEG\n"
    "  <data_dir>/val/<wnid>/*.JPEG     e.g. val/n01440764/ILSVRC2012_val_00000293.JPEG\n"
    "(the official validation tarball is flat: sort its 50000 images into wnid folders first)."
)
_WNID_RE = re.compile(r"^n\d{8}$")
_IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


# ----------------------------------------------------------------------------------------------
# class index files
# ----------------------------------------------------------------------------------------------
def read_synsets(path: str | os.PathLike) -> list[tuple[str, Optional[str]]]:
    """Read a synset list: one WordNet id per line, in class-index order.

    Accepts timm's ``imagenet_synsets.txt`` (``n01440764``) and the Kaggle / ILSVRC
    ``LOC_synset_mapping.txt`` form (``n01440764 tench, Tinca tinca``). Blank lines are skipped.

    Returns:
        ``[(wnid, name_or_None), ...]``; index = class index. ``name`` is the text after the wnid.
    Raises:
        FileNotFoundError: the file does not exist. ValueError: a line does not start with a wnid
        (``n`` + 8 digits) or a wnid repeats; the message names the file and line.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"synsets file not found: '{path}' (one WordNet id such as n01440764 per line)")
    out: list[tuple[str, Optional[str]]] = []
    seen: dict[str, int] = {}
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            parts = line.split(maxsplit=1)
            wnid = parts[0]
            if not _WNID_RE.match(wnid):
                raise ValueError(f"{path}:{lineno}: expected a WordNet id like 'n01440764' at the start of the "
                                 f"line, got {line[:60]!r}")
            if wnid in seen:
                raise ValueError(f"{path}:{lineno}: wnid {wnid} repeats (first on line {seen[wnid]})")
            seen[wnid] = lineno
            out.append((wnid, parts[1].strip() if len(parts) > 1 else None))
    if not out:
        raise ValueError(f"synsets file '{path}' holds no wnids")
    return out


def read_label_list(path: str | os.PathLike) -> list[str]:
    """Read a label list: lines ``<index> <names, comma-separated>`` (PaddleClas ``imagenet1k_label_list.txt``).

    Indices must run 0, 1, 2, ... in order. Returns the full name string per index
    (e.g. ``"tench, Tinca tinca"``). Errors name the file and line.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"label list file not found: '{path}' (lines '<index> <names>')")
    names: list[str] = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            parts = line.split(maxsplit=1)
            if len(parts) < 2 or not parts[0].isdigit():
                raise ValueError(f"{path}:{lineno}: expected '<index> <names>', got {line[:60]!r}")
            if int(parts[0]) != len(names):
                raise ValueError(f"{path}:{lineno}: expected index {len(names)}, got {parts[0]} "
                                 "(indices must run 0, 1, 2, ... in order)")
            names.append(parts[1].strip())
    if not names:
        raise ValueError(f"label list file '{path}' holds no labels")
    return names


def _short_name(full: str) -> str:
    """First comma-separated name: ``"tench, Tinca tinca"`` -> ``"tench"``."""
    return full.split(",")[0].strip()


# ----------------------------------------------------------------------------------------------
# ImageFolder with clear errors for bad files
# ----------------------------------------------------------------------------------------------
class BadImageError(RuntimeError):
    """An image file could not be decoded; ``path`` names it."""

    def __init__(self, message: str, path: Optional[str] = None) -> None:
        super().__init__(message)
        self.path = path


class BadImageWarning(UserWarning):
    """Emitted when ``skip_bad=True`` replaces an unreadable image."""


def load_rgb(path: str) -> Any:
    """Open ``path`` with PIL and decode it fully as RGB; any decode failure -> :class:`BadImageError`."""
    from PIL import Image

    try:
        with open(path, "rb") as f:
            img = Image.open(f)
            return img.convert("RGB")  # convert() forces a full decode: truncated files fail here
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        # PIL.UnidentifiedImageError is an OSError; truncated JPEGs raise OSError("image file is truncated")
        raise BadImageError(f"cannot read image file '{path}': {type(e).__name__}: {e}", path=path) from e


class FixedClassImageFolder(ImageFolder):
    """ImageFolder with a given ``class_to_idx`` (labels need not be 0..n-1) and :func:`load_rgb` as loader."""

    def __init__(self, root: str, *, class_to_idx: dict[str, int], transform: Optional[Callable] = None) -> None:
        self._fixed_class_to_idx = dict(class_to_idx)
        super().__init__(root, transform=transform, loader=load_rgb, allow_empty=False)

    def find_classes(self, directory: str) -> tuple[list[str], dict[str, int]]:
        return sorted(self._fixed_class_to_idx), dict(self._fixed_class_to_idx)


class ImageFolderDataset(Dataset):
    """``<root>/<class_folder>/<image>`` samples as ``{"image": transform(PIL RGB), "label": int}``.

    A thin wrapper over :class:`torchvision.datasets.ImageFolder` whose loader raises
    :class:`BadImageError` naming the file. With ``skip_bad=True`` an unreadable sample is replaced by
    the next readable one (index + 1, + 2, ...), a :class:`BadImageWarning` names the file, and
    ``num_bad`` counts replacements (summed over DataLoader workers through shared memory).

    Args:
        root: the split folder (e.g. ``<data_dir>/val``).
        class_to_idx: folder name -> label. Folders not in it are an error; ``None``: sorted folders.
        transform: applied to the PIL RGB image.
        skip_bad: replace unreadable images instead of raising.
        max_consecutive_bad: give up (raise) after this many bad files in a row.
    """

    _COUNTER_SLOTS = 128

    def __init__(self, *, root: str | os.PathLike, class_to_idx: Optional[dict[str, int]] = None,
                 transform: Optional[Callable] = None, skip_bad: bool = False,
                 max_consecutive_bad: int = 50) -> None:
        root = Path(root)
        folders = _class_folders(root)
        if class_to_idx is None:
            mapping = {name: i for i, name in enumerate(folders)}
        else:
            unknown = [name for name in folders if name not in class_to_idx]
            if unknown:
                raise ValueError(f"class folder(s) {unknown[:5]} in '{root}' are not in the class list "
                                 f"({len(class_to_idx)} classes from the synsets file or the train folders)")
            mapping = {name: class_to_idx[name] for name in folders}

        try:
            self.folder = FixedClassImageFolder(str(root), class_to_idx=mapping, transform=transform)
        except FileNotFoundError as e:
            raise FileNotFoundError(f"no images found under '{root}': {e}\n{IMAGENET_LAYOUT}") from e
        self.root = root
        self.skip_bad = skip_bad
        self.max_consecutive_bad = max(1, int(max_consecutive_bad))
        # one slot per worker (0 = main process) so concurrent workers never race on a slot
        self._bad_counts = torch.zeros(self._COUNTER_SLOTS, dtype=torch.int64).share_memory_()

    @property
    def samples(self) -> list[tuple[str, int]]:
        """``[(path, label), ...]`` in ImageFolder order (sorted by folder, then file name)."""
        return self.folder.samples

    @property
    def targets(self) -> list[int]:
        return self.folder.targets

    @property
    def num_bad(self) -> int:
        """Number of unreadable images replaced so far (``skip_bad=True``), over all workers."""
        return int(self._bad_counts.sum())

    def __len__(self) -> int:
        return len(self.folder)

    def __getitem__(self, index: int) -> dict:
        n = len(self.folder)
        last: Optional[BadImageError] = None
        for k in range(min(n, self.max_consecutive_bad + 1) if self.skip_bad else 1):
            try:
                image, label = self.folder[(index + k) % n]
                return {"image": image, "label": int(label)}
            except BadImageError as e:
                if not self.skip_bad:
                    raise
                last = e
                info = torch.utils.data.get_worker_info()
                slot = 0 if info is None else 1 + info.id % (self._COUNTER_SLOTS - 1)
                self._bad_counts[slot] += 1
                warnings.warn(f"skip_bad: replacing unreadable image '{e.path}' ({e})", BadImageWarning,
                              stacklevel=2)
        raise BadImageError(f"skip_bad: {self.max_consecutive_bad} or more unreadable images in a row from "
                            f"index {index} in '{self.root}'; last: {last}", path=None if last is None else last.path)


def _class_folders(root: Path) -> list[str]:
    """Sorted class sub-folder names of a split folder, with clear errors for missing / flat folders."""
    if not root.is_dir():
        raise FileNotFoundError(f"ImageNet split folder not found: '{root}'. {IMAGENET_LAYOUT}")
    entries = list(os.scandir(root))
    folders = sorted(e.name for e in entries if e.is_dir() and not e.name.startswith("."))
    if not folders:
        n_images = sum(1 for e in entries if e.is_file() and e.name.lower().endswith(_IMG_EXTENSIONS))
        hint = (f" It holds {n_images} image files directly: a flat folder." if n_images else " It is empty.")
        raise FileNotFoundError(f"no class folders in '{root}'.{hint} {IMAGENET_LAYOUT}")
    return folders


# ----------------------------------------------------------------------------------------------
# ImageNet
# ----------------------------------------------------------------------------------------------
class ImageNetDataModule(pl.LightningDataModule):
    """ImageNet-1k from an ImageFolder tree with the T-RevSNN (timm) recipe transforms.

    Layout: ``<data_dir>/train/<wnid>/*.JPEG`` and ``<data_dir>/val/<wnid>/*.JPEG``. Stage ``fit``
    needs both; ``validate``, ``test`` and ``predict`` use ``val`` (ImageNet's test labels are not
    public). Batches: ``{"image": float32 [B, 3, img_size, img_size], "label": int64 [B]}``.

    Labels: with ``synsets_file`` the label of folder ``<wnid>`` is the wnid's line index in that file
    (the canonical 0-999 order; ``num_classes`` = number of synsets, so a subset of folders keeps the
    canonical labels). Without it, labels are the sorted folder names of ``train`` (``val`` when only
    ``val`` exists), which for full ImageNet-1k is the same canonical order.

    Class names: ``class_names[i]`` is the first human name of class ``i`` when names are known (from
    ``label_list_file`` -- ``<index> <names>`` lines, indexed like the labels -- or from names after the
    wnids in ``synsets_file``), else the wnid. ``wnids[i]`` always gives the wnid. Note ImageNet has a
    few repeated first names (e.g. two "crane").

    Batch size (precedence): ``batch_size`` (per device) wins when given. Otherwise the per-device
    batch is ``global_batch_size // (world_size * accumulate_grad_batches)`` read from the attached
    trainer in :meth:`setup` (1 and 1 without a trainer); it must divide exactly (ValueError).
    The recipe: 8 GPUs x 512 = 4096.

    Args:
        data_dir: root holding ``train/`` and ``val/``.
        global_batch_size: the recipe's batch over all devices (and accumulation steps).
        batch_size: per-device batch; overrides ``global_batch_size`` when set.
        num_workers: DataLoader workers per device (persistent when > 0).
        img_size: train crop / eval crop size.
        eval_resize: eval shorter-side resize before the centre crop (crop_pct = img_size / eval_resize).
        auto_augment: timm auto-augment string (RandAugment ``rand-m9-mstd0.5-inc1``); ``None`` for none.
        re_prob: random-erasing probability (timm, per-pixel mode).
        hflip: horizontal-flip probability.
        train_scale: RandomResizedCrop scale range.
        interpolation: resize interpolation (train and eval).
        mean, std: normalisation (RGB, for images scaled to [0, 1]).
        synsets_file: wnid list in class-index order (``imagenet_synsets.txt`` / ``LOC_synset_mapping.txt``).
        label_list_file: ``<index> <names>`` per line (``imagenet1k_label_list.txt``).
        skip_bad: replace unreadable images (warned and counted) instead of raising.
        pin_memory: pin host memory; ``None``: when CUDA is available.
        drop_last: drop the last incomplete training batch.
    """

    def __init__(
        self,
        *,
        data_dir: str,
        global_batch_size: Optional[int] = 4096,
        batch_size: Optional[int] = None,
        num_workers: int = 8,
        img_size: int = 224,
        eval_resize: int = 232,
        auto_augment: Optional[str] = "rand-m9-mstd0.5-inc1",
        re_prob: float = 0.25,
        hflip: float = 0.5,
        train_scale: tuple[float, float] = (0.08, 1.0),
        interpolation: str = "bicubic",
        mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
        std: Sequence[float] = IMAGENET_DEFAULT_STD,
        synsets_file: Optional[str] = None,
        label_list_file: Optional[str] = None,
        skip_bad: bool = False,
        pin_memory: Optional[bool] = None,
        drop_last: bool = True,
    ) -> None:
        super().__init__()
        if batch_size is None and global_batch_size is None:
            raise ValueError("set global_batch_size (the recipe's batch over all devices) or batch_size (per device)")
        for name, v in (("global_batch_size", global_batch_size), ("batch_size", batch_size)):
            if v is not None and int(v) <= 0:
                raise ValueError(f"{name} must be positive, got {v}")
        if eval_resize < img_size:
            raise ValueError(f"eval_resize ({eval_resize}) must be >= img_size ({img_size})")
        self.save_hyperparameters()
        self.data_dir = Path(data_dir).expanduser()
        self.global_batch_size = global_batch_size
        self.batch_size = batch_size
        self.num_workers = int(num_workers)
        self.img_size = int(img_size)
        self.eval_resize = int(eval_resize)
        self.mean, self.std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
        self.skip_bad = skip_bad
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else bool(pin_memory)
        self.drop_last = drop_last
        self.synsets_file, self.label_list_file = synsets_file, label_list_file
        self.per_device_batch_size: Optional[int] = None
        self.train_set: Optional[ImageFolderDataset] = None
        self.val_set: Optional[ImageFolderDataset] = None
        self._classes: Optional[tuple[list[str], list[str], Optional[dict[str, int]]]] = None

        from timm.data import create_transform

        self.train_transform = create_transform(
            input_size=self.img_size, is_training=True, scale=tuple(train_scale), hflip=hflip,
            auto_augment=auto_augment, interpolation=interpolation, mean=self.mean, std=self.std,
            re_prob=re_prob, re_mode="pixel", re_count=1)
        # timm resizes the shorter side to floor(img_size / crop_pct); the tiny margin keeps float
        # round-off from turning 232 into 231.
        self.eval_transform = create_transform(
            input_size=self.img_size, is_training=False, crop_pct=self.img_size / (self.eval_resize + 1e-3),
            interpolation=interpolation, mean=self.mean, std=self.std)

    # -- classes ------------------------------------------------------------------------------------
    def _resolve_classes(self) -> tuple[list[str], list[str], Optional[dict[str, int]]]:
        """(wnids per index, class names per index, class_to_idx or None for sorted folders)."""
        if self._classes is not None:
            return self._classes
        names: Optional[list[str]] = None
        class_to_idx: Optional[dict[str, int]] = None
        if self.synsets_file is not None:
            syn = read_synsets(self.synsets_file)
            wnids = [w for w, _ in syn]
            class_to_idx = {w: i for i, w in enumerate(wnids)}
            if all(n is not None for _, n in syn):
                names = [_short_name(n) for _, n in syn]  # type: ignore[arg-type]
        else:
            split = self.data_dir / "train"
            if not split.is_dir() and (self.data_dir / "val").is_dir():
                split = self.data_dir / "val"
            wnids = _class_folders(split)
        if self.label_list_file is not None:
            full = read_label_list(self.label_list_file)
            if len(full) != len(wnids):
                how = "in the synsets file" if self.synsets_file else "class folders were found"
                raise ValueError(f"label list '{self.label_list_file}' has {len(full)} entries but {len(wnids)} "
                                 f"{how}; pass the matching synsets_file so folder wnids map onto label indices")
            names = [_short_name(n) for n in full]
        self._classes = (wnids, names if names is not None else list(wnids), class_to_idx)
        return self._classes

    @property
    def wnids(self) -> list[str]:
        """WordNet id of each class index."""
        return list(self._resolve_classes()[0])

    @property
    def class_names(self) -> list[str]:
        """Human name of each class index (the wnid when no names were given)."""
        return list(self._resolve_classes()[1])

    @property
    def num_classes(self) -> int:
        return len(self._resolve_classes()[0])

    # -- batch size -----------------------------------------------------------------------------------
    def resolve_batch_size(self) -> int:
        """Per-device batch size from ``batch_size`` or ``global_batch_size`` and the attached trainer."""
        trainer = self.trainer
        world = int(getattr(trainer, "world_size", 1) or 1) if trainer is not None else 1
        accum = int(getattr(trainer, "accumulate_grad_batches", 1) or 1) if trainer is not None else 1
        if self.batch_size is not None:
            bs = int(self.batch_size)
            if self.global_batch_size is not None and bs * world * accum != self.global_batch_size:
                warnings.warn(f"batch_size={bs} per device overrides global_batch_size={self.global_batch_size} "
                              f"(effective global batch {bs * world * accum} = {bs} x {world} devices x {accum} "
                              "accumulation)", stacklevel=2)
            return bs
        denom = world * accum
        if self.global_batch_size % denom != 0:
            raise ValueError(f"global_batch_size={self.global_batch_size} is not divisible by world_size={world} x "
                             f"accumulate_grad_batches={accum}; choose a multiple of {denom} or set batch_size")
        return self.global_batch_size // denom

    # -- Lightning hooks -----------------------------------------------------------------------------
    def setup(self, stage: Optional[str] = None) -> None:
        self.per_device_batch_size = self.resolve_batch_size()
        _, _, class_to_idx = self._resolve_classes()
        if class_to_idx is None:
            class_to_idx = {w: i for i, w in enumerate(self.wnids)}
        if stage in (None, "fit") and self.train_set is None:
            self.train_set = ImageFolderDataset(root=self.data_dir / "train", class_to_idx=class_to_idx,
                                                transform=self.train_transform, skip_bad=self.skip_bad)
        if self.val_set is None:
            self.val_set = ImageFolderDataset(root=self.data_dir / "val", class_to_idx=class_to_idx,
                                              transform=self.eval_transform, skip_bad=self.skip_bad)

    @property
    def num_bad_images(self) -> int:
        """Unreadable images replaced so far (``skip_bad=True``) in this process's datasets."""
        return sum(ds.num_bad for ds in (self.train_set, self.val_set) if ds is not None)

    def _loader(self, ds: Optional[Dataset], *, train: bool) -> DataLoader:
        if ds is None:
            raise RuntimeError("call setup() first (Lightning does this for you)")
        bs = self.per_device_batch_size or self.resolve_batch_size()
        return DataLoader(ds, batch_size=bs, shuffle=train, drop_last=train and self.drop_last,
                          num_workers=self.num_workers, pin_memory=self.pin_memory,
                          persistent_workers=self.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, train=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, train=False)


# ----------------------------------------------------------------------------------------------
# Synthetic shapes and textures
# ----------------------------------------------------------------------------------------------
#: class names, in label order; ``num_classes=k`` uses the first k.
SYNTHETIC_CLASSES: tuple[str, ...] = (
    "circle", "square", "triangle", "cross", "ring", "stripes_horizontal", "stripes_vertical",
    "checkerboard", "dots", "stripes_diagonal", "x_cross", "frame", "diamond", "grid",
)
_TEXTURES = {"stripes_horizontal", "stripes_vertical", "checkerboard", "dots", "stripes_diagonal", "grid"}
#: per-channel mean / std of the rendered images scaled to [0, 1] (measured over 8192 samples of
#: 10 classes at 32 px: mean 0.498 / 0.504 / 0.502, std 0.303 / 0.306 / 0.302)
SYNTHETIC_MEAN: tuple[float, float, float] = (0.5, 0.5, 0.5)
SYNTHETIC_STD: tuple[float, float, float] = (0.3, 0.3, 0.3)


@functools.lru_cache(maxsize=8)
def _pixel_grid(img_size: int) -> tuple[np.ndarray, np.ndarray]:
    """``(yy, xx)`` float32 ``[H, W]`` pixel-centre coordinates (read-only, shared)."""
    yy, xx = np.mgrid[0:img_size, 0:img_size].astype(np.float32)
    yy.setflags(write=False)
    xx.setflags(write=False)
    return yy, xx


def shape_mask(kind: str, *, img_size: int, cx: float, cy: float, size: float, period: float = 4.0,
               phase: float = 0.0) -> np.ndarray:
    """Binary float32 mask ``[H, W]`` (H = W = img_size) of one shape / texture patch.

    Pixel centres are at integer coordinates ``x, y`` in ``[0, img_size)``; ``(cx, cy)`` is the centre,
    ``size`` the half-extent in pixels (circle radius, half the side of a square patch ...).
    Textures fill the square patch ``max(|x-cx|, |y-cy|) <= size`` with a pattern of period ``period``
    pixels shifted by ``phase`` (in periods).
    """
    if kind not in SYNTHETIC_CLASSES:
        raise ValueError(f"unknown synthetic class {kind!r}; choose from {SYNTHETIC_CLASSES}")
    yy, xx = _pixel_grid(img_size)
    dx, dy = xx - cx, yy - cy
    r2 = dx * dx + dy * dy
    s = float(size)
    cheb = np.maximum(np.abs(dx), np.abs(dy))
    if kind == "circle":
        m = r2 <= s * s
    elif kind == "ring":
        m = (r2 <= s * s) & (r2 >= (0.6 * s) ** 2)
    elif kind == "square":
        m = cheb <= 0.85 * s
    elif kind == "frame":
        m = (cheb <= s) & (cheb >= 0.65 * s)
    elif kind == "diamond":
        m = np.abs(dx) + np.abs(dy) <= 1.1 * s
    elif kind == "triangle":  # apex up at cy - s, base at cy + s with half-width s
        m = (dy >= -s) & (dy <= s) & (np.abs(dx) <= (dy + s) / 2.0)
    elif kind in ("cross", "x_cross"):
        u, v = (dx, dy) if kind == "cross" else ((dx + dy) / math.sqrt(2), (dx - dy) / math.sqrt(2))
        w = 0.3 * s
        m = ((np.abs(u) <= w) & (np.abs(v) <= s)) | ((np.abs(v) <= w) & (np.abs(u) <= s))
    else:  # textures in a square patch
        p = float(period)
        patch = cheb <= s
        if kind == "stripes_horizontal":
            t = np.mod(yy / p + phase, 1.0) < 0.5
        elif kind == "stripes_vertical":
            t = np.mod(xx / p + phase, 1.0) < 0.5
        elif kind == "stripes_diagonal":
            t = np.mod((xx + yy) / (p * math.sqrt(2)) + phase, 1.0) < 0.5
        elif kind == "checkerboard":
            t = (np.floor(xx / (p / 2) + phase) + np.floor(yy / (p / 2) + phase)) % 2 == 0
        elif kind == "grid":
            t = (np.mod(xx / p + phase, 1.0) < 0.3) | (np.mod(yy / p + phase, 1.0) < 0.3)
        else:  # dots
            fx, fy = np.mod(xx / p + phase, 1.0) - 0.5, np.mod(yy / p + phase, 1.0) - 0.5
            t = fx * fx + fy * fy <= 0.3 ** 2
        m = patch & t
    return m.astype(np.float32)


def render_synthetic_image(label: int, *, rng: np.random.Generator, img_size: int = 32) -> np.ndarray:
    """Draw one sample of class ``SYNTHETIC_CLASSES[label]``: uint8 ``[3, H, W]`` (RGB).

    Random: position, size (20-38 % of the image side for shapes, 28-45 % for texture patches),
    texture period and phase, background and foreground colours (kept at least 0.35 apart on average
    over channels), a smooth background gradient and Gaussian pixel noise (sigma 0.02-0.10).
    """
    kind = SYNTHETIC_CLASSES[label]
    n = float(img_size)
    if kind in _TEXTURES:
        size = rng.uniform(0.28, 0.45) * n
    else:
        size = rng.uniform(0.20, 0.38) * n
    margin = 0.8 * size
    cx, cy = rng.uniform(margin, n - 1 - margin, size=2)
    period = rng.uniform(0.12, 0.2) * n
    phase = rng.uniform(0.0, 1.0)
    mask = shape_mask(kind, img_size=img_size, cx=cx, cy=cy, size=size, period=period, phase=phase)
    bg = rng.uniform(0.0, 1.0, size=3)
    fg = rng.uniform(0.0, 1.0, size=3)
    if np.abs(fg - bg).mean() < 0.35:
        fg = np.where(bg > 0.5, rng.uniform(0.0, 0.3, size=3), rng.uniform(0.7, 1.0, size=3))
    grad_dir = rng.normal(size=2)
    grad_dir /= np.linalg.norm(grad_dir) + 1e-8
    yy, xx = _pixel_grid(img_size)
    ramp = rng.uniform(0.0, 0.15) * (grad_dir[0] * (xx / n - 0.5) + grad_dir[1] * (yy / n - 0.5))
    img = bg[:, None, None] * (1.0 - mask) + fg[:, None, None] * mask + ramp[None]
    img = img + rng.normal(0.0, rng.uniform(0.02, 0.10), size=img.shape)
    return np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)


class SyntheticImageDataset(Dataset):
    """Procedural shapes / textures, drawn from the index: ``{"image": float32 [3, H, W], "label": int}``.

    Sample ``i`` has label ``i % num_classes`` and is drawn with ``np.random.default_rng([seed, split, i])``,
    so it is the same in any process, worker or access order. ``cache=True`` renders everything once
    (uint8, ``size * 3 * H * W`` bytes) on first use; the values are identical either way.
    Images are normalised with ``mean`` / ``std``.
    """

    def __init__(self, *, size: int, num_classes: int = 10, img_size: int = 32, seed: int = 0, split: int = 0,
                 mean: Sequence[float] = SYNTHETIC_MEAN, std: Sequence[float] = SYNTHETIC_STD,
                 cache: bool = True) -> None:
        if not 2 <= num_classes <= len(SYNTHETIC_CLASSES):
            raise ValueError(f"num_classes must be in [2, {len(SYNTHETIC_CLASSES)}], got {num_classes}")
        if size <= 0:
            raise ValueError(f"size must be positive, got {size}")
        if img_size < 16:
            raise ValueError(f"img_size must be >= 16, got {img_size}")
        self.size, self.num_classes, self.img_size = int(size), int(num_classes), int(img_size)
        self.seed, self.split, self.cache = int(seed), int(split), cache
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
        self._cached: Optional[torch.Tensor] = None

    def __len__(self) -> int:
        return self.size

    def label_of(self, index: int) -> int:
        return index % self.num_classes

    def materialize(self) -> None:
        """Render every sample into the in-memory cache now (no-op without ``cache`` or when done).

        The DataModule calls this before building a DataLoader, so workers share one cache."""
        if self.cache and self._cached is None:
            self._cached = torch.stack([self._render(i) for i in range(self.size)])

    def raw(self, index: int) -> torch.Tensor:
        """uint8 ``[3, H, W]`` image of sample ``index`` (before normalisation)."""
        if not 0 <= index < self.size:
            raise IndexError(f"index {index} out of range for {self.size} samples")
        if self.cache:
            self.materialize()
            return self._cached[index]
        return self._render(index)

    def _render(self, index: int) -> torch.Tensor:
        rng = np.random.default_rng([self.seed, self.split, index])
        return torch.from_numpy(render_synthetic_image(self.label_of(index), rng=rng, img_size=self.img_size))

    def __getitem__(self, index: int) -> dict:
        img = self.raw(index).float().div_(255.0)
        return {"image": (img - self.mean) / self.std, "label": self.label_of(index)}


class SyntheticImageDataModule(pl.LightningDataModule):
    """Embedded synthetic image classification: procedural shapes and textures, no files.

    Classes (label order): ``SYNTHETIC_CLASSES[:num_classes]`` -- circle, square, triangle, cross,
    ring, stripes_horizontal, stripes_vertical, checkerboard, dots, stripes_diagonal, x_cross, frame,
    diamond, grid. Each sample has a random position, size, colours, background gradient and noise.
    Deterministic by ``seed``; train / val / test use different random streams.
    Batches: ``{"image": float32 [B, 3, img_size, img_size] (normalised), "label": int64 [B]}``.

    Args:
        num_classes: 2-14.
        img_size: image side in pixels (32 or 64 are typical; >= 16).
        train_size, val_size, test_size: number of samples (``test_size=None``: same as ``val_size``).
        batch_size: per-device batch.
        num_workers: DataLoader workers (persistent when > 0).
        seed: generator seed.
        cache: render each split once into memory (uint8) instead of on every access.
    """

    def __init__(self, *, num_classes: int = 10, img_size: int = 32, train_size: int = 4096, val_size: int = 512,
                 test_size: Optional[int] = None, batch_size: int = 64, num_workers: int = 0, seed: int = 0,
                 cache: bool = True) -> None:
        super().__init__()
        if not 2 <= num_classes <= len(SYNTHETIC_CLASSES):
            raise ValueError(f"num_classes must be in [2, {len(SYNTHETIC_CLASSES)}], got {num_classes}")
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.save_hyperparameters()
        self.num_classes = int(num_classes)
        self.class_names = list(SYNTHETIC_CLASSES[:num_classes])
        self.img_size = int(img_size)
        self.batch_size, self.num_workers = int(batch_size), int(num_workers)
        self.mean, self.std = SYNTHETIC_MEAN, SYNTHETIC_STD
        self._sizes = {0: train_size, 1: val_size, 2: val_size if test_size is None else test_size}
        self._sets: dict[int, SyntheticImageDataset] = {}

    def _dataset(self, split: int) -> SyntheticImageDataset:
        if split not in self._sets:
            self._sets[split] = SyntheticImageDataset(
                size=self._sizes[split], num_classes=self.num_classes, img_size=self.img_size,
                seed=self.hparams.seed, split=split, cache=self.hparams.cache)
        return self._sets[split]

    @property
    def train_set(self) -> SyntheticImageDataset:
        return self._dataset(0)

    @property
    def val_set(self) -> SyntheticImageDataset:
        return self._dataset(1)

    @property
    def test_set(self) -> SyntheticImageDataset:
        return self._dataset(2)

    def setup(self, stage: Optional[str] = None) -> None:
        """Datasets are created lazily; nothing to read."""

    def _loader(self, ds: SyntheticImageDataset, *, train: bool) -> DataLoader:
        ds.materialize()
        return DataLoader(ds, batch_size=self.batch_size, shuffle=train, drop_last=False,
                          num_workers=self.num_workers, pin_memory=torch.cuda.is_available(),
                          persistent_workers=self.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, train=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, train=False)
