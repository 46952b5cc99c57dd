"""`vital annotate serve`: the clinician annotation web app (FastAPI + uvicorn, one self-contained page).

    vital annotate serve --items items.jsonl --out annotations/ --annotator dr_lee [--host H] [--port P]

Who may use it:
- bound to a loopback address without a token, only loopback clients whose Host header names the loopback
  interface are served (the Host check stops a web page from reaching the app through DNS rebinding);
- with a shared secret in the environment (VITAL_ANNOTATE_TOKEN by default), every request must carry it (a
  cookie set by /login, or `Authorization: Bearer ...`), local or not, the figure images included;
- binding to any other address without that secret is refused at start.

Each annotator's judgements go to `<out>/<annotator>.jsonl`, appended and fsynced before the browser hears
"saved"; the page opens at the annotator's first unjudged item. Several annotators can share one server
(`?annotator=NAME` in the URL) or run their own.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import html
import ipaddress
import os
import socket
import sys
import threading
from collections import OrderedDict
from dataclasses import dataclass
from urllib.parse import parse_qs, quote, urlsplit

from fastapi import Body, FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response

from vital_hub.preferences.items import ImageResolver, Item, image_mime, load_items
from vital_hub.preferences.page import APP_CSS, APP_JS, LOGIN_HTML, page_html
from vital_hub.preferences.store import JudgementStore, check_annotator

TOKEN_ENV = "VITAL_ANNOTATE_TOKEN"
COOKIE = "vital_annotate"
MIN_TOKEN_LENGTH = 8
FAILED_LOGIN_DELAY_S = 1.0
IMAGE_CACHE_SIZE = 32
CSP = (
    "default-src 'none'; img-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)


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


def host_of(host_header: str | None) -> str | None:
    """The host name of a Host header ('[::1]:8000' -> '::1')."""
    if not host_header:
        return None
    return urlsplit(f"//{host_header}").hostname


def session_value(token: str) -> str:
    """What the cookie holds: derived from the token, so the token itself never sits in the browser's jar."""
    return hmac.new(token.encode(), b"vital-annotate-session", hashlib.sha256).hexdigest()


@dataclass
class Access:
    """The login rule of one server: a token, or loopback only."""

    token: str | None

    def allows(self, client_host: str | None, host_header: str | None, cookie: str | None, bearer: str | None) -> bool:
        if self.token is None:
            return is_loopback(client_host) and is_loopback(host_of(host_header))
        expected = session_value(self.token)
        by_cookie = cookie is not None and hmac.compare_digest(cookie, expected)
        by_bearer = bearer is not None and hmac.compare_digest(session_value(bearer), expected)
        return by_cookie or by_bearer


class Annotation:
    """The items, the image resolver and one judgement store per annotator (created on first use)."""

    def __init__(self, items: list[Item], out_dir: str, default_annotator: str, resolver: ImageResolver):
        self.items = items
        self.ids = [item.item_id for item in items]
        self.out_dir = out_dir
        self.default_annotator = check_annotator(default_annotator)
        self.resolver = resolver
        self._stores: dict[str, JudgementStore] = {}
        self._images: OrderedDict[int, bytes | None] = OrderedDict()
        self._lock = threading.Lock()

    def store(self, annotator: str | None) -> JudgementStore:
        name = check_annotator(annotator or self.default_annotator)
        with self._lock:
            if name not in self._stores:
                self._stores[name] = JudgementStore(self.out_dir, name)
            return self._stores[name]

    def done(self, store: JudgementStore) -> int:
        return sum(item_id in store.latest for item_id in self.ids)

    def image(self, index: int) -> bytes | None:
        """The item's picture; the last few are kept, as the page asks for the same one several times."""
        with self._lock:
            if index in self._images:
                self._images.move_to_end(index)
                return self._images[index]
            data = self.resolver.bytes_for(self.items[index])
            self._images[index] = data
            if len(self._images) > IMAGE_CACHE_SIZE:
                self._images.popitem(last=False)
            return data


