"""The pieces of `benchmarks/sft_throughput.py`: cases, worker, driver, profiling."""
