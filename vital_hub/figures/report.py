"""The data report of the `figures` card: what the built config holds, as a table and as `report/figures.png`.

Counts figures present (status `ok`) and missing by status, retracted articles, licence codes (`unknown` where
the article's licence was not read), rows by domain (where the captions file gives one), caption length in words
and, for present figures, the longest side in pixels as the fetch index recorded it. The built shards are read
once, in these columns only: image bytes are neither read nor decoded.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq

from vital_hub.reporting import (
    DOMAIN_LABELS,
    REPORT_DIR,
    bars,
    clear_stale,
    count_domain,
    histogram,
    median,
    pyplot,
    save_png,
)

PLOT = f"{REPORT_DIR}/figures.png"
COLUMNS = ["pair_id", "status", "licence", "retracted", "domain", "caption"]
SECTION_START = "<!-- vital figures data report -->"
SECTION_END = "<!-- end of vital figures data report -->"


def figures_report(shards: list[Path], index_shards: list[Path]) -> dict[str, Counter]:
    """Counters of the built rows: status, licence, retracted, domain, caption words, longest side."""
    sizes = {}
    for shard in index_shards:
        table = pq.read_table(shard, columns=["pair_id", "width", "height"])
        for pair_id, width, height in zip(
            *(table[c].to_pylist() for c in ("pair_id", "width", "height")), strict=True
        ):
            if width and height:
                sizes[pair_id] = max(width, height)
    report = {key: Counter() for key in ("status", "licence", "retracted", "domain", "caption_words", "longest_side")}
    for shard in shards:
        for batch in pq.ParquetFile(shard).iter_batches(batch_size=10_000, columns=COLUMNS):
            for row in batch.to_pylist():
                report["status"][row["status"]] += 1
                report["licence"][row["licence"] or "unknown"] += 1
                retracted = row["retracted"]
                report["retracted"]["unknown" if retracted is None else "yes" if retracted else "no"] += 1
                count_domain(report["domain"], row["domain"])
                if row["caption"] is not None:
                    report["caption_words"][len(row["caption"].split())] += 1
                if row["status"] == "ok" and row["pair_id"] in sizes:
                    report["longest_side"][sizes[row["pair_id"]]] += 1
    return report


def _by_count(counts: Counter) -> dict:
    """Most frequent first, ties by name: the order of the licence table and of its bars."""
    return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))


def _median(histogram_: Counter) -> str:
    middle = median(histogram_)
    return "-" if middle is None else f"{middle:,}"


def report_lines(report: dict, plot: str | None) -> list[str]:
    """The card's markdown: figures by status, licences, domains, caption lengths, image sizes, the plot."""
    status, retracted = report["status"], report["retracted"]
    rows = sum(status.values())
    present = status.get("ok", 0)
    missing = ", ".join(f"{name} {count:,}" for name, count in sorted(status.items()) if name != "ok") or "none"
    captioned = sum(report["caption_words"].values())
    sized = sum(report["longest_side"].values())
    lines = [
        SECTION_START,
        "## Data report",
        "",
        f"{rows:,} figures: {present:,} present (image embedded), {rows - present:,} missing ({missing}); "
        f"{retracted['yes']:,} from retracted articles, {retracted['unknown']:,} whose retraction status is unknown "
        "(article metadata not read).",
        "",
        "| licence | figures |",
        "|---|---:|",
        *(f"| {name} | {count:,} |" for name, count in _by_count(report["licence"]).items()),
        "",
        "Rows by domain (from the captions file; a multi-label figure counts under each flag and once under "
        "multi-label):",
        "",
        "| " + " | ".join(DOMAIN_LABELS) + " |",
        "|" + "---:|" * len(DOMAIN_LABELS),
        "| " + " | ".join(f"{report['domain'][label]:,}" for label in DOMAIN_LABELS) + " |",
        "",
        f"Captions: {captioned:,} of {rows:,} figures have one; median length "
        f"{_median(report['caption_words'])} words. Image size (longest side, from the fetch index): "
        + (f"median {_median(report['longest_side'])} px over {sized:,} present figures." if sized else "unknown."),
    ]
    if plot:
        lines += ["", f"![data report of figures]({plot})"]
    return [*lines, SECTION_END]


def write_plot(out: Path, report: dict) -> str | None:
    """`report/figures.png` (its relative path), or None without matplotlib."""
    plt = pyplot()
    keep = {"figures.png"} if plt is not None else set()  # without matplotlib an older plot would be stale
    clear_stale(out / REPORT_DIR, keep, re.compile(r"^\.?figures\.png(\..*\.tmp)?$"))
    if plt is None:
        return None
    fig, panels = plt.subplots(1, 5, figsize=(20, 3.6))
    status = {name: report["status"][name] for name in sorted(report["status"], key=lambda s: (s != "ok", s))}
    bars(panels[0], status, "figures by status", "#4c72b0", rotate=True)
    bars(panels[1], _by_count(report["licence"]), "licence codes", "#8172b2", rotate=True)
    bars(
        panels[2],
        {label: report["domain"][label] for label in DOMAIN_LABELS},
        "rows by domain",
        "#55a868",
        rotate=True,
    )
    histogram(panels[3], report["caption_words"], "caption length", "#c44e52", "words")
    histogram(panels[4], report["longest_side"], "image size (present)", "#dd8452", "longest side, px")
    retracted = report["retracted"]
    fig.suptitle(
        f"figures: {sum(report['status'].values()):,} rows, present {report['status'].get('ok', 0):,}, "
        f"retracted {retracted['yes']:,}, retraction unknown {retracted['unknown']:,}",
        fontsize=10,
    )
    save_png(plt, fig, out / PLOT)
    return PLOT


def replace_section(body: str, lines: list[str]) -> str:
    """The card text with its figures data report replaced (or appended when it has none)."""
    section = "\n".join(lines)
    pattern = re.compile(re.escape(SECTION_START) + r".*?" + re.escape(SECTION_END), re.DOTALL)
    if pattern.search(body):
        return pattern.sub(lambda _: section, body, count=1)
    return body.rstrip("\n") + "\n\n" + section + "\n"


__all__ = ["figures_report", "replace_section", "report_lines", "write_plot"]
