"""Benchmarks and the chaos runner: `python -m bench.NAME` (make bench, make chaos)."""
