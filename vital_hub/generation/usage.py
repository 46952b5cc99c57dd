"""What a chat request came to (`ChatResult`) and what a client's requests have cost so far (`UsageStats`),
shown live on a progress bar."""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass
class ChatResult:
    key: str
    text: str | None
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float | None
    status: str  # "ok" | "error"
    error: str | None
    cached: bool

    @property
    def ok(self) -> bool:
        return self.status == "ok"


@dataclass
class UsageStats:
    """Counters of one client; tokens and spend count requests sent in this process, not cache hits."""

    sent: int = 0  # requests answered by the server in this process
    cached: int = 0
    errors: int = 0
    retries: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    unpriced: int = 0
    saved_usd: float = 0.0
    started: float = field(default_factory=time.monotonic)

    def add(self, result: ChatResult) -> None:
        if result.status != "ok":
            self.errors += 1
        if result.cached:
            self.cached += 1
            self.saved_usd += result.cost_usd or 0.0
            return
        self.prompt_tokens += result.prompt_tokens
        self.completion_tokens += result.completion_tokens
        if result.cost_usd is None and (result.prompt_tokens or result.completion_tokens):
            self.unpriced += 1
        self.cost_usd += result.cost_usd or 0.0

    def rates(self) -> dict[str, str]:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        return {
            "req/s": f"{self.sent / elapsed:.1f}",
            "tok/s": f"{(self.prompt_tokens + self.completion_tokens) / elapsed:.0f}",
            "spend": f"${self.cost_usd:.4f}",
        }

    def summary(self) -> str:
        unpriced = f" ({self.unpriced} replies of a model missing from the price table)" if self.unpriced else ""
        return (
            f"{self.sent} requests answered, {self.cached} from cache (saved ${self.saved_usd:.4f}), "
            f"{self.errors} errors, {self.retries} retries; tokens: {self.prompt_tokens} prompt + "
            f"{self.completion_tokens} completion; spend ${self.cost_usd:.4f}{unpriced}"
        )


class ProgressBar:
    """A tqdm bar whose postfix shows requests/s, tokens/s and the spend so far."""

    def __init__(self, total: int, desc: str, stats: UsageStats):
        from tqdm.auto import tqdm

        self.stats = stats
        self.bar = tqdm(total=total, desc=desc or "requests", unit="req", dynamic_ncols=True)

    def update(self, count: int = 1) -> None:
        self.bar.set_postfix(self.stats.rates(), refresh=False)
        self.bar.update(count)

    def close(self) -> None:
        self.bar.set_postfix(self.stats.rates(), refresh=False)
        self.bar.close()
