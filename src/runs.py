"""Run folders: one owner at a time, one meaning of "last", a config history and one W&B run per training.

Layout of ``<run_root>/<name>/``::

    .lock                      held (``flock``) by the live process that owns the folder
    config.yaml                resolved config of the latest ``fit`` (never written by other commands)
    configs/<time>-<cmd>.yaml  resolved config of every launch (fit, validate, test, predict, energy, export)
    checkpoints/last.ckpt      the newest state of the training; top-k files beside it
    hpc_ckpt_<n>.ckpt          written by Lightning on SLURM's pre-emption signal (SIGUSR1)
    wandb_id                   the W&B run id of this training (reused on resume and requeue)
    wandb/, logs/              logger files
    predictions/               ``predict`` outputs

"last" (``--ckpt_path last``, every command): the newest of ``checkpoints/last.ckpt`` and the ``hpc_ckpt_*``
files, by the training step stored in them (file time on a tie).
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import socket
import time
import uuid
from pathlib import Path
from typing import Optional

__all__ = ["PARTIAL_SUFFIX", "RunFolder", "is_rank_zero", "RunFolderBusy", "RunFolderError", "checkpoint_step", "remove_partials"]

#: suffix of the temporary files of :func:`spikelight.checkpoint_io.atomic_torch_save`
PARTIAL_SUFFIX = ".partial"


def remove_partials(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary files that a killed atomic save left in ``folder`` (``.<name>.*.partial``)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for p in folder.glob(f".*{PARTIAL_SUFFIX}"):
        try:
            p.unlink()
            removed.append(p)
        except OSError:
            pass
    return removed


class RunFolderError(RuntimeError):
    """A launch that would mix two trainings in one run folder, or that has no checkpoint to load."""


class RunFolderBusy(RunFolderError):
    """Another live process owns the run folder."""


def checkpoint_step(path: Path) -> int:
    """``global_step`` stored in a checkpoint (-1 when unreadable). Memory-mapped: tensors are not read."""
    import torch

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        return int(ckpt.get("global_step", -1))
    except Exception:  # noqa: BLE001 - a damaged file is simply not a candidate
        return -1


def is_rank_zero() -> bool:
    """Whether this process is global rank 0 of its launch (from the launchers' environment variables)."""
    for var in ("RANK", "LOCAL_RANK", "SLURM_PROCID", "PMI_RANK", "OMPI_COMM_WORLD_RANK"):
        v = os.environ.get(var)
        if v not in (None, "", "0"):
            return False
    return True


class RunFolder:
    """The run folder of one experiment (see the module docstring)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.checkpoints = self.path / "checkpoints"
        self._lock_fd: Optional[int] = None

    # ------------------------------------------------------------------ ownership
    @property
    def lock_file(self) -> Path:
        return self.path / ".lock"

    def acquire(self, command: str) -> bool:
        """Take the folder for this process (only rank 0 of a multi-process launch takes it).

        Raises :class:`RunFolderBusy` naming the owner when another live process holds it. The lock is an
        ``flock``: the kernel releases it when the owner dies (``kill -9`` included), so a crashed run never
        blocks its own resume. Returns whether this process now holds the lock."""
        if self._lock_fd is not None or not is_rank_zero():
            return self._lock_fd is not None
        self.path.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_file, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                owner = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
            except (ValueError, OSError):
                owner = {}
            os.close(fd)
            who = ", ".join(f"{k} {v}" for k, v in owner.items()) or "unknown owner"
            raise RunFolderBusy(
                f"run folder {self.path} is in use by another process ({who}). Wait for it to finish, or give "
                "this launch another --name."
            ) from None
        info = {"pid": os.getpid(), "host": socket.gethostname(), "command": command,
                "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        self._lock_fd = fd
        remove_partials(self.checkpoints)  # leftovers of a save that a kill interrupted
        remove_partials(self.path)
        return True

    def release(self) -> None:
        if self._lock_fd is not None:
            try:
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            finally:
                os.close(self._lock_fd)
                self._lock_fd = None

    # ------------------------------------------------------------------ checkpoints
    def checkpoint_files(self) -> list[Path]:
        files = list(self.checkpoints.glob("*.ckpt")) if self.checkpoints.is_dir() else []
        return sorted(files + list(self.path.glob("hpc_ckpt_*.ckpt")))

    def last_checkpoint(self) -> Optional[Path]:
        """The newest state of this run's training (see the module docstring), or ``None``."""
        cands = [self.checkpoints / "last.ckpt"] + sorted(
            self.path.glob("hpc_ckpt_*.ckpt"), key=lambda p: int(re.sub(r"\D", "", p.stem) or 0)
        )
        cands = [c for c in cands if c.is_file()]
        if not cands:
            return None
        if len(cands) == 1:
            return cands[0]
        return max(cands, key=lambda c: (checkpoint_step(c), c.stat().st_mtime))

    def require_last(self, command: str) -> Path:
        last = self.last_checkpoint()
        if last is None:
            raise RunFolderError(
                f"--ckpt_path last: run folder {self.path} has no checkpoint (no {self.checkpoints / 'last.ckpt'}). "
                f"Train first (spikelight fit ...), or give --name of a trained run, or a checkpoint file, to "
                f"{command}."
            )
        return last

    def check_fresh_fit(self, *, overwrite: bool) -> None:
        """A ``fit`` without a checkpoint into a folder that has checkpoints stops (or, with ``overwrite``,
        moves the old training's files away to ``<run>/replaced-<time>/``: nothing is deleted)."""
        old = self.checkpoint_files()
        if not old:
            return
        if not overwrite:
            raise RunFolderError(
                f"run folder {self.path} already holds a training ({len(old)} checkpoint file(s), e.g. {old[0].name}). "
                "Resume it with --ckpt_path last, start another run with --name NEW_NAME, or replace it with "
                "--overwrite true (the old files are moved to a replaced-<time>/ folder)."
            )
        dest = self.path / f"replaced-{time.strftime('%Y%m%d-%H%M%S')}"
        dest.mkdir(parents=True)
        for p in [self.checkpoints, self.path / "wandb_id", *self.path.glob("hpc_ckpt_*.ckpt")]:
            if p.exists():
                shutil.move(str(p), str(dest / p.name))

    # ------------------------------------------------------------------ records
    def record_config(self, text: str, command: str) -> Path:
        """Write this launch's resolved config to ``configs/<time>-<command>.yaml`` (never overwrites)."""
        folder = self.path / "configs"
        folder.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        path = folder / f"{stamp}-{command}.yaml"
        n = 1
        while path.exists():
            path = folder / f"{stamp}-{command}-{n}.yaml"
            n += 1
        path.write_text(text)
        return path

    def wandb_id(self, *, create: bool = True) -> Optional[str]:
        """This training's W&B run id (kept in ``<run>/wandb_id``; created on first use)."""
        f = self.path / "wandb_id"
        if f.is_file():
            rid = f.read_text().strip()
            if rid:
                return rid
        if not create:
            return None
        rid = uuid.uuid4().hex[:12]
        self.path.mkdir(parents=True, exist_ok=True)
        tmp = f.with_suffix(".tmp")
        tmp.write_text(rid + "\n")
        os.replace(tmp, f)
        return rid