def create_app(annotation: Annotation, token: str | None = None):
    """The FastAPI app; every route but the login form sits behind `Access`."""
    access = Access(token)
    app = FastAPI(title="vital annotate", docs_url=None, redoc_url=None, openapi_url=None)

    @app.middleware("http")
    async def guard(request: Request, call_next):
        open_paths = ("/login",) if token else ()
        if request.url.path not in open_paths:
            authorization = request.headers.get("authorization", "")
            bearer = authorization[7:] if authorization.lower().startswith("bearer ") else None
            client = request.client.host if request.client else None
            if not access.allows(client, request.headers.get("host"), request.cookies.get(COOKIE), bearer):
                return refuse(request, token is not None)
        response = await call_next(request)
        response.headers["Content-Security-Policy"] = CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers["Cache-Control"] = "no-store"
        return response

    def refuse(request: Request, login_possible: bool):
        if not login_possible:
            return JSONResponse({"detail": "this server only answers local requests"}, status_code=403)
        if request.method == "GET" and "text/html" in request.headers.get("accept", ""):
            here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            return RedirectResponse(f"/login?next={quote(here, safe='/')}", status_code=303)
        return JSONResponse({"detail": "login required"}, status_code=401)

    def store_for(annotator: str | None) -> JudgementStore:
        try:
            return annotation.store(annotator)
        except ValueError as err:
            raise HTTPException(400, str(err)) from err

    def item_at(index: int) -> Item:
        if not 0 <= index < len(annotation.items):
            raise HTTPException(404, f"no item {index}; there are {len(annotation.items)}")
        return annotation.items[index]

    @app.get("/login", response_class=HTMLResponse)
    def login_form(next: str = "/", message: str = ""):
        return login_page(next, message)

    @app.post("/login")
    async def login(request: Request):
        if token is None:
            return RedirectResponse("/", status_code=303)
        form = parse_qs((await request.body()).decode("utf-8", "replace"))
        supplied = (form.get("token") or [""])[0]
        target = safe_next((form.get("next") or ["/"])[0])
        if not hmac.compare_digest(session_value(supplied), session_value(token)):
            await asyncio.sleep(FAILED_LOGIN_DELAY_S)  # guessing the token gets slow
            return HTMLResponse(login_page(target, "That token is not right."), status_code=401)
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(COOKIE, session_value(token), httponly=True, samesite="strict")
        return response

    @app.get("/", response_class=HTMLResponse)
    def page():
        return page_html()

    @app.get("/static/app.js")
    def script():
        return Response(APP_JS, media_type="text/javascript")

    @app.get("/static/app.css")
    def stylesheet():
        return Response(APP_CSS, media_type="text/css")

    @app.get("/api/state")
    def state(annotator: str | None = None):
        store = store_for(annotator)
        return {
            "annotator": store.annotator,
            "total": len(annotation.items),
            "done": annotation.done(store),
            "position": store.resume_position(annotation.ids),
        }

    @app.get("/api/item/{index}")
    def item(index: int, annotator: str | None = None):
        store = store_for(annotator)
        chosen = item_at(index)
        public = chosen.public()
        public.pop("image")  # a server path is nobody's business in the browser
        return {
            "index": index,
            "total": len(annotation.items),
            "done": annotation.done(store),
            "item": public,
            "has_image": annotation.image(index) is not None,
            "judgement": store.latest.get(chosen.item_id),
        }

    @app.get("/api/image/{index}")
    def image(index: int):
        item_at(index)
        data = annotation.image(index)
        if data is None:
            return PlainTextResponse("figure not available", status_code=404)
        return Response(data, media_type=image_mime(data))

    @app.post("/api/judgements")
    def judge(annotator: str | None = None, body: dict = Body(...)):
        store = store_for(annotator)
        index = body.get("index")
        if not isinstance(index, int):
            raise HTTPException(422, "'index' must be an integer")
        chosen = item_at(index)
        if body.get("item_id") != chosen.item_id:
            raise HTTPException(409, f"item {index} is {chosen.item_id!r}, not {body.get('item_id')!r}")
        record = judgement_record(chosen, index, body)
        try:
            store.append(record)
        except ValueError as err:
            raise HTTPException(422, str(err)) from err
        return {
            "saved_index": index,
            "done": annotation.done(store),
            "total": len(annotation.items),
            "position": store.resume_position(annotation.ids),
        }

    return app


