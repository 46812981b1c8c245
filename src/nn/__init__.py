"""Spiking building blocks.

* :mod:`~spikelight.nn.neurons` - LIF / I-LIF neurons (exported here), binary spikes, spike-driven unfolding;
* :mod:`~spikelight.nn.surrogate` - surrogate gradients (exported here);
* :mod:`~spikelight.nn.sparse_tensor` / :mod:`~spikelight.nn.sparse_conv` - sparse voxel tensors and
  sparse 3D convolutions (pure PyTorch, spconv as an optional backend).

Energy and memory measurement are in :mod:`spikelight.profiling`.
"""

from spikelight.nn.neurons import ILIF, LIF, BinarySpike, SpikingNeuron, spike_driven_forward, unfold_spikes
from spikelight.nn.surrogate import surrogate, surrogate_grad

__all__ = [
    "ILIF",
    "LIF",
    "BinarySpike",
    "SpikingNeuron",
    "spike_driven_forward",
    "surrogate",
    "surrogate_grad",
    "unfold_spikes",
]
