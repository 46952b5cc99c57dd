"""Who is signed in to the annotation app: one secret per clinician, server-side sessions, login rate limits.

The annotators file (`<out>/annotators.json`, beside the judgement logs, mode 0600) maps each normalised name to
the SHA-256 of its secret and a role (`annotator` or `admin`); the secret itself is printed once, inside an
invite link, and never stored. A secret is 32 random bytes, so a plain hash is as strong as a slow one here.

A credential reads `NAME:SECRET`. Only the name is used to find the account; the identity is the account whose
hash matches, so no URL parameter or request field can ever choose whom a request speaks for.

A signed-in browser holds only a random session id (a cookie); the session table maps it to the name, an
expiry, the session's CSRF token (which the page must send back to sign out) and its binding, and logging out
removes the row. The binding is a random value the sign-in page made and kept in its origin's localStorage; the
page sends it with every API call. A cookie is not bound to a port, so a page on another port of the same host
can plant its own session cookie in the browser ("cookie tossing"); it cannot write this origin's localStorage,
so a planted session answers no API call of the page.
Sessions live in the server's memory: a restart signs everyone out, and the invite link signs them in again.

The file is checked whole when the server starts (a malformed hash, a wrong type, a name given twice stops it with
one line naming the file and the record); an edit that breaks it while the server runs is reported once and the
accounts read before stay in force.

Sign-in attempts are limited per client address and per claimed name, but a limit only ever refuses a *wrong*
key: the right key always signs in, so a flood of wrong keys, from any address, cannot lock a clinician out (the
keys are 256 random bits, so the limit is there to keep floods cheap, not to stop guessing).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
import sys
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from vital_hub.io import atomic_path
from vital_hub.preferences.store import check_annotator

ANNOTATORS_FILE = "annotators.json"
ROLES = ("annotator", "admin")
SESSION_HOURS = 12.0
SHA256_HEX = re.compile(r"[0-9a-f]{64}")


def accounts_path(out_dir: str | Path) -> Path:
    return Path(out_dir) / ANNOTATORS_FILE


def secret_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "replace")).hexdigest()


@dataclass(frozen=True)
class Account:
    name: str
    role: str

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


def read_accounts(path: Path) -> dict[str, dict]:
    """The accounts of an annotators file, every record checked; ValueError naming the file and record if not."""
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"), object_pairs_hook=_refuse_duplicates)
    except (OSError, ValueError, RecursionError) as err:
        raise ValueError(f"{path}: not a readable annotators file ({str(err)[:200]})") from None
    accounts = data.get("annotators") if isinstance(data, dict) else None
    if not isinstance(accounts, dict):
        raise ValueError(f"{path}: expected an object with an 'annotators' mapping")
    for name, entry in accounts.items():
        where = f"{path}: annotator {name[:80]!r}"
        try:
            normal = check_annotator(name)
        except ValueError as err:
            raise ValueError(f"{where}: {err}") from None
        if normal != name:
            raise ValueError(f"{where}: names are stored normalised, as {normal!r}")
        if not isinstance(entry, dict) or entry.get("role") not in ROLES:
            raise ValueError(f"{where}: needs a 'role' ({'/'.join(ROLES)}) and a 'secret_sha256'")
        digest = entry.get("secret_sha256")
        if not isinstance(digest, str) or not SHA256_HEX.fullmatch(digest):
            raise ValueError(f"{where}: 'secret_sha256' must be 64 lowercase hex digits (re-issue the link with "
                             "`vital annotate add-annotator NAME --replace`)")  # fmt: skip
        if not isinstance(entry.get("created", ""), str):
            raise ValueError(f"{where}: 'created' must be a date string")
    return accounts


def _refuse_duplicates(pairs: list[tuple[str, object]]) -> dict:
    """A JSON object whose keys are unique: a name given twice would silently keep only its last account."""
    seen: dict[str, object] = {}
    for key, value in pairs:
        if key in seen:
            raise ValueError(f"{key[:80]!r} is given twice")
        seen[key] = value
    return seen


def add_annotator(out_dir: str | Path, name: str, role: str = "annotator", replace: bool = False) -> tuple[str, str]:
    """Create (or, with replace, re-key) an account; returns (normalised name, credential) — shown once."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; known: {list(ROLES)}")
    name = check_annotator(name)
    path = accounts_path(out_dir)
    accounts = read_accounts(path)
    if name in accounts and not replace:
        raise ValueError(f"{name} already has an account in {path}; pass --replace to issue a new link")
    credential = f"{name}:{secrets.token_urlsafe(32)}"
    accounts[name] = {
        "role": role,
        "secret_sha256": secret_hash(credential),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump({"annotators": accounts}, handle, indent=2, sort_keys=True)
            handle.write("\n")
    os.chmod(path, 0o600)
    return name, credential


class Accounts:
    """The annotators file, re-read whenever it changes (an account added mid-study needs no restart)."""

    def __init__(self, out_dir: str | Path):
        self.path = accounts_path(out_dir)
        self._stamp: tuple[int, int] | None = None
        self._accounts: dict[str, dict] = {}
        self._lock = threading.Lock()
        self._started = False  # until the first read: a bad file then stops the server
        self.reload()
        self._started = True

    def reload(self) -> None:
        """Read the file again if it changed. The first read raises on a bad file (the server must not start);
        later, a bad edit is reported once and the accounts read before are kept."""
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            self._accounts, self._stamp = {}, None
            return
        stamp = (stat.st_mtime_ns, stat.st_size)
        with self._lock:
            if stamp == self._stamp:
                return
            try:
                self._accounts = read_accounts(self.path)
            except ValueError as err:
                if not self._started:
                    raise
                print(f"vital annotate: {err}; keeping the accounts read before", file=sys.stderr, flush=True)
            self._stamp = stamp

    def __bool__(self) -> bool:
        return bool(self._accounts)

    def names(self, role: str = "annotator") -> list[str]:
        self.reload()
        return sorted(name for name, entry in self._accounts.items() if entry["role"] == role)

    @staticmethod
    def claimed_name(credential: str) -> str | None:
        """The normalised name a credential claims (what rate limits are counted by), or None."""
        name, sep, _ = credential.partition(":")
        try:
            return check_annotator(name) if sep else None
        except ValueError:
            return None

    def verify(self, credential: str) -> Account | None:
        self.reload()
        name = self.claimed_name(credential)
        entry = self._accounts.get(name) if name else None
        expected = entry["secret_sha256"] if entry else secret_hash("no such account")
        matches = hmac.compare_digest(secret_hash(credential.strip()), expected)
        return Account(name, entry["role"]) if matches and entry else None

    def current(self, name: str) -> Account | None:
        """The account as the file says now (a removed account's sessions stop working)."""
        self.reload()
        entry = self._accounts.get(name)
        return Account(name, entry["role"]) if entry else None


@dataclass(frozen=True)
class Session:
    name: str
    expires: float  # time.monotonic()
    csrf_token: str  # sent back by the page's forms (sign out)
    binding: str  # kept by the page that signed in (localStorage) and sent with every API call


class Sessions:
    """Random session ids -> Session; ended by logout or by time."""

    def __init__(self, lifetime_s: float = SESSION_HOURS * 3600):
        self.lifetime_s = lifetime_s
        self._table: dict[str, Session] = {}
        self._lock = threading.Lock()

    def start(self, name: str, binding: str) -> str:
        session_id = secrets.token_urlsafe(32)
        now = time.monotonic()
        with self._lock:
            self._table = {k: v for k, v in self._table.items() if v.expires > now}
            self._table[session_id] = Session(name, now + self.lifetime_s, secrets.token_urlsafe(32), binding)
        return session_id

    def get(self, session_id: str | None) -> Session | None:
        """The live session of an id (None for an unknown, ended or expired one)."""
        if not session_id:
            return None
        with self._lock:
            session = self._table.get(session_id)
            if session is None:
                return None
            if session.expires <= time.monotonic():
                del self._table[session_id]
                return None
            return session

    def name_of(self, session_id: str | None) -> str | None:
        session = self.get(session_id)
        return session.name if session else None

    def csrf_token(self, session_id: str | None) -> str | None:
        """The token a page of this session sends back with a form (none for an unknown or ended session)."""
        session = self.get(session_id)
        return session.csrf_token if session else None

    def end(self, session_id: str | None) -> None:
        with self._lock:
            self._table.pop(session_id or "", None)


class RateLimit:
    """Token buckets per key: `burst` wrong attempts at once, then one every `every_s` seconds. At most
    `max_keys` buckets are kept (full ones go first, then the least recently used), so a flood of new addresses
    or names cannot grow the table without end."""

    def __init__(self, burst: int, every_s: float, max_keys: int = 10000):
        self.burst, self.every_s, self.max_keys = burst, every_s, max_keys
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def allow(self, key: str) -> bool:
        now = time.monotonic()
        with self._lock:
            tokens, last = self._buckets.get(key, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - last) / self.every_s)
            if len(self._buckets) >= self.max_keys and key not in self._buckets:
                full = [k for k, (t, s) in self._buckets.items() if t + (now - s) / self.every_s >= self.burst]
                for stale in full:
                    del self._buckets[stale]
                while len(self._buckets) >= self.max_keys:
                    del self._buckets[next(iter(self._buckets))]  # the least recently charged
            self._buckets.pop(key, None)  # re-inserted last: the dict's order is the order of use
            allowed = tokens >= 1.0
            self._buckets[key] = (tokens - 1.0 if allowed else tokens, now)
            return allowed

    def refund(self, key: str) -> None:
        """Give back the charge of an attempt that succeeded: only failures use up a bucket."""
        with self._lock:
            if key in self._buckets:
                tokens, last = self._buckets[key]
                self._buckets[key] = (min(float(self.burst), tokens + 1.0), last)
