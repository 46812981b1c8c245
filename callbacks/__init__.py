"""spikelight callbacks: ``memory.MemoryMonitor`` (training memory), ``energy.SpikeEnergy`` (firing
rates, synaptic operations and estimated energy). Import by module path in configs, e.g.
``spikelight.callbacks.memory.MemoryMonitor``."""
