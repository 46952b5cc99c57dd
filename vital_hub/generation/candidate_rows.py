"""Candidate rows: their schema, how a job makes them, and the files under `--out` that keep them.

A row is one (figure, sample) of the `candidates` dataset. While a job runs, finished rows go to small parquet
parts (`.parts/part-*.parquet`); when every figure has its rows, parts and earlier shards are merged into the
dataset's shards (`data/candidates/*.parquet`), one row per candidate, with its README.md and LICENSE.md.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from vital_hub.generation.client import ChatResult
from vital_hub.generation.parse import parse_reply
from vital_hub.io import atomic_path, download_checksums, write_card_config
from vital_hub.schema import DOMAINS

CONFIG_NAME = "candidates"
STATUS_RANK = {"ok": 2, "unparsed": 1, "error": 0}


# ------------------------------------------------------------------------------------------------ rows


def candidate_schema():
    import pyarrow as pa  # here, not at the top: `vital generate candidates --help` stays light

    turn = pa.struct([("from", pa.string()), ("value", pa.string())])
    dual = pa.struct([("question", pa.string()), ("answer_a", pa.string()), ("answer_b", pa.string())])
    return pa.schema(
        [
            ("candidate_id", pa.string()),
            ("pair_id", pa.string()),
            ("sample", pa.int32()),
            ("image", pa.string()),
            ("fig_label", pa.string()),
            ("caption", pa.string()),
            ("mentions", pa.list_(pa.string())),
            ("domain", pa.struct([(name, pa.bool_()) for name in DOMAINS])),
            ("conversations", pa.list_(turn)),
            ("dual_answers", pa.list_(dual)),
            ("status", pa.string()),
            ("raw_text", pa.string()),
            ("error", pa.string()),
            ("model", pa.string()),
            ("prompt_version", pa.string()),
            ("seed", pa.int64()),
            ("sampling", pa.string()),
            ("prompt_tokens", pa.int64()),
            ("completion_tokens", pa.int64()),
            ("cost_usd", pa.float64()),
            ("finish_reason", pa.string()),
        ]
    )


def candidate_id(pair_id: str, sample: int) -> str:
    return f"{pair_id}#{sample}"


@dataclass
class RowMaker:
    """Builds candidate rows; holds what every row of the job shares."""

    model: str
    mode: str
    prompt_version: str
    sampling: str
    min_rounds: int

    def base(self, figure: dict, sample: int, seed: int) -> dict:
        domain = figure.get("domain")
        return {
            "candidate_id": candidate_id(figure["pair_id"], sample),
            "pair_id": figure["pair_id"],
            "sample": sample,
            "image": f"{figure['pair_id']}.jpg",
            "fig_label": figure.get("fig_label"),
            "caption": figure.get("caption"),
            "mentions": list(figure.get("mentions") or []),
            "domain": None if domain is None else {name: domain.get(name) for name in DOMAINS},
            "conversations": [],
            "dual_answers": [],
            "status": "error",
            "raw_text": None,
            "error": None,
            "model": self.model,
            "prompt_version": self.prompt_version,
            "seed": seed,
            "sampling": self.sampling,
            "prompt_tokens": 0,
            "completion_tokens": 0,
            "cost_usd": None,
            "finish_reason": None,
        }

    def failed(self, row: dict, error: str) -> dict:
        return {**row, "status": "error", "error": error}

    def answered(self, row: dict, result: ChatResult) -> dict:
        row = {
            **row,
            "raw_text": result.text,
            "prompt_tokens": result.prompt_tokens,
            "completion_tokens": result.completion_tokens,
            "cost_usd": result.cost_usd,
            "finish_reason": result.finish_reason,
        }
        if not result.ok:
            return self.failed(row, result.error or "request failed")
        parsed = parse_reply(result.text, self.mode, self.min_rounds, result.finish_reason)
        row.update(status=parsed.status, conversations=parsed.conversations, dual_answers=parsed.dual_answers)
        row["error"] = parsed.problem
        return row


# ------------------------------------------------------------------------------------------------ storage


class OutputFolder:
    """The files of one job under --out (see the module docstring)."""

    def __init__(self, out: str | Path):
        self.root = Path(out)
        self.parts = self.root / ".parts"
        self.data = self.root / "data" / CONFIG_NAME
        self.cache_path = self.root / "cache.sqlite"
        self.run_json = self.root / "run.json"

    def part_files(self) -> list[Path]:
        return sorted(self.parts.glob("part-*.parquet")) if self.parts.exists() else []

    def shard_files(self) -> list[Path]:
        return sorted(self.data.glob("*.parquet")) if self.data.exists() else []

    def read_rows_table(self):
        """Every stored row, shards first then parts in the order written (later rows win ties)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        tables = [pq.read_table(path, schema=candidate_schema()) for path in self.shard_files() + self.part_files()]
        return pa.concat_tables(tables) if tables else candidate_schema().empty_table()

    def finished_ids(self) -> set[str]:
        """Candidates that need no more work: stored as ok or unparsed (error rows are retried)."""
        table = self.read_rows_table()
        ids, statuses = table["candidate_id"].to_pylist(), table["status"].to_pylist()
        return {i for i, s in zip(ids, statuses, strict=True) if s != "error"}


