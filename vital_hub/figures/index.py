"""The fetch index: one journal, one parquet index, one stats file and one completion marker per shard.

Resume works at the unit of one figure. A figure's line is appended to the shard journal only after its image
has been renamed onto its final name, so after a kill -9 the journal never claims an image that is not there;
a torn last line is cut off before appending again. The parquet index is written (atomically) from the journal
when the shard is complete, in input order and without timings, so it is identical whether or not the run was
interrupted. Shards (`--shard I/N`) split the list by a hash of the PMC id: every figure of an article lands in
the same shard, so an article is looked up and its tarball downloaded once, and N machines never overlap.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from vital_hub.figures.options import Shard
from vital_hub.io import atomic_path, repair_tail, write_json_atomic

STATUSES = ("ok", "missing", "not_permitted", "corrupt", "error")
INDEX_DIR = "index"
ERROR_SAMPLES_PER_STATUS = 20

# The index's columns and their Arrow types, by name: pyarrow is imported only by the functions that read or write
# an index, so commands that merely plan or print their options stay light.
INDEX_FIELDS = (
    ("pair_id", "string"), ("pmcid", "string"), ("pmid", "string"), ("fig_id", "string"), ("file", "string"),
    ("status", "string"), ("source", "string"), ("source_url", "string"), ("licence", "string"),
    ("retracted", "bool_"), ("md5", "string"), ("sha256", "string"), ("bytes", "int64"), ("width", "int32"),
    ("height", "int32"), ("format", "string"), ("error", "string"),
)  # fmt: skip
INDEX_COLUMNS = tuple(name for name, _ in INDEX_FIELDS)


def index_schema():
    """The Arrow schema of an index shard."""
    import pyarrow as pa

    return pa.schema([(name, getattr(pa, kind)()) for name, kind in INDEX_FIELDS])


@dataclass(frozen=True)
class ShardFiles:
    out: Path
    shard: Shard

    @property
    def folder(self) -> Path:
        return self.out / INDEX_DIR

    def _path(self, suffix: str) -> Path:
        return self.folder / f"{self.shard.name}{suffix}"

    @property
    def journal(self) -> Path:
        return self._path(".journal.jsonl")

    @property
    def parquet(self) -> Path:
        return self._path(".parquet")

    @property
    def stats(self) -> Path:
        return self._path(".stats.json")

    @property
    def done(self) -> Path:
        return self._path(".done")

    @property
    def options(self) -> Path:
        """The options that shape the results, recorded when the shard is first fetched."""
        return self._path(".options.json")


@dataclass(frozen=True, slots=True)
class JournalEntry:
    """Where a figure's last journal line is, and the two facts resume needs, without keeping the row itself.

    A shard of 740k figures would need about 2 GB as row dicts; entries keep it near 200 MB.
    """

    offset: int
    length: int
    status: str
    bytes: int | None


class Journal:
    """Append-only JSON lines of finished figures; the last line for a pair id wins."""

    def __init__(self, path: Path):
        self.path = path
        self.fd: int | None = None
        self.reader = None

    def load(self) -> dict[str, JournalEntry]:
        """Entries by pair id, after cutting a torn last line (a kill during a write) off the file."""
        if not self.path.exists():
            return {}
        repair_tail(self.path)
        entries, offset = {}, 0
        with open(self.path, "rb") as handle:
            for line in handle:
                row = json.loads(line)
                entries[row["pair_id"]] = JournalEntry(offset, len(line), sys.intern(row["status"]), row.get("bytes"))
                offset += len(line)
        return entries

    def read(self, entry: JournalEntry) -> dict:
        if self.reader is None:
            self.reader = open(self.path, "rb")
        self.reader.seek(entry.offset)
        return json.loads(self.reader.read(entry.length))

    def append(self, rows: list[dict]) -> None:
        """All rows of one article in a single unbuffered write, so a kill leaves the article whole or absent
        (bar a torn last line, which `load` cuts off)."""
        if self.fd is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        data = "".join(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n" for row in rows).encode()
        written = 0
        while written < len(data):
            written += os.write(self.fd, data[written:])

    def close(self) -> None:
        if self.fd is not None:
            os.fsync(self.fd)
            os.close(self.fd)
            self.fd = None
        if self.reader is not None:
            self.reader.close()
            self.reader = None


def write_index(rows: Iterable[dict], path: Path, batch_rows: int = 50_000) -> None:
    """The index parquet, written in batches so a large shard never sits in memory as one table."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = index_schema()
    with atomic_path(path, suffix=".parquet") as tmp, pq.ParquetWriter(tmp, schema) as writer:
        batch = []
        for row in rows:
            batch.append({name: row.get(name) for name in INDEX_COLUMNS})
            if len(batch) >= batch_rows:
                writer.write_table(pa.Table.from_pylist(batch, schema))
                batch = []
        if batch:
            writer.write_table(pa.Table.from_pylist(batch, schema))


def iter_index(path: Path, batch_rows: int = 50_000) -> Iterator[dict]:
    import pyarrow.parquet as pq

    for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_rows):
        yield from batch.to_pylist()


def read_index(path: Path) -> list[dict]:
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pylist()


def index_files(out: Path) -> list[Path]:
    return sorted((Path(out) / INDEX_DIR).glob("shard-*.parquet"))


@dataclass
class ErrorSamples:
    """At most a few (pair id, error) examples per status: enough to debug, small enough to read."""

    cap: int = ERROR_SAMPLES_PER_STATUS
    samples: dict[str, list[dict]] = field(default_factory=dict)

    def add(self, row: dict) -> None:
        if row["status"] == "ok":
            return
        bucket = self.samples.setdefault(row["status"], [])
        if len(bucket) < self.cap:
            bucket.append({"pair_id": row["pair_id"], "error": row.get("error")})


def write_stats(path: Path, stats: dict) -> None:
    write_json_atomic(path, stats)


def mark_done(path: Path, completed: dict) -> None:
    """The completion marker records what it completed (a hash of the shard's records and the options), so a
    changed URL list is not taken for a finished shard."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(completed, sort_keys=True) + "\n")


def read_marker(path: Path) -> dict | None:
    """What a completion marker says it completed; None when absent or written before markers held it."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None
