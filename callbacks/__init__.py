"""spikelight callbacks (thin: the measuring is in :mod:`spikelight.profiling`).

* :class:`SpikeEnergy` - firing rates, synaptic operations and estimated energy on validation/test
  batches (:mod:`spikelight.callbacks.energy`).
* :class:`MemoryMonitor` - training-step memory (:mod:`spikelight.callbacks.memory`).
* :class:`ConfusionMatrixPlot` - confusion-matrix PNGs (and W&B charts) of the sets a task scored
  (:mod:`spikelight.callbacks.confusion`).

In configs: ``class_path: spikelight.callbacks.SpikeEnergy`` (the module paths work too).
"""

from spikelight.callbacks.confusion import ConfusionMatrixPlot
from spikelight.callbacks.energy import SpikeEnergy
from spikelight.callbacks.memory import MemoryMonitor

__all__ = [
    "ConfusionMatrixPlot",
    "MemoryMonitor",
    "SpikeEnergy",
]
