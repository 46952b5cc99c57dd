"""Client-side limits, so a run stays under the provider's quotas instead of learning them from 429s.

Three limits apply to every request: a concurrency cap, a requests-per-minute bucket and a tokens-per-minute
bucket. Providers count a request's tokens when it is admitted (prompt, images and the `max_tokens` budget),
so the token bucket is charged with an estimate before sending and corrected with the real usage afterwards.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import math
import time
from contextlib import asynccontextmanager

# A bucket holds this many seconds of its rate, and starts full: half a second of burst keeps a margin below a
# server that measures the same rate with a one-second bucket, so jitter in arrival times does not cause 429s.
BURST_SECONDS = 0.5
CHARS_PER_TOKEN = 4
TOKENS_PER_MESSAGE = 4
LOW_DETAIL_IMAGE_TOKENS = 85
TILE_TOKENS = 170
UNKNOWN_IMAGE_SIZE = (1024, 1024)


class TokenBucket:
    """A bucket refilled continuously at `rate` per second; waiters are served first come, first served."""

    def __init__(self, rate_per_s: float, burst_s: float = BURST_SECONDS):
        if rate_per_s <= 0:
            raise ValueError(f"a rate limit must be positive, got {rate_per_s}")
        self.rate = rate_per_s
        self.capacity = max(1.0, rate_per_s * burst_s)
        self.level = self.capacity
        self.updated = time.monotonic()
        self._lock = asyncio.Lock()

    def _refill(self) -> None:
        now = time.monotonic()
        self.level = min(self.capacity, self.level + (now - self.updated) * self.rate)
        self.updated = now

    async def take(self, amount: float) -> None:
        """Wait until `amount` is available (or the bucket is full, for amounts larger than it), then take it."""
        async with self._lock:
            needed = min(amount, self.capacity)
            while True:
                self._refill()
                if self.level >= needed:
                    self.level -= amount
                    return
                await asyncio.sleep((needed - self.level) / self.rate)

    def give_back(self, amount: float) -> None:
        """Correct an estimate: positive gives tokens back, negative charges more (the level may go below 0)."""
        self._refill()
        self.level = min(self.capacity, self.level + amount)


class Limiter:
    """Concurrency, request-rate and token-rate limits, plus a shared pause when the server asks for one."""

    def __init__(
        self, concurrency: int, requests_per_minute: float | None = None, tokens_per_minute: float | None = None
    ):
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {concurrency}")
        self._slots = asyncio.Semaphore(concurrency)
        self.requests = TokenBucket(requests_per_minute / 60.0) if requests_per_minute else None
        self.tokens = TokenBucket(tokens_per_minute / 60.0) if tokens_per_minute else None
        self.paused_until = 0.0

    def hold(self, seconds: float) -> None:
        """Stop admitting new requests for `seconds`: a 429 with Retry-After concerns the whole account."""
        self.paused_until = max(self.paused_until, time.monotonic() + seconds)

    async def _wait_if_held(self) -> None:
        while (delay := self.paused_until - time.monotonic()) > 0:
            await asyncio.sleep(delay)

    @asynccontextmanager
    async def slot(self, estimated_tokens: int):
        async with self._slots:
            await self._wait_if_held()
            if self.requests:
                await self.requests.take(1)
            if self.tokens:
                await self.tokens.take(estimated_tokens)
            yield

    def settle(self, estimated_tokens: int, used_tokens: int) -> None:
        """Replace the estimate charged at admission by what the request really used."""
        if self.tokens:
            self.tokens.give_back(estimated_tokens - used_tokens)


def estimate_tokens(body: dict) -> int:
    """Tokens a provider charges against a tokens-per-minute limit when it admits `body`.

    Text is ~4 characters a token; images follow OpenAI's tile rule (85 at low detail, else 85 + 170 per 512 px
    tile after fitting into 2048 px and scaling the short side to 768 px); the completion budget counts in full.
    """
    budget = body.get("max_completion_tokens") or body.get("max_tokens") or 0
    return prompt_tokens(body) + int(budget)


def prompt_tokens(body: dict) -> int:
    """The prompt part of `estimate_tokens`: messages, text and images, without the completion budget."""
    total = 0
    for message in body.get("messages", []):
        total += TOKENS_PER_MESSAGE
        content = message.get("content")
        if isinstance(content, str):
            total += math.ceil(len(content) / CHARS_PER_TOKEN)
            continue
        for part in content or []:
            if part.get("type") == "text":
                total += math.ceil(len(part.get("text", "")) / CHARS_PER_TOKEN)
            elif part.get("type") == "image_url":
                image = part.get("image_url") or {}
                total += image_tokens(image.get("url", ""), image.get("detail"))
    return total


def image_tokens(url: str, detail: str | None) -> int:
    if detail == "low":
        return LOW_DETAIL_IMAGE_TOKENS
    width, height = data_url_size(url) or UNKNOWN_IMAGE_SIZE
    scale = min(1.0, 2048 / max(width, height))
    width, height = width * scale, height * scale
    scale = min(1.0, 768 / min(width, height))
    tiles = math.ceil(width * scale / 512) * math.ceil(height * scale / 512)
    return LOW_DETAIL_IMAGE_TOKENS + TILE_TOKENS * tiles


def data_url_size(url: str) -> tuple[int, int] | None:
    """The pixel size of a base64 data URL image, read from its header; None for remote or unreadable images."""
    if not url.startswith("data:") or ";base64," not in url:
        return None
    from PIL import Image, UnidentifiedImageError

    try:
        raw = base64.b64decode(url.split(";base64,", 1)[1], validate=False)
        with Image.open(io.BytesIO(raw)) as image:
            return image.size
    except (binascii.Error, UnidentifiedImageError, OSError, ValueError):
        return None
