"""GPU benchmarks, each runnable as `python -m benchmarks.benchmark_<name>`; a kernel's benchmark takes its name."""
