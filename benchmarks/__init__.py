"""Benchmarks of pmdrop, run from the checkout: ``python -m benchmarks.bench`` (CPU), ``benchmarks.bench_compile``,
``benchmarks.bench_gpu``. Not part of the installed package."""
