"""Image DataModules: ImageNet-1k (ImageFolder, timm recipe) and procedurally drawn synthetic shapes.

Batch convention (both modules)::

    {"image": float32 [B, 3, H, W]   normalised with the dataset mean / std (channels RGB),
     "label": int64   [B]}           class index in [0, num_classes)

Every DataModule here exposes ``num_classes`` and ``class_names`` (a list, index = label).

* :mod:`.imagenet`: :class:`ImageNetDataModule` reads the standard ImageFolder layout
  ``<data_dir>/train/<wnid>/*.JPEG`` and ``<data_dir>/val/<wnid>/*.JPEG`` with the T-RevSNN / timm recipe
  transforms (RandAugment ``rand-m9-mstd0.5-inc1``, random erasing 0.25, bicubic; eval resize 232 + centre
  crop 224) and divides the recipe's *global* batch (4096) across devices.
* :mod:`.synthetic`: :class:`SyntheticImageDataModule` draws shapes and textures (circle, square, triangle,
  stripes ...) on the fly from the sample index: no files, deterministic by seed, learnable by a tiny CNN
  in seconds on CPU. It is the embedded default of the T-RevSNN experiments.
"""

from spikelight.datamodules.images.imagenet import (
    BadImageError,
    BadImageWarning,
    FixedClassImageFolder,
    ImageFolderDataset,
    ImageNetDataModule,
    load_rgb,
    read_label_list,
    read_synsets,
)
from spikelight.datamodules.images.synthetic import (
    SYNTHETIC_CLASSES,
    SYNTHETIC_MEAN,
    SYNTHETIC_STD,
    SyntheticImageDataModule,
    SyntheticImageDataset,
    render_synthetic_image,
    shape_mask,
)

__all__ = [
    "BadImageError",
    "BadImageWarning",
    "FixedClassImageFolder",
    "ImageFolderDataset",
    "ImageNetDataModule",
    "load_rgb",
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
