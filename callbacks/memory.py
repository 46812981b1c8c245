"""Training-step memory measurement: a reusable probe and a Lightning callback.

Three independent views of the memory one training step (forward + backward [+ optimizer step]) needs:

* **Tensor peak** (the headline). PyTorch's ``torch.distributed._tools.mem_tracker.MemTracker`` (a
  ``TorchDispatchMode``) follows the lifetime of every tensor storage created while it is active, on any
  device, and keeps a running total split into categories. ``peak_bytes`` is the largest total it saw on
  the chosen device during the step, counted in exact storage bytes on CPU (on CUDA it rounds each storage
  up to the caching allocator's 512-byte blocks, like the allocator does). Tensors created *before* the
  step are only counted when they are registered: the modules' parameters / buffers / ``.grad``, the
  optimizers' state and the ``inputs`` (batch) given to the probe. Anything else that already existed
  (e.g. a tensor cached on a module attribute) is invisible.
* **Saved-for-backward bytes**. A ``torch.autograd.graph.saved_tensors_hooks`` pack hook sees every tensor
  autograd saves for backward during the forward pass; ``saved_bytes`` sums the *distinct storages* among
  them (a storage saved by two ops, e.g. a ReLU output that is also the next Linear's input, counts
  once), excluding storages of the registered modules' parameters and buffers (reported apart as
  ``saved_param_bytes``: they exist whether or not autograd saves them). This is the memory a normal
  backward keeps alive between forward and backward. It misses what a *recomputing* backward allocates
  (activation checkpointing, reversible networks: their activations are rebuilt during backward, and a
  non-reentrant ``torch.utils.checkpoint`` region keeps its inputs itself, out of sight of outer hooks),
  and it misses the gradients and temporaries of the backward pass. That is why the tensor peak is the
  headline and saved bytes a diagnostic.
* **Process RSS**. ``resource.getrusage(...).ru_maxrss`` is the high-water mark of the whole process
  lifetime, so it cannot isolate one step. The probe therefore samples the current resident set size
  (``/proc/self/statm``; ``psutil`` when installed and ``/proc`` is absent) from a background thread every
  ``rss_interval_s`` (default 1 ms, but a busy Python main thread can delay samples by up to
  ``sys.getswitchinterval()``) plus once at start and end. ``rss_peak_bytes`` is the largest sample: a
  lower bound on the true peak RSS during the step, of the *whole process* (interpreter, libraries,
  allocator caches, data-loader buffers, other threads) - useful on CPU, meaningless for GPU memory.
  ``rss_maxrss_bytes`` reports the lifetime high-water mark for reference.
* **CUDA allocator peak** (only when the measured device is CUDA): ``torch.cuda.max_memory_allocated``
  after ``torch.cuda.reset_peak_memory_stats`` at the start of the step. It counts everything allocated
  through the caching allocator on that device (including tensors the tensor tracker cannot see),
  rounded to allocator blocks, not the cache reserved by the allocator.

Definition of ``peak_activation_bytes``: the ``Activation`` + ``Temp`` categories of MemTracker's snapshot
taken at the moment of the total peak. ``Activation`` is every tensor created in the forward pass (and in
forward recomputation during backward: activation checkpointing) that is still alive, including the
loss and the gradient seed ``1.0`` autograd creates for it (4 bytes each for a float32 scalar); ``Temp``
is every tensor created during the backward pass and still alive (gradients w.r.t. activations, and a
freshly computed weight gradient until autograd accumulates it into ``.grad``, when it becomes
``Gradient``). So ``peak_activation_bytes = peak_bytes - (parameters + buffers + gradients + optimizer
state + registered inputs)`` at the peak instant.

Units: functions return bytes; the callback logs MB where **MB = 2**20 bytes** (MiB).

Public API:

* :func:`measure_step_memory` - measure one call of a step function (for benchmarks).
* :class:`StepMemoryProbe` - the same split into ``start()`` / ``stop()`` (for code with hooks).
* :class:`MemoryMonitor` - Lightning callback logging ``memory/*`` keys.
"""

from __future__ import annotations

import os
import resource
import sys
import threading
import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Optional, Union

import torch
from lightning.pytorch import Callback
from torch import nn
from torch.utils._mode_utils import no_dispatch
from torch.utils._pytree import tree_flatten
from torch.utils.weak import WeakIdKeyDictionary

MB = 2**20
"""Bytes per logged MB (MiB)."""

