"""A polite HTTP client for the bucket and tarball mirrors: one connection pool, bounded concurrency, a per-host
rate limit that adapts to 503 Slow Down, and exponential backoff with jitter that honours Retry-After.

Errors are classified where they happen: 429, 5xx (S3's 503 "Slow Down" among them), timeouts, dropped
connections and truncated bodies are retried; 403 and 404 are final answers, never retried.
"""

from __future__ import annotations

import asyncio
import email.utils
import hashlib
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

if TYPE_CHECKING:  # aiohttp is imported when a client opens, so `--help` and planning stay light
    import aiohttp

from vital_hub.figures.options import HttpOptions

RETRYABLE_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
CHUNK = 1 << 16
ERROR_BODY_BYTES = 1 << 16


@dataclass
class Fetched:
    """The answer to one GET after retries: an HTTP status (0 when none came) and the body or an error."""

    url: str
    status: int
    data: bytes | None = None
    error: str | None = None
    etag: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == 200 and self.error is None

    def describe(self) -> str:
        return self.error or f"HTTP {self.status}"


@dataclass
class TransferStats:
    requests: int = 0
    retries: int = 0
    throttled: int = 0
    bytes: int = 0
    by_status: dict[str, int] = field(default_factory=dict)
    rate_limit: dict = field(default_factory=dict)


class TooLarge(Exception):
    pass


class HostRateLimiter:
    """Spaces requests to one host at least 1/rate apart; a Retry-After pauses the whole host, not one task.

    The rate adapts as S3 asks (https://docs.aws.amazon.com/AmazonS3/latest/userguide/optimizing-performance.html:
    a prefix serves thousands of GETs per second and answers 503 Slow Down above what it can take): each 429/503
    halves the host's rate (down to `floor`), each success adds `ceiling / 1000` back, up to the configured rate.
    """

    def __init__(self, rate: float, floor: float = 1.0):
        self.ceiling = rate if rate and rate > 0 else 0.0
        self.floor = min(floor, self.ceiling) if self.ceiling else 0.0
        self.rates: dict[str, float] = {}
        self.lowest: dict[str, float] = {}
        self.next_slot: dict[str, float] = {}

    def rate(self, host: str) -> float:
        return self.rates.get(host, self.ceiling)

    async def wait(self, host: str) -> None:
        now = time.monotonic()
        slot = max(now, self.next_slot.get(host, now))
        rate = self.rate(host)
        self.next_slot[host] = slot + (1.0 / rate if rate else 0.0)
        if slot > now:
            await asyncio.sleep(slot - now)

    def pause(self, host: str, seconds: float) -> None:
        resume = time.monotonic() + seconds
        self.next_slot[host] = max(self.next_slot.get(host, resume), resume)

    def slow_down(self, host: str) -> None:
        if self.ceiling:
            self.rates[host] = max(self.floor, self.rate(host) / 2)
            self.lowest[host] = min(self.lowest.get(host, self.ceiling), self.rates[host])

    def succeeded(self, host: str) -> None:
        if self.ceiling and host in self.rates:
            self.rates[host] = min(self.ceiling, self.rates[host] + self.ceiling / 1000)

    def summary(self) -> dict:
        """The configured rate and, per host that asked to slow down, the lowest and the last rate used."""
        return {
            "configured_per_host": self.ceiling or None,
            "adapted": {
                host: {"lowest": round(self.lowest[host], 2), "final": round(self.rates[host], 2)}
                for host in sorted(self.lowest)
            },  # fmt: skip
        }


def retry_after_seconds(value: str | None) -> float | None:
    """Retry-After as seconds: either a number or an HTTP date."""
    if not value:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - time.time(), 0.0)


def backoff_delay(attempt: int, options: HttpOptions, retry_after: float | None) -> float:
    """Exponential backoff with "equal jitter" (half fixed, half random), never shorter than Retry-After."""
    ceiling = min(options.backoff_max_s, options.backoff_base_s * (2**attempt))
    delay = ceiling / 2 + random.uniform(0, ceiling / 2)
    if retry_after is not None:
        delay = max(delay, min(retry_after, options.backoff_max_s * 5))
    return delay


