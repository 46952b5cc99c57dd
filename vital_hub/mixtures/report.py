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

COLUMNS = ["image_id", "images.list.element.path", "domain", "messages"]
KEYS = ("domain", "rounds", "answer_words", "figures", "licence", "retracted")
NOT_INDEXED = "not in fetch index"


def _shard_stats(path: Path, facts: dict | None) -> dict[str, Counter]:
    stats = {key: Counter() for key in KEYS}
    for batch in pq.ParquetFile(path).iter_batches(batch_size=2_000, columns=COLUMNS):
        for row in batch.to_pylist():
            if facts is not None:
                licence, retracted = facts.get(row["image_id"], (NOT_INDEXED, NOT_INDEXED))
                stats["licence"][licence] += 1
                stats["retracted"][retracted] += 1
            count_domain(stats["domain"], row["domain"])
            answers = [m for m in row["messages"] or [] if m["role"] == "assistant"]
            stats["rounds"][len(answers)] += 1
            for message in answers:
                words = sum(len((part.get("text") or "").split()) for part in message["content"] or [])
                stats["answer_words"][words] += 1
            images = row["images"] or []
            stats["figures"]["present" if any(i and i.get("path") for i in images) else "missing"] += 1
    return stats


def config_reports(out: Path, manifest: dict, facts: dict | None = None) -> dict[str, dict[str, Counter]]:
    """Per config, the sum of its shards' counters; each shard is read once. With `facts` (see figure_facts),
    rows are counted by their figure's licence code and retraction too."""
    per_shard: dict[str, dict[str, Counter]] = {}
    reports = {}
    for name, config in manifest["configs"].items():
        total = {key: Counter() for key in KEYS}
        for shard in config["shards"]:
            if shard not in per_shard:
                per_shard[shard] = _shard_stats(out / shard, facts)
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
        answers = "-" if middle is None else f"{middle:,}"
        cells = [f"`{name}`", f"{rows:,}", *(f"{domain[d]:,}" for d in DOMAINS)]
        cells += [f"{domain['multi-label']:,}", f"{domain['none true']:,}", f"{domain['missing']:,}"]
        cells += [f"{mean_rounds:.2f}", answers, f"{figures['present']:,} / {figures['missing']:,}"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def retracted_left_out(manifest: dict, config: str) -> str:
    """Source records a config's components left out as retracted: exact for whole components, estimated for
    sampled ones, "unknown" when a component was built without an images folder (nothing to know it from)."""
    total, exact = 0.0, True
    for part in manifest["configs"][config]["components"]:
        images = manifest["components"][part["name"]]["images"]
        if images is None:
            return "unknown"
        total += images.get("retracted_left_out", 0) * part["fraction"]
        exact = exact and part["fraction"] == 1.0
    return f"{round(total):,}" if exact else f"about {round(total):,}"


def licence_lines(reports: dict, manifest: dict, known: bool) -> list[str]:
    """Markdown: per config, rows by their figure's licence code and retraction, and the retracted left out."""
    if not known:
        return [
            "Licence codes and retractions of the rows' figures, and how many source records were left out as "
            "retracted: unknown (no images folder, or one without the fetch index of `vital fetch figures`, which "
            "records each figure's licence and its article's retraction).",
        ]
    codes = sorted({code for report in reports.values() for code in report["licence"]})
    columns = ["config", *codes, "figure retracted (kept)", "retraction unknown", "retracted left out"]
    lines = [
        "Rows by their figure's licence code (from the fetch index of the images folder; `unknown`: the article's "
        f"licence was not read; `{NOT_INDEXED}`: the figure was never fetched), rows kept although their figure's "
        "article is retracted (`--include-retracted`), and source records left out as retracted:",
        "",
        "| " + " | ".join(columns) + " |",
        "|---|" + "---:|" * (len(columns) - 1),
    ]
    for name, report in reports.items():
        retracted = report["retracted"]
        cells = [f"`{name}`", *(f"{report['licence'][code]:,}" for code in codes)]
        cells += [f"{retracted['yes']:,}", f"{retracted['unknown'] + retracted[NOT_INDEXED]:,}"]
        lines.append("| " + " | ".join([*cells, retracted_left_out(manifest, name)]) + " |")
    return lines


def write_plots(out: Path, reports: dict, manifest: dict) -> tuple[dict[str, str], dict[str, str]]:
    """One PNG per config and one per selected component's scores under report/; returns (config -> path,
    component -> path) relative to the repo (both empty without matplotlib). Other files of report/ are deleted,
    except `figures.png`, which `vital build figures` writes."""
    from vital_hub.mixtures.selection import plot_names, write_selection_plots

    plt = pyplot()
    keep = {"figures.png"}  # written by `vital build figures`
    if plt is not None:  # without matplotlib, older plots would be stale: they go
        keep |= {f"{name}.png" for name in reports} | {Path(p).name for p in plot_names(manifest).values()}
    clear_stale(out / REPORT_DIR, keep)
    if plt is None:
        return {}, {}
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
        histogram(lengths, report["answer_words"], "answer length", "#c44e52", "words")
        figures = report["figures"]
        fig.suptitle(
            f"{name}: {sum(report['rounds'].values()):,} rows, figures present {figures['present']:,}, "
            f"missing {figures['missing']:,}",
            fontsize=10,
        )
        relative = f"{REPORT_DIR}/{name}.png"
        save_png(plt, fig, out / relative)
        paths[name] = relative
    return paths, write_selection_plots(plt, out, manifest)
