"""Benchmarks and study protocols of xpl-hf. Run each from the repository root as a module, e.g.
``python -m bench.reproduce --help``; their shared pieces live in :mod:`bench.protocol`."""
