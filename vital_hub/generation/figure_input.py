"""Figures to generate for, read through the figures stage's `open_figures` (dataset folder, Hub repo id,
fetch folder or a folder of `<pair_id>.jpg` + a LLaVA-Med captions file), as the dicts prompts need:
`pair_id, fig_label, caption, mentions (list[str]), domain (dict|None), image (bytes|None), image_status`.
"""

from __future__ import annotations

from typing import Any


def open_figure_source(path: str, captions: str | None = None):
    """An object with `.pair_ids()` and `.get(pair_id)` (the figures stage's FigureStore)."""
    from vital_hub.figures.store import open_figures

    return open_figures(path, captions=captions)


def normalise_figure(row: dict[str, Any]) -> dict:
    """A FigureStore row (every key of the figures contract, image as bytes or None) in the shape prompts need."""
    return {
        "pair_id": row["pair_id"],
        "fig_label": row["fig_label"],
        "caption": row["caption"],
        "mentions": list(row["mentions"] or []),  # a dataset shard may hold null
        "domain": row["domain"],
        "image": row["image"],
        "image_status": row["status"],
    }
