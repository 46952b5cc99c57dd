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


def retracted_figures(images: Path | None) -> frozenset[str]:
    """Pair ids the fetch index of an images folder marks retracted (its article's newest version is)."""
    if images is None:
        return frozenset()
    import pyarrow.compute as pc

    from vital_hub.figures.index import index_files

    retracted: set[str] = set()
    for shard in index_files(images):
        table = pq.read_table(shard, columns=["pair_id", "retracted"])
        retracted.update(table.filter(pc.fill_null(table["retracted"], False))["pair_id"].to_pylist())
    return frozenset(retracted)


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
