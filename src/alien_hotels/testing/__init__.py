"""Test and benchmark helpers: tiny random-weight real models, loopback servers (no downloads)."""