# Categories of MemTracker's ``_MemRefType`` (matched by value string) -> our breakdown keys.
_CATEGORY_NAMES = {
    "Parameter": "parameter",
    "Buffer": "buffer",
    "Gradient": "gradient",
    "Activation": "activation",
    "Temp": "temp",
    "Optstate": "optimizer",
    "Other": "other",
}
_BREAKDOWN_KEYS = tuple(_CATEGORY_NAMES.values())


# ---------------------------------------------------------------------------------------------------------
# RSS
# ---------------------------------------------------------------------------------------------------------
class _RssReader:
    """Reads the current resident set size of this process in bytes (``None`` when impossible)."""

    def __init__(self) -> None:
        self.source = "none"
        self._fd: Optional[int] = None
        self._proc = None
        self._page = 4096
        try:
            self._fd = os.open("/proc/self/statm", os.O_RDONLY)
            self._page = os.sysconf("SC_PAGE_SIZE")
            self.source = "statm"
        except (OSError, ValueError, AttributeError):
            self._fd = None
            try:
                import psutil  # noqa: PLC0415

                self._proc = psutil.Process()
                self.source = "psutil"
            except Exception:  # noqa: BLE001 - psutil missing or unusable
                self._proc = None

    def read(self) -> Optional[int]:
        try:
            if self._fd is not None:
                return int(os.pread(self._fd, 256, 0).split()[1]) * self._page
            if self._proc is not None:
                return int(self._proc.memory_info().rss)
        except Exception:  # noqa: BLE001 - /proc vanished, psutil error: no sample
            return None
        return None

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def maxrss_bytes() -> int:
    """Lifetime high-water mark of this process's RSS (``getrusage``), in bytes (monotone!)."""
    value = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(value) if sys.platform == "darwin" else int(value) * 1024  # Linux reports KiB


class _RssSampler:
    """Background thread sampling the current RSS; ``peak`` is the largest sample seen."""

    def __init__(self, *, interval_s: float = 1e-3) -> None:
        self.interval_s = interval_s
        self._reader = _RssReader()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self.start_bytes: Optional[int] = None
        self.end_bytes: Optional[int] = None
        self.peak: Optional[int] = None

    def _sample(self) -> Optional[int]:
        value = self._reader.read()
        if value is not None and (self.peak is None or value > self.peak):
            self.peak = value
        return value

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def start(self) -> None:
        self.start_bytes = self._sample()
        if self._reader.source != "none":
            self._thread = threading.Thread(target=self._loop, name="spikelight-rss", daemon=True)
            self._thread.start()

    def stop(self) -> dict[str, Any]:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self.end_bytes = self._sample()
        source = self._reader.source
        self._reader.close()
        return {
            "rss_start_bytes": self.start_bytes,
            "rss_end_bytes": self.end_bytes,
            "rss_peak_bytes": self.peak,
            "rss_maxrss_bytes": maxrss_bytes(),
            "rss_source": source,
        }