class HttpClient:
    """GETs with retries over one aiohttp session; use as `async with HttpClient(options) as client`."""

    def __init__(self, options: HttpOptions):
        self.options = options
        self.stats = TransferStats()
        self.limiter = HostRateLimiter(options.requests_per_second_per_host)
        self.slots = asyncio.Semaphore(options.concurrency)
        self.session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> HttpClient:
        import aiohttp

        connector = aiohttp.TCPConnector(limit=self.options.concurrency, limit_per_host=self.options.concurrency)
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=self.options.timeout_s, sock_read=self.options.timeout_s
        )
        self.session = aiohttp.ClientSession(
            connector=connector,
            timeout=timeout,
            headers={"User-Agent": "vital-hub-figures/0.1"},
            auto_decompress=False,
        )
        return self

    async def __aexit__(self, *exc) -> None:
        await self.session.close()

    async def get(self, url: str, max_bytes: int) -> Fetched:
        """The whole body in memory (figures, metadata, JATS), at most `max_bytes`."""
        return await self._with_retries(url, lambda response: self._read_body(response, max_bytes))

    async def get_to_file(self, url: str, path: Path, max_bytes: int) -> Fetched:
        """Stream a body (a tarball) to `path`, at most `max_bytes`; `data` stays None."""
        return await self._with_retries(url, lambda response: self._write_body(response, path, max_bytes))

    async def _with_retries(self, url: str, consume) -> Fetched:
        host = urlsplit(url).netloc
        last = Fetched(url=url, status=0, error="not attempted")
        for attempt in range(self.options.max_retries + 1):
            if attempt:
                self.stats.retries += 1
            last, retry_after = await self._attempt(url, host, consume)
            if not self._should_retry(last):
                return last
            if attempt == self.options.max_retries:
                break
            delay = backoff_delay(attempt, self.options, retry_after)
            if retry_after is not None:
                self.limiter.pause(host, retry_after)
            await asyncio.sleep(delay)
        last.error = f"gave up after {self.options.max_retries + 1} attempts: {last.describe()}"
        return last

    @staticmethod
    def _should_retry(fetched: Fetched) -> bool:
        return fetched.status in RETRYABLE_STATUSES or (fetched.status == 0 and fetched.error is not None)

    async def _attempt(self, url: str, host: str, consume) -> tuple[Fetched, float | None]:
        import aiohttp
        from yarl import URL

        await self.limiter.wait(host)
        async with self.slots:
            self.stats.requests += 1
            try:
                async with self.session.get(URL(url, encoded=True), allow_redirects=True) as response:
                    self._count_status(response.status)
                    retry_after = retry_after_seconds(response.headers.get("Retry-After"))
                    if response.status in (429, 503):
                        self.stats.throttled += 1
                        self.limiter.slow_down(host)
                    elif response.status < 500:
                        self.limiter.succeeded(host)
                    if response.status != 200:
                        await response.content.read(ERROR_BODY_BYTES)  # S3 error XML; never a whole hostile body
                        return Fetched(url=url, status=response.status), retry_after
                    data = await consume(response)
                    return Fetched(url=url, status=200, data=data, etag=response.headers.get("ETag")), None
            except TooLarge as err:
                return Fetched(url=url, status=200, error=f"body exceeds the cap: {err}"), None
            except TimeoutError:
                return Fetched(url=url, status=0, error="timed out"), None
            except aiohttp.ClientPayloadError as err:
                return Fetched(url=url, status=0, error=f"truncated body ({err})"), None
            except aiohttp.ClientError as err:
                return Fetched(url=url, status=0, error=f"{type(err).__name__}: {err}"), None

    def _count_status(self, status: int) -> None:
        key = str(status)
        self.stats.by_status[key] = self.stats.by_status.get(key, 0) + 1

    async def _capped_chunks(self, response: aiohttp.ClientResponse, max_bytes: int) -> AsyncIterator[bytes]:
        """The body's chunks; more than `max_bytes` (announced or sent) raises TooLarge before it is all read."""
        if response.content_length is not None and response.content_length > max_bytes:
            raise TooLarge(f"Content-Length {response.content_length} > {max_bytes}")
        size = 0
        async for chunk in response.content.iter_chunked(CHUNK):
            size += len(chunk)
            if size > max_bytes:
                raise TooLarge(f"more than {max_bytes} bytes")
            yield chunk
        self.stats.bytes += size

    async def _read_body(self, response: aiohttp.ClientResponse, max_bytes: int) -> bytes:
        return b"".join([chunk async for chunk in self._capped_chunks(response, max_bytes)])

    async def _write_body(self, response: aiohttp.ClientResponse, path: Path, max_bytes: int) -> None:
        with open(path, "wb") as handle:
            async for chunk in self._capped_chunks(response, max_bytes):
                handle.write(chunk)


def md5_hex(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def etag_md5(etag: str | None) -> str | None:
    """S3's ETag is the body's md5 for single-part uploads (32 hex digits, no '-'); otherwise it says nothing."""
    if not etag:
        return None
    value = etag.strip().strip('"').lower()
    return value if len(value) == 32 and all(c in "0123456789abcdef" for c in value) else None
