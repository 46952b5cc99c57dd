"""`open_figures`: the one way every stage reads figures, whatever form they come in.

Accepted: a dataset repo folder with the `figures` config (parquet under `data/figures/`), a Hub dataset repo
id (only `data/figures/` and the README are downloaded), a `vital fetch figures` folder (index + images), or a
plain folder of `<pair_id>.jpg` files. `captions` (the LLaVA-Med captions file, or its loaded dict) fills
caption, label, mentions and domain where the source has none. Images come back as bytes Pillow can open;
parquet image bytes are read lazily, one row group at a time.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq

from vital_hub.figures.captions import caption_fields, collect_captions, load_captions
from vital_hub.figures.dataset import DATA_DIR
from vital_hub.figures.index import INDEX_DIR, index_files, read_index
from vital_hub.figures.safety import Limits, Rejected, verify_image

ROW_KEYS = (
    "pair_id",
    "pmcid",
    "pmid",
    "fig_id",
    "fig_label",
    "caption",
    "mentions",
    "domain",
    "image",
    "licence",
    "retracted",
    "source_url",
    "sha256",
    "status",
)


@dataclass(frozen=True)
class _ParquetRef:
    file: Path
    row_group: int
    row: int


class FigureStore:
    """Rows of the `figures` contract by pair id; `.get(pair_id)` returns None for an unknown figure."""

    def __init__(self, rows: dict[str, dict], image_of, captions: dict[str, dict] | None = None):
        self._rows, self._image_of, self._captions = rows, image_of, captions or {}

    def pair_ids(self) -> list[str]:
        return sorted(self._rows)

    def retracted_ids(self) -> set[str]:
        """Figures of articles whose newest version PMC marks retracted (read from the index, no image decoded)."""
        return {pair_id for pair_id, row in self._rows.items() if row.get("retracted")}

    def __len__(self) -> int:
        return len(self._rows)

    def __contains__(self, pair_id: str) -> bool:
        return pair_id in self._rows

    def get(self, pair_id: str) -> dict | None:
        base = self._rows.get(pair_id)
        if base is None:
            return None
        row = dict(base)
        row["image"], row["status"] = self._image_of(pair_id, row)
        return _with_caption(row, self._captions.get(pair_id))


def _with_caption(row: dict, caption: dict | None) -> dict:
    """The row with the caption's fields filled in where the row has none; what the source has is kept."""
    if not caption:
        return row
    for key, value in caption_fields(caption).items():
        if row.get(key) in (None, []) and value not in (None, []):
            row[key] = value
    return row


def _empty_row(pair_id: str) -> dict:
    """A row knowing only its pair id (`<PMID>_<fig id>`), which already names the article and the figure."""
    row = dict.fromkeys(ROW_KEYS)
    head, _, tail = pair_id.partition("_")
    row.update(pair_id=pair_id, mentions=[], status="missing")
    if head.isdigit() and tail:
        row.update(pmid=head, fig_id=tail)
    return row


def open_figures(path_or_repo: str | Path, captions: str | Path | dict | None = None) -> FigureStore:
    """A FigureStore over a dataset repo folder, a Hub repo id, a fetch folder or a folder of <pair_id>.jpg."""
    caption_map = _caption_map(captions)
    path = Path(path_or_repo)
    if not path.exists():
        path = _download_repo(str(path_or_repo))
    if not path.is_dir():
        raise FileNotFoundError(f"{path_or_repo}: not a folder or a Hub dataset repo id")
    if (path / DATA_DIR).is_dir() and list((path / DATA_DIR).glob("*.parquet")):
        return _parquet_store(sorted((path / DATA_DIR).glob("*.parquet")), caption_map)
    if (path / INDEX_DIR).is_dir() and index_files(path):
        return _fetch_folder_store(path, caption_map)
    return _plain_folder_store(path, caption_map)


def _caption_map(captions) -> dict[str, dict]:
    """pair_id -> caption record from a captions file, its loaded `{domain: [records]}` (read with
    `load_captions`'s rules: first record of a pair id wins) or a ready pair_id -> record dict."""
    if captions is None:
        return {}
    if isinstance(captions, dict):
        if all(isinstance(v, list) for v in captions.values()):
            return collect_captions(
                (domain, index, record) for domain, records in captions.items() for index, record in enumerate(records)
            )
        return captions
    return load_captions(captions)


def _download_repo(repo_id: str) -> Path:
    """Only the card and the `figures` shards of a Hub dataset repo, through the one module that talks to the Hub."""
    from vital_hub.hub import download_repo

    return download_repo(repo_id, allow_patterns=["README.md", f"{DATA_DIR.as_posix()}/*"])


def _parquet_store(files: list[Path], captions: dict[str, dict]) -> FigureStore:
    rows, refs = {}, {}
    for file in files:
        parquet = pq.ParquetFile(file)
        columns = [c for c in ROW_KEYS if c != "image" and c in parquet.schema_arrow.names]  # older shards: fewer
        for group in range(parquet.num_row_groups):
            for position, row in enumerate(parquet.read_row_group(group, columns=columns).to_pylist()):
                rows[row["pair_id"]] = {key: row.get(key) for key in ROW_KEYS if key != "image"}
                refs[row["pair_id"]] = _ParquetRef(file, group, position)
    cache: dict = {}

    def image_of(pair_id: str, row: dict):
        ref = refs[pair_id]
        key = (ref.file, ref.row_group)
        if cache.get("key") != key:
            # not kept open: a store over hundreds of shards would hold as many file handles, in every worker
            table = pq.ParquetFile(ref.file).read_row_group(ref.row_group, columns=["image"])
            cache.update(key=key, images=table.column("image").to_pylist())
        image = cache["images"][ref.row]
        return (image["bytes"] if image else None), row["status"]

    return FigureStore(rows, image_of, captions)


def _fetch_folder_store(folder: Path, captions: dict[str, dict]) -> FigureStore:
    rows = {}
    for shard in index_files(folder):
        for index_row in read_index(shard):
            row = _empty_row(index_row["pair_id"])
            row.update({key: index_row.get(key) for key in ROW_KEYS if key in index_row})
            row["mentions"] = []
            rows[row["pair_id"]] = row

    def image_of(pair_id: str, row: dict):
        if row["status"] != "ok":
            return None, row["status"]
        file = folder / f"{pair_id}.jpg"
        return (file.read_bytes(), "ok") if file.is_file() else (None, "missing")

    return FigureStore(rows, image_of, captions)


def _plain_folder_store(folder: Path, captions: dict[str, dict]) -> FigureStore:
    """Any visible `<pair_id>.jpg`, verified on `get` like a download: an empty or cut-off file comes back as None,
    a non-JPEG one as converted JPEG bytes."""
    rows = {file.stem: _empty_row(file.stem) for file in folder.glob("*.jpg") if not file.name.startswith(".")}

    def image_of(pair_id: str, row: dict):
        data = (folder / f"{pair_id}.jpg").read_bytes()
        if not data:
            return None, "missing"
        try:
            return verify_image(data, Limits()).jpeg, "ok"
        except Rejected:
            return None, "corrupt"

    return FigureStore(rows, image_of, captions)
