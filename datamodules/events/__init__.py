"""DVS event data: readers, event -> frame / point-cloud transforms, DVS128 Gesture and synthetic DataModules.

Events
------
An event recording is a numpy **structured array** with fields ``x, y, p, t`` (:data:`EVENT_DTYPE`,
the dtype of ``tonic.datasets.DVSGesture``: ``x, y`` int16 pixel column / row, ``p`` bool polarity
(True = ON), ``t`` int64 **microseconds**). Every reader below returns that dtype, whatever the file
format stores, so the transforms work on any of them. Readers raise ``ValueError("<file>: <problem>")``
on corrupt or truncated input and ``FileNotFoundError`` when the file is missing.

==================  ====================================  =============================================
reader              format                                backend
==================  ====================================  =============================================
read_dvsgesture_npy tonic's preprocessed DVS128 Gesture   numpy (tonic's class would download)
                    ``<label>.npy``: (N, 4) x, y, p, t[ms]
read_nmnist_bin     N-MNIST / N-Caltech101 ``.bin``       ``tonic.io.read_mnist_file``
                    (40-bit packed events)
read_ncars_dat      Prophesee DAT v2 (N-CARS ``.dat``)    header checked here, decoded by ``expelliarmus``
                                                          (a tonic dependency)
read_aedat4         AEDAT 4 (DV software, e.g. DVXplorer) ``tonic.io.read_aedat4`` (needs ``aedat``)
read_aedat2         jAER AEDAT 2.0 (DVS128, DAVIS346)     here: tonic's AEDAT2 reader returns 0 events
                                                          silently for a truncated file
read_events         any of the above, by file suffix
==================  ====================================  =============================================

Transforms (numpy in, numpy out; all documented with their layouts)
-------------------------------------------------------------------
* :func:`events_to_frames` -> float32 ``[T, P, H, W]`` event counts (``P = 2``: channel 0 = OFF
  (``p`` False), channel 1 = ON; row = ``y``, column = ``x``, like ``tonic.transforms.ToFrame``).
  ``split_by="time"``: ``T`` equal time windows over ``[t_start, t_end]``; ``"count"``: ``T`` groups of
  (almost) equal event counts (sizes differ by at most one). **Every event in range lands in exactly one
  frame**: ``frames.sum() == number of events``. ``downsample=k`` divides pixel coordinates by ``k``
  (sum pooling, e.g. 128 -> 64 / 32; counts are preserved). ``backend="tonic"`` uses
  ``tonic.transforms.ToFrame(n_time_bins / n_event_bins)`` instead; note that tonic's bin slicers
  drop events: its time bins are ``(t_last - t_first) // T`` long and exclude the last event, its
  event bins hold ``N // T`` events each and drop the ``N % T`` remainder.
* :func:`events_to_points` (SVL downstream, REFERENCE.md section 1) -> float32 ``[T, N, 3]`` (``[T, N, 4]``
  with polarity): a window of events, ``x / (W - 1)``, ``y / (H - 1)`` and normalised time
  ``z = (t - t_min) / (t_max - t_min)``, all in ``[0, 1]``; the window is split into ``T`` (default 6)
  equal time steps and each step is sampled to ``N`` points. ``z`` is normalised over the whole window by
  default (step ``k`` holds ``z`` in ``[k/T, (k+1)/T]``), or per step (``time_norm="step"``) *(inferred:
  the paper does not say which)*. SVL encoders take ``[T, B, N, F]``: ``rearrange(points, "b t n c -> t b n c")``.
* :func:`time_window` crops a sliding window of ``window_us`` microseconds (random start in training,
  centred in evaluation).

Batches
-------
``{"events": float32 [B, T_in, 2, H, W], "label": int64 [B]}`` with ``T_in = timesteps * frames_per_step``
(T-RevSNN's DVS variant chunks ``T_in`` into ``timesteps`` consecutive groups of ``frames_per_step``
frames, ``rearrange(x, "b (t f) p h w -> t b (f p) h w")``), or, with ``representation="points"``,
``{"points": float32 [B, T, N, 3 | 4 | 6], "label": int64 [B]}`` (``point_features``).

Modules
-------
* :mod:`.io`: the readers above; :mod:`.transforms`: frames, points, windows, denoise;
  :mod:`.base`: :class:`EventDataModule` (representation + loaders shared by the event DataModules);
* :mod:`.dvsgesture`: :class:`DVSGestureDataModule`, DVS128 Gesture (11 classes, 128x128) in tonic's
  preprocessed folder layout ``<data_dir>/DVSGesture/ibmGestureTrain/userXX_<lighting>/<label>.npy`` (and
  ``ibmGestureTest``). It never downloads: missing files raise ``FileNotFoundError`` in ``setup()``.
* :mod:`.folder`: :class:`EventFolderDataModule`, recordings of any supported format in
  ``<data_dir>/<split>/<class>/`` folders (DVS Action, N-CARS, N-MNIST, your own recordings).
* :mod:`.synthetic`: :class:`SyntheticDVSDataModule`, procedurally generated event streams (a disc moving
  right / left / down / up / diagonally, orbiting clockwise / anticlockwise, growing, shrinking or
  flickering, plus Poisson background noise), deterministic by seed and learnable; for CPU CI runs.

SVL encoders on events (REFERENCE section 1, "Downstream")
--------------------------------------------------------
``representation="points"`` gives ``T`` (default 6) windows of event points per recording; the SVL task
:class:`spikelight.tasks.point_classify.PointClassify` reads a ``[B, T, N, F]`` batch and hands the encoder
``[T, B, N, F]``. The SVL-pretrained encoders take ``in_channels = 6`` (xyz + rgb), so
``point_features="xyzrgb"`` puts the polarity in the colour channels (default OFF = black ``(0, 0, 0)``,
ON = white ``(1, 1, 1)``; ``polarity_colors`` changes it) and keeps the pretrained first layer;
``center_points=True`` maps ``x, y, z`` from ``[0, 1]`` to ``[-1, 1]`` (the range of the unit-sphere clouds
the encoders were pretrained on). ``"xyzp"`` (4 channels) needs an encoder built with ``in_channels=4``
(from scratch). The frames representation is unchanged (T-RevSNN's DVS configs).
"""

