"""spikelight DataModules.

Every DataModule yields batches as ``dict``s with stable keys, used everywhere in spikelight:

=============  ==============================================================================
key            meaning
=============  ==============================================================================
``points``     float32 ``[B, N, 6]`` point cloud: xyz (unit sphere) + rgb in [0, 1] (0.4 if absent)
               (point-cloud and synthetic 3D DataModules); DVS events as points (``EventDataModule``
               with ``representation="points"``): ``[B, T, N, 3|4]`` (x, y, normalised time [, polarity])
``image``      float32 ``[B, 3, H, W]``: a rendered view in [0, 1] (point-cloud triplets) or a normalised
               photo / drawing (``ImageNetDataModule``, ``SyntheticImageDataModule``)
``text``       ``list[str]``: one caption per sample (evaluation sets: a prompt with the class name)
``image_feat`` float32 ``[B, D]``: precomputed CLIP image features (``OpenShapeTripletDataModule``)
``text_feat``  float32 ``[B, D]``: precomputed CLIP text features (``OpenShapeTripletDataModule``)
``label``      int64 ``[B]``: class index (-1: unknown); the object category in part segmentation
``part``       int64 ``[B, N]``: per-point global part label (``ShapeNetPartDataModule``,
               ``SyntheticPartsDataModule``; the module's ``part_table`` maps categories to parts), with
               ``normals`` float32 ``[B, N, 3]``
``events``     DVS event frames float32 ``[B, T, 2, H, W]`` (channel 0 OFF, 1 ON)
``x``          float32 ``[B, F]`` features of the toy experiment (``ToyDataModule``)
``frames``     video frames ``[B, M, 3, H, W]`` (float32 normalised by the VLM's processor, or uint8
               without a transform), zero-padded to the longest video of the batch (video DataModules), with
               ``frames_mask`` bool ``[B, M]`` (True = a real frame), ``timestamps`` float32 ``[B, M]``
               (presentation time in seconds, 0 where padded), ``frame_indices`` int64 ``[B, M]`` (-1 padded)
``video``      ``list[str]``: the video file of each sample; ``skipped``: bad videos skipped for the batch
``prompt``     ``list[str]``: instruction / question of a video-text pair (``VideoTextDataModule``)
``question``   ``list[str]``: the question of a multiple-choice item (``VideoMCQDataModule``)
``options``    ``list[list[str]]``: option texts of each question (no "A." prefixes); ``answer_index``
               int64 ``[B]``: index of the right option
``answer``     ``list[str]``: the answer text (pairs) or the right option's text (MCQ)
``task_type``  ``list[str]`` (MCQ); ``duration`` float32 ``[B]`` seconds (NaN: unknown), ``duration_class``
               ``list[str]`` (Video-MME short / medium / long), ``qid`` ``list[str]``
``subtitles``  ``list[str]``: subtitle lines within the sampled time range (``subtitles=True``)
=============  ==============================================================================

Modules: ``base`` (``SpikelightDataModule``: the shared loaders and per-rank batch size; ``EvalSet``: the
evaluation-set contract; ``batch_size_of``; ``collate_dict``; ``DataError``: a bad data file, one line
``"<file>: <problem>"`` in the main process and in DataLoader workers), ``synthetic`` (toy), ``pointcloud/``
(ModelNet40, ScanObjectNN, ShapeNet-55/ULIP, OpenShape, procedural 3D triplets; part segmentation:
ShapeNetPart, procedural parts), ``images/`` (ImageNet,
synthetic shapes), ``events/`` (DVS128 Gesture, N-MNIST / N-CARS / AEDAT readers; synthetic DVS), ``video/``
(PyAV decoding and sampling, VLM frame processing, video-text pairs, MLVU / Video-MME MCQ, feature cache).
Every DataModule is importable from here (loaded on first use).
"""

from __future__ import annotations

import importlib
from typing import Any

from spikelight.datamodules.base import DataError, EvalSet, SpikelightDataModule, batch_size_of, collate_dict

_LAZY = {
    "ToyDataModule": "synthetic",
    "ModelNet40DataModule": "pointcloud",
    "ScanObjectNNDataModule": "pointcloud",
    "ShapeNet55TripletDataModule": "pointcloud",
    "OpenShapeTripletDataModule": "pointcloud",
    "Synthetic3DDataModule": "pointcloud",
    "PointCloudDataModule": "pointcloud",
    "ShapeNetPartDataModule": "pointcloud",
    "SyntheticPartsDataModule": "pointcloud",
    "PointQAJsonlDataModule": "pointcloud",
    "SyntheticPointQADataModule": "pointcloud",
    "ImageNetDataModule": "images",
    "SyntheticImageDataModule": "images",
    "DVSGestureDataModule": "events",
    "SyntheticDVSDataModule": "events",
    "EventDataModule": "events",
    "EventFolderDataModule": "events",
    "VideoTextDataModule": "video",
    "VideoMCQDataModule": "video",
    "SyntheticVideoDataModule": "video.synthetic",
}

__all__ = ["DataError", "EvalSet", "SpikelightDataModule", "batch_size_of", "collate_dict", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(f"spikelight.datamodules.{_LAZY[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'spikelight.datamodules' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
