"""Measuring libraries, used by the callbacks (:mod:`spikelight.callbacks`) and the benchmarks.

* :mod:`spikelight.profiling.energy` - spike-energy meter (``EnergyMeter``, ``measure_energy``); report
  rows and formatting in :mod:`~spikelight.profiling.energy_report`, FLOP formulas in
  :mod:`~spikelight.profiling.flops`.
* :mod:`spikelight.profiling.memory` - training-step memory (``measure_step_memory``,
  ``StepMemoryProbe``, ``SavedTensorCounter``); process RSS in :mod:`~spikelight.profiling.rss`.
"""
