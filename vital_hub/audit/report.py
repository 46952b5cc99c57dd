"""The audit's outputs: the terminal table, the contact sheet of top matches, and a decontaminated mixture YAML."""

from __future__ import annotations

import io
from pathlib import Path

import yaml

from vital_hub.audit.data import TrainSource, open_training
from vital_hub.io import atomic_path

REASONS = ("pair_id", "pmid", "pmcid", "sha256", "phash", "text")


def print_table(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    verified = ", verified" if report.get("verified") else ""
    table = Table(
        title=f"contamination audit of {report['train']} (pHash distance <= {report['max_distance']}{verified})"
    )
    for column in ("config", "eval set", "rows", *REASONS, "flagged rows", "eval figures hit"):
        table.add_column(column, justify="left" if column in ("config", "eval set") else "right")
    for config, entry in report["configs"].items():
        for eval_name, counts in entry["eval_sets"].items():
            table.add_row(
                config,
                eval_name,
                f"{entry['rows']:,}",
                *(f"{counts[r]:,}" for r in REASONS),
                f"{counts['flagged_rows']:,}",
                f"{counts['eval_figures_hit']:,}",
            )
    Console().print(table)


def write_sheet(report: dict, eval_sets, path: Path, top: int = 24) -> int:
    """A PNG of the top matches that have both figures: evaluation figure left, training figure right."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    figures = {(e.name, f.image): f.data for e in eval_sets for f in e.figures}
    shown = [m for m in report["matches"] if figures.get((m["eval_set"], m["eval_image"]))][: top * 4]
    source = open_training(
        report["train"], list(report["configs"]) if report["train_kind"] == "instructions" else None
    )
    train_images = dict(source.images({(m["component"], m["row_id"]) for m in shown})) if shown else {}
    shown = [m for m in shown if train_images.get((m["component"], m["row_id"]))][:top]
    if not shown:
        return 0
    fig, axes = plt.subplots(len(shown), 2, figsize=(7, 2.6 * len(shown)), squeeze=False)
    for row, match in zip(axes, shown, strict=True):
        for ax, data, title in (
            (row[0], figures[(match["eval_set"], match["eval_image"])], f"{match['eval_set']}: {match['eval_image']}"),
            (row[1], train_images[(match["component"], match["row_id"])], f"{match['component']}: {match['row_id']}"),
        ):
            with Image.open(io.BytesIO(data)) as image:
                full_width = image.size[0]
                image.draft("RGB", (256, 256))
                image = image.convert("RGB")
                image.thumbnail((256, 256))
                ax.imshow(image)
            region = (match.get("figure_match") or {}).get("region")
            if ax is row[1] and region:  # the matched region of the training figure
                scale = image.size[0] / full_width
                left, top, right, bottom = (v * scale for v in region)
                ax.add_patch(plt.Rectangle((left, top), right - left, bottom - top, fill=False, color="red", lw=1.5))
            ax.set_title(title[:48], fontsize=7)
            ax.axis("off")
        distance = "-" if match["distance"] is None else match["distance"]
        figure_match = match.get("figure_match") or {}
        detail = [f"d={distance}", *match["reasons"]]
        if figure_match.get("signal"):
            detail += [figure_match["signal"], f"conf {figure_match['confidence']}", figure_match["orientation"]]
        detail += [f"{t['field']} {t['score']:.2f}" for t in match.get("text", [])[:2]]
        row[1].text(
            1.02,
            0.5,
            "\n".join(str(d) for d in detail),
            transform=row[1].transAxes,
            fontsize=7,
            va="center",
        )
    fig.tight_layout()
    with atomic_path(path, ".png") as tmp:
        fig.savefig(tmp, format="png", dpi=80, metadata={"Software": None})
    plt.close(fig)
    return len(shown)


def write_mixture(report: dict, source: TrainSource, path: Path) -> dict:
    """A mixture YAML with `<config>-decontaminated` for every audited config: the same components and fractions,
    minus every flagged row; `vital build instructions --mixtures FILE` builds exactly those configs."""
    if source.kind != "instructions":
        raise ValueError("--write-mixture needs an instructions repo (a figures repo has no mixtures)")
    from vital_hub.mixtures.spec import builtin_components

    builtin = builtin_components()
    components, mixtures = {}, []
    for config, parts in source.configs.items():
        entries = []
        for part in parts:
            entry = {"name": part["name"]}
            if part["fraction"] != 1.0:
                entry["fraction"] = part["fraction"]
            excluded = report["flagged"].get(part["name"], [])
            if excluded:
                entry["exclude_ids"] = excluded
            entries.append(entry)
            info = source.manifest["components"][part["name"]]
            if part["name"] not in builtin or builtin[part["name"]].file_name != info["source"]["file"]:
                components[part["name"]] = {
                    "file": info["source"]["file"],
                    "description": info["description"],
                    "licence": info["licence"],
                }
        described = source.manifest["configs"][config]
        mixtures.append(
            {
                "name": f"{config}-decontaminated",
                "seed": described["seed"],
                "description": f"{config} without rows flagged by vital audit contamination",
                "components": entries,
            }
        )
    spec = {"components": components, "mixtures": mixtures, "only": [m["name"] for m in mixtures]}
    if not components:
        del spec["components"]
    with atomic_path(path) as tmp:
        tmp.write_text(yaml.safe_dump(spec, sort_keys=False, width=1000), encoding="utf-8")
    return spec
