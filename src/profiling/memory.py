"""Training-step memory measurement (a library: the ``MemoryMonitor`` callback and the benchmarks use it).

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
* **Process RSS**. The current resident set size sampled from a background thread every
  ``rss_interval_s`` (default 1 ms) plus once at start and end (:mod:`spikelight.profiling.rss`).
  ``rss_peak_bytes`` is the largest sample: a lower bound on the true peak RSS during the step, of the
  *whole process* - useful on CPU, meaningless for GPU memory. ``rss_maxrss_bytes`` reports the lifetime
  high-water mark (``ru_maxrss``) for reference.
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

Units: functions return bytes; :data:`MB` = 2**20 bytes (MiB) for those who log MB.

Public API:

* :func:`measure_step_memory` - measure one call of a step function (for benchmarks).
* :class:`StepMemoryProbe` - the same split into ``start()`` / ``stop()`` (for code with hooks, e.g.
  :class:`spikelight.callbacks.MemoryMonitor`).
* :class:`SavedTensorCounter` - saved-for-backward bytes alone.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Optional, Union

import torch
from torch import nn
from torch.utils._mode_utils import no_dispatch
from torch.utils._pytree import tree_flatten
from torch.utils.weak import WeakIdKeyDictionary

from spikelight.profiling.rss import RssSampler, maxrss_bytes

__all__ = ["MB", "SavedTensorCounter", "StepMemoryProbe", "maxrss_bytes", "measure_step_memory"]

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
    """Build a :class:`_StepMemTracker` (import deferred: private torch API, may change)."""
    from torch.distributed._tools.mem_tracker import MemTracker  # noqa: PLC0415
    from torch.optim.optimizer import register_optimizer_step_pre_hook  # noqa: PLC0415

    class _StepMemTracker(MemTracker):
        """MemTracker for the peak of one step: (1) no per-module statistics and (2) closure-based
        optimizer steps understood.

        (1) MemTracker's per-module hooks keep a snapshot history per module (unused here: the step's
        peak is updated per op in ``__torch_dispatch__``) and refuse a root module that runs twice in one
        tracked region (two views through one encoder: ``NotImplementedError``, "multiple iterative
        calls"). This tracker's module hooks do only what the per-op categories need, as MemTracker does
        it: the first forward of a module registers its parameters with gradient hooks (weight gradients
        count as ``Gradient``, not ``Temp``), and a module forward during backward marks a recomputed
        region (activation checkpointing, reversible networks: its tensors count as ``Activation``).

        (2) MemTracker labels everything allocated between the optimizer's step pre- and post-hooks as
        optimizer state. Lightning's automatic optimisation (and LBFGS-style code) runs forward and
        backward *inside* ``optimizer.step(closure)``, which would label every activation "Optstate". When
        ``step`` gets a closure the flag is cleared until :meth:`begin_optimizer_update` says the update
        proper begins (Lightning: ``on_before_optimizer_step``); the post-hook still files the state.
        """

        def __init__(self) -> None:
            super().__init__()
            self._closure_hook = None
            self._seen_modules: weakref.WeakSet[nn.Module] = weakref.WeakSet()

        def _pre_fw_hook(self, module: nn.Module, inputs: Any) -> None:
            if module not in self._seen_modules:
                self._seen_modules.add(module)
                # frozen modules (e.g. SVL's CLIP towers) get no gradient hooks: torch refuses them
                hooks = all(p.requires_grad for p in module.parameters())
                self._track_module_params_and_buffers(module, install_grad_hooks=hooks)
            elif self._mod_tracker.is_bw and self._ac_mod is None:  # outermost recomputed module
                self._ac_mod = weakref.ref(module)
                self._in_ac = True

        def _post_fw_hook(self, module: nn.Module, inputs: Any, outputs: Any) -> None:
            if self._mod_tracker.is_bw and self._ac_mod is not None and self._ac_mod() is module:
                self._ac_mod = None
                self._in_ac = False

        def _pre_bw_hook(self, module: nn.Module, args: Any) -> None:
            pass

        def _post_bw_hook(self, module: nn.Module, args: Any) -> None:
            pass

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
        self._rss: Optional[RssSampler] = None
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
            self._rss = RssSampler(interval_s=self.rss_interval_s)
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
        ``tracker_error``.
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
