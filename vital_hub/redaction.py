"""Keeping credentials out of every message: the one place that knows which values are secret.

A server that rejects a key often echoes it back ("Incorrect API key provided: sk-..."), and an error message
travels to the terminal, to logs and into the rows a job writes. Every message built from a server's reply or
an exception goes through `redact` before it leaves the module that talks to the server, and the `vital`
entry point redacts the one error line it prints once more.
"""

from __future__ import annotations

import os
import re

PLACEHOLDER = "<token>"
# Variables that hold credentials under their usual names; any variable whose name ends like a credential
# (..._KEY, ..._TOKEN, ..._SECRET, ..._PASSWORD) counts as well.
KNOWN_SECRET_ENV = ("OPENAI_API_KEY", "AZURE_OPENAI_API_KEY", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")
_SECRET_NAME = re.compile(r"(?:^|_)(?:API_?KEY|KEY|TOKEN|SECRET|PASSWORD)$", re.IGNORECASE)
# Shorter values ("1", "true") are flags, not credentials, and replacing them would garble messages.
MIN_SECRET_LENGTH = 8


def environment_secrets(*names: str) -> list[str]:
    """The values of the named environment variables and of every variable named like a credential."""
    wanted = set(names) | set(KNOWN_SECRET_ENV)
    values = {
        value
        for name, value in os.environ.items()
        if (name in wanted or _SECRET_NAME.search(name)) and len(value) >= MIN_SECRET_LENGTH
    }
    return sorted(values, key=len, reverse=True)  # a secret containing another is replaced whole


def redact(text: str, *secrets: str | None) -> str:
    """`text` with each secret, and the password of any URL (https://user:pass@host), replaced by <token>."""
    for secret in sorted((s for s in secrets if s), key=len, reverse=True):
        text = text.replace(secret, PLACEHOLDER)
    return re.sub(r"(\w+://[^/\s:@]+:)[^/\s@]+@", rf"\1{PLACEHOLDER}@", text)


def redact_environment(text: str, *names: str) -> str:
    """`text` with every credential of the environment (and those of `names`) replaced."""
    return redact(text, *environment_secrets(*names))
