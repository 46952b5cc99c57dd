"""`vital build figures`: the fetch folder (index + `<pair_id>.jpg`) as the Hub dataset config `figures`.

One row per indexed figure, image bytes embedded (null unless the figure is `ok` and its file still matches
the index sha256), joined with the LLaVA-Med captions file when given. Shards are written under temporary names
and renamed at the end; the README's `configs:` entry for `figures` is added or replaced, other configs and
the card text are kept, and a `download_checksums` map of the shards makes datasets' cache see a rebuild.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterator
from pathlib import Path

from vital_hub.figures.captions import caption_fields, load_captions
from vital_hub.figures.index import INDEX_DIR, STATUSES, index_files, iter_index
from vital_hub.figures.options import BuildOptions
from vital_hub.io import download_checksums, write_card_config
from vital_hub.schema import DOMAINS

CONFIG_NAME = "figures"
DATA_DIR = Path("data") / CONFIG_NAME
# Rows per parquet row group: a lookup out of storage order reads and decodes one group of 128 figures, not a
# whole ~256 MB shard (which used to be a single group).
ROW_GROUP_ROWS = 128
_SHARD_NAME = re.compile(r"shard-(\d+)-of-(\d+)\.parquet$")


def figures_features():
    """The contract's columns (contracts.md, "figures dataset"); imported lazily because datasets is slow."""
    from datasets import Features, Image, List, Value

    text = Value("string")
    return Features(
        {
            "pair_id": text,
            "pmcid": text,
            "pmid": text,
            "fig_id": text,
            "fig_label": text,
            "caption": text,
            "mentions": List(text),
            "domain": {name: Value("bool") for name in DOMAINS},
            "image": Image(),
            "licence": text,
            "retracted": Value("bool"),
            "source_url": text,
            "sha256": text,
            # 64-bit DCT pHashes, 16 hex digits each, comma-separated: the whole figure first, then its trimmed
            # content and panels (vital_hub.audit.hashing); null without a decodable image
            "phash": text,
            "status": text,
        }
    )


def unfinished_shards(index_dir: Path) -> list[str]:
    """Names of the fetch shards without a `.done` marker, for every split (N of `I/N`) that has an index shard."""
    counts = {int(_SHARD_NAME.search(p.name).group(2)) for p in index_files(index_dir)}
    names = [f"shard-{number:05d}-of-{count:05d}" for count in sorted(counts) for number in range(count)]
    return [name for name in names if not (index_dir / INDEX_DIR / f"{name}.done").exists()]


def check_complete(index_dir: Path) -> list[Path]:
    """The index shards, after checking that every shard of the split exists and finished."""
    shards = index_files(index_dir)
    if not shards:
        raise FileNotFoundError(f"no index shards under {index_dir / INDEX_DIR}: run `vital fetch figures` first")
    problems = unfinished_shards(index_dir)
    if problems:
        raise ValueError(f"unfinished fetch shards {problems[:10]}: re-run them or pass --allow-incomplete")
    return shards


def figure_row(index_row: dict, caption: dict | None, images: Path) -> dict:
    """One dataset row: the index's facts, the caption's text, and the verified image bytes; the caption's pmid
    and fig id win over the index's."""
    fields = caption_fields(caption or {})
    status = index_row["status"]
    image = None
    if status == "ok":
        path = images / f"{index_row['pair_id']}.jpg"
        data = path.read_bytes() if path.is_file() else None
        if data is None:
            status = "missing"
        elif hashlib.sha256(data).hexdigest() != index_row["sha256"]:
            status = "corrupt"
        else:
            image = {"bytes": data, "path": path.name}
    return {
        "pair_id": index_row["pair_id"],
        "pmcid": index_row.get("pmcid"),
        **fields,
        "pmid": fields["pmid"] if fields["pmid"] is not None else index_row.get("pmid"),
        "fig_id": fields["fig_id"] or index_row.get("fig_id"),
        "image": image,
        "licence": index_row.get("licence"),
        "retracted": index_row.get("retracted"),
        "source_url": index_row.get("source_url"),
        "sha256": index_row.get("sha256") if image is not None else None,
        "phash": None,  # filled by _with_hashes, in worker processes
        "status": status,
    }


def _with_hashes(rows: Iterator[dict], workers: int, batch: int = 512) -> Iterator[dict]:
    """The rows with `phash` set for each embedded figure, hashed `batch` rows at a time on `workers` processes
    (which die with the build); order is kept."""
    from itertools import islice

    from vital_hub.audit.hashing import Hasher, to_hex

    hasher = Hasher(None, workers)
    try:
        while chunk := list(islice(rows, batch)):
            embedded = [row for row in chunk if row["image"] is not None]
            for row, value in zip(embedded, hasher.hash_all([row["image"]["bytes"] for row in embedded]), strict=True):
                row["phash"] = to_hex(value)
            yield from chunk
    finally:
        hasher.close()


def iter_rows(options: BuildOptions) -> Iterator[dict]:
    """Rows shard by shard, each in its input order: the same fetch always gives the same dataset."""
    import pyarrow.parquet as pq

    index_dir = Path(options.index)
    shards = index_files(index_dir) if options.allow_incomplete else check_complete(index_dir)
    if not shards:
        raise FileNotFoundError(f"no index shards under {index_dir / INDEX_DIR}")
    captions = {}
    if options.captions:
        wanted = {
            pair_id for shard in shards for pair_id in pq.read_table(shard, columns=["pair_id"])["pair_id"].to_pylist()
        }
        captions = load_captions(options.captions, wanted)
    images = Path(options.images or options.index)
    for shard in shards:
        for index_row in iter_index(shard):
            yield figure_row(index_row, captions.get(index_row["pair_id"]), images)


