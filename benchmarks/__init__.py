"""GPU benchmarks, one per kernel, named after it: `python -m benchmarks.benchmark_<op>`."""
