"""The rubric judge's scores: `scores.jsonl` (one line per unit, the last line of a unit wins), the row of each
reply, and the summary and histogram of a run."""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from dataclasses import asdict
from pathlib import Path

from vital_hub.io import iter_jsonl_log, repair_tail
from vital_hub.preferences.judge_units import JudgeUnit
from vital_hub.preferences.rubric import parse_rubric_score
from vital_hub.schema import RecordError


def read_scores(path: str | Path) -> list[dict]:
    """The current row of every unit in a scores file (the last line of a unit wins).

    A torn last line (a crash mid-write) is skipped and its unit judged again; a bad line elsewhere is an error.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "scores.jsonl"
    rows: dict[str, dict] = {}
    for number, row in iter_jsonl_log(path):
        rows[_checked_score(row, number, path)] = row
    return list(rows.values())


def _checked_score(row, number: int, path: Path) -> str:
    """The score_id of a scores line, or RecordError naming the line and what is wrong with it."""
    if not isinstance(row, dict) or not isinstance(row.get("score_id"), str) or not row["score_id"]:
        raise RecordError(f"line {number} has no 'score_id'", file=str(path))
    score = row.get("score")
    if score is not None and (isinstance(score, bool) or not isinstance(score, int | float)):
        raise RecordError(f"line {number}: 'score' must be a number or null, got {score!r}", file=str(path))
    for key in ("question", "answer", "pair_id", "caption"):
        if row.get(key) is not None and not isinstance(row[key], str):
            raise RecordError(f"line {number}: {key!r} must be text, got {type(row[key]).__name__}", file=str(path))
    return row["score_id"]


class ScoreLog:
    """scores.jsonl: rows appended chunk by chunk, each chunk flushed and fsynced."""

    def __init__(self, path: Path):
        self.path = path
        repair_tail(path)
        self.rows = {row["score_id"]: row for row in read_scores(path)} if path.exists() else {}

    def finished(self) -> set[str]:
        return {key for key, row in self.rows.items() if row["status"] in ("ok", "unparsed")}

    def append(self, rows: list[dict]) -> None:
        if not rows:
            return
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
            handle.flush()
            os.fsync(handle.fileno())
        self.rows.update({row["score_id"]: row for row in rows})


def score_row(unit: JudgeUnit, model: str, prompt_version: str, result=None, error: str | None = None) -> dict:
    """A scores.jsonl row from a ChatResult (or an error before sending)."""
    row = {k: v for k, v in asdict(unit).items() if k not in ("image_bytes", "mentions")}
    row["mention"] = "\n".join(unit.mentions)
    row.update(
        model=model,
        prompt_version=prompt_version,
        score=None,
        raw_text=None,
        error=error,
        cached=False,
        prompt_tokens=0,
        completion_tokens=0,
        cost_usd=None,
        status="error",
    )
    if result is not None:
        score = parse_rubric_score(result.text) if result.ok else None
        row.update(
            raw_text=result.text,
            error=result.error,
            cached=result.cached,
            prompt_tokens=result.prompt_tokens,
            completion_tokens=result.completion_tokens,
            cost_usd=result.cost_usd,
            status="error" if not result.ok else ("ok" if score is not None else "unparsed"),
            score=score,
        )
        if result.ok and score is None:
            row["error"] = "no score in 0-10 on the reply's first line or after 'score:'"
    return row


def summarise(rows: list[dict], total: int, waiting: int) -> dict:
    statuses = Counter(row["status"] for row in rows)
    levels = Counter(str(math.floor(row["score"])) for row in rows if row["status"] == "ok")
    return {
        "units": total,
        "scored": statuses.get("ok", 0),
        "unparsed": statuses.get("unparsed", 0),
        "errors": statuses.get("error", 0),
        "not_yet_judged": total - len(rows),
        "waiting_in_batch_jobs": waiting,
        "levels": dict(sorted(levels.items(), key=lambda kv: int(kv[0]))),
    }


def plot_scores(rows: list[dict], path: Path) -> None:
    scores = [row["score"] for row in rows if row["status"] == "ok"]
    if not scores:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 3.5))
    axes.hist(scores, bins=[x - 0.5 for x in range(12)], rwidth=0.85, color="#12355b")
    axes.set_xticks(range(11))
    axes.set_xlabel("rubric score")
    axes.set_ylabel("answers")
    axes.set_title(f"{len(scores)} answers scored ({len(rows) - len(scores)} unparsed or failed)")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
