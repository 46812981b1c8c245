"""What the event DataModules share: the event representation (frames or points) and the loaders."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

from spikelight.datamodules.base import SpikelightDataModule
from spikelight.datamodules.events.transforms import DEFAULT_POLARITY_COLORS, EventRepresentation

__all__ = ["EventDataModule"]


class EventDataModule(SpikelightDataModule):
    """Event recordings as frames or points (batch layout in :mod:`spikelight.datamodules.events`).

    Args:
        timesteps: model timesteps ``T``; default 16 (frames) or 6 (points, SVL).
        frames_per_step: frames per timestep ``F``; the model receives ``T_in = T * F`` frames and chunks them.
        split_by: ``"count"`` (equal event counts, spikingjelly's ``split_by='number'`` convention) or
            ``"time"`` (equal time windows) - see :func:`~spikelight.datamodules.events.transforms.events_to_frames`.
        sensor_size: ``(W, H, P)``; ``downsample``: integer pixel factor (2: 64x64, 4: 32x32).
        representation: ``"frames"`` or ``"points"``; ``num_points``, ``time_norm``, ``with_polarity``:
            see :func:`~spikelight.datamodules.events.transforms.events_to_points`.
        point_features: ``"xyz"``, ``"xyzp"`` or ``"xyzrgb"`` (polarity in the colour channels: the 6-channel
            input of SVL-pretrained encoders), ``polarity_colors`` (OFF, ON colours) and ``center_points``
            (coordinates in [-1, 1]): see :func:`~spikelight.datamodules.events.transforms.point_features`.
        window_us: optional sliding window (us) cropped from each recording (random in training, centred
            in evaluation); ``denoise_us``: optional tonic Denoise filter time (slow: pure Python).
        frame_backend: ``"numpy"`` (every event counted) or ``"tonic"`` (tonic ToFrame).
        batch_size, num_workers, pin_memory: the loaders (:class:`SpikelightDataModule`).
    """

    def __init__(self, *, sensor_size: Sequence[int], timesteps: Optional[int] = None, frames_per_step: int = 1,
                 split_by: str = "count", downsample: int = 1, representation: str = "frames", num_points: int = 1024,
                 time_norm: str = "window", with_polarity: bool = False, window_us: Optional[float] = None,
                 denoise_us: Optional[float] = None, frame_backend: str = "numpy", point_features: Optional[str] = None,
                 polarity_colors: Sequence[Sequence[float]] = DEFAULT_POLARITY_COLORS, center_points: bool = False,
                 batch_size: int = 16, num_workers: int = 0, pin_memory: bool = False) -> None:
        super().__init__(batch_size=batch_size, num_workers=num_workers, pin_memory=pin_memory)
        if representation not in ("frames", "points"):
            raise ValueError(f"representation must be 'frames' or 'points', got {representation!r}")
        if len(sensor_size) != 3:
            raise ValueError(f"sensor_size must be (W, H, P), got {sensor_size}")
        self.representation = representation
        self.sensor_size = tuple(int(s) for s in sensor_size)
        self.timesteps = int(timesteps) if timesteps is not None else (16 if representation == "frames" else 6)
        kw = dict(representation=representation, sensor_size=self.sensor_size, timesteps=self.timesteps,
                  frames_per_step=frames_per_step, split_by=split_by, downsample=downsample, num_points=num_points,
                  time_norm=time_norm, with_polarity=with_polarity, window_us=window_us, denoise_us=denoise_us,
                  frame_backend=frame_backend, point_features=point_features, polarity_colors=polarity_colors,
                  center_points=center_points)
        self.train_transform = EventRepresentation(train=True, **kw)
        self.eval_transform = EventRepresentation(train=False, **kw)

    @property
    def input_key(self) -> str:
        """Batch key of the model input: ``"events"`` (frames) or ``"points"``."""
        return "events" if self.representation == "frames" else "points"

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """Per-sample input shape (without B): ``(T_in, P, H', W')`` or ``(T, N, C)``."""
        return self.eval_transform.out_shape
