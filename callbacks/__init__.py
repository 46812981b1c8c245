"""spikelight callbacks (thin: the measuring is in :mod:`spikelight.profiling`).

* :class:`SpikeEnergy` - firing rates, synaptic operations and estimated energy on validation/test
  batches (:mod:`spikelight.callbacks.energy`).
* :class:`MemoryMonitor` - training-step memory (:mod:`spikelight.callbacks.memory`).

In configs: ``class_path: spikelight.callbacks.SpikeEnergy`` (the module paths work too).
"""

from spikelight.callbacks.energy import SpikeEnergy
from spikelight.callbacks.memory import MemoryMonitor

__all__ = [
    "MemoryMonitor",
    "SpikeEnergy",
]
