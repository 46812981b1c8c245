"""Checkpoint files that are never half-written, and that fail with the file's name when they are bad.

Lightning's default ``TorchCheckpointIO`` writes through fsspec: with ``$TMPDIR`` on another filesystem than
the run folder (node-local tmp, shared ``runs/``: the usual cluster layout) the final step is a *copy* into
the checkpoint's name, so a kill during it leaves a truncated ``.ckpt`` and an orphan in ``$TMPDIR``.

:func:`atomic_torch_save` writes into a temporary file *in the destination folder*, flushes and fsyncs it,
then ``os.replace``-s it onto the final name (atomic on POSIX within one filesystem) and fsyncs the folder:
a reader sees the old file or the new one, never a part. A kill leaves at most a hidden
``.<name>.<random>.partial`` file next to the checkpoint, which :func:`remove_partials` deletes (the CLI
calls it when it takes a run folder). :class:`AtomicCheckpointIO` is the Lightning plugin that uses it.
"""

from __future__ import annotations

import os
import pickle
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Optional

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint

__all__ = ["AtomicCheckpointIO", "CheckpointError", "RunCheckpoint", "PARTIAL_SUFFIX", "atomic_torch_save", "load_checkpoint",
           "remove_partials"]

from spikelight.runs import PARTIAL_SUFFIX, remove_partials  # noqa: E402  (torch-free helpers)


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read or does not fit the model (the message names the file)."""


def _is_local(path: str | os.PathLike) -> bool:
    return "://" not in str(path) or str(path).startswith("file://")


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save(obj, path)`` through a fsynced temporary file in ``path``'s folder and an atomic rename."""
    path = Path(str(path).removeprefix("file://"))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=PARTIAL_SUFFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(path.parent)
    return path


def load_checkpoint(path: str | os.PathLike, *, map_location: Any = "cpu", weights_only: bool = True) -> dict:
    """``torch.load`` of a checkpoint whose errors name the file and say what is wrong."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"checkpoint file not found: {p}")
    if p.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {p} is empty (0 bytes): a save was interrupted or the copy failed")
    with open(p, "rb") as f:
        head = f.read(4)
    if head != b"PK\x03\x04" and not head.startswith(b"\x80"):  # zip (torch >= 1.6) or a legacy pickle
        raise CheckpointError(
            f"checkpoint {p} is not a PyTorch checkpoint (it starts with bytes {head!r}, not a zip archive)"
        )
    try:
        ckpt = torch.load(p, map_location=map_location, weights_only=weights_only)
    except pickle.UnpicklingError as e:
        if weights_only and "Weights only load failed" in str(e):
            raise CheckpointError(
                f"checkpoint {p} holds objects other than tensors and plain data; it was not written by spikelight. "
                "Load it with weights_only: false only if you trust where it came from."
            ) from None
        raise CheckpointError(f"checkpoint {p} is not a PyTorch checkpoint ({type(e).__name__}: {e})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as e:
        raise CheckpointError(
            f"checkpoint {p} is truncated or not a PyTorch checkpoint ({p.stat().st_size} bytes; "
            f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
        ) from None
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"checkpoint {p} holds a {type(ckpt).__name__}, not a checkpoint dict")
    return ckpt


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning ``CheckpointIO`` plugin: atomic local saves (:func:`atomic_torch_save`), loads whose
    errors name the file. Remote URLs (``s3://`` ...) fall back to Lightning's fsspec writer."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Optional[Any] = None) -> None:
        if storage_options is not None or not _is_local(path):
            return super().save_checkpoint(checkpoint, path, storage_options=storage_options)
        atomic_torch_save(checkpoint, path)

    def load_checkpoint(self, path: Any, map_location: Optional[Any] = None,
                        weights_only: Optional[bool] = None) -> dict[str, Any]:
        if not _is_local(path):
            return super().load_checkpoint(path, map_location=map_location, weights_only=weights_only)
        return load_checkpoint(path, map_location=map_location if map_location is not None else "cpu",
                               weights_only=weights_only is not False)


class RunCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` whose ``last.ckpt`` always follows the training.

    Lightning 2.6 writes ``last.ckpt`` only in a step where a top-k file is written too ("Only save last
    checkpoint if a checkpoint was actually saved in this step"): with ``monitor`` set, an epoch that does
    not improve the monitored value leaves ``last.ckpt`` at an older epoch, and ``--ckpt_path last`` (resume,
    SLURM requeue) would silently go back in time. Here, whenever Lightning would have considered a save
    (end of validation, or end of the training epoch when it saves there) and wrote nothing, ``last.ckpt``
    is written anyway (``save_last`` true).
    """

    @property
    def state_key(self) -> str:
        # the key of the callback's state in a checkpoint: as ModelCheckpoint's, so that checkpoints written
        # before this class (or by a plain ModelCheckpoint) restore their best/last paths into it
        return super().state_key.replace(type(self).__qualname__, ModelCheckpoint.__qualname__, 1)

    def _refresh_last(self, trainer: Any) -> None:
        if self.save_last and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):
            self._refresh_last(trainer)

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer):
            self._refresh_last(trainer)
