"""Resident set size (RSS) of this process: the current value, its lifetime high-water mark, and a
background sampler that finds the peak during a stretch of code (used by
:mod:`spikelight.profiling.memory`).

``ru_maxrss`` (:func:`maxrss_bytes`) is the high-water mark of the whole process lifetime, so it cannot
isolate one step; :class:`RssSampler` therefore samples the current RSS (``/proc/self/statm``; ``psutil``
when installed and ``/proc`` is absent) from a background thread every ``interval_s`` (a busy Python main
thread can delay samples by up to ``sys.getswitchinterval()``), plus once at start and end. Its peak is a
lower bound on the true peak RSS of the *whole process* (interpreter, libraries, allocator caches,
data-loader buffers, other threads).
"""

from __future__ import annotations

import os
import resource
import sys
import threading
from typing import Any, Optional

__all__ = ["RssSampler", "maxrss_bytes"]


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


class RssSampler:
    """Background thread sampling the current RSS; ``peak`` is the largest sample seen."""

    def __init__(self, *, interval_s: float = 1e-3) -> None:
        self.interval_s = interval_s
        self._reader = _RssReader()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self.start_bytes: Optional[int] = None
        self.end_bytes: Optional[int] = None
        self.peak: Optional[int] = None
        #: number of reads taken so far (a caller can wait for the background thread to have sampled)
        self.samples = 0

    def _sample(self) -> Optional[int]:
        value = self._reader.read()
        self.samples += 1
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
