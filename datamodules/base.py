"""What every spikelight DataModule shares.

* :class:`EvalSet`: the typed contract between a DataModule and a task for evaluation sets. A DataModule
  that is evaluated per set (zero-shot classification, per-dataset accuracy ...) exposes
  ``eval_sets() -> list[EvalSet]`` aligned with the list returned by ``val_dataloader()``
  (``dataloader_idx`` = position in the list).
* :func:`batch_size_of`: the number of samples of a batch (the one definition used by tasks,
  callbacks and benchmarks).
* :func:`collate_dict`: stacks per-sample dicts into the batch convention (tensors stacked, strings listed).
* :class:`DataError`: a bad data file, ``"<file>: <problem>"`` on one line, in the main process and in a
  DataLoader worker alike (every reader in spikelight.datamodules raises it).
* :class:`SpikelightDataModule`: the dataloader plumbing every DataModule shares (train / val / test /
  predict loaders, per-rank batch size, workers, pinned memory, collate). A subclass builds its datasets
  in ``setup`` and stores them in ``train_set``, ``val_set`` (one dataset, or a ``{name: dataset}`` dict
  for modules evaluated per set) and optionally ``test_set`` / ``predict_set``.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

__all__ = ["DataError", "EvalSet", "batch_size_of", "collate_dict", "SpikelightDataModule"]


class DataError(ValueError):
    """A bad data file: ``str(e) == "<path>: <problem>"`` on one line; ``e.path``, ``e.problem``.

    ``DataError(path, problem)``, or ``DataError("<path>: <problem>")`` (one string, as pickling does).
    A DataLoader worker's exception comes back to the main process as ``type(e)(text)`` where ``text`` is
    the worker's whole traceback (``torch._utils.ExceptionWrapper.reraise``); that text is taken back here
    to the original line, plus where it happened: ``"<path>: <problem> (in DataLoader worker process 3)"``.
    """

    _WORKER = re.compile(r"Caught \w+ (in [^\n]*?)\.\nOriginal ")

    def __init__(self, path: Any, problem: str | None = None) -> None:
        if problem is None:
            path, problem = self._split(str(path))
        self.path = None if path is None else str(path)
        self.problem = " ".join(str(problem).split())  # one line, whatever the cause printed
        super().__init__(self.problem if self.path is None else f"{self.path}: {self.problem}")

    @classmethod
    def _split(cls, text: str) -> tuple[str | None, str]:
        where = cls._WORKER.match(text)
        if where is not None:  # a worker's traceback: keep the text after the last "<module>.<class>: "
            marker = f"{cls.__module__}.{cls.__qualname__}: "
            text = text[text.rfind(marker) + len(marker):] if marker in text else text.strip().splitlines()[-1]
            text = f"{text.strip()} ({where.group(1)})"
        path, sep, problem = text.partition(": ")
        return (path, problem) if sep else (None, text)


@dataclass(frozen=True)
class EvalSet:
    """One evaluation set of a DataModule.

    Attributes:
        name: short name used in log keys (the first set logs ``val/...``, the others ``val_<name>/...``).
        class_names: human-readable class names, index = label (spaces, not underscores).
        prompt_templates: zero-shot prompt templates (one ``{}`` each); empty = the task's default.
    """

    name: str
    class_names: Sequence[str]
    prompt_templates: Sequence[str] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("EvalSet needs a non-empty name")
        names = list(self.class_names)
        if len(set(names)) != len(names):
            dup = sorted({n for n in names if names.count(n) > 1})
            raise ValueError(f"EvalSet {self.name!r}: duplicated class names {dup[:5]}")
        object.__setattr__(self, "class_names", tuple(str(n) for n in names))
        object.__setattr__(self, "prompt_templates", tuple(str(t) for t in self.prompt_templates))

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


_BATCH_KEYS = ("label", "points", "image", "events", "frames", "x")


def batch_size_of(batch: Any) -> int:
    """Number of samples in a batch (dict: a known key, else the first tensor/list; tuple/list: first
    tensor; tensor: ``len``)."""
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0]) if batch.dim() else 1
    if isinstance(batch, dict):
        for key in _BATCH_KEYS:
            v = batch.get(key)
            if isinstance(v, torch.Tensor) and v.dim() > 0:
                return int(v.shape[0])
        values = list(batch.values())
    elif isinstance(batch, (list, tuple)):
        values = list(batch)
    else:
        return 1
    for v in values:
        if isinstance(v, torch.Tensor) and v.dim() > 0:
            return int(v.shape[0])
        if isinstance(v, (list, tuple)) and v and not isinstance(v[0], (list, tuple, dict)):
            return len(v)
    return 1


def collate_dict(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack per-sample dicts into the batch convention (tensors / arrays stacked on a new dim 0, ints into
    an int64 tensor, floats into float32, anything else (strings) into lists). All samples share keys."""
    if not samples:
        raise ValueError("collate_dict: empty batch")
    out: dict[str, Any] = {}
    for k in samples[0]:
        vals = [s[k] for s in samples]
        v0 = vals[0]
        if torch.is_tensor(v0):
            out[k] = torch.stack(vals, 0)
        elif isinstance(v0, np.ndarray):
            out[k] = torch.from_numpy(np.stack(vals, 0))
        elif isinstance(v0, bool | int | np.integer):
            out[k] = torch.as_tensor(vals, dtype=torch.int64)
        elif isinstance(v0, float | np.floating):
            out[k] = torch.as_tensor(vals, dtype=torch.float32)
        else:
            out[k] = list(vals)
    if "label" in out:
        out["label"] = out["label"].long()
    return out


