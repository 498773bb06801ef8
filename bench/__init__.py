"""Benchmarks: `python -m bench [--quick]` (see bench/README.md). Never part of the test suite."""
