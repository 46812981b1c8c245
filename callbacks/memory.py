"""``MemoryMonitor``: training-step memory logged under ``memory/*`` (MB = 2**20 bytes).

The measuring is :mod:`spikelight.profiling.memory` (tensor peak by MemTracker, saved-for-backward
bytes, process RSS, CUDA allocator peak: definitions there); this callback decides which steps to
measure, reduces across ranks and logs. Example (YAML)::

    trainer:
      callbacks:
        - class_path: spikelight.callbacks.MemoryMonitor
          init_args: {every_n_steps: 50}
"""

from __future__ import annotations

import warnings
from typing import Any, Optional

import torch
from lightning.pytorch import Callback

from spikelight.datamodules.base import batch_size_of
from spikelight.profiling.memory import MB, StepMemoryProbe

__all__ = ["MemoryMonitor"]


class MemoryMonitor(Callback):
    """Logs training memory under ``memory/*`` (MB = 2**20 bytes).

    On sampled steps (``trainer.global_step % every_n_steps == 0`` when the batch starts, plus the first
    batch this callback sees) the whole training step - Lightning's ``on_train_batch_start`` to
    ``on_train_batch_end``, which in automatic optimisation encloses forward, backward and the optimizer
    step - is measured with :class:`StepMemoryProbe` (see the module docstring for definitions):

    * ``memory/peak_mb``: MemTracker peak of live tensor bytes (parameters, buffers, gradients, optimizer
      state, the batch, activations, temporaries) on the module's device; ``memory/peak_mb_per_sample``
      the same divided by the batch size.
    * ``memory/activation_mb``: activation + temporary bytes at that peak.
    * ``memory/saved_mb`` (and ``_per_sample``): distinct non-parameter storages saved for backward.
    * ``memory/rss_mb``: peak sampled process RSS during the step (whole process; ``log_rss``).

    These rows are written straight to ``trainer.loggers`` at Lightning's step counter, so they appear
    whatever ``log_every_n_steps`` is. MemTracker routes every op through Python while active: expect the
    sampled step to run several times slower; other steps cost nothing. If MemTracker fails to start or
    stop, a warning is issued once and later samples log saved bytes and RSS only.

    On CUDA, every step (through ``pl_module.log``, so Lightning's ``log_every_n_steps`` applies):
    ``memory/cuda_peak_mb`` - ``torch.cuda.max_memory_allocated`` maximum since the epoch started (the
    allocator's peak counter is reset at every batch start and the epoch maximum kept here);
    ``memory/cuda_step_peak_mb`` - this step's own peak; ``memory/cuda_peak_mb_per_sample`` - the step
    peak divided by its batch size (so a short last batch does not inflate it).

    All numbers are reduced across ranks with ``max`` (``trainer.strategy.reduce``), so every rank must
    run this callback (it does: callbacks run on all ranks). ``self.last`` holds the latest logged values
    (same keys) and ``self.last_raw`` the latest :class:`StepMemoryProbe` result (bytes, this rank).

    Batch size: :func:`spikelight.datamodules.base.batch_size_of`; override :meth:`batch_size` for other
    batch layouts.
    """

    def __init__(self, *, every_n_steps: int = 50, track_tensors: bool = True, log_rss: bool = True) -> None:
        super().__init__()
        if every_n_steps < 1:
            raise ValueError(f"MemoryMonitor: every_n_steps must be >= 1, got {every_n_steps}")
        self.every_n_steps = int(every_n_steps)
        self.track_tensors = bool(track_tensors)
        self.log_rss = bool(log_rss)
        self.last: dict[str, float] = {}
        self.last_raw: dict[str, Any] = {}
        self._probe: Optional[StepMemoryProbe] = None
        self._tracker_disabled = False
        self._warned = False
        self._seen_first = False
        self._last_sampled_step: Optional[int] = None
        self._sampled = False  # this batch is a sampled one (even if the probe failed to start)
        self._epoch_cuda_peak = 0

    # -- helpers ------------------------------------------------------------------------------------------
    def batch_size(self, batch: Any) -> int:
        return batch_size_of(batch)

    def _should_sample(self, trainer: Any) -> bool:
        step = int(trainer.global_step)
        if step == self._last_sampled_step:  # gradient accumulation: one micro-batch per step
            return False
        return (not self._seen_first) or step % self.every_n_steps == 0

    @staticmethod
    def _is_cuda(pl_module: Any) -> bool:
        return pl_module.device.type == "cuda" and torch.cuda.is_available()

    def _warn_once(self, message: str) -> None:
        if not self._warned:
            self._warned = True
            warnings.warn(message, RuntimeWarning, stacklevel=3)

    def _close_probe(self) -> Optional[dict[str, Any]]:
        if self._probe is None:
            return None
        probe, self._probe = self._probe, None
        try:
            return probe.stop()
        except Exception as err:  # noqa: BLE001 - never break training
            self._tracker_disabled = True
            self._warn_once(f"MemoryMonitor: stopping the memory probe failed ({err}); tensor tracking off.")
            return None

    @staticmethod
    def _reduce_max(trainer: Any, pl_module: Any, values: list[float]) -> list[float]:
        if getattr(trainer, "world_size", 1) <= 1:
            return values
        tensor = torch.tensor(values, dtype=torch.float64, device=pl_module.device)
        reduced = trainer.strategy.reduce(tensor, reduce_op="max")
        return [float(v) for v in reduced.tolist()]

    # -- hooks --------------------------------------------------------------------------------------------
    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        self._epoch_cuda_peak = 0

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        self._close_probe()  # a probe left open (a skipped batch never reached on_train_batch_end)
        if self._is_cuda(pl_module):
            torch.cuda.reset_peak_memory_stats(pl_module.device)
        self._sampled = self._should_sample(trainer)
        if not self._sampled:
            return
        self._seen_first = True
        self._last_sampled_step = int(trainer.global_step)
        probe = StepMemoryProbe(
            modules=(pl_module,),
            optimizers=tuple(trainer.optimizers),
            inputs=batch,
            device=pl_module.device,
            track_tensors=self.track_tensors and not self._tracker_disabled,
            track_saved=True,
            track_rss=self.log_rss,
            track_cuda=False,  # handled per step below
            strict=False,
        )
        try:
            probe.start()
        except Exception as err:  # noqa: BLE001 - never break training
            self._warn_once(f"MemoryMonitor: could not start the memory probe ({err}); skipping this step.")
            return
        if probe.tracker_error is not None:
            self._tracker_disabled = True
            self._warn_once(
                f"MemoryMonitor: MemTracker failed ({probe.tracker_error}); logging saved-for-backward bytes "
                "and RSS only from now on."
            )
        self._probe = probe

    def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
        if self._probe is not None:
            self._probe.begin_optimizer_update()

    def on_train_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        bsz = self.batch_size(batch)
        raw = self._close_probe()
        if self._is_cuda(pl_module):
            self._log_cuda(trainer, pl_module, bsz)
        if not self._sampled:
            return
        self._sampled = False
        raw = raw or {}
        if raw.get("tracker_error") and not self._tracker_disabled:
            self._tracker_disabled = True
            self._warn_once(
                f"MemoryMonitor: MemTracker failed ({raw['tracker_error']}); logging saved-for-backward "
                "bytes and RSS only from now on."
            )
        if raw:
            self.last_raw = raw
        metrics: dict[str, float] = {}
        if raw.get("peak_bytes") is not None:
            metrics["memory/peak_mb"] = raw["peak_bytes"] / MB
            metrics["memory/activation_mb"] = raw["peak_activation_bytes"] / MB
            if bsz:
                metrics["memory/peak_mb_per_sample"] = raw["peak_bytes"] / MB / bsz
        if raw.get("saved_bytes") is not None:
            metrics["memory/saved_mb"] = raw["saved_bytes"] / MB
            if bsz:
                metrics["memory/saved_mb_per_sample"] = raw["saved_bytes"] / MB / bsz
        if self.log_rss and raw.get("rss_peak_bytes") is not None:
            metrics["memory/rss_mb"] = raw["rss_peak_bytes"] / MB
        # Same keys on every rank (ranks sample the same steps), -1 for "missing", so the collective matches.
        keys = [
            "memory/peak_mb",
            "memory/peak_mb_per_sample",
            "memory/activation_mb",
            "memory/saved_mb",
            "memory/saved_mb_per_sample",
            "memory/rss_mb",
        ]
        reduced = self._reduce_max(trainer, pl_module, [metrics.get(k, -1.0) for k in keys])
        metrics = {k: v for k, v in zip(keys, reduced) if v >= 0}
        self.last.update(metrics)
        step = getattr(
            getattr(trainer.fit_loop, "epoch_loop", None), "_batches_that_stepped", trainer.global_step
        )
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)

    def _log_cuda(self, trainer: Any, pl_module: Any, bsz: Optional[int]) -> None:
        step_peak = torch.cuda.max_memory_allocated(pl_module.device) / MB
        (step_peak,) = self._reduce_max(trainer, pl_module, [step_peak])
        self._epoch_cuda_peak = max(self._epoch_cuda_peak, step_peak)
        metrics = {"memory/cuda_peak_mb": self._epoch_cuda_peak, "memory/cuda_step_peak_mb": step_peak}
        if bsz:
            metrics["memory/cuda_peak_mb_per_sample"] = step_peak / bsz
        self.last.update(metrics)
        for key, value in metrics.items():
            pl_module.log(key, value, on_step=True, on_epoch=False, batch_size=bsz or 1)

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        self._close_probe()

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        self._close_probe()

    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        self._close_probe()
