"""Figures to generate for, from whatever the user has: the figures dataset or a folder of JPEGs + captions.

The figures stage owns `vital_hub.figures.store.open_figures`; when it is installed this module only adapts its
rows. Until then (and as a fallback) it reads the two shapes of the contract itself: a Hub dataset (repo id or
folder) with config `figures`, or a folder of `<pair_id>.jpg` files plus a LLaVA-Med captions JSON
(`{domain: [record, ...]}`). Every figure comes out as one dict:
`pair_id, fig_label, caption, mentions (list[str]), domain (dict|None), image (bytes|None)`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vital_hub.schema import mention_texts


class FolderFigures:
    """`<pair_id>.jpg` files in a folder, described by a LLaVA-Med captions file."""

    def __init__(self, folder: str | Path, captions: str | Path):
        self.folder = Path(folder)
        data = json.loads(Path(captions).read_text(encoding="utf-8"))
        records = [r for group in data.values() for r in group] if isinstance(data, dict) else data
        self.records: dict[str, dict] = {}
        for index, record in enumerate(records):
            if not isinstance(record, dict) or not record.get("pair_id"):
                raise ValueError(f"{captions}: record {index} has no pair_id")
            self.records.setdefault(str(record["pair_id"]), record)

    def pair_ids(self) -> list[str]:
        return list(self.records)

    def get(self, pair_id: str) -> dict | None:
        record = self.records.get(pair_id)
        if record is None:
            return None
        path = self.folder / f"{pair_id}.jpg"
        return {
            "pair_id": pair_id,
            "fig_label": record.get("fig_label"),
            "caption": record.get("fig_caption"),
            "mentions": mention_texts(record.get("in_text_mention")),
            "domain": record.get("domain"),
            "image": path.read_bytes() if path.is_file() else None,
        }


class DatasetFigures:
    """The `figures` config of a Hub dataset (repo id or local folder), images read as stored bytes."""

    def __init__(self, path: str, cache_dir: str | None = None):
        from datasets import Image, load_dataset

        dataset = load_dataset(path, "figures", split="train", cache_dir=cache_dir)
        self.dataset = dataset.cast_column("image", Image(decode=False)) if "image" in dataset.features else dataset
        self.index = {pair_id: i for i, pair_id in enumerate(self.dataset["pair_id"])}

    def pair_ids(self) -> list[str]:
        return list(self.index)

    def get(self, pair_id: str) -> dict | None:
        position = self.index.get(pair_id)
        return None if position is None else self.dataset[position]


def open_figure_source(path: str, captions: str | None = None, cache_dir: str | None = None):
    """An object with `.pair_ids()` and `.get(pair_id)`, preferring the figures stage's own store."""
    try:
        from vital_hub.figures.store import open_figures
    except ImportError:
        open_figures = None
    if open_figures is not None:
        return open_figures(path, captions=captions)
    if Path(path).is_dir() and captions:
        return FolderFigures(path, captions)
    if Path(path).is_dir() and not (Path(path) / "README.md").exists():
        raise ValueError(f"{path}: a folder of images needs --captions (a LLaVA-Med captions JSON)")
    return DatasetFigures(path, cache_dir=cache_dir)


def normalise_figure(row: dict[str, Any]) -> dict:
    """A figure row from any source in the shape prompts need (image as bytes or None)."""
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
        "image": image if isinstance(image, bytes | bytearray) else None,
    }