EvalData = Dataset | Mapping[str, Dataset]


class SpikelightDataModule(pl.LightningDataModule):
    """Dataloader plumbing shared by every spikelight DataModule.

    Subclasses build datasets in ``setup(stage)`` into ``train_set``, ``val_set`` (a dataset, or a
    ``{name: dataset}`` dict: ``val_dataloader()`` then returns one loader per set, in dict order, and
    :meth:`eval_sets` names them), ``test_set`` (default: ``val_set``) and ``predict_set`` (default: the
    test data). A loader method calls ``setup`` when its dataset is missing.

    Args:
        batch_size: samples per device (per rank). ``None``: ``global_batch_size`` divided over
            ``world_size * accumulate_grad_batches`` of the attached trainer (see :meth:`resolve_batch_size`).
        global_batch_size: the recipe's batch over all devices and accumulation steps.
        num_workers: DataLoader workers per device (persistent when > 0, unless ``persistent_workers``).
        pin_memory: pin host memory; ``None``: when CUDA is available.
        drop_last: drop the last incomplete *training* batch (kept when the set is smaller than a batch).
    """

    #: per-sample dicts -> batch; ``None`` = torch's default collate
    collate_fn: Callable[[Sequence[Any]], Any] | None = None
    #: prompt templates of the evaluation sets (``()``: the task's default)
    prompt_templates: Sequence[str] = ()

    def __init__(self, *, batch_size: int | None = 32, global_batch_size: int | None = None, num_workers: int = 0,
                 pin_memory: bool | None = False, persistent_workers: bool | None = None,
                 drop_last: bool = False) -> None:
        super().__init__()
        if batch_size is None and global_batch_size is None:
            raise ValueError("set global_batch_size (the recipe's batch over all devices) or batch_size (per device)")
        for name, v in (("global_batch_size", global_batch_size), ("batch_size", batch_size)):
            if v is not None and int(v) <= 0:
                raise ValueError(f"{name} must be positive, got {v}")
        self.batch_size = None if batch_size is None else int(batch_size)
        self.global_batch_size = None if global_batch_size is None else int(global_batch_size)
        self.num_workers = int(num_workers)
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else bool(pin_memory)
        self.persistent_workers = self.num_workers > 0 if persistent_workers is None else bool(persistent_workers)
        self.drop_last = bool(drop_last)
        self.per_device_batch_size: int | None = None  # a subclass may fix it in setup (resolve_batch_size)
        self.train_set: Dataset | None = None
        self.val_set: EvalData | None = None
        self.test_set: EvalData | None = None
        self.predict_set: EvalData | None = None

    # -- batch size -----------------------------------------------------------------------------------
    def resolve_batch_size(self) -> int:
        """Per-device batch: ``batch_size`` when given, else ``global_batch_size // (world_size * accumulate)``
        of the attached trainer (1 and 1 without one); the division must be exact (ValueError)."""
        trainer = self.trainer
        world = int(getattr(trainer, "world_size", 1) or 1) if trainer is not None else 1
        accum = int(getattr(trainer, "accumulate_grad_batches", 1) or 1) if trainer is not None else 1
        if self.batch_size is not None:
            bs = self.batch_size
            if self.global_batch_size is not None and bs * world * accum != self.global_batch_size:
                warnings.warn(f"batch_size={bs} per device overrides global_batch_size={self.global_batch_size} "
                              f"(effective global batch {bs * world * accum} = {bs} x {world} devices x {accum} "
                              "accumulation)", stacklevel=2)
            return bs
        denom = world * accum
        if self.global_batch_size % denom != 0:
            raise ValueError(f"global_batch_size={self.global_batch_size} is not divisible by world_size={world} x "
                             f"accumulate_grad_batches={accum}; choose a multiple of {denom} or set batch_size")
        return self.global_batch_size // denom

    # -- loaders --------------------------------------------------------------------------------------
    def prepare_dataset(self, ds: Dataset) -> None:
        """Hook called on a dataset right before a DataLoader is built for it (e.g. render a cache once)."""

    def eval_sampler(self, ds: Dataset) -> Sampler | None:
        """The sampler of an evaluation (val / test / predict) loader: under multi-process DDP an unpadded
        distributed sampler, so each sample is scored exactly once over all ranks (Lightning's
        ``DistributedSampler`` pads the last batch with repeated samples, which would enter the metric;
        Lightning leaves a ``DistributedSampler`` that is already there alone). Ranks then get
        ``ceil`` / ``floor(len(ds) / world_size)`` samples (rank ``r`` takes ``r, r + W, ...``), so their
        batch counts may differ by one: evaluation steps must not run collectives per batch (metrics sync at
        the epoch's end). ``None`` (the default sequential order) in one process, or when the trainer's
        ``use_distributed_sampler`` is off (then the user samples)."""
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() <= 1:
            return None
        trainer = self.trainer
        connector = getattr(trainer, "_accelerator_connector", None) if trainer is not None else None
        if connector is not None and not getattr(connector, "use_distributed_sampler", True):
            return None
        kwargs = getattr(trainer, "distributed_sampler_kwargs", None) if trainer is not None else None
        kwargs = kwargs or {"num_replicas": dist.get_world_size(), "rank": dist.get_rank()}
        from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler

        return UnrepeatedDistributedSampler(ds, num_replicas=kwargs["num_replicas"], rank=kwargs["rank"],
                                            shuffle=False)

    def make_loader(self, ds: Dataset, *, train: bool) -> DataLoader:
        """The DataLoader of ``ds`` (shuffled, and with ``drop_last`` when ``train``; evaluation loaders get
        :meth:`eval_sampler`)."""
        self.prepare_dataset(ds)
        bs = self.per_device_batch_size or self.resolve_batch_size()
        sampler = None if train else self.eval_sampler(ds)
        return DataLoader(ds, batch_size=bs, shuffle=train, sampler=sampler,
                          drop_last=train and self.drop_last and len(ds) >= bs,
                          num_workers=self.num_workers, pin_memory=self.pin_memory,
                          persistent_workers=self.persistent_workers, collate_fn=self.collate_fn)

    def _data(self, attr: str, stage: str) -> Any:
        if getattr(self, attr) is None:
            self.setup(stage)
        data = getattr(self, attr)
        if data is None:
            raise RuntimeError(f"{type(self).__name__} has no {attr.removesuffix('_set')} data configured")
        return data

    def _loaders(self, data: EvalData) -> DataLoader | list[DataLoader]:
        if isinstance(data, Mapping):
            return [self.make_loader(ds, train=False) for ds in data.values()]
        return self.make_loader(data, train=False)

    def train_dataloader(self) -> DataLoader:
        return self.make_loader(self._data("train_set", "fit"), train=True)

    def val_dataloader(self) -> DataLoader | list[DataLoader]:
        return self._loaders(self._data("val_set", "validate"))

    def test_dataloader(self) -> DataLoader | list[DataLoader]:
        return self._loaders(self.test_set if self.test_set is not None else self._data("val_set", "test"))

    def predict_dataloader(self) -> DataLoader | list[DataLoader]:
        if self.predict_set is not None:
            return self._loaders(self.predict_set)
        return self.test_dataloader()

    # -- evaluation sets ------------------------------------------------------------------------------
    def eval_sets(self) -> list[EvalSet]:
        """The evaluation sets, aligned with ``val_dataloader()``: one per named set of a ``{name: dataset}``
        ``val_set`` (class names from the dataset), else one set ``"val"`` with this module's ``class_names``."""
        data = self._data("val_set", "validate")
        if isinstance(data, Mapping):
            return [EvalSet(name, ds.class_names, self.prompt_templates) for name, ds in data.items()]
        return [EvalSet("val", self.class_names, self.prompt_templates)]
