"""Builders of tiny, random-weight but real models for tests and benchmarks (no downloads)."""
