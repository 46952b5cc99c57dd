"""Figures to generate for, read through the figures stage's `open_figures` (dataset folder, Hub repo id,
fetch folder or a folder of `<pair_id>.jpg` + a LLaVA-Med captions file), as the dicts prompts need:
`pair_id, fig_label, caption, mentions (list[str]), domain (dict|None), image (bytes|None), image_status`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vital_hub.schema import mention_texts


def open_figure_source(path: str, captions: str | None = None):
    """An object with `.pair_ids()` and `.get(pair_id)` (the figures stage's FigureStore)."""
    from vital_hub.figures.store import open_figures

    return open_figures(path, captions=captions)


def normalise_figure(row: dict[str, Any]) -> dict:
    """A figure row in the shape prompts need (image as bytes or None)."""
    image = row.get("image")
    if isinstance(image, dict):
        image = image.get("bytes")
        if image is None and row["image"].get("path") and Path(row["image"]["path"]).is_file():
            image = Path(row["image"]["path"]).read_bytes()
    mentions = row.get("mentions")
    if mentions is None:
        mentions = mention_texts(row.get("in_text_mention"))
    return {
        "pair_id": str(row["pair_id"]),
        "fig_label": row.get("fig_label"),
        "caption": row.get("caption", row.get("fig_caption")),
        "mentions": list(mentions),
        "domain": row.get("domain"),
        "image": bytes(image) if isinstance(image, bytes | bytearray) else None,
        "image_status": row.get("status"),
    }