def write_shards(rows: Iterator[dict], folder: Path, shard_bytes: int) -> tuple[list[Path], dict[str, int]]:
    """Parquet shards of about `shard_bytes` each, named train-XXXXX-of-YYYYY.parquet once their count is known."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    features = figures_features()
    schema = features.arrow_schema
    folder.mkdir(parents=True, exist_ok=True)
    temporary, batch, size, counts = [], [], 0, dict.fromkeys(STATUSES, 0)

    def flush() -> None:
        path = folder / f".building-{len(temporary):05d}.tmp"
        pq.write_table(pa.Table.from_pylist(batch, schema=schema), path, row_group_size=ROW_GROUP_ROWS)
        temporary.append(path)

    for row in rows:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
        batch.append(features.encode_example(row))
        size += len(row["image"]["bytes"]) if row["image"] else 256
        if size >= shard_bytes:
            flush()
            batch, size = [], 0
    if batch or not temporary:
        flush()
    final = [folder / f"train-{i:05d}-of-{len(temporary):05d}.parquet" for i in range(len(temporary))]
    for stale in folder.glob("*.parquet"):
        if stale not in final:
            stale.unlink()
    for tmp, path in zip(temporary, final, strict=True):
        os.replace(tmp, path)
    return final, counts


def update_readme(out: Path, shards: list[Path], counts: dict[str, int], index: str | Path | None = None) -> None:
    """Add or replace the `figures` entries of the card's YAML, keeping every other config and the card text,
    whose data report section (built from the shards, image sizes from the fetch index) is replaced."""
    config = {
        "config_name": CONFIG_NAME,
        "data_files": [{"split": "train", "path": f"{DATA_DIR.as_posix()}/*.parquet"}],
    }
    checksums = download_checksums(out, shards)
    info = {
        "config_name": CONFIG_NAME,
        "splits": [
            {
                "name": "train",
                "num_bytes": sum(c["num_bytes"] for c in checksums.values()),
                "num_examples": sum(counts.values()),
            }
        ],
        "download_checksums": checksums,
    }
    from vital_hub.figures.report import figures_report, replace_section, report_lines, write_plot

    report = figures_report(shards, index_files(Path(index)) if index else [])
    lines = report_lines(report, write_plot(out, report))
    write_card_config(
        out / "README.md",
        config,
        info,
        card_text(counts),
        edit=lambda body: replace_section(body, lines),
        defaults=card_defaults(),
    )


def card_defaults() -> dict:
    """Card fields the Hub expects: each figure keeps its article's licence, so the repo's is `other`, linked to
    PMC's licence terms, and the card's data report tabulates the licence codes."""
    from vital_hub.mixtures.card import LICENSE_LINK, LICENSE_NAME

    return {
        "pretty_name": "PMC figures",
        "license": "other",
        "license_name": LICENSE_NAME,
        "license_link": LICENSE_LINK,
        "language": ["en"],
        "task_categories": ["image-to-text", "visual-question-answering"],
        "tags": ["biomedical", "medical", "pmc", "figures", "vital-hub"],
    }


def card_text(counts: dict[str, int]) -> str:
    table = "\n".join(f"| {status} | {count} |" for status, count in counts.items())
    return f"""
# PMC figures

Figures of PubMed Central Open Access articles, fetched with `vital fetch figures` and built with
`vital build figures`. Config `figures`, one row per figure: `pair_id`, `pmcid`, `pmid`, `fig_id`, `fig_label`,
`caption`, `mentions`, `domain`, `image` (null unless `status` is `ok`), `licence` (the article's PMC licence
code), `retracted` (the article's newest version is marked retracted; null when its metadata was not read),
`source_url`, `sha256`, `phash` (the figure's perceptual hash, for `vital audit contamination`), `status`.
`vital generate candidates` leaves retracted figures out unless asked.

| status | figures |
|---|---:|
{table}

Each image keeps its article's licence (column `licence`; the data report counts each licence code, and PMC
lists what the codes mean: https://pmc.ncbi.nlm.nih.gov/tools/openftlist/); check it before redistributing.
"""


def build_figures(options: BuildOptions) -> str:
    import pyarrow.parquet as pq
    from tqdm import tqdm

    out = Path(options.out)
    total = sum(pq.ParquetFile(shard).metadata.num_rows for shard in index_files(Path(options.index)))
    rows = tqdm(  # shown on a terminal (disable=None), not in logs
        _with_hashes(iter_rows(options), options.workers), total=total, unit="figure", desc="build figures",
        mininterval=1.0, disable=None,
    )  # fmt: skip
    with rows:
        shards, counts = write_shards(rows, out / DATA_DIR, int(options.shard_mb * (1 << 20)))
    update_readme(out, shards, counts, options.index)
    summary = ", ".join(f"{status} {count}" for status, count in counts.items())
    return f"wrote {len(shards)} shard(s) of config '{CONFIG_NAME}' to {out / DATA_DIR} ({summary})"
