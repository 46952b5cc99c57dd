"""What a `vital select` output says about a mixture component built from it: the selector, its revision, how
many candidates were scored, kept and unreadable, the cut (the score of the last kept candidate) and a histogram
of every candidate's score, for the card's data report.

`vital select --out DIR` writes `selected.json` (the component file), `selection.json`, `selected.parquet` and
`scores/shard-*.parquet` (every candidate's score, null where its figure was unreadable) side by side. With the
scores the histogram covers all candidates; with only `selected.parquet` it covers the kept ones. The summary is
recomputed from those files on every build (a few columns), so a resumed build records the same one.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pyarrow.parquet as pq

BINS = 40


def _histogram(scores: list[float]) -> dict:
    low, high = min(scores), max(scores)
    width = (high - low) / BINS
    counts = [0] * BINS
    for score in scores:
        counts[min(BINS - 1, int((score - low) / width)) if width > 0 else 0] += 1
    return {"low": low, "high": high, "counts": counts}


def _scores(files: list[Path]) -> list[float | None]:
    values: list[float | None] = []
    for file in files:
        try:
            values += pq.read_table(file, columns=["score"])["score"].to_pylist()
        except (OSError, KeyError, ValueError) as err:
            raise ValueError(f"{file}: not a scores file written by `vital select` ({err})") from None
    return values


def selection_summary(component_file: Path) -> dict | None:
    """The selection behind a component file, from the files `vital select` wrote beside it; None without them."""
    folder = component_file.parent
    summary_file, kept_file = folder / "selection.json", folder / "selected.parquet"
    score_files = sorted((folder / "scores").glob("shard-*.parquet"))
    if not summary_file.is_file() and not kept_file.is_file():
        return None
    run: dict = {}
    if summary_file.is_file():
        try:
            run = json.loads(summary_file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise ValueError(f"{summary_file}: not a selection summary written by `vital select` ({err})") from None
    if not run and kept_file.is_file():
        table = pq.read_table(kept_file, columns=["score", "selector", "selector_revision"])
        kept_scores = table["score"].to_pylist()
        run = {
            "selector": table["selector"][0].as_py() if table.num_rows else None,
            "selector_revision": table["selector_revision"][0].as_py() if table.num_rows else None,
            "kept": table.num_rows,
            "score_of_last_kept": kept_scores[-1] if kept_scores else None,
        }
    if score_files:
        values, covers = _scores(score_files), "all candidates"
    elif kept_file.is_file():
        values, covers = _scores([kept_file]), "kept candidates only (no scores/ beside the component)"
    else:
        values, covers = [], "unavailable (no scores/ or selected.parquet beside the component)"
    scored = [v for v in values if v is not None and not math.isnan(v)]
    return {
        "selector": run.get("selector"),
        "selector_revision": run.get("selector_revision"),
        "scored": len(scored) if score_files else run.get("scored"),
        "kept": run.get("kept"),
        "unreadable": len(values) - len(scored) if score_files else run.get("unreadable_images"),
        "cut": run.get("score_of_last_kept"),
        "histogram_covers": covers,
        "histogram": _histogram(scored) if scored else None,
    }


def _cell(value, spec: str = ",") -> str:
    return "unknown" if value is None else format(value, spec)


def selection_lines(manifest: dict, plots: dict[str, str], builtin: set[str]) -> list[str]:
    """Markdown: per selected component, the selector, counts and cut, and its score plot; a user component
    without `vital select` files beside it is named as having no distribution."""
    selected = {n: c["selection"] for n, c in manifest["components"].items() if c.get("selection")}
    plain = [n for n, c in manifest["components"].items() if not c.get("selection") and n not in builtin]
    if not selected and not plain:
        return []
    lines = ["", "### Selector scores", ""]
    if selected:
        lines += [
            "| component | selector | revision | scored | kept | unreadable figures | cut (last kept score) |"
            " histogram of |",
            "|---|---|---|---:|---:|---:|---:|---|",
        ]
        for name, s in selected.items():
            lines.append(
                f"| `{name}` | {s['selector'] or 'unknown'} | `{s['selector_revision'] or 'unknown'}` "
                f"| {_cell(s['scored'])} | {_cell(s['kept'])} | {_cell(s['unreadable'])} | {_cell(s['cut'], '.4f')} "
                f"| {s['histogram_covers']} |"
            )
        lines += [f"\n![selector scores of {name}]({path})" for name, path in plots.items()]
    for name in plain:
        lines.append(
            f"\n`{name}`: no `vital select` output beside `{manifest['components'][name]['source']['file']}` "
            "(selection.json, scores/, selected.parquet): the score distribution is unavailable."
        )
    return lines


def plot_names(manifest: dict) -> dict[str, str]:
    """component -> the relative path of its score plot, for the components that have a histogram."""
    return {
        name: f"report/selection-{name}.png"
        for name, component in manifest["components"].items()
        if (component.get("selection") or {}).get("histogram")
    }


def write_selection_plots(plt, out: Path, manifest: dict) -> dict[str, str]:
    """One histogram per selected component with the cut as a vertical line; returns component -> path."""
    from vital_hub.reporting import finish_axis, save_png

    paths = plot_names(manifest)
    for name, path in paths.items():
        summary = manifest["components"][name]["selection"]
        histogram = summary["histogram"]
        width = (histogram["high"] - histogram["low"]) / BINS or 1.0
        starts = [histogram["low"] + i * width for i in range(BINS)]
        fig, axis = plt.subplots(figsize=(7, 3.4))
        axis.bar(starts, histogram["counts"], width=width * 0.95, align="edge", color="#4c72b0")
        if summary["cut"] is not None:
            axis.axvline(summary["cut"], color="#c44e52", linestyle="--", label=f"cut {summary['cut']:.4f}")
            axis.legend(fontsize=8, loc="best")
        finish_axis(axis, True)
        axis.set_xlabel("selector score")
        axis.set_ylabel("candidates")
        axis.set_title(
            f"{name}: {summary['histogram_covers']}; scored {_cell(summary['scored'])}, kept {_cell(summary['kept'])}, "
            f"unreadable {_cell(summary['unreadable'])}",
            fontsize=9,
        )
        save_png(plt, fig, out / path)
    return paths