class PartWriter:
    """Finished rows go to small parquet parts so a killed run keeps them."""

    def __init__(self, folder: OutputFolder, flush_rows: int, flush_seconds: float = 30.0):
        self.folder, self.flush_rows, self.flush_seconds = folder, flush_rows, flush_seconds
        self.run_id = f"{time.strftime('%Y%m%d%H%M%S')}-{uuid.uuid4().hex[:6]}"
        self.rows: list[dict] = []
        self.count = 0
        self.last_flush = time.monotonic()
        self.status_counts: dict[str, int] = {}

    def add(self, row: dict) -> None:
        self.rows.append(row)
        self.status_counts[row["status"]] = self.status_counts.get(row["status"], 0) + 1
        if len(self.rows) >= self.flush_rows or time.monotonic() - self.last_flush > self.flush_seconds:
            self.flush()

    def flush(self) -> None:
        if not self.rows:
            return
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.Table.from_pylist(self.rows, schema=candidate_schema())
        final = self.folder.parts / f"part-{self.run_id}-{self.count:06d}.parquet"
        with atomic_path(final) as tmp:
            pq.write_table(table, tmp)
        self.rows, self.count, self.last_flush = [], self.count + 1, time.monotonic()


def best_rows(table, order: list[str]):
    """One row per candidate (ok over unparsed over error, later over earlier), in figure order then sample."""
    ids, statuses = table["candidate_id"].to_pylist(), table["status"].to_pylist()
    best: dict[str, int] = {}
    for index, (cid, status) in enumerate(zip(ids, statuses, strict=True)):
        kept = best.get(cid)
        if kept is None or STATUS_RANK[status] >= STATUS_RANK[statuses[kept]]:
            best[cid] = index
    position = {pair_id: n for n, pair_id in enumerate(order)}
    pair_ids, samples = table["pair_id"].to_pylist(), table["sample"].to_pylist()
    chosen = sorted(best.values(), key=lambda i: (position.get(pair_ids[i], len(order)), pair_ids[i], samples[i]))
    return table.take(chosen)


def write_dataset(folder: OutputFolder, order: list[str], shard_rows: int) -> dict[str, int]:
    """Merge shards and parts into the final shards + README; parts are deleted only once shards are written."""
    import pyarrow.parquet as pq

    parts = folder.part_files()
    old_shards = folder.shard_files()
    table = best_rows(folder.read_rows_table(), order)
    count = max(1, -(-table.num_rows // shard_rows))
    written = []
    for number in range(count):
        path = folder.data / f"train-{number:05d}-of-{count:05d}.parquet"
        with atomic_path(path) as tmp:
            pq.write_table(table.slice(number * shard_rows, shard_rows), tmp)
        written.append(path)
    for stale in old_shards:
        if stale not in written:
            stale.unlink(missing_ok=True)
    for part in parts:
        part.unlink(missing_ok=True)
    write_readme(folder, written)
    statuses = table["status"].to_pylist()
    return {status: statuses.count(status) for status in STATUS_RANK if status in statuses}


def write_readme(folder: OutputFolder, shards: list[Path]) -> None:
    """README.md whose YAML declares the `candidates` config, keeping any other configs already declared.

    The per-config `download_checksums` change whenever a shard does, so `datasets` does not serve a stale cache
    of an earlier build of the same folder (https://huggingface.co/docs/datasets/cache).
    """
    config = {"config_name": CONFIG_NAME, "data_files": [{"split": "train", "path": f"data/{CONFIG_NAME}/*.parquet"}]}
    info = {"config_name": CONFIG_NAME, "download_checksums": download_checksums(folder.root, shards)}
    model = "the model named in each row's `model` column"
    if folder.run_json.exists():
        model = f"`{json.loads(folder.run_json.read_text(encoding='utf-8'))['identity']['model']}`"
    with atomic_path(folder.root / TERMS_FILE) as tmp:
        tmp.write_text(TERMS.format(model=model), encoding="utf-8")
    defaults = {
        "pretty_name": "Candidate instruction data",
        "license": "other",
        "license_name": "model-output-provider-terms",
        "license_link": TERMS_FILE,
        "language": ["en"],
        "task_categories": ["image-text-to-text", "visual-question-answering"],
        "tags": ["biomedical", "medical", "synthetic", "vital-hub"],
    }
    write_card_config(folder.root / "README.md", config, info, DATASET_CARD, defaults=defaults)


TERMS_FILE = "LICENSE.md"
TERMS = """# Terms of this dataset

The conversations are the output of {model}, generated with `vital generate candidates` (vital-hub): their use
is governed by the terms of that model's provider (for a hosted model, its usage policy and terms of service;
for a self-hosted one, the model's licence). The figures they are about are PubMed Central Open Access figures,
each under its article's licence (https://pmc.ncbi.nlm.nih.gov/tools/openftlist/).
"""


DATASET_CARD = """
# Candidate instruction data

Generated by `vital generate candidates` (vital-hub). One row per (figure, sample); `conversations` is a LLaVA
conversation (`<image>` in the first human turn), `status` is `ok`, `unparsed` (raw reply kept in `raw_text`) or
`error`. The generating run's `run.json` (kept with the run, not published) records the model, prompt version,
seed and sampling parameters; terms of use: [LICENSE.md](LICENSE.md).
"""
