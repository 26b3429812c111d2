"""Synthetic data generators for tests and benchmarks."""
