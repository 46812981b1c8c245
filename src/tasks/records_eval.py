"""Evaluation by prediction records, shared by the question-answering tasks (:class:`~spikelight.tasks.
lvc_align.LVCAlign`, :class:`~spikelight.tasks.point_qa.PointQA`).

A task scores each evaluation batch into one record per question (``score_batch``: a dict with at least
``correct`` and, for per-type accuracy, ``task_type``). :class:`RecordsEvalMixin` collects the records of
every evaluation set, gathers them over DDP ranks at the end of the epoch, logs the accuracy summary
(``<stage>/acc``, ``<stage>/acc_<type>``; sets after the first as ``<stage>_<set name>/...``) and writes the
records to ``<run>/predictions/<stage>-<set name>.jsonl``; ``predict`` returns them as columns.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from pathlib import Path
from typing import Any, Optional

from torch import Tensor

__all__ = ["RecordsEvalMixin", "accuracy_summary", "write_predictions"]


def accuracy_summary(records: list[dict[str, Any]]) -> dict[str, float]:
    """``{"acc": ..., "acc_<task_type>": ..., "acc_duration_<class>": ..., "count": n}`` of prediction
    records (``correct``, ``task_type``, ``duration_class``); names are sanitised (``[^0-9A-Za-z_-]`` -> ``_``)."""
    groups: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for r in records:
        keys = ["acc"]
        if r.get("task_type"):
            keys.append("acc_" + re.sub(r"[^0-9A-Za-z_-]+", "_", str(r["task_type"])))
        if r.get("duration_class"):
            keys.append("acc_duration_" + re.sub(r"[^0-9A-Za-z_-]+", "_", str(r["duration_class"])))
        for k in keys:
            groups[k][0] += int(bool(r["correct"]))
            groups[k][1] += 1
    return {**{k: c / n for k, (c, n) in groups.items()}, "count": float(len(records))}


def write_predictions(path: str | Path, records: list[dict[str, Any]]) -> Path:
    """Write prediction records as JSON lines (atomic replace)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    tmp.replace(path)
    return path


class RecordsEvalMixin:
    """val / test / predict through prediction records (see the module docstring). The task provides
    ``score_batch(batch) -> list[dict]`` and ``_eval_module()`` (the module put in eval mode); it may
    override ``_eval_step`` (e.g. to log a loss first), ``_set_names``, ``_report`` and
    ``_record_for_file``."""

    def _init_records(self) -> None:
        #: stage -> dataloader index -> records of the running epoch
        self._records: dict[str, dict[int, list[dict[str, Any]]]] = {}

    def _eval_module(self) -> Any:  # pragma: no cover - overridden
        raise NotImplementedError

    def _collect(self, stage: str, batch: dict[str, Any], dataloader_idx: int) -> list[dict[str, Any]]:
        records = self.score_batch(batch)
        self._records.setdefault(stage, {}).setdefault(dataloader_idx, []).extend(records)
        return records

    def _eval_step(self, stage: str, batch: dict[str, Any], dataloader_idx: int) -> Optional[Tensor]:
        self._eval_module().train(False)
        self._collect(stage, batch, dataloader_idx)
        return None

    def _set_names(self) -> list[str]:
        """Names of the evaluation sets by dataloader index (from the DataModule's ``eval_sets``)."""
        trainer = getattr(self, "_trainer", None)
        dm = getattr(trainer, "datamodule", None) if trainer is not None else None
        if dm is not None and callable(getattr(dm, "eval_sets", None)):
            try:
                return [s.name for s in dm.eval_sets()]
            except Exception:  # noqa: BLE001 - names are cosmetic; fall back to indices
                pass
        return []

    def _report(self, stage: str, name: str, summary: dict[str, float]) -> None:
        """Called on rank zero for each scored set (e.g. to print a line)."""

    def _record_for_file(self, record: dict[str, Any]) -> dict[str, Any]:
        return record

    def _gathered_records(self, stage: str) -> dict[int, list[dict[str, Any]]]:
        per_set = self._records.pop(stage, {})
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            gathered: list[Any] = [None] * dist.get_world_size()  # every rank scored its own questions
            dist.all_gather_object(gathered, per_set)
            per_set = defaultdict(list)
            for part in gathered:
                for idx, recs in part.items():
                    per_set[idx].extend(recs)
        return per_set

    def _eval_epoch_end(self, stage: str) -> None:
        per_set = self._gathered_records(stage)
        trainer = getattr(self, "_trainer", None)
        names = self._set_names()
        sanity = trainer is not None and trainer.sanity_checking
        for idx in sorted(per_set):
            name = names[idx] if idx < len(names) else f"set{idx}"
            prefix = stage if idx == 0 else f"{stage}_{name}"
            summary = accuracy_summary(per_set[idx])
            if stage != "predict":  # Lightning allows no logging in predict
                for k, v in summary.items():
                    if k != "count":
                        self.log(f"{prefix}/{k}", v, prog_bar=(k == "acc" and idx == 0), add_dataloader_idx=False)
            if sanity or (trainer is not None and not trainer.is_global_zero):
                continue
            self._report(stage, name, summary)
            root = Path(trainer.default_root_dir) if trainer is not None else Path(".")
            write_predictions(root / "predictions" / f"{stage}-{name}.jsonl",
                              [self._record_for_file(r) for r in per_set[idx]])

    # ------------------------------------------------------------------ Lightning hooks
    def validation_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> Optional[Tensor]:
        return self._eval_step("val", batch, dataloader_idx)

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val")

    def test_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> Optional[Tensor]:
        return self._eval_step("test", batch, dataloader_idx)

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")

    def predict_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> dict[str, list[Any]]:
        """The batch's prediction records as columns (``{"qid": [...], "output": [...], ...}``)."""
        self._eval_module().train(False)
        records = self._collect("predict", batch, dataloader_idx)
        return {k: [r[k] for r in records] for k in records[0]}

    def on_predict_epoch_end(self) -> None:
        self._eval_epoch_end("predict")

