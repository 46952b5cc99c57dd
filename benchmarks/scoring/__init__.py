"""The pieces of `benchmarks/score_candidates.py`: synthetic data and the measurements."""