# ---------------------------------------------------------------------------------------------------------
# Saved-for-backward bytes
# ---------------------------------------------------------------------------------------------------------
class SavedTensorCounter:
    """Counts bytes autograd saves for backward (distinct storages) while active.

    A context manager (``with SavedTensorCounter(exclude=(model,)) as c: loss = model(x)``) or
    ``enter()`` / ``exit()``. Only packs made *outside* a backward pass count (a reentrant checkpoint or
    double backward packs again while recomputing; those are not forward memory). Attributes, in bytes:
    ``saved_bytes`` (storages not belonging to ``exclude`` modules' parameters/buffers), ``saved_param_bytes``
    (those that do), ``num_saved`` (distinct storages counted).

    Note: only the innermost ``saved_tensors_hooks`` apply, so tensors saved inside a region with its own
    hooks (``torch.utils.checkpoint`` non-reentrant, CPU offloading) are not seen here.
    """

    def __init__(self, *, exclude: Iterable[nn.Module] = ()) -> None:
        self._param_keys: set[tuple[str, int]] = set()
        for module in exclude:
            for tensor in (*module.parameters(), *module.buffers()):
                try:
                    self._param_keys.add((str(tensor.device), tensor.untyped_storage().data_ptr()))
                except (RuntimeError, NotImplementedError):
                    continue
        self._seen = WeakIdKeyDictionary()
        self._seen_ids: set[int] = set()
        self.saved_bytes = 0
        self.saved_param_bytes = 0
        self.num_saved = 0
        self._ctx: Optional[torch.autograd.graph.saved_tensors_hooks] = None

    def _pack(self, tensor: torch.Tensor) -> torch.Tensor:
        if torch._C._current_graph_task_id() == -1:  # not inside a backward pass
            self._count(tensor)
        # Return a detached alias: returning ``tensor`` itself would make an uncollectable reference
        # cycle (output -> grad_fn -> saved output) whenever a graph is dropped without backward.
        # ``no_dispatch`` keeps this bookkeeping op out of any active MemTracker.
        with no_dispatch():
            return tensor.detach()

    @staticmethod
    def _unpack(tensor: torch.Tensor) -> torch.Tensor:
        return tensor

    def _count(self, tensor: torch.Tensor) -> None:
        try:
            storage = tensor.untyped_storage()
        except (RuntimeError, NotImplementedError):  # sparse / wrapper tensors without one storage
            if id(tensor) in self._seen_ids:
                return
            self._seen_ids.add(id(tensor))
            self.saved_bytes += tensor.nelement() * tensor.element_size()
            self.num_saved += 1
            return
        if storage in self._seen:
            return
        self._seen[storage] = True
        nbytes = storage.nbytes()
        self.num_saved += 1
        if (str(tensor.device), storage.data_ptr()) in self._param_keys:
            self.saved_param_bytes += nbytes
        else:
            self.saved_bytes += nbytes

    def enter(self) -> SavedTensorCounter:
        self._ctx = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)
        self._ctx.__enter__()
        return self

    def exit(self) -> None:
        if self._ctx is not None:
            ctx, self._ctx = self._ctx, None
            ctx.__exit__(None, None, None)

    def __enter__(self) -> SavedTensorCounter:
        return self.enter()

    def __exit__(self, *exc: Any) -> None:
        self.exit()


# ---------------------------------------------------------------------------------------------------------
# Tensor tracker
# ---------------------------------------------------------------------------------------------------------
def _make_tracker() -> Any:
    """Build a MemTracker subclass instance (import deferred: private torch API, may change)."""
    from torch.distributed._tools.mem_tracker import MemTracker  # noqa: PLC0415
    from torch.optim.optimizer import register_optimizer_step_pre_hook  # noqa: PLC0415

    class _StepMemTracker(MemTracker):
        """MemTracker that (1) never raises from its per-module bookkeeping hooks and (2) understands
        closure-based optimizer steps.

        (1) MemTracker's module hooks raise e.g. ``NotImplementedError`` when a top-level module runs
        twice in one tracked region (two views through one encoder). Those hooks only feed per-module
        snapshots; the global peak is updated per op in ``__torch_dispatch__``, so errors are recorded in
        ``hook_errors`` and ignored.

        (2) MemTracker labels everything allocated between the optimizer's step pre- and post-hooks as
        optimizer state. Lightning's automatic optimisation (and LBFGS-style code) runs forward and
        backward *inside* ``optimizer.step(closure)``, which would label every activation "Optstate". When
        ``step`` gets a closure the flag is cleared until :meth:`begin_optimizer_update` says the update
        proper begins (Lightning: ``on_before_optimizer_step``); the post-hook still files the state.
        """

        def __init__(self) -> None:
            super().__init__()
            self.hook_errors: list[str] = []
            self._closure_hook = None

        def _guard(self, fn: Callable[..., None], *args: Any) -> None:
            try:
                fn(*args)
            except Exception as err:  # noqa: BLE001 - bookkeeping only, see class docstring
                if len(self.hook_errors) < 10:
                    self.hook_errors.append(f"{type(err).__name__}: {err}")

        def _pre_fw_hook(self, module: nn.Module, inputs: Any) -> None:
            self._guard(super()._pre_fw_hook, module, inputs)

        def _post_fw_hook(self, module: nn.Module, inputs: Any, outputs: Any) -> None:
            self._guard(super()._post_fw_hook, module, inputs, outputs)

        def _pre_bw_hook(self, module: nn.Module, args: Any) -> None:
            self._guard(super()._pre_bw_hook, module, args)

        def _post_bw_hook(self, module: nn.Module, args: Any) -> None:
            self._guard(super()._post_bw_hook, module, args)

        def _register_global_optimizer_hook(self) -> None:
            super()._register_global_optimizer_hook()

            def _closure_pre_hook(optimizer: Any, args: Any, kwargs: Any) -> None:
                closure = kwargs.get("closure", args[0] if args else None)
                if closure is not None:
                    self._in_opt = False

            # Registered after MemTracker's own pre-hook, so it runs after it.
            self._closure_hook = register_optimizer_step_pre_hook(_closure_pre_hook)

        def _deregister_param_and_optimizer_hooks(self) -> None:
            super()._deregister_param_and_optimizer_hooks()
            if self._closure_hook is not None:
                self._closure_hook.remove()
                self._closure_hook = None

        def begin_optimizer_update(self) -> None:
            self._in_opt = True

    return _StepMemTracker()


