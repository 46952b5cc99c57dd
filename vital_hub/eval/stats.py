"""Small statistics shared by the judges: means of ratios and percentile bootstrap intervals."""

from __future__ import annotations

from collections.abc import Sequence


def bootstrap_ci(values: Sequence[float], samples: int = 1000, seed: int = 0, level: float = 0.95):
    """Percentile bootstrap interval of the mean, resampling questions; None below two values (no spread)."""
    import numpy as np

    if len(values) < 2 or samples < 1:
        return None
    rng = np.random.default_rng(seed)
    data = np.asarray(values, dtype=float)
    means = data[rng.integers(0, len(data), size=(samples, len(data)))].mean(axis=1)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return [float(low), float(high)]


def mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None
