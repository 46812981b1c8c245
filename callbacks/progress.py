"""Plain-line progress for logs that are files, not terminals (SLURM ``.out`` files, ``nohup``, CI).

A redrawn progress bar (tqdm, rich) writes carriage returns and escape codes: in a file it becomes one very
long line, or thousands of them. :class:`PlainProgressBar` prints one ordinary line every ``every_n_steps``
training batches and one at the end of each validation / test / predict run, on global rank 0 only::

    train epoch=1/3 batch=50/500 step=50 elapsed=0:00:12 it/s=4.17 train/loss=1.234
    val epoch=1/3 step=500 batches=63 elapsed=0:02:03 val/loss=0.8123 val/top1=0.6525

Every field is ``key=value`` (no spaces inside a value): ``epoch`` counts from 1 (``epoch=1/3`` is the first
of three; the checkpoint names count from 0), ``batch`` is the training batch of this epoch / the epoch's
batches (``?`` when the loader has no length), ``step`` the optimizer step (``trainer.global_step``),
``elapsed`` the time since the trainer started this stage, ``it/s`` the training batches per second since the
previous line. The metrics are the progress-bar metrics (``self.log(..., prog_bar=True)``) on training lines
and every logged ``val*`` (``test*``) metric on validation (test) lines.

:func:`default_progress_bar` picks the bar: this one when stdout is not a terminal, else ``None`` (Lightning's
own bar).
"""

from __future__ import annotations

import math
import sys
import time
from typing import Any, Optional, Union

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ProgressBar

__all__ = ["PlainProgressBar", "default_progress_bar", "format_line"]


def _fmt_value(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        value = value.item() if value.numel() == 1 else value.tolist()
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    return "".join(str(value).split())  # one token: no spaces inside a value


def _fmt_time(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def format_line(stage: str, fields: dict[str, Any]) -> str:
    """``"<stage> k1=v1 k2=v2 ..."``: the one line format of :class:`PlainProgressBar`."""
    return " ".join([stage, *(f"{k}={_fmt_value(v)}" for k, v in fields.items())])


class PlainProgressBar(ProgressBar):
    """Progress as plain lines (see the module docstring).

    Args:
        every_n_steps: print a training line every this many batches (and after the epoch's last batch).
            ``None``: 50, or every 10% of the epoch when that is more often.
        stream: where to print (default: ``sys.stdout`` at print time).
    """

    def __init__(self, every_n_steps: Optional[int] = None, stream: Any = None) -> None:
        super().__init__()
        if every_n_steps is not None and int(every_n_steps) <= 0:
            raise ValueError(f"every_n_steps must be positive, got {every_n_steps}")
        self.every_n_steps = None if every_n_steps is None else int(every_n_steps)
        self.stream = stream
        self._enabled = True
        self._stage_start = time.monotonic()
        self._last_time = self._stage_start
        self._last_batch = 0
        self._eval_batches = 0

    # ------------------------------------------------------------------ ProgressBar API
    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    @property
    def is_enabled(self) -> bool:
        return self._enabled

    @property
    def is_disabled(self) -> bool:
        return not self._enabled

    def print(self, *args: Any, **kwargs: Any) -> None:
        if self._enabled:
            kwargs.setdefault("file", self.stream if self.stream is not None else sys.stdout)
            kwargs.setdefault("flush", True)
            print(*args, **kwargs)

    # ------------------------------------------------------------------ helpers
    def interval(self, total: Union[int, float]) -> int:
        """Training batches between two lines for an epoch of ``total`` batches."""
        if self.every_n_steps is not None:
            return self.every_n_steps
        if isinstance(total, int) and total > 0:
            return max(1, min(50, total // 10))
        return 50

    def _epoch(self, trainer: pl.Trainer) -> str:
        epoch = trainer.current_epoch + 1
        max_epochs = trainer.max_epochs
        return f"{epoch}/{max_epochs}" if max_epochs is not None and max_epochs > 0 else str(epoch)

    def _start(self) -> None:
        self._stage_start = self._last_time = time.monotonic()
        self._last_batch = 0

    @staticmethod
    def _total(value: Union[int, float]) -> Union[int, str]:
        return int(value) if isinstance(value, (int, float)) and math.isfinite(value) else "?"

    def _metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        items = self.get_metrics(trainer, pl_module)
        items.pop("v_num", None)  # the logger version says nothing in a log file
        return items

    @staticmethod
    def _stage_metrics(trainer: pl.Trainer, prefix: str) -> dict[str, Any]:
        return {k: v for k, v in sorted(trainer.callback_metrics.items()) if k.split("/")[0].startswith(prefix)}

    # ------------------------------------------------------------------ training
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start()

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._last_time = time.monotonic()
        self._last_batch = 0

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        done = batch_idx + 1
        total = self.total_train_batches
        last = isinstance(total, (int, float)) and math.isfinite(total) and done >= total
        if done % self.interval(total if isinstance(total, int) else -1) and not last:
            return
        now = time.monotonic()
        rate = (done - self._last_batch) / max(now - self._last_time, 1e-9)
        self._last_time, self._last_batch = now, done
        fields = {"epoch": self._epoch(trainer), "batch": f"{done}/{self._total(total)}",
                  "step": trainer.global_step, "elapsed": _fmt_time(now - self._stage_start), "it/s": rate}
        self.print(format_line("train", {**fields, **self._metrics(trainer, pl_module)}))

    # ------------------------------------------------------------------ evaluation
    def _eval_start(self) -> None:
        self._eval_batches = 0
        self._eval_time = time.monotonic()

    def _eval_batch(self) -> None:
        self._eval_batches += 1

    def _eval_end(self, trainer: pl.Trainer, stage: str, prefix: str) -> None:
        if trainer.sanity_checking:
            return
        now = time.monotonic()
        fields: dict[str, Any] = {}
        if trainer.state.fn == "fit":
            fields.update(epoch=self._epoch(trainer), step=trainer.global_step)
        fields.update(batches=self._eval_batches, elapsed=_fmt_time(now - self._eval_time))
        metrics = self._stage_metrics(trainer, prefix) if prefix else {}
        self.print(format_line(stage, {**fields, **metrics}))

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._eval_start()

    def on_validation_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any,
                                batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_batch()

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._eval_end(trainer, "val", "val")

    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._eval_start()

    def on_test_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                          batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_batch()

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._eval_end(trainer, "test", "test")

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._eval_start()

    def on_predict_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                             batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_batch()

    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._eval_end(trainer, "predict", "")


def default_progress_bar(stream: Any = None) -> Optional[ProgressBar]:
    """:class:`PlainProgressBar` when ``stream`` (default ``sys.stdout``) is not a terminal, else ``None``
    (Lightning's own bar)."""
    stream = sys.stdout if stream is None else stream
    try:
        tty = bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        tty = False
    return None if tty else PlainProgressBar()
