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

from vital_hub.io import atomic_path
from vital_hub.schema import DOMAINS

REPORT_DIR = "report"
LENGTH_BIN = 25  # words per answer-length bin
COLUMNS = ["images.list.element.path", "domain", "messages"]


def _shard_stats(path: Path) -> dict[str, Counter]:
    stats = {"domain": Counter(), "rounds": Counter(), "answer_words": Counter(), "figures": Counter()}
    for batch in pq.ParquetFile(path).iter_batches(batch_size=2_000, columns=COLUMNS):
        for row in batch.to_pylist():
            domain = row["domain"]
            flags = [name for name in DOMAINS if domain and domain.get(name)]
            if domain is None or all(domain.get(name) is None for name in DOMAINS):
                stats["domain"]["missing"] += 1
            elif not flags:
                stats["domain"]["none true"] += 1
            else:
                stats["domain"].update(flags)
                stats["domain"]["multi-label"] += len(flags) > 1
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


def _median(histogram: Counter) -> float | None:
    total = sum(histogram.values())
    if not total:
        return None
    seen = 0
    for value in sorted(histogram):
        seen += histogram[value]
        if seen * 2 >= total:
            return value
    return None


def summary_rows(reports: dict) -> list[str]:
    """Markdown table rows: config, rows, each domain, multi-label, none, missing, rounds, answers, figures."""
    lines = []
    for name, report in reports.items():
        domain, rounds, figures = report["domain"], report["rounds"], report["figures"]
        rows = sum(rounds.values())
        mean_rounds = sum(k * v for k, v in rounds.items()) / rows if rows else 0
        median = _median(report["answer_words"])
        answers = "-" if median is None else f"{median}-{median + LENGTH_BIN - 1}"
        cells = [f"`{name}`", f"{rows:,}", *(f"{domain[d]:,}" for d in DOMAINS)]
        cells += [f"{domain['multi-label']:,}", f"{domain['none true']:,}", f"{domain['missing']:,}"]
        cells += [f"{mean_rounds:.2f}", answers, f"{figures['present']:,} / {figures['missing']:,}"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def write_plots(out: Path, reports: dict) -> dict[str, str]:
    """One PNG per config under report/; returns config -> path relative to the repo (empty without matplotlib)."""
    try:
        import matplotlib
    except ModuleNotFoundError:
        return {}
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder = out / REPORT_DIR
    wanted = {f"{name}.png" for name in reports}
    for stale in sorted(folder.iterdir()) if folder.is_dir() else []:
        if stale.is_file() and stale.name not in wanted:  # a killed build's temporary file, a dropped config's plot
            stale.unlink()
    paths = {}
    for name, report in reports.items():
        fig, (domains, rounds, lengths) = plt.subplots(1, 3, figsize=(13, 3.4))
        labels = [*DOMAINS, "multi-label", "none true", "missing"]
        domains.bar(labels, [report["domain"][label] for label in labels], color="#4c72b0")
        domains.set_title("rows by domain")
        domains.tick_params(axis="x", rotation=45, labelsize=8)
        counts = sorted(report["rounds"])
        rounds.bar([str(c) for c in counts], [report["rounds"][c] for c in counts], color="#55a868")
        rounds.set_title("rounds per conversation")
        rounds.set_xlabel("assistant turns")
        bins = sorted(report["answer_words"])
        lengths.bar(
            bins, [report["answer_words"][b] for b in bins], width=LENGTH_BIN * 0.9, align="edge", color="#c44e52"
        )
        lengths.set_title("answer length")
        lengths.set_xlabel("words")
        figures = report["figures"]
        fig.suptitle(
            f"{name}: {sum(report['rounds'].values()):,} rows, figures present {figures['present']:,}, "
            f"missing {figures['missing']:,}",
            fontsize=10,
        )
        fig.tight_layout()
        relative = f"{REPORT_DIR}/{name}.png"
        with atomic_path(out / relative, ".png") as tmp:
            fig.savefig(tmp, format="png", dpi=80, metadata={"Software": None})
        plt.close(fig)
        paths[name] = relative
    return paths
