"""The figures of a build: loading each record's figure from the images folder (with its perceptual hash, whose
decode is what checks that the figure decodes), counting what is missing, and what the folder's fetch index says
is retracted."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq

from vital_hub.audit.hashing import decode_hashes, to_hex
from vital_hub.io import describe_error
from vital_hub.schema import Location


@dataclass
class ImageStats:
    """Rows with their figure (`present`) and rows stored text-only, by why the figure is not there."""

    present: int = 0
    missing: int = 0
    empty: int = 0
    corrupt: int = 0
    retracted_left_out: int = 0  # rows not built: the figure's article is retracted (--include-retracted keeps)

    def as_dict(self) -> dict:
        return {
            "present": self.present,
            "missing": self.missing,
            "empty": self.empty,
            "corrupt": self.corrupt,
            "retracted_left_out": self.retracted_left_out,
        }


def figure_facts(images: Path | None) -> dict[str, tuple[str, str]] | None:
    """pair_id -> (licence code, retracted yes/no/unknown) from the fetch index of an images folder; None when
    the folder has no index (a plain folder of figures), so licences and retractions are unknown. A build reads
    the index once, here: the retracted figures it leaves out and the card's licence table both come from this."""
    from vital_hub.figures.index import index_files

    shards = index_files(images) if images is not None else []
    if not shards:
        return None
    facts = {}
    for shard in shards:
        with pq.ParquetFile(shard) as parquet:
            names = parquet.schema_arrow.names  # an index written by hand may lack a column: its facts are unknown
            table = parquet.read(columns=[c for c in ("pair_id", "licence", "retracted") if c in names])
        none = [None] * table.num_rows
        columns = [table[c].to_pylist() if c in names else none for c in ("pair_id", "licence", "retracted")]
        for pair_id, licence, retracted in zip(*columns, strict=True):
            facts[pair_id] = (licence or "unknown", "unknown" if retracted is None else "yes" if retracted else "no")
    return facts


def retracted_figures(facts: dict[str, tuple[str, str]] | None) -> frozenset[str]:
    """Pair ids the fetch index marks retracted (their article's newest version is), from `figure_facts`."""
    return frozenset(pair_id for pair_id, (_, retracted) in (facts or {}).items() if retracted == "yes")


def images_fingerprint(images: Path | None) -> str | None:
    """A cheap summary of the images folder (file names and sizes), computed once per build, so that added or
    re-fetched figures make components rebuild. No mtimes: the same figures copied elsewhere give the same
    manifest. The figures' content itself is covered by each component's `rows_sha256`."""
    if images is None:
        return None
    digest = hashlib.sha256()
    with os.scandir(images) as entries:
        for entry in sorted(entries, key=lambda e: e.name):
            if entry.is_file():
                digest.update(f"{entry.name}\0{entry.stat().st_size}\n".encode())
    return digest.hexdigest()


def load_image(record, where: Location, images: Path, require: bool, stats: ImageStats, missing):
    """The figure as {bytes, path} and its pHash (16 hex digits), or None, None (logged) when it is missing, empty
    or does not decode. Decoding it for the hash is what checks that it decodes."""
    name = os.path.basename(record["image"])
    file = images / name
    problem = None
    if not file.is_file():
        problem = "missing"
    else:
        data = file.read_bytes()
        if not data:
            problem = "empty"
        else:
            phash, reason = decoded_hash(data)
            if reason is not None:
                problem = "corrupt"
    if problem is None:
        stats.present += 1
        return {"bytes": data, "path": name}, phash
    setattr(stats, problem, getattr(stats, problem) + 1)
    entry = {"index": where.index, "id": str(record.get("id")), "image": name, "problem": problem}
    if problem == "corrupt":
        entry["reason"] = reason
    missing.write(json.dumps(entry) + "\n")
    if require:
        raise where.error(f"image {name} is {problem} in {images} (--require-images)", record.get("id"))
    return None, None


def decoded_hash(data: bytes) -> tuple[str | None, str | None]:
    """(pHash, None) of a figure that decodes, else (None, why). JPEG draft mode decodes at a fraction of the
    size but still reads every byte."""
    try:
        return to_hex(decode_hashes(data)), None
    except Exception as err:  # PIL raises many types for broken files; the reason is kept, never hidden
        return None, describe_error(err)
