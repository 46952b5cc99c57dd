"""The data report of the instructions card: what each config holds, as counts and as PNG plots in the repo.

Per config: rows by domain (each of the five flags, rows with several flags, rows whose flags are all false, rows
without a domain), rounds per conversation, answer lengths in words, and figures present or missing. Each shard
is read once (without its image bytes), whatever number of configs list it; a config's report is the sum of its
shards'. Plots need matplotlib (the `eval` or `audit` extra); without it the card keeps the tables only.
"""

from __future__ import annotations

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
from vital_hub.schema import DOMAINS

LENGTH_BIN = 25  # words per answer-length bin
COLUMNS = ["images.list.element.path", "domain", "messages"]


def _shard_stats(path: Path) -> dict[str, Counter]:
    stats = {"domain": Counter(), "rounds": Counter(), "answer_words": Counter(), "figures": Counter()}
    for batch in pq.ParquetFile(path).iter_batches(batch_size=2_000, columns=COLUMNS):
        for row in batch.to_pylist():
            count_domain(stats["domain"], row["domain"])
            answers = [m for m in row["messages"] or [] if m["role"] == "assistant"]
            stats["rounds"][len(answers)] += 1
            for message in answers:
                words = sum(len((part.get("text") or "").split()) for part in message["content"] or [])
                stats["answer_words"][words // LENGTH_BIN * LENGTH_BIN] += 1
            images = row["images"] or []
            stats["figures"]["present" if any(i and i.get("path") for i in images) else "missing"] += 1
    return stats


def config_reports(out: Path, manifest: dict) -> dict[str, dict[str, Counter]]:
    per_shard: dict[str, dict[str, Counter]] = {}
    reports = {}
    for name, config in manifest["configs"].items():
        total = {"domain": Counter(), "rounds": Counter(), "answer_words": Counter(), "figures": Counter()}
        for shard in config["shards"]:
            if shard not in per_shard:
                per_shard[shard] = _shard_stats(out / shard)
            for key, counts in per_shard[shard].items():
                total[key].update(counts)
        reports[name] = total
    return reports


def summary_rows(reports: dict) -> list[str]:
    """Markdown table rows: config, rows, each domain, multi-label, none, missing, rounds, answers, figures."""
    lines = []
    for name, report in reports.items():
        domain, rounds, figures = report["domain"], report["rounds"], report["figures"]
        rows = sum(rounds.values())
        mean_rounds = sum(k * v for k, v in rounds.items()) / rows if rows else 0
        middle = median(report["answer_words"])
        answers = "-" if middle is None else f"{middle}-{middle + LENGTH_BIN - 1}"
        cells = [f"`{name}`", f"{rows:,}", *(f"{domain[d]:,}" for d in DOMAINS)]
        cells += [f"{domain['multi-label']:,}", f"{domain['none true']:,}", f"{domain['missing']:,}"]
        cells += [f"{mean_rounds:.2f}", answers, f"{figures['present']:,} / {figures['missing']:,}"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def write_plots(out: Path, reports: dict) -> dict[str, str]:
    """One PNG per config under report/; returns config -> path relative to the repo (empty without matplotlib).
    Other files of report/ are deleted, except `figures.png`, which `vital build figures` writes."""
    plt = pyplot()
    clear_stale(out / REPORT_DIR, {f"{name}.png" for name in reports} | {"figures.png"})
    if plt is None:
        return {}
    paths = {}
    for name, report in reports.items():
        fig, (domains, rounds, lengths) = plt.subplots(1, 3, figsize=(13, 3.4))
        bars(
            domains,
            {label: report["domain"][label] for label in DOMAIN_LABELS},
            "rows by domain",
            "#4c72b0",
            rotate=True,
        )
        counts = {c: report["rounds"][c] for c in sorted(report["rounds"])}
        bars(rounds, counts, "rounds per conversation", "#55a868", xlabel="assistant turns")
        histogram(lengths, report["answer_words"], LENGTH_BIN, "answer length", "#c44e52", "words")
        figures = report["figures"]
        fig.suptitle(
            f"{name}: {sum(report['rounds'].values()):,} rows, figures present {figures['present']:,}, "
            f"missing {figures['missing']:,}",
            fontsize=10,
        )
        relative = f"{REPORT_DIR}/{name}.png"
        save_png(plt, fig, out / relative)
        paths[name] = relative
    return paths
