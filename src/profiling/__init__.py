"""Measuring libraries: spike energy meter and memory probes (used by callbacks and benchmarks)."""
