"""Sending judge requests and logging the replies: shared by the qa50 chat judge and the win-rate judge."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from vital_hub.config import help_field
from vital_hub.eval.records import EvalQuestion, JsonlAppender
from vital_hub.generation.client import ServerOptions
from vital_hub.io import read_text


@dataclass(kw_only=True)
class JudgeOptions(ServerOptions):
    """The options every judge shares: which model, with which instruction, how it samples, where it caches."""

    judge_model: str = help_field("judge model name on the server", default="gpt-4o")
    prompt_file: str | None = help_field("judge instruction text (e.g. the paper's)", default=None)
    bootstrap: int = help_field("bootstrap resamples for the intervals (0: none)", default=1000)
    seed: int = help_field("bootstrap seed", default=0)
    max_tokens: int = help_field("judge reply length limit", default=1024)
    temperature: float = help_field("judge temperature", default=0.0)
    cache_path: str | None = help_field("SQLite cache (default: <out_dir>/judge_cache.sqlite)", default=None)

    def instruction(self, default: str) -> str:
        """The judge's instruction: the prompt file's text when one is given, else `default`."""
        if self.prompt_file is None:
            return default
        text = read_text(self.prompt_file).strip()
        if not text:
            raise ValueError(f"{self.prompt_file}: the judge prompt file is empty")
        return text


def judge_and_log(
    config: JudgeOptions,
    jobs: list[tuple[EvalQuestion, str]],
    requests: list[dict],
    log_path: Path,
    desc: str,
    to_row: Callable[[EvalQuestion, str, object], dict],
) -> None:
    """Send `requests` (one per (question, order) job) through the cached, rate-limited client of `config` and
    append one row per reply to the judge log."""
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
