"""How a model server's failures are told apart and waited out: the rules the chat client and the Batch API share.

401/403/404 stop the run (`FatalAPIError`, with a message saying what to fix); 408, 409, 429 and 5xx are retried
with exponential backoff that honours Retry-After; a 200 reply that is no chat completion counts as malformed
and is retried too.
"""

from __future__ import annotations

import random
from typing import Any

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


class FatalAPIError(RuntimeError):
    """A failure no retry can fix (bad key, no access, unknown model): the run stops and says what to change."""


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
