"""Write what ``predict`` returns to files under the run folder.

:class:`PredictionWriter` collects the outputs of ``predict_step`` batch by batch (on the CPU) and, at the end
of ``predict``, writes per dataloader ``<folder>/predictions.pt`` (``predictions-1.pt``, ``predictions-2.pt``
... for the second, third ... dataloader) and, when the outputs have scalar or string fields, a readable
``predictions[-<idx>].jsonl`` with one line per sample. ``<folder>`` defaults to
``<trainer.default_root_dir>/predictions/`` (the CLI's run folder: ``runs/<name>/predictions/``).

The ``.pt`` file is a dict that loads with ``torch.load(path, weights_only=True)``:

* a dict output (``{"logits": [B, K], "pred": [B], "names": [B strings], ...}``) keeps its keys: tensors
  with one row per sample are concatenated along dim 0, per-sample lists are joined, ``None`` stays ``None``;
  a value that is not per-sample (a scalar per batch, tensors of mismatching shapes) is kept as the list of
  its per-batch values;
* a tensor output is stored under ``"predictions"``, a tuple/list output under ``"predictions"`` as a list of
  such columns;
* ``"index"`` (``"sample_index"`` when the output has an ``index`` key itself): the dataset index of each row,
  when Lightning knows it (it does for DataLoaders); rows are in dataset order.

DDP: every rank sends its rows to global rank 0 (``torch.distributed.gather_object``), which puts them in
dataset order, drops repeated indices (a padding sampler repeats samples) and writes the one file; the other
ranks write nothing. With ``gather=False`` each rank instead writes its own part,
``predictions[-<idx>].rank<r>.pt`` / ``.jsonl``, with its ``index`` rows (no communication; merge by index).

Files are replaced atomically (temporary file in the same folder, then rename); a later ``predict`` into the
same folder replaces them.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Optional

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import BasePredictionWriter

__all__ = ["PredictionWriter", "collate_predictions"]

_SCALARS = (str, int, float, bool, type(None))


def _to_cpu(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, Mapping):
        return {k: _to_cpu(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return type(value)(_to_cpu(v) for v in value)
    return value


def _rows(value: Any) -> Optional[int]:
    """Number of per-sample rows of a batch value, or ``None`` when it is not per-sample."""
    if isinstance(value, torch.Tensor):
        return int(value.shape[0]) if value.dim() > 0 else None
    if isinstance(value, list | tuple):
        return len(value)
    return None


def _join(parts: list[Any], sizes: list[int]) -> tuple[Any, bool]:
    """Join one field's per-batch values: ``(joined, per_sample)``."""
    if all(p is None for p in parts):
        return None, False
    if all(_rows(p) == n for p, n in zip(parts, sizes)):
        if all(isinstance(p, torch.Tensor) for p in parts):
            if len({tuple(p.shape[1:]) for p in parts}) == 1 and len({p.dtype for p in parts}) == 1:
                return torch.cat(parts, 0), True
        else:
            joined: list[Any] = []
            for p in parts:
                joined.extend(p.tolist() if isinstance(p, torch.Tensor) else list(p))
            return joined, True
    return list(parts), False


def collate_predictions(batches: Sequence[Any], indices: Sequence[Sequence[int]] | None = None) -> dict[str, Any]:
    """Join the ``predict_step`` outputs of one dataloader into one dict (see the module docstring).

    ``indices[i]`` are the dataset indices of batch ``i`` (empty or ``None``: unknown). Rows are put in index
    order and repeated indices dropped when the indices are known for every row."""
    batches = [b for b in batches if b is not None]
    if not batches:
        return {}
    first = batches[0]
    columns = not isinstance(first, Mapping) and isinstance(first, tuple | list)
    if isinstance(first, Mapping):
        fields: dict[Any, list[Any]] = {k: [b.get(k) for b in batches] for k in first}
    elif columns:
        fields = {i: [b[i] for b in batches] for i in range(len(first))}
    else:
        fields = {"predictions": list(batches)}
    sizes = []
    for i, b in enumerate(batches):
        n = len(indices[i]) if indices is not None and i < len(indices) and indices[i] else None
        if n is None:
            values = b.values() if isinstance(b, Mapping) else b if columns else [b]
            n = next((r for v in values if (r := _rows(v)) is not None), 0)
        sizes.append(n)
    out: dict[Any, Any] = {}
    per_sample: list[Any] = []
    for k, parts in fields.items():
        out[k], is_rows = _join(parts, sizes)
        if is_rows:
            per_sample.append(k)
    flat = [int(i) for batch_idx in (indices or []) for i in batch_idx]
    index_key = "sample_index" if "index" in out else "index"
    if indices is not None and len(flat) == sum(sizes) and flat:
        first_pos: dict[int, int] = {}
        for pos, idx in enumerate(flat):
            first_pos.setdefault(idx, pos)
        order = [first_pos[i] for i in sorted(first_pos)]
        if order != list(range(len(flat))):
            perm = torch.as_tensor(order, dtype=torch.long)
            for k in per_sample:
                v = out[k]
                out[k] = v.index_select(0, perm) if isinstance(v, torch.Tensor) else [v[j] for j in order]
        out[index_key] = torch.as_tensor(sorted(first_pos), dtype=torch.long)
    if columns:
        out = {"predictions": [out.pop(i) for i in range(len(first))], **out}
    return out


