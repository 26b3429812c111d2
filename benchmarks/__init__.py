"""Benchmarks: print timings and memory, with a baseline measured in the same run."""
