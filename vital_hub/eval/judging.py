"""Sending judge requests and logging the replies: shared by the qa50 chat judge and the win-rate judge."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from vital_hub.eval.records import EvalQuestion, JsonlAppender


def judge_and_log(
    config,
    jobs: list[tuple[EvalQuestion, str]],
    requests: list[dict],
    log_path: Path,
    desc: str,
    to_row: Callable[[EvalQuestion, str, object], dict],
) -> None:
    """Send `requests` (one per (question, order) job) through the cached, rate-limited client of `config` (a
    ServerOptions with `judge_model` and `cache_path`) and append one row per reply to the judge log."""
    if not requests:
        return
    from vital_hub.generation.client import ChatClient

    cache = config.cache_path or str(log_path.parent / "judge_cache.sqlite")
    client = ChatClient(config.client_config(config.judge_model, cache))
    try:
        results = client.chat_many(requests, desc=desc)
    finally:
        client.close()
    with JsonlAppender(log_path) as writer:
        for (question, order), result in zip(jobs, results, strict=True):
            writer.write(to_row(question, order, result))