def _jsonl_rows(data: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One dict per sample with the scalar and string fields of ``data`` (empty when there is none)."""
    n = None
    cols: dict[str, list[Any]] = {}
    for k, v in data.items():
        if isinstance(v, torch.Tensor) and v.dim() == 1:
            col = v.tolist()
        elif isinstance(v, list) and all(isinstance(x, _SCALARS) for x in v):
            col = list(v)
        else:
            continue
        if n is None:
            n = len(col)
        if len(col) == n:
            cols[k] = [None if isinstance(x, float) and not math.isfinite(x) else x for x in col]
    keys = [k for k in cols if k not in ("index", "sample_index")]
    if not keys or n is None:
        return []
    order = [k for k in ("index", "sample_index") if k in cols] + keys
    return [{k: cols[k][i] for k in order} for i in range(n)]


def _atomic_write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class PredictionWriter(BasePredictionWriter):
    """Write ``predict`` outputs to ``predictions[-<idx>].pt`` (+ ``.jsonl``), see the module docstring.

    Args:
        output_dir: folder of the files; ``None``: ``<trainer.default_root_dir>/predictions``.
        gather: under DDP, gather every rank's rows on rank 0 into one file (``False``: one file per rank).
        jsonl: also write the scalar / string fields as JSON lines (when there are any).
    """

    def __init__(self, output_dir: Optional[str] = None, *, gather: bool = True, jsonl: bool = True) -> None:
        super().__init__(write_interval="batch")
        self.output_dir = output_dir
        self.gather = bool(gather)
        self.jsonl = bool(jsonl)
        self._outputs: dict[int, list[Any]] = {}
        self._indices: dict[int, list[list[int]]] = {}
        #: files written by the last ``predict`` on this rank
        self.written: list[Path] = []

    def folder(self, trainer: pl.Trainer) -> Path:
        return Path(self.output_dir) if self.output_dir else Path(trainer.default_root_dir) / "predictions"

    def on_predict_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._outputs, self._indices, self.written = {}, {}, []

    def write_on_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, prediction: Any,
                           batch_indices: Optional[Sequence[int]], batch: Any, batch_idx: int,
                           dataloader_idx: int) -> None:
        self._outputs.setdefault(dataloader_idx, []).append(_to_cpu(prediction))
        self._indices.setdefault(dataloader_idx, []).append([int(i) for i in (batch_indices or [])])

    def on_predict_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        world = int(getattr(trainer, "world_size", 1) or 1)
        distributed = world > 1 and torch.distributed.is_available() and torch.distributed.is_initialized()
        num_loaders = max(len(trainer.predict_dataloaders) if isinstance(trainer.predict_dataloaders, list) else 1,
                          max(self._outputs, default=-1) + 1)
        folder = self.folder(trainer)
        for idx in range(num_loaders):
            outputs, indices = self._outputs.get(idx, []), self._indices.get(idx, [])
            stem = "predictions" if idx == 0 else f"predictions-{idx}"
            if distributed and self.gather:
                parts = [None] * world if trainer.global_rank == 0 else None
                torch.distributed.gather_object((outputs, indices), parts, dst=0)
                if trainer.global_rank != 0:
                    continue
                outputs = [o for part in parts for o in part[0]]
                indices = [i for part in parts for i in part[1]]
            elif distributed:
                stem = f"{stem}.rank{trainer.global_rank}"
            self._write(folder, stem, outputs, indices)
        self._outputs, self._indices = {}, {}

    def _write(self, folder: Path, stem: str, outputs: list[Any], indices: list[list[int]]) -> None:
        from spikelight.checkpoint_io import atomic_torch_save

        data = collate_predictions(outputs, indices if all(indices) else None)
        folder.mkdir(parents=True, exist_ok=True)
        self.written.append(atomic_torch_save(data, folder / f"{stem}.pt"))
        rows = _jsonl_rows(data) if self.jsonl else []
        if rows:
            path = folder / f"{stem}.jsonl"
            _atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))
            self.written.append(path)
