"""Benchmarks: baselines (Pop, ItemKNN, EASE, Multi-VAE), the quality harness and speed scripts.

Run as modules from the repository root, e.g. ``python -m benchmarks.quality --help``.
"""
