"""Metrics kept as `evaluate` modules (one folder each, loadable with `evaluate.load(metric_path(name))`)."""

from pathlib import Path

METRICS_DIR = Path(__file__).resolve().parent
KNOWN_METRICS = ("med_vqa",)


def metric_path(name: str) -> str:
    """The folder to pass to `evaluate.load`, failing with the known names."""
    if name not in KNOWN_METRICS:
        raise KeyError(f"unknown metric {name!r}; known: {list(KNOWN_METRICS)}")
    return str(METRICS_DIR / name)