from spikelight.datamodules.events.base import EventDataModule
from spikelight.datamodules.events.dvsgesture import (
    DVSGESTURE_LAYOUT,
    DVSGestureDataModule,
    DVSGestureDataset,
    find_dvsgesture_root,
)
from spikelight.datamodules.events.folder import EVENT_SUFFIXES, EventFolderDataModule, EventFolderDataset
from spikelight.datamodules.events.io import (
    DVSGESTURE_CLASSES,
    DVSGESTURE_SENSOR_SIZE,
    EVENT_DTYPE,
    NCARS_SENSOR_SIZE,
    NMNIST_SENSOR_SIZE,
    aedat4_sensor_size,
    as_events,
    read_aedat2,
    read_aedat4,
    read_dvsgesture_npy,
    read_events,
    read_ncars_dat,
    read_nmnist_bin,
)
from spikelight.datamodules.events.synthetic import (
    SYNTHETIC_DVS_CLASSES,
    SyntheticDVSDataModule,
    SyntheticDVSDataset,
    synthetic_dvs_events,
)
from spikelight.datamodules.events.transforms import (
    DEFAULT_POLARITY_COLORS,
    POINT_FEATURES,
    EventRepresentation,
    denoise,
    events_to_frames,
    events_to_points,
    point_features,
    time_window,
)

__all__ = [
    "EVENT_DTYPE",
    "DVSGESTURE_CLASSES",
    "DVSGESTURE_SENSOR_SIZE",
    "DVSGESTURE_LAYOUT",
    "NMNIST_SENSOR_SIZE",
    "NCARS_SENSOR_SIZE",
    "SYNTHETIC_DVS_CLASSES",
    "as_events",
    "read_dvsgesture_npy",
    "read_nmnist_bin",
    "read_ncars_dat",
    "read_aedat4",
    "aedat4_sensor_size",
    "read_aedat2",
    "read_events",
    "time_window",
    "events_to_frames",
    "events_to_points",
    "denoise",
    "EventRepresentation",
    "POINT_FEATURES",
    "DEFAULT_POLARITY_COLORS",
    "point_features",
    "EVENT_SUFFIXES",
    "EventFolderDataset",
    "EventFolderDataModule",
    "DVSGestureDataset",
    "find_dvsgesture_root",
    "SyntheticDVSDataset",
    "synthetic_dvs_events",
    "EventDataModule",
    "DVSGestureDataModule",
    "SyntheticDVSDataModule",
]