def judgement_record(item: Item, index: int, body: dict) -> dict:
    """What goes to disk: the verdict plus the item's text, so pairs can be built from the log alone."""
    public = item.public()
    return {
        **{
            key: public[key]
            for key in (
                "item_id",
                "pair_id",
                "candidate_id",
                "question",
                "answer_a",
                "answer_b",
                "caption",
                "mentions",
            )
        },
        "index": index,
        "acceptable_a": body.get("acceptable_a"),
        "acceptable_b": body.get("acceptable_b"),
        "better": body.get("better") or None,
        "comment": (body.get("comment") or "").strip(),
    }


def safe_next(target: str) -> str:
    """Only same-site paths after login (no '//host' or 'http://...')."""
    return target if target.startswith("/") and not target.startswith("//") else "/"


def login_page(next_path: str, message: str) -> str:
    return LOGIN_HTML.replace("__NEXT__", html.escape(safe_next(next_path))).replace(
        "__MESSAGE__", html.escape(message)
    )


# ---------------------------------------------------------------- command line


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="vital annotate", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="serve the annotation page")
    serve.add_argument("--items", required=True, help="items JSON/JSONL file, candidates folder or Hub repo id")
    serve.add_argument("--out", required=True, help="folder of per-annotator judgement logs (<annotator>.jsonl)")
    serve.add_argument("--annotator", required=True, help="whose judgements these are (the log's file name)")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (non-loopback needs a token)")
    serve.add_argument("--port", type=int, default=7860, help="port (0: any free port, printed at start)")
    serve.add_argument("--images", help="folder of <pair_id>.jpg figures for items that carry no picture")
    serve.add_argument("--figures", help="figures dataset (folder or repo id) to look pictures up by pair_id")
    serve.add_argument("--token-env", default=TOKEN_ENV, help="environment variable holding the shared secret")
    return parser.parse_args(argv)


def token_from_env(name: str) -> str | None:
    token = os.environ.get(name) or None
    if token is not None and len(token) < MIN_TOKEN_LENGTH:
        raise SystemExit(f"${name} is shorter than {MIN_TOKEN_LENGTH} characters: choose a longer secret")
    return token


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP explicitly: asyncio turns Nagle off only for sockets that say so, else replies wait ~40 ms.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    return sock


def main(argv: list[str] | None = None) -> int:
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    token = token_from_env(args.token_env)
    if token is None and not is_loopback(args.host):
        print(
            f"vital annotate: refusing to listen on {args.host} without a login; set ${args.token_env} to a shared "
            "secret (or listen on 127.0.0.1)",
            file=sys.stderr,
        )
        return 2
    check_annotator(args.annotator)
    items = load_items(args.items)
    annotation = Annotation(items, args.out, args.annotator, ImageResolver(args.images, args.figures))
    store = annotation.store(args.annotator)
    import uvicorn

    sock = bind(args.host, args.port)
    port = sock.getsockname()[1]
    shown_host = f"[{args.host}]" if ":" in args.host else args.host
    print(
        f"serving {len(items)} items for {store.annotator} ({annotation.done(store)} judged) on "
        f"http://{shown_host}:{port}/ ; judgements in {store.path}" + ("" if token else " (local only)"),
        flush=True,
    )
    config = uvicorn.Config(create_app(annotation, token), log_level="warning", access_log=False)
    uvicorn.Server(config).run(sockets=[sock])
    return 0
