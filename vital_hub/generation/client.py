"""One client for every model server the project talks to: OpenAI, Azure OpenAI, vLLM, SGLang, hosted APIs.

Why not the openai library's own retries: they stop after a couple of attempts and do not share what a 429
says with the other requests in flight. Here the library runs with `max_retries=0` and this module retries
429, 5xx, timeouts, dropped connections and malformed replies with exponential backoff that honours
Retry-After (and pauses every request, since a rate limit is per account); 401/403/404 stop the whole run
with a message saying what to fix, and other 4xx fail the one request without retrying. Successful replies
go to a SQLite cache keyed by the hash of the whole request, so re-running a job resumes it for free.

    client = ChatClient(ClientConfig(model="gpt-4o", cache_path="cache.sqlite"))
    results = client.chat_many([{"messages": [...], "max_tokens": 512}, ...], desc="judge")

The API key is read from the environment variable named in the config when the first request is sent; it is
never stored, cached or logged. Servers echo a rejected key back, and a careless or hostile one may put it in a
successful reply, so every error message and every reply (before it is cached or returned) is redacted of it, of
any other credential in the environment and of the password of the endpoint's URL. Settings are recorded through
`recorded_settings`, which keeps the URL without its `user:password@`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import random
import threading
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

from vital_hub.config import help_field
from vital_hub.generation.cache import RequestCache, request_key
from vital_hub.generation.limits import Limiter, estimate_tokens, prompt_tokens
from vital_hub.generation.pricing import PriceTable
from vital_hub.redaction import environment_secrets, redact, scrub, without_credentials

T = TypeVar("T")

MAX_BACKOFF_S = 60.0
MAX_RETRY_AFTER_S = 600.0
# So many 400s in a row mean the requests themselves are wrong (model without vision, bad parameter): stop.
MAX_CONSECUTIVE_REJECTIONS = 20
FATAL_STATUS = {
    401: "the API key was rejected: check the environment variable {env}",
    403: "the API key has no access to model {model!r} or to this endpoint",
    404: "model {model!r} or the chat completions endpoint was not found at {url} (retired or misspelled model?)",
}
RETRYABLE_STATUS = {408, 409, 429}


def is_retryable(status: int) -> bool:
    """Whether an HTTP error is worth retrying (408, 409, 429, 5xx): the rule of chat and batch calls alike."""
    return status in RETRYABLE_STATUS or status >= 500


@dataclass
class ClientConfig:
    model: str
    base_url: str | None = None  # else OPENAI_BASE_URL, else OpenAI
    api_key_env: str = "OPENAI_API_KEY"  # read from the environment only, never stored
    azure_api_version: str | None = None  # set -> AzureOpenAI client (base_url is the Azure endpoint)
    concurrency: int = 16
    requests_per_minute: float | None = None
    tokens_per_minute: float | None = None
    max_retries: int = 6
    timeout_s: float = 120.0
    max_prompt_tokens: int | None = 128_000  # a request whose prompt is estimated above this is never sent
    cache_path: str | None = None  # SQLite request cache; key = sha256 of the whole request JSON

    def __post_init__(self):
        if not self.model:
            raise ValueError("ClientConfig.model is required")
        if self.concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {self.concurrency}")
        if self.max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {self.max_retries}")
        if self.timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive, got {self.timeout_s}")
        for name in ("requests_per_minute", "tokens_per_minute", "max_prompt_tokens"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be positive or None, got {value}")
        if self.azure_api_version and not self.base_url:
            raise ValueError("an Azure client needs base_url (the resource endpoint)")


@dataclass(kw_only=True)
class ServerOptions:
    """How to reach an OpenAI-compatible server and how hard to press it: the options shared by every command
    that calls one (generation, the rubric judge, the eval judges and answering through a server)."""

    base_url: str | None = help_field("OpenAI-compatible endpoint (else OPENAI_BASE_URL, else OpenAI)", default=None)
    api_key_env: str = help_field("environment variable holding the API key", default="OPENAI_API_KEY")
    azure_api_version: str | None = help_field("use Azure OpenAI with this API version", default=None)
    concurrency: int = help_field("requests in flight", default=16)
    requests_per_minute: float | None = help_field("client-side request rate limit", default=None)
    tokens_per_minute: float | None = help_field("client-side token rate limit", default=None)
    max_retries: int = help_field("retries of 429/5xx/timeouts/malformed replies", default=6)
    timeout_s: float = help_field("seconds per request", default=120.0)
    max_prompt_tokens: int | None = help_field(
        "a request whose prompt is estimated above this many tokens fails unsent (None: no limit)", default=128_000
    )

    def recorded_settings(self, leave_out: tuple[str, ...] = ("api_key_env",)) -> dict:
        """The settings as run.json records them: the endpoint without credentials, nothing secret."""
        settings = {key: value for key, value in dataclasses.asdict(self).items() if key not in leave_out}
        if "base_url" in settings:
            settings["base_url"] = without_credentials(settings["base_url"])
        return settings

    def client_config(self, model: str, cache_path: str | None) -> ClientConfig:
        shared = {item.name: getattr(self, item.name) for item in dataclasses.fields(ServerOptions)}
        return ClientConfig(model=model, cache_path=cache_path, **shared)


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


class FatalAPIError(RuntimeError):
    """A failure no retry can fix (bad key, no access, unknown model): the run stops and says what to change."""


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


class ChatClient:
    def __init__(self, config: ClientConfig, prices: dict | None = None):
        self.config = config
        self.prices = PriceTable(prices)
        self.cache = RequestCache(config.cache_path) if config.cache_path else None
        self.stats = UsageStats()
        self._bound: tuple[Any, Any, Limiter] | None = None  # (event loop, openai client, limiter)
        self._rejections = 0
        self._in_flight: dict[str, asyncio.Future] = {}  # identical requests running now share one reply
        self._secrets: list[str] | None = None

    # ---------------------------------------------------------------- public API

    async def chat(self, request: dict) -> ChatResult:
        """One chat completion: from the cache if this exact request was answered before, else from the server.

        `request` holds the `chat.completions.create` arguments except `model`, which comes from the config.
        """
        if "model" in request:
            raise ValueError("a request must not name the model: it comes from ClientConfig.model")
        body = {"model": self.config.model, **request}
        key = request_key(body)
        stored = self.cache.get(key) if self.cache is not None else None
        if stored is not None:
            reply, source = stored
            result = self._result(key, reply, cached=True, batch=source == "batch")
        elif key in self._in_flight:
            result = dataclasses.replace(await asyncio.shield(self._in_flight[key]), cached=True)
        elif (refused := self.unsendable(key, body)) is not None:
            result = refused
        else:
            result = await self._send_once(key, body)
        self.stats.add(result)
        return result

    def chat_many(self, requests: list[dict], desc: str = "") -> list[ChatResult]:
        """Answer many requests concurrently under the configured limits; results come in input order."""
        return run_sync(self._chat_many(list(requests), desc))

    def key_of(self, request: dict) -> str:
        """The cache key `chat` uses for `request`."""
        return request_key({"model": self.config.model, **request})

    def result_from_reply(self, key: str, reply: dict, batch: bool = False) -> ChatResult:
        """A ChatResult from a stored reply (used for Batch API output)."""
        return self._result(key, reply, cached=True, batch=batch)

    def store(self, key: str, reply: dict, source: str) -> None:
        """Cache a reply, redacted of every credential first."""
        self.cache.put(key, scrub(reply, self.secrets()), source=source)

    def store_failure(self, key: str, message: str) -> None:
        self.cache.put_failure(key, self.redact(message))

    def secrets(self) -> list[str]:
        """The credentials no reply or message may carry: the key, the environment's, the endpoint URL's."""
        if self._secrets is None:
            self._secrets = environment_secrets(self.config.api_key_env, urls=(self.config.base_url,))
        return self._secrets

    def redact(self, text: str) -> str:
        return redact(text, *self.secrets())

    async def aclose(self) -> None:
        """Close the HTTP connections of the current event loop (chat_many does this itself)."""
        if self._bound is not None:
            await self._bound[1].close()
            self._bound = None

    def close(self) -> None:
        if self.cache is not None:
            self.cache.close()

    # ---------------------------------------------------------------- internals

    async def _chat_many(self, requests: list[dict], desc: str) -> list[ChatResult]:
        results: list[ChatResult | None] = [None] * len(requests)
        progress = ProgressBar(len(requests), desc, self.stats)

        async def answer(index: int, request: dict) -> None:
            results[index] = await self.chat(request)
            progress.update()

        try:
            async with asyncio.TaskGroup() as group:
                for index, request in enumerate(requests):
                    group.create_task(answer(index, request))
        except* FatalAPIError as failure:
            raise failure.exceptions[0] from None
        finally:
            progress.close()
            await self.aclose()
        return results  # type: ignore[return-value]

    async def _send_once(self, key: str, body: dict) -> ChatResult:
        """Send `body`, letting identical requests that arrive meanwhile wait for this reply instead of paying."""
        future = asyncio.get_running_loop().create_future()
        self._in_flight[key] = future
        try:
            result = await self._send(key, body)
        except asyncio.CancelledError:
            future.cancel()
            raise
        except Exception as err:
            future.set_exception(err)
            future.exception()  # retrieved here, so no "never retrieved" warning when nobody else waits
            raise
        finally:
            self._in_flight.pop(key, None)
        future.set_result(result)
        return result

    def _resources(self):
        """The openai client and limiter of the running event loop (both are bound to the loop they start on)."""
        loop = asyncio.get_running_loop()
        if self._bound is None or self._bound[0] is not loop:
            limiter = Limiter(self.config.concurrency, self.config.requests_per_minute, self.config.tokens_per_minute)
            self._bound = (loop, self._make_openai(), limiter)
        return self._bound[1], self._bound[2]

    def unsendable(self, key: str, request: dict) -> ChatResult | None:
        """The failed result of a request too large to send (online or in a batch), or None: one 50 MB value would
        otherwise go out as 13M tokens."""
        limit = self.config.max_prompt_tokens
        tokens = prompt_tokens(request)
        if limit is None or tokens <= limit:
            return None
        return self._error(
            key, f"prompt of about {tokens:,} tokens is over the limit of {limit:,} (max_prompt_tokens): not sent"
        )

    def _make_openai(self):
        return make_openai(self.config, asynchronous=True)

    async def _send(self, key: str, body: dict) -> ChatResult:
        import openai

        client, limiter = self._resources()
        estimate = estimate_tokens(body) if limiter.tokens else 0  # only the token bucket reads the estimate
        last_error = "not sent"
        for attempt in range(self.config.max_retries + 1):
            if attempt:
                self.stats.retries += 1
            wait = None
            async with limiter.slot(estimate):
                try:
                    response = await client.chat.completions.create(**body)
                    reply = response.model_dump(mode="json")
                except openai.APIStatusError as err:
                    limiter.settle(estimate, 0)
                    status = err.status_code
                    if status in FATAL_STATUS:
                        raise FatalAPIError(self._fatal_message(status, err)) from None
                    last_error = self.redact(f"HTTP {status}: {error_message(err)}")
                    if not is_retryable(status):
                        return self._rejected(key, last_error)
                    wait = retry_after(err.response.headers)
                    if status == 429 and wait is not None:
                        limiter.hold(wait)
                except (openai.APITimeoutError, openai.APIConnectionError) as err:
                    limiter.settle(estimate, 0)
                    last_error = self.redact(f"{type(err).__name__}: {err}")
                except (openai.APIResponseValidationError, ValueError) as err:
                    limiter.settle(estimate, 0)
                    last_error = self.redact(f"malformed reply ({type(err).__name__}: {str(err)[:200]})")
                else:
                    problem = malformed_reply(reply)
                    if problem is None:
                        return self._accept(key, reply, estimate, limiter)
                    limiter.settle(estimate, 0)
                    last_error = f"malformed reply: {problem}"
            if attempt < self.config.max_retries:
                await asyncio.sleep(wait if wait is not None else backoff_s(attempt))
        attempts = self.config.max_retries + 1
        return self._error(key, f"gave up after {attempts} attempt{'s' * (attempts > 1)}: {last_error}")

    def _accept(self, key: str, reply: dict, estimate: int, limiter: Limiter) -> ChatResult:
        usage = reply.get("usage") or {}
        limiter.settle(estimate, (usage.get("prompt_tokens") or 0) + (usage.get("completion_tokens") or 0))
        if self.cache is not None:
            self.store(key, reply, source="online")
        self._rejections = 0
        self.stats.sent += 1
        return self._result(key, reply, cached=False)

    def _rejected(self, key: str, message: str) -> ChatResult:
        self._rejections += 1
        if self._rejections >= MAX_CONSECUTIVE_REJECTIONS:
            raise FatalAPIError(
                f"the server rejected the last {self._rejections} requests without retry; last: {message}"
            )
        return self._error(key, message)

    def _fatal_message(self, status: int, err) -> str:
        url = without_credentials(self.config.base_url or os.environ.get("OPENAI_BASE_URL")) or "api.openai.com"
        hint = FATAL_STATUS[status].format(env=self.config.api_key_env, model=self.config.model, url=url)
        return self.redact(f"HTTP {status} from {url}: {hint} (server said: {error_message(err)})")

    def _result(self, key: str, reply: dict, cached: bool, batch: bool = False) -> ChatResult:
        reply = scrub(reply, self.secrets())  # also a reply cached before redaction covered replies
        choice = reply["choices"][0]
        text = (choice.get("message") or {}).get("content")
        finish_reason = choice.get("finish_reason")
        usage = reply.get("usage") or {}
        prompt_tokens = int(usage.get("prompt_tokens") or 0)
        completion_tokens = int(usage.get("completion_tokens") or 0)
        cost = self.prices.cost(self.config.model, prompt_tokens, completion_tokens, batch=batch)
        if cost is None and reply.get("model"):
            cost = self.prices.cost(reply["model"], prompt_tokens, completion_tokens, batch=batch)
        status, error = (
            ("ok", None) if isinstance(text, str) else ("error", f"no text (finish_reason={finish_reason})")
        )
        return ChatResult(key, text, finish_reason, prompt_tokens, completion_tokens, cost, status, error, cached)

    @staticmethod
    def _error(key: str, message: str) -> ChatResult:
        return ChatResult(key, None, None, 0, 0, None, "error", message, False)


def make_openai(config: ClientConfig, asynchronous: bool = True, max_retries: int = 0):
    """An openai (Azure)OpenAI client for the config, the key read from the environment at this moment."""
    import openai

    api_key = os.environ.get(config.api_key_env)
    if not api_key:
        if not (config.base_url or os.environ.get("OPENAI_BASE_URL")):
            raise FatalAPIError(
                f"environment variable {config.api_key_env} is not set: export the API key there "
                "(it is read only from the environment)"
            )
        api_key = "unused"  # self-hosted servers (vLLM, SGLang) usually run without a key
    common = {"api_key": api_key, "max_retries": max_retries, "timeout": config.timeout_s}
    if config.azure_api_version:
        azure = openai.AsyncAzureOpenAI if asynchronous else openai.AzureOpenAI
        return azure(azure_endpoint=config.base_url, api_version=config.azure_api_version, **common)
    plain = openai.AsyncOpenAI if asynchronous else openai.OpenAI
    return plain(base_url=config.base_url, **common)


def malformed_reply(reply: Any) -> str | None:
    """What is wrong with a 200 reply that cannot be a chat completion, or None when it is one."""
    if not isinstance(reply, dict):
        return f"a {type(reply).__name__}, not an object"
    choices = reply.get("choices")
    if not isinstance(choices, list) or not choices:
        return "no choices"
    if not isinstance(choices[0], dict) or not isinstance(choices[0].get("message"), dict):
        return "first choice has no message"
    return None


def retry_after(headers) -> float | None:
    """Seconds the server asked to wait (retry-after-ms, else retry-after in seconds), capped; None if absent."""
    if headers is None:
        return None
    for name, scale in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            seconds = float(value) / scale
        except ValueError:
            continue
        return min(max(seconds, 0.0), MAX_RETRY_AFTER_S)
    return None


def backoff_s(attempt: int) -> float:
    """Exponential backoff with jitter: about 0.5, 1, 2, 4 ... seconds, at most a minute."""
    return min(MAX_BACKOFF_S, 0.5 * 2**attempt) * random.uniform(0.5, 1.0)


def error_message(err) -> str:
    body = getattr(err, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"])[:300]
    return str(getattr(err, "message", err))[:300]


def run_sync(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion from synchronous code, also when the caller already runs an event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = asyncio.run(coroutine)
        except BaseException as err:  # re-raised in the caller's thread
            outcome["error"] = err

    thread = threading.Thread(target=target, name="vital-chat")
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]
