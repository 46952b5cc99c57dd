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

The client's settings and the openai client made from them are in `endpoint`, the failure rules (what is fatal,
what is retried, how long to wait) in `failures`, results and usage counters in `usage`; their public names are
imported from here.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from vital_hub.generation.cache import RequestCache, request_key
from vital_hub.generation.endpoint import ClientConfig, ServerOptions, make_openai
from vital_hub.generation.failures import (
    FATAL_STATUS,
    MAX_CONSECUTIVE_REJECTIONS,
    FatalAPIError,
    backoff_s,
    error_message,
    is_retryable,
    malformed_reply,
    retry_after,
)
from vital_hub.generation.limits import Limiter, estimate_tokens, prompt_tokens
from vital_hub.generation.pricing import PriceTable
from vital_hub.generation.usage import ChatResult, ProgressBar, UsageStats
from vital_hub.redaction import environment_secrets, redact, scrub, without_credentials

# The client's public names, wherever they are defined: callers import them from here.
__all__ = [
    "ChatClient",
    "ChatResult",
    "ClientConfig",
    "FatalAPIError",
    "ProgressBar",
    "ServerOptions",
    "UsageStats",
    "backoff_s",
    "error_message",
    "is_retryable",
    "make_openai",
    "retry_after",
    "run_sync",
]

T = TypeVar("T")


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
