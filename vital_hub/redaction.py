"""Keeping credentials out of every message and every file: the one place that knows which values are secret.

A server that rejects a key often echoes it back ("Incorrect API key provided: sk-..."), a careless or hostile one
may put it in a successful reply, and an error message travels to the terminal, to logs and into the rows a job
writes. So every message built from a server's reply or an exception goes through `redact` before it leaves the
module that talks to the server, every reply is passed through `scrub` before it is cached or returned, and the
`vital` entry point redacts the one error line it prints once more. A URL is recorded only through
`without_credentials`, so `http://user:password@host/v1` is stored as `http://host/v1`.

Each function here runs in time linear in the length of its text: error lines quote record ids and values that
may be megabytes long, and a pattern that backtracks over a long word would hang the command that prints them.
"""

from __future__ import annotations

import os
import re
from urllib.parse import unquote, urlsplit, urlunsplit

PLACEHOLDER = "<token>"
# Variables that hold credentials under their usual names; any variable whose name ends like a credential
# (..._KEY, ..._TOKEN, ..._SECRET, ..._PASSWORD) counts as well.
KNOWN_SECRET_ENV = ("OPENAI_API_KEY", "AZURE_OPENAI_API_KEY", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")
_SECRET_NAME = re.compile(r"(?:^|_)(?:API_?KEY|KEY|TOKEN|SECRET|PASSWORD)$", re.IGNORECASE)
# Shorter values ("1", "true") are flags, not credentials, and replacing them would garble messages.
MIN_SECRET_LENGTH = 8
# The password of `scheme://user:password@host`. The match can only start at "://", and neither part may hold
# a '/', so every attempt ends at the next '/' of the text: one pass over it, however long its words are.
_URL_PASSWORD = re.compile(r"://([^/\s:@]*):[^/\s@]+@")


def url_passwords(url: str | None) -> list[str]:
    """The password of a URL with credentials (as written and percent-decoded), else nothing."""
    if not url or "@" not in url:
        return []
    try:
        password = urlsplit(url.strip()).password
    except ValueError:
        return []
    return sorted({password, unquote(password)}) if password else []


def without_credentials(url: str | None) -> str | None:
    """`url` without its `user:password@` part: the form in which a URL is recorded anywhere."""
    if not url or "@" not in url:
        return url
    try:
        parts = urlsplit(url.strip())
        host = parts.hostname or ""
    except ValueError:
        return _URL_PASSWORD.sub(f"://{PLACEHOLDER}@", url)
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    netloc = f"{host}:{port}" if port is not None else host
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def environment_secrets(*names: str, urls: tuple[str | None, ...] = ()) -> list[str]:
    """The values of the named environment variables and of every variable named like a credential, plus the
    password of every URL in the environment (OPENAI_BASE_URL=http://user:pw@host/v1) and of `urls`."""
    wanted = set(names) | set(KNOWN_SECRET_ENV)
    values = {value for name, value in os.environ.items() if name in wanted or _SECRET_NAME.search(name)}
    for value in [*os.environ.values(), *urls]:
        if value and "://" in value:
            values.update(url_passwords(value))
    values = {value for value in values if len(value) >= MIN_SECRET_LENGTH}
    return sorted(values, key=len, reverse=True)  # a secret containing another is replaced whole


def redact(text: str, *secrets: str | None) -> str:
    """`text` with each secret, and the password of any URL (https://user:pass@host), replaced by <token>."""
    for secret in sorted((s for s in secrets if s), key=len, reverse=True):
        text = text.replace(secret, PLACEHOLDER)
    return _URL_PASSWORD.sub(rf"://\1:{PLACEHOLDER}@", text)


def redact_environment(text: str, *names: str, urls: tuple[str | None, ...] = ()) -> str:
    """`text` with every credential of the environment (and those of `names` and `urls`) replaced."""
    return redact(text, *environment_secrets(*names, urls=urls))


def scrub(value, secrets: list[str]):
    """A JSON-like value (a server's reply) with every string redacted of `secrets`, other values unchanged.
    Iterative, so a reply nested a thousand levels deep cannot overflow the stack."""
    if not isinstance(value, dict | list):
        return redact(value, *secrets) if isinstance(value, str) else value
    root = type(value)(value)
    stack = [root]
    while stack:
        container = stack.pop()
        for key in container if isinstance(container, dict) else range(len(container)):
            item = container[key]
            if isinstance(item, str):
                container[key] = redact(item, *secrets)
            elif isinstance(item, dict | list):
                container[key] = type(item)(item)
                stack.append(container[key])
    return root