def _snapshot_to_breakdown(dev_snap: Mapping[Any, int]) -> dict[str, int]:
    breakdown = dict.fromkeys(_BREAKDOWN_KEYS, 0)
    for key, value in dev_snap.items():
        name = _CATEGORY_NAMES.get(getattr(key, "value", key))
        if name is not None:
            breakdown[name] += int(value)
    return breakdown


def _flatten_tensors(obj: Any) -> list[torch.Tensor]:
    leaves, _ = tree_flatten(obj)
    return [leaf for leaf in leaves if isinstance(leaf, torch.Tensor)]


def _default_device(modules: Iterable[nn.Module]) -> Optional[torch.device]:
    for module in modules:
        for param in module.parameters():
            return param.device
    return None


class StepMemoryProbe:
    """Measures one training step between :meth:`start` and :meth:`stop` (see module docstring).

    Args:
        modules: modules whose parameters, buffers and ``.grad`` exist before the step (registered with
            MemTracker, and excluded from ``saved_bytes``).
        optimizers: optimizers whose state exists before the step.
        inputs: the batch (any nest of tensors; non-tensors ignored), registered as category ``other``.
        device: device whose numbers are reported; default: that of the first module parameter, else
            the device with the largest tracked peak.
        track_tensors: run MemTracker (peak / breakdown / activation numbers).
        track_saved: count saved-for-backward bytes.
        track_rss: sample process RSS.
        track_cuda: read the CUDA allocator peak (default: when ``device`` is CUDA). Resets
            ``torch.cuda``'s peak statistics of that device at :meth:`start`.
        strict: if False, a MemTracker failure at start/stop is recorded in ``tracker_error`` instead of
            raised (the step then still runs, measured by the other views).
        rss_interval_s: RSS sampling period.
    """

    def __init__(
        self,
        *,
        modules: Iterable[nn.Module] = (),
        optimizers: Iterable[torch.optim.Optimizer] = (),
        inputs: Any = (),
        device: Optional[Union[str, torch.device]] = None,
        track_tensors: bool = True,
        track_saved: bool = True,
        track_rss: bool = True,
        track_cuda: Optional[bool] = None,
        strict: bool = True,
        rss_interval_s: float = 1e-3,
    ) -> None:
        self.modules = tuple([modules] if isinstance(modules, nn.Module) else modules)
        self.optimizers = tuple([optimizers] if isinstance(optimizers, torch.optim.Optimizer) else optimizers)
        self.inputs = _flatten_tensors(inputs)
        self.device = torch.device(device) if device is not None else _default_device(self.modules)
        self.track_tensors = track_tensors
        self.track_saved = track_saved
        self.track_rss = track_rss
        if track_cuda is None:
            track_cuda = self.device is not None and self.device.type == "cuda"
        self.track_cuda = bool(track_cuda) and torch.cuda.is_available()
        self.strict = strict
        self.rss_interval_s = rss_interval_s
        self.tracker: Any = None
        self.tracker_error: Optional[str] = None
        self._counter: Optional[SavedTensorCounter] = None
        self._rss: Optional[_RssSampler] = None
        self._cuda_start: Optional[int] = None
        self._start_snap: dict[torch.device, Any] = {}
        self._active = False

    @property
    def active(self) -> bool:
        return self._active

    def _cuda_device(self) -> torch.device:
        if self.device is not None and self.device.type == "cuda":
            return self.device
        return torch.device("cuda", torch.cuda.current_device())

    def start(self) -> StepMemoryProbe:
        if self._active:
            raise RuntimeError("StepMemoryProbe.start() called twice without stop()")
        self._active = True
        if self.track_cuda:
            dev = self._cuda_device()
            torch.cuda.synchronize(dev)
            torch.cuda.reset_peak_memory_stats(dev)
            self._cuda_start = torch.cuda.memory_allocated(dev)
        if self.track_rss:
            self._rss = _RssSampler(interval_s=self.rss_interval_s)
            self._rss.start()
        if self.track_tensors:
            try:
                tracker = _make_tracker()
                tracker.track_external(*self.modules, *self.optimizers, *self.inputs)
                self._start_snap = tracker.get_tracker_snapshot("current")
                tracker.__enter__()
                self.tracker = tracker
            except Exception as err:
                self.tracker = None
                self.tracker_error = f"{type(err).__name__}: {err}"
                if self.strict:
                    self._stop_rss()
                    self._active = False
                    raise
        if self.track_saved:
            try:
                self._counter = SavedTensorCounter(exclude=self.modules).enter()
            except Exception:
                if self.tracker is not None:
                    self.tracker.__exit__(None, None, None)
                    self.tracker = None
                self._stop_rss()
                self._active = False
                raise
        return self

    def begin_optimizer_update(self) -> None:
        """Tell the tracker the optimizer update proper starts (closure-based steps, see MemTracker note)."""
        if self.tracker is not None:
            self.tracker.begin_optimizer_update()

    def _stop_rss(self) -> dict[str, Any]:
        if self._rss is None:
            return {}
        rss, self._rss = self._rss, None
        return rss.stop()

    def stop(self) -> dict[str, Any]:
        """End the measurement; returns the numbers (bytes; ``None`` where a view is off or failed).

        Keys: ``peak_bytes``, ``peak_activation_bytes``, ``breakdown`` (category -> bytes at the peak:
        parameter, buffer, gradient, activation, temp, optimizer, other), ``peak_bytes_by_device``,
        ``start_bytes`` / ``end_bytes`` (tracked bytes on the device at start / end), ``device``,
        ``saved_bytes``, ``saved_param_bytes``, ``num_saved``, ``rss_start_bytes``, ``rss_end_bytes``,
        ``rss_peak_bytes``, ``rss_maxrss_bytes``, ``rss_source``, ``cuda_peak_bytes``, ``cuda_start_bytes``,
        ``tracker_error``, ``tracker_hook_errors``.
        """
        if not self._active:
            raise RuntimeError("StepMemoryProbe.stop() without start()")
        self._active = False
        result: dict[str, Any] = {
            "peak_bytes": None,
            "peak_activation_bytes": None,
            "breakdown": None,
            "peak_bytes_by_device": None,
            "start_bytes": None,
            "end_bytes": None,
            "device": str(self.device) if self.device is not None else None,
            "saved_bytes": None,
            "saved_param_bytes": None,
            "num_saved": None,
            "rss_start_bytes": None,
            "rss_end_bytes": None,
            "rss_peak_bytes": None,
            "rss_maxrss_bytes": None,
            "rss_source": None,
            "cuda_peak_bytes": None,
            "cuda_start_bytes": None,
            "tracker_error": self.tracker_error,
            "tracker_hook_errors": [],
        }
        if self._counter is not None:
            counter, self._counter = self._counter, None
            counter.exit()
            result.update(
                saved_bytes=counter.saved_bytes,
                saved_param_bytes=counter.saved_param_bytes,
                num_saved=counter.num_saved,
            )
        if self.tracker is not None:
            tracker, self.tracker = self.tracker, None
            try:
                end_snap = tracker.get_tracker_snapshot("current")
                tracker.__exit__(None, None, None)
                result.update(self._tracker_numbers(tracker, end_snap))
                result["tracker_hook_errors"] = list(tracker.hook_errors)
            except Exception as err:
                result["tracker_error"] = self.tracker_error = f"{type(err).__name__}: {err}"
                if self.strict:
                    self._stop_rss()
                    raise
        result.update(self._stop_rss())
        if self.track_cuda:
            dev = self._cuda_device()
            torch.cuda.synchronize(dev)
            result["cuda_peak_bytes"] = int(torch.cuda.max_memory_allocated(dev))
            result["cuda_start_bytes"] = self._cuda_start
        return result

    def _tracker_numbers(self, tracker: Any, end_snap: Mapping[torch.device, Any]) -> dict[str, Any]:
        peak_snap = tracker.get_tracker_snapshot("peak")
        by_device = {str(dev): int(snap.get("Total", 0)) for dev, snap in peak_snap.items()}
        device = self.device
        if device is None and by_device:
            device = max(peak_snap, key=lambda dev: peak_snap[dev].get("Total", 0))
        dev_snap = peak_snap.get(device, {}) if device is not None else {}
        breakdown = _snapshot_to_breakdown(dev_snap)
        start_total = None
        if device is not None:
            start_total = int(self._start_snap.get(device, {}).get("Total", 0))
        return {
            "peak_bytes": int(dev_snap.get("Total", 0)),
            "peak_activation_bytes": breakdown["activation"] + breakdown["temp"],
            "breakdown": breakdown,
            "peak_bytes_by_device": by_device,
            "start_bytes": start_total,
            "end_bytes": int(end_snap.get(device, {}).get("Total", 0)) if device is not None else None,
            "device": str(device) if device is not None else None,
        }


