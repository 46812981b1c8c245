"""Video data for LVC: PyAV decoding, frame sampling, the VLM's frame processing, manifests (video-text
pairs, MLVU, Video-MME, generic MCQ JSONL), a frozen-feature cache and a video writer.

Modules
-------
* :mod:`.io`: :func:`probe_video` (headers only), :func:`frame_times` / :func:`keyframe_indices` (every
  frame's time and the keyframes by demuxing, no decoding; exact frame count), :func:`uniform_indices` /
  :func:`fps_indices` / :func:`sample_indices`,
  :func:`decode_frames` (threaded; seeks to the keyframe before a needed frame when that skips
  decoding, else decodes on; only as far as the last needed frame) -> :class:`VideoClip` (uint8 ``[M, H, W, 3]``,
  ``timestamps`` s, frame ``indices``; ``.to_tensor()`` float ``[M, 3, H, W]``), :func:`read_video`,
  :func:`write_video` (real mp4 / avi / mkv from uint8 frames; libx264 or mpeg4 from the PyAV wheel),
  :class:`VideoError` (``"<file>: <problem>"``).
* :mod:`.transforms`: :class:`HFFrameProcessor` (the VLM's own video / image processor from its local
  folder, one tile per frame), :class:`FrameTransform` (torch resize + mean / std fallback).
* :mod:`.subtitles`: :func:`parse_srt` / :func:`read_srt`, :func:`subtitles_in_range`.
* :mod:`.base`: :class:`VideoSampling`, :class:`VideoDataset`, :func:`collate_video` (padding +
  ``frames_mask``), :func:`check_videos` (missing files reported before training), :class:`VideoDataModule`.
* :mod:`.pairs`: JSONL video-text pairs, :class:`VideoTextDataModule`.
* :mod:`.mcq`: :class:`MCQItem` (the one normalised MCQ item), :func:`read_mcq` (any format),
  :class:`VideoMCQDataModule`; :mod:`.mlvu`: :func:`read_mlvu`; :mod:`.videomme`: :func:`read_videomme`.
* :mod:`.cache`: :class:`VisionFeatureCache` (safetensors on disk, keyed by file + sampling + model).

Batches: see :mod:`spikelight.datamodules` (keys ``frames``, ``frames_mask``, ``timestamps``, ``video``,
``prompt`` / ``question``, ``answer``, ``options``, ``answer_index`` ...).
"""

from spikelight.datamodules.video.base import (
    VideoDataModule,
    VideoDataset,
    VideoSampling,
    check_videos,
    collate_video,
)
from spikelight.datamodules.video.cache import VisionFeatureCache
from spikelight.datamodules.video.io import (
    VideoClip,
    VideoError,
    VideoInfo,
    available_encoders,
    decode_frames,
    fps_indices,
    frame_times,
    keyframe_indices,
    probe_video,
    read_video,
    sample_indices,
    uniform_indices,
    write_video,
)
from spikelight.datamodules.video.mcq import (
    LETTERS,
    MCQItem,
    VideoMCQDataModule,
    detect_format,
    read_mcq,
    read_mcq_jsonl,
    write_mcq_jsonl,
)
from spikelight.datamodules.video.mlvu import read_mlvu
from spikelight.datamodules.video.pairs import (
    VideoTextDataModule,
    VideoTextItem,
    read_pairs_jsonl,
    write_jsonl,
)
from spikelight.datamodules.video.subtitles import SubtitleCue, parse_srt, read_srt, subtitles_in_range
from spikelight.datamodules.video.transforms import (
    CLIP_MEAN,
    CLIP_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    FrameTransform,
    HFFrameProcessor,
    make_frame_transform,
)
from spikelight.datamodules.video.videomme import parse_options, read_videomme

__all__ = [
    "VideoError", "VideoInfo", "VideoClip", "probe_video", "frame_times", "keyframe_indices", "uniform_indices",
    "fps_indices",
    "sample_indices", "decode_frames", "read_video", "write_video", "available_encoders",
    "FrameTransform", "HFFrameProcessor", "make_frame_transform", "IMAGENET_MEAN", "IMAGENET_STD", "CLIP_MEAN",
    "CLIP_STD", "SubtitleCue", "parse_srt", "read_srt", "subtitles_in_range",
    "VideoSampling", "VideoDataset", "collate_video", "check_videos", "VideoDataModule",
    "VideoTextItem", "read_pairs_jsonl", "write_jsonl", "VideoTextDataModule",
    "LETTERS", "MCQItem", "read_mcq", "read_mcq_jsonl", "write_mcq_jsonl", "detect_format", "VideoMCQDataModule",
    "read_mlvu", "read_videomme", "parse_options", "VisionFeatureCache",
]  # fmt: skip
