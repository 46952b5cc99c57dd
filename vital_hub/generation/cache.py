"""A request cache that makes re-running a job the way to resume it without paying twice.

One SQLite file maps sha256(request JSON) to the provider's reply. WAL journaling commits each reply as soon
as it arrives, so a process killed with -9 loses at most the replies still in flight; `synchronous=NORMAL`
trades durability against power loss (not against a crash) for speed. Only successful replies are stored:
errors are retried on the next run. The same file keeps the ids of submitted Batch API jobs.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    key TEXT PRIMARY KEY, response TEXT NOT NULL, source TEXT NOT NULL, created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS batch_jobs (
    batch_id TEXT PRIMARY KEY, input_file_id TEXT NOT NULL, keys TEXT NOT NULL, status TEXT NOT NULL,
    collected INTEGER NOT NULL DEFAULT 0, created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS batch_failures (key TEXT PRIMARY KEY, message TEXT NOT NULL, created REAL NOT NULL);
"""


def request_key(body: dict) -> str:
    """sha256 of the whole request (model included) in a canonical JSON form."""
    canonical = json.dumps(body, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


class RequestCache:
    """Replies by request key, plus Batch API job bookkeeping; safe to share between threads of one process."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, timeout=60, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)

    def get(self, key: str) -> tuple[dict, str] | None:
        """The stored reply and where it came from ("online" or "batch"), or None."""
        with self._lock:
            row = self._db.execute("SELECT response, source FROM responses WHERE key = ?", (key,)).fetchone()
        return None if row is None else (json.loads(row[0]), row[1])

    def put(self, key: str, response: dict, source: str = "online") -> None:
        text = json.dumps(response, ensure_ascii=False, separators=(",", ":"))
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO responses (key, response, source, created) VALUES (?, ?, ?, ?)",
                (key, text, source, time.time()),
            )

    def __contains__(self, key: str) -> bool:
        with self._lock:
            return self._db.execute("SELECT 1 FROM responses WHERE key = ?", (key,)).fetchone() is not None

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM responses").fetchone()[0]

    def keys(self) -> set[str]:
        with self._lock:
            return {row[0] for row in self._db.execute("SELECT key FROM responses")}

    def add_batch_job(self, batch_id: str, input_file_id: str, keys: list[str], status: str) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO batch_jobs (batch_id, input_file_id, keys, status, collected, created) "
                "VALUES (?, ?, ?, ?, 0, ?)",
                (batch_id, input_file_id, json.dumps(keys), status, time.time()),
            )

    def batch_jobs(self, pending_only: bool = False) -> list[dict]:
        query = "SELECT batch_id, input_file_id, keys, status, collected FROM batch_jobs"
        if pending_only:
            query += " WHERE collected = 0"
        with self._lock:
            rows = self._db.execute(query + " ORDER BY created").fetchall()
        return [
            {"batch_id": b, "input_file_id": f, "keys": json.loads(k), "status": s, "collected": bool(c)}
            for b, f, k, s, c in rows
        ]

    def mark_batch(self, batch_id: str, status: str, collected: bool = False) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE batch_jobs SET status = ?, collected = ? WHERE batch_id = ?",
                (status, int(collected), batch_id),
            )

    def put_failure(self, key: str, message: str) -> None:
        """A request a Batch API job answered with an error: kept so it is reported, not resubmitted forever."""
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO batch_failures (key, message, created) VALUES (?, ?, ?)",
                (key, message, time.time()),
            )

    def failure(self, key: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT message FROM batch_failures WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def clear_failures(self) -> int:
        with self._lock:
            return self._db.execute("DELETE FROM batch_failures").rowcount

    def close(self) -> None:
        with self._lock:
            self._db.close()
