"""Parquet shards of one component: rows written in batches to numbered shards under a row and byte budget,
hashed as they go, and the manifest entry of each file."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.parquet as pq

from vital_hub.io import sha256_file
from vital_hub.schema import RowBatchBuilder, row_arrow_schema

if TYPE_CHECKING:
    from vital_hub.mixtures.build import BuildOptions

COMPRESSION = "zstd"


class ShardWriter:
    """Writes rows to numbered parquet shards, starting a new one past a row or byte budget.

    It also hashes the rows: `rows_sha256` is the sha256 of the Arrow IPC stream of every batch in order, a
    fingerprint of the content that does not depend on how parquet encodes it.
    """

    def __init__(self, folder: Path, options: BuildOptions, source: str):
        self.folder, self.options, self.source = folder, options, source
        self.schema = row_arrow_schema()
        self.batch = RowBatchBuilder()
        self.batch_bytes = 0
        self.digest = hashlib.sha256()
        self.writer: pq.ParquetWriter | None = None
        self.shard_rows = self.shard_bytes = self.total_rows = 0
        self.paths: list[Path] = []
        self.rows_per_path: list[int] = []

    def add(self, record: dict, image: dict | None, phash: str | None = None) -> None:
        self.batch.append(record, self.source, image, phash)
        self.batch_bytes += len(image["bytes"]) if image else 0
        rows_left_in_shard = self.options.rows_per_shard - self.shard_rows
        if len(self.batch) >= min(self.options.batch_rows, rows_left_in_shard) or (
            self.batch_bytes >= self.options.max_batch_bytes
        ):
            self._flush()

    def _flush(self) -> None:
        if not len(self.batch):
            return
        table = self.batch.table()
        self.batch, self.batch_bytes = RowBatchBuilder(), 0
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, self.schema) as stream:
            stream.write_table(table)
        self.digest.update(sink.getvalue())
        if self.writer is None:
            path = self.folder / f"shard-{len(self.paths):05d}.parquet"
            self.writer = pq.ParquetWriter(path, self.schema, compression=COMPRESSION)
            self.paths.append(path)
            self.rows_per_path.append(0)
        self.writer.write_table(table, row_group_size=table.num_rows)
        self.shard_rows += table.num_rows
        self.shard_bytes += table.nbytes
        self.rows_per_path[-1] += table.num_rows
        self.total_rows += table.num_rows
        if self.shard_rows >= self.options.rows_per_shard or self.shard_bytes >= self.options.max_shard_bytes:
            self._close_shard()

    def _close_shard(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
            self.shard_rows = self.shard_bytes = 0

    def close(self) -> None:
        self._flush()
        self._close_shard()
        if not self.paths:  # an empty component still gets one (empty) shard, so its configs load
            pq.write_table(self.schema.empty_table(), self.folder / "shard-00000.parquet", compression=COMPRESSION)
            self.paths.append(self.folder / "shard-00000.parquet")
            self.rows_per_path.append(0)

    def finish(self, target: Path, out: Path) -> list[dict]:
        """Move the shards to their final names under target; returns their manifest entries."""
        target.mkdir(parents=True)
        total = len(self.paths)
        shards = []
        for number, (path, rows) in enumerate(zip(self.paths, self.rows_per_path, strict=True)):
            final = target / f"train-{number:05d}-of-{total:05d}.parquet"
            os.replace(path, final)
            shards.append(shard_entry(final, out, rows))
        return shards


def shard_entry(path: Path, out: Path, rows: int) -> dict:
    metadata = pq.read_metadata(path)
    entry = file_entry(path, out)
    return {
        "path": entry["path"],
        "rows": rows,
        "num_bytes": entry["num_bytes"],
        "uncompressed_bytes": sum(metadata.row_group(i).total_byte_size for i in range(metadata.num_row_groups)),
        "sha256": entry["sha256"],
    }


def file_entry(path: Path, out: Path) -> dict:
    return {"path": path.relative_to(out).as_posix(), "num_bytes": path.stat().st_size, "sha256": sha256_file(path)}
