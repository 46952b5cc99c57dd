"""Append-only judgement logs, one JSONL file per annotator.

A judgement is written, flushed and fsynced before the app answers the browser, so closing the tab or killing
the server loses nothing that was confirmed. Nothing is ever rewritten: judging an item again appends a new line,
and the latest line for an item is the annotator's current verdict (earlier ones stay as history).
A line cut short by a crash mid-write was never confirmed; it is dropped (and the file repaired) when the
annotator's log is next opened for writing.
"""

from __future__ import annotations

import json
import os
import re
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from vital_hub.io import iter_jsonl_log, repair_tail
from vital_hub.schema import RecordError

ANNOTATOR_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
BETTER_CHOICES = ("a", "b", None)
CANNOT_JUDGE = ("figure_unavailable",)
FIGURE_STATUSES = ("shown", "unavailable")
MAX_COMMENT_CHARS = 4000  # what the app accepts; logs written before the cap are still read whole


def check_annotator(name: str) -> str:
    """The normalised name (stripped, case-folded: `Dr_Lee` and `dr_lee` are one person); names become file
    names, so they are kept to a safe alphabet."""
    normal = name.strip().casefold() if isinstance(name, str) else name
    if not isinstance(normal, str) or not ANNOTATOR_NAME.match(normal) or normal.endswith((".jsonl", ".json")):
        raise ValueError(
            f"annotator name {name!r} must be 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return normal


def log_path(out_dir: str | Path, annotator: str) -> Path:
    return Path(out_dir) / f"{check_annotator(annotator)}.jsonl"


def validate_judgement(record: dict, file: str | None = None, index: int | None = None) -> dict:
    """Raise RecordError unless the record carries a usable verdict."""
    item_id = record.get("item_id") if isinstance(record, dict) else None
    if not isinstance(record, dict) or not isinstance(item_id, str) or not item_id:
        raise RecordError("a judgement needs a non-empty 'item_id'", file=file, index=index)
    if record.get("cannot_judge") not in (*CANNOT_JUDGE, None):
        raise RecordError(f"'cannot_judge' must be one of {list(CANNOT_JUDGE)} or null", file=file, index=index)
    if record.get("figure_status") not in (*FIGURE_STATUSES, None):
        raise RecordError(f"'figure_status' must be one of {list(FIGURE_STATUSES)}", file=file, index=index)
    marks = (None, True, False) if record.get("cannot_judge") else (True, False)
    for key in ("acceptable_a", "acceptable_b"):
        if record.get(key) not in marks or not isinstance(record.get(key), bool | None):
            raise RecordError(f"{key!r} must be true or false", file=file, index=index, record_id=item_id)
    if record.get("better") not in BETTER_CHOICES:
        raise RecordError("'better' must be 'a', 'b' or null", file=file, index=index, record_id=item_id)
    if not isinstance(record.get("comment") or "", str):
        raise RecordError("'comment' must be text", file=file, index=index, record_id=item_id)
    for key in ("pair_id", "question", "answer_a", "answer_b", "caption"):  # they become the pairs' text
        value = record.get(key)
        if value is not None and not isinstance(value, str):
            raise RecordError(
                f"{key!r} must be text, got {type(value).__name__}", file=file, index=index, record_id=item_id
            )
    return record


class JudgementStore:
    """One annotator's log: append durably, know the latest verdict per item, say where to resume."""

    def __init__(self, out_dir: str | Path, annotator: str):
        self.annotator = check_annotator(annotator)
        self.path = log_path(out_dir, annotator)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        repair_tail(self.path)
        self.latest: dict[str, dict] = {}
        self.count = 0
        for record in read_log(self.path) if self.path.exists() else ():
            self.latest[record["item_id"]] = record
            self.count += 1

    def append(self, judgement: dict) -> dict:
        """Write one judgement to disk (flush + fsync) and only then make it the item's current verdict."""
        record = dict(judgement, annotator=self.annotator)
        record.setdefault("time", datetime.now(UTC).isoformat(timespec="milliseconds"))
        validate_judgement(record, file=str(self.path))
        line = json.dumps(record, ensure_ascii=False, sort_keys=True) + "\n"
        with self._lock:
            created = not self.path.exists()
            with open(self.path, "a", encoding="utf-8") as handle:
                handle.write(line)
                handle.flush()
                os.fsync(handle.fileno())
            if created:
                _fsync_dir(self.path.parent)
            self.latest[record["item_id"]] = record
            self.count += 1
        return record

    def resume_position(self, item_ids: list[str]) -> int:
        """Index of the first item this annotator has not judged yet (len(item_ids) when all are done)."""
        return next((i for i, item_id in enumerate(item_ids) if item_id not in self.latest), len(item_ids))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_log(path: str | Path) -> Iterator[dict]:
    """Judgements of one log in write order; an unfinished last line (a crash mid-write) is skipped."""
    for number, record in iter_jsonl_log(path):
        yield validate_judgement(record, file=str(path), index=number - 1)


def read_judgements(annotations_dir: str | Path) -> list[dict]:
    """Every judgement of every annotator log in a folder, each tagged with its annotator (the file name)."""
    annotations_dir = Path(annotations_dir)
    logs = sorted(annotations_dir.glob("*.jsonl"))
    if not logs:
        raise FileNotFoundError(f"{annotations_dir} holds no annotator logs (*.jsonl)")
    records = []
    for path in logs:
        for record in read_log(path):
            records.append(dict(record, annotator=path.stem.casefold()))
    if not records:
        raise RecordError(f"no judgements in the annotator logs {[p.name for p in logs]}", file=str(annotations_dir))
    return records
