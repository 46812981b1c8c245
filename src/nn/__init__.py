"""Spiking building blocks: neurons, surrogate gradients (more modules are added by others)."""

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
