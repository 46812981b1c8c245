"""spikelight callbacks (thin: the measuring is in :mod:`spikelight.profiling`).

* :class:`SpikeEnergy` - firing rates, synaptic operations and estimated energy on validation/test
  batches (:mod:`spikelight.callbacks.energy`).
* :class:`MemoryMonitor` - training-step memory (:mod:`spikelight.callbacks.memory`).
* :class:`ConfusionMatrixPlot` - confusion-matrix PNGs (and W&B charts) of the sets a task scored
  (:mod:`spikelight.callbacks.confusion`).
* :class:`PlainProgressBar` - plain progress lines when stdout is a file (:mod:`spikelight.callbacks.progress`).
* :class:`PredictionWriter` - ``predict`` outputs under the run folder (:mod:`spikelight.callbacks.predictions`).

In configs: ``class_path: spikelight.callbacks.SpikeEnergy`` (the module paths work too).
"""

from spikelight.callbacks.confusion import ConfusionMatrixPlot
from spikelight.callbacks.energy import SpikeEnergy
from spikelight.callbacks.memory import MemoryMonitor
from spikelight.callbacks.predictions import PredictionWriter
from spikelight.callbacks.progress import PlainProgressBar

__all__ = [
    "ConfusionMatrixPlot",
    "MemoryMonitor",
    "PlainProgressBar",
    "PredictionWriter",
    "SpikeEnergy",
]
