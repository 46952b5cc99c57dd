"""Counting and plotting shared by the data reports of the dataset cards (`vital build instructions` and
`vital build figures`): domain buckets, histogram medians, and deterministic PNG files written atomically.

Plots need matplotlib (the `eval` or `audit` extra); `pyplot()` returns None without it and the cards keep their
tables only.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

from vital_hub.io import atomic_path
from vital_hub.schema import DOMAINS

REPORT_DIR = "report"
DOMAIN_LABELS = (*DOMAINS, "multi-label", "none true", "missing")


def count_domain(counts: Counter, domain: dict | None) -> None:
    """Add one row's domain: each true flag, `multi-label` when several, `none true` when all flags are false,
    `missing` when the row has no domain (or every flag is null)."""
    if domain is None or all(domain.get(name) is None for name in DOMAINS):
        counts["missing"] += 1
        return
    flags = [name for name in DOMAINS if domain.get(name)]
    if not flags:
        counts["none true"] += 1
        return
    counts.update(flags)
    counts["multi-label"] += len(flags) > 1


def median(histogram: Counter) -> float | None:
    """The median key of a {value: count} histogram (the lower one on an even split); None when empty."""
    total = sum(histogram.values())
    seen = 0
    for value in sorted(histogram):
        seen += histogram[value]
        if seen * 2 >= total:
            return value
    return None


def pyplot():
    """matplotlib.pyplot on the Agg backend, or None when matplotlib is not installed."""
    try:
        import matplotlib
    except ModuleNotFoundError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def bars(axis, counts: dict, title: str, color: str, xlabel: str | None = None, rotate: bool = False) -> None:
    """A bar panel of {label: count} in the given order; an empty panel says "none" instead of showing nothing."""
    labels = [str(label) for label in counts]
    axis.bar(labels, list(counts.values()), color=color)
    axis.set_title(title)
    if xlabel:
        axis.set_xlabel(xlabel)
    if rotate:
        axis.tick_params(axis="x", rotation=45, labelsize=8)
    finish_axis(axis, bool(counts))


def rebin(counts: Counter, bins: int = 30) -> tuple[Counter, int]:
    """{value: count} of whole numbers grouped into at most about `bins` bins of a whole-number width that fits
    their range (so 28-35 word answers get 1-word bins, 20-900 word ones 30-word bins); (bin start -> count,
    width)."""
    if not counts:
        return Counter(), 1
    low, high = min(counts), max(counts)
    width = max(1, -(-(high - low + 1) // bins))
    grouped = Counter()
    for value, count in counts.items():
        grouped[value // width * width] += count
    return grouped, width


def histogram(axis, counts: Counter, title: str, color: str, xlabel: str) -> None:
    """Bars of the {whole-number value: count} histogram, binned to fit its range."""
    grouped, width = rebin(counts)
    starts = sorted(grouped)
    axis.bar(starts, [grouped[s] for s in starts], width=width * 0.9, align="edge", color=color)
    if 0 < len(starts) <= 3:
        axis.set_xticks(starts)  # one or two values: a tick at each bin start, not a scale of fractions
        axis.set_xlim(starts[0] - width, starts[-1] + 2 * width)
    axis.set_title(title)
    axis.set_xlabel(xlabel)
    finish_axis(axis, bool(counts))


def finish_axis(axis, has_data: bool) -> None:
    """Whole-number count ticks; an empty panel says "none" with no axis ticks instead of a meaningless scale."""
    from matplotlib.ticker import MaxNLocator

    axis.yaxis.set_major_locator(MaxNLocator(integer=True))
    if not has_data:
        axis.set_xticks([])
        axis.set_yticks([])
        axis.text(0.5, 0.5, "none", ha="center", va="center", transform=axis.transAxes, color="grey")


def save_png(plt, fig, path: Path) -> None:
    """Write the figure as a PNG without the Software/date metadata (identical inputs give identical bytes)."""
    fig.tight_layout()
    with atomic_path(path, ".png") as tmp:
        fig.savefig(tmp, format="png", dpi=80, metadata={"Software": None})
    plt.close(fig)


def clear_stale(folder: Path, keep: set[str], owned: re.Pattern | None = None) -> None:
    """Delete files of `folder` not in `keep`: all of them, or only the names `owned` matches (so that a report
    writer leaves another writer's plots alone). Temporary files of a killed build go too."""
    for stale in sorted(folder.iterdir()) if folder.is_dir() else []:
        if stale.is_file() and stale.name not in keep and (owned is None or owned.match(stale.name)):
            stale.unlink()