def measure_step_memory(
    step_fn: Callable[[], Any],
    *,
    modules: Union[nn.Module, Iterable[nn.Module]] = (),
    optimizers: Union[torch.optim.Optimizer, Iterable[torch.optim.Optimizer]] = (),
    inputs: Any = (),
    device: Optional[Union[str, torch.device]] = None,
    track_tensors: bool = True,
    track_saved: bool = True,
    track_rss: bool = True,
    rss_interval_s: float = 1e-3,
) -> dict[str, Any]:
    """Run ``step_fn()`` once (one training step) and return its memory numbers in bytes.

    ``step_fn`` should do forward, backward and (optionally) the optimizer step, e.g.::

        def step():
            loss = model(x).sum()
            loss.backward()
            opt.step()
            opt.zero_grad()

        mem = measure_step_memory(step, modules=(model,), optimizers=(opt,), inputs=x)
        mem["peak_bytes"], mem["peak_activation_bytes"], mem["saved_bytes"], mem["breakdown"]

    Pass the batch as ``inputs`` so it is counted (as ``other``); tensors that exist before the call and
    are not registered are invisible to the tracker. Run a warm-up step first if the optimizer creates
    its state lazily and you do not want that in the peak. The return value of ``step_fn`` is stored
    under ``"output"``. On CUDA also ``cuda_peak_bytes``. See :meth:`StepMemoryProbe.stop` for all keys
    and the module docstring for definitions. MemTracker errors raise (``strict``).
    """
    probe = StepMemoryProbe(
        modules=modules,
        optimizers=optimizers,
        inputs=inputs,
        device=device,
        track_tensors=track_tensors,
        track_saved=track_saved,
        track_rss=track_rss,
        strict=True,
        rss_interval_s=rss_interval_s,
    )
    probe.start()
    try:
        output = step_fn()
    except BaseException:
        try:
            probe.stop()
        except Exception:  # noqa: BLE001 - the step's own error matters more
            pass
        raise
    result = probe.stop()
    result["output"] = output
    return result


