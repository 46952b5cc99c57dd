"""What a request must show before the annotation app acts on it: that it comes from the app's own page, and a
body small enough to read.

Cross-site request forgery. A session cookie marked SameSite=Strict still goes with requests from every page of
the same *site*, and a site is the host without its port: a page served on another port of the same machine
(a notebook, a dashboard, a dev server) could otherwise write judgements as the signed-in clinician, or sign the
clinician's browser in as someone else. Without accounts the app trusts any loopback client, which every local
page is. So every state-changing request (any method but GET/HEAD/OPTIONS) must be same-origin:

- an `Origin` header, when present, names exactly this server (scheme, host and port of its `Host` header);
- a `Sec-Fetch-Site` header, when present, says `same-origin`;
- a request carrying neither is not from a browser that could be tricked (every current browser sends `Origin`
  on a POST), so it passes this check: scripts use `Authorization: Bearer`.

On top of that each route takes only what a page of another origin cannot send without the browser's permission
(CORS preflight, which this app never grants): JSON for judgements, and for the forms (sign in, sign out) the
check above plus, for signing out, the session's own CSRF token (see https://owasp.org/www-community/attacks/csrf
and the Fetch standard's `Sec-Fetch-Site`, https://w3c.github.io/webappsec-fetch-metadata/).

Bodies. A body is read only up to a limit: a declared Content-Length above it is refused (413) before a byte is
read, and a streamed body is cut off as soon as it passes the limit.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from fastapi import HTTPException, Request

SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
DEFAULT_PORTS = {"http": 80, "https": 443}


def is_loopback(host: str | None) -> bool:
    """True for localhost, 127.0.0.0/8, ::1 and IPv4-mapped loopback."""
    if not host:
        return False
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address).is_loopback


def address_group(host: str | None) -> str:
    """What sign-in limits count per client: the IPv4 address, or the /64 network of an IPv6 one (one
    machine commonly holds a whole /64, and would otherwise get a fresh limit per address)."""
    try:
        address = ipaddress.ip_address((host or "").strip("[]"))
    except ValueError:
        return host or "?"
    mapped = getattr(address, "ipv4_mapped", None)
    if address.version == 6 and mapped is None:
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(mapped or address)


def host_of(host_header: str | None) -> str | None:
    """The host name of a Host header ('[::1]:8000' -> '::1')."""
    if not host_header:
        return None
    try:
        return urlsplit(f"//{host_header}").hostname
    except ValueError:
        return None


def _origin(scheme: str, netloc: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) with the default port filled in, or None when it does not parse."""
    try:
        parts = urlsplit(f"{scheme}://{netloc}")
        host, port = parts.hostname, parts.port
    except ValueError:
        return None
    if not host or parts.username is not None or parts.path:
        return None
    return scheme.lower(), host.lower(), port or DEFAULT_PORTS.get(scheme.lower(), 0)


def own_origin(request: Request) -> tuple[str, str, int] | None:
    """This server as the browser addressed it: the request's scheme and its Host header."""
    return _origin(request.url.scheme, request.headers.get("host", ""))


def cross_origin_reason(request: Request) -> str | None:
    """Why a state-changing request may not be from this app's own page, or None when it may."""
    if request.method in SAFE_METHODS:
        return None
    origin = request.headers.get("origin")
    if origin is not None:
        scheme, sep, rest = origin.partition("://")
        claimed = _origin(scheme, rest) if sep and scheme.lower() in DEFAULT_PORTS else None
        if claimed is None or claimed != own_origin(request):
            return "this request comes from another site's page (Origin does not name this server)"
    site = request.headers.get("sec-fetch-site")
    if site is not None and site.lower() != "same-origin":
        return f"this request comes from another site's page (Sec-Fetch-Site: {site[:20]})"
    return None


def check_same_origin(request: Request) -> None:
    reason = cross_origin_reason(request)
    if reason is not None:
        raise HTTPException(403, reason)


def declared_length(request: Request) -> int | None:
    """The Content-Length a request declares; a malformed one is refused (400)."""
    value = request.headers.get("content-length")
    if value is None:
        return None
    if not value.strip().isdigit():
        raise HTTPException(400, "malformed Content-Length")
    return int(value)


async def bounded_body(request: Request, limit: int, what: str) -> bytes:
    """The body, read only while it stays within `limit` bytes; else 413 with what is read so far dropped."""
    declared = declared_length(request)
    if declared is not None and declared > limit:
        raise HTTPException(413, f"{what} is at most {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HTTPException(413, f"{what} is at most {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def require_json(request: Request) -> None:
    """A JSON content type: the one a page of another origin cannot send without a CORS preflight."""
    kind = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if kind != "application/json":
        raise HTTPException(415, "send the body as application/json")
