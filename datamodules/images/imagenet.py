"""ImageNet-1k from an ImageFolder tree with the T-RevSNN (timm) recipe: class-index files, an ImageFolder
with clear errors for bad files, and :class:`ImageNetDataModule`.

Batches: ``{"image": float32 [B, 3, H, W] normalised with the ImageNet mean / std, "label": int64 [B]}``.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Optional

import torch
from torch.utils.data import Dataset
from torchvision.datasets import ImageFolder

from spikelight.datamodules.base import DataError, SpikelightDataModule

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
def _split_lines(path: Path):
    """``(line number, stripped line, [first word, rest])`` of every non-blank line."""
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if line:
                yield lineno, line, line.split(maxsplit=1)


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
    for lineno, line, parts in _split_lines(path):
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
    for lineno, line, parts in _split_lines(path):
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
class BadImageError(DataError):
    """An image file could not be decoded: ``"<file>: <problem>"`` on one line; ``path`` names the file."""


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
        raise BadImageError(path, f"cannot read image file ({type(e).__name__}: {e})") from e


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
                warnings.warn(f"skip_bad: replacing unreadable image ({e})", BadImageWarning,
                              stacklevel=2)
        raise BadImageError(self.root, f"skip_bad: {self.max_consecutive_bad} or more unreadable images in a row "
                                       f"from index {index}; last: {last}")


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
class ImageNetDataModule(SpikelightDataModule):
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
        super().__init__(batch_size=batch_size, global_batch_size=global_batch_size, num_workers=num_workers,
                         pin_memory=pin_memory, drop_last=drop_last)
        if eval_resize < img_size:
            raise ValueError(f"eval_resize ({eval_resize}) must be >= img_size ({img_size})")
        self.save_hyperparameters()
        self.data_dir = Path(data_dir).expanduser()
        self.img_size = int(img_size)
        self.eval_resize = int(eval_resize)
        self.mean, self.std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
        self.skip_bad = skip_bad
        self.synsets_file, self.label_list_file = synsets_file, label_list_file
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