# ---------------------------------------------------------------------------------------------------------
# Lightning callback
# ---------------------------------------------------------------------------------------------------------
def batch_size_of(batch: Any) -> Optional[int]:
    """Samples in a batch: dict -> length of its first tensor value; tuple/list -> of its first tensor;
    tensor -> ``len``; otherwise ``None`` (per-sample metrics are then skipped)."""
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0]) if batch.dim() > 0 else None
    if isinstance(batch, Mapping):
        values: Iterable[Any] = batch.values()
    elif isinstance(batch, (tuple, list)):
        values = batch
    else:
        return None
    for value in values:
        if isinstance(value, torch.Tensor) and value.dim() > 0:
            return int(value.shape[0])
    return None


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

    Batch size: see :func:`batch_size_of`; override :meth:`batch_size` for other batch layouts.
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
        self._warned_hooks = False
        self._seen_first = False
        self._last_sampled_step: Optional[int] = None
        self._sampled = False  # this batch is a sampled one (even if the probe failed to start)
        self._epoch_cuda_peak = 0

    # -- helpers ------------------------------------------------------------------------------------------
    def batch_size(self, batch: Any) -> Optional[int]:
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
        if raw.get("tracker_hook_errors") and not self._warned_hooks:
            self._warned_hooks = True
            warnings.warn(
                f"MemoryMonitor: MemTracker module bookkeeping reported {raw['tracker_hook_errors'][0]!r}; "
                "the peak is unaffected (per-module stats are not used).",
                RuntimeWarning,
                stacklevel=2,
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
