"""The clinician annotation web app (FastAPI, one self-contained page); `vital annotate` in serve.py runs it.

Who may use it:
- with accounts (`<out>/annotators.json`, made by `vital annotate add-annotator`), every request needs a session
  (a cookie set by /login from a clinician's invite link) or `Authorization: Bearer NAME:SECRET`; the account
  alone decides whose judgements a request reads and writes. An `annotator` parameter naming anyone else is
  refused (403). Admin accounts see everyone's progress and agreement at /admin and judge nothing;
- without accounts (one clinician on a laptop), only loopback clients whose Host header names the loopback
  interface are served (the Host check stops a web page from reaching the app through DNS rebinding), and the
  judgements are those of the server's `--annotator`.

Every state-changing request must come from the app's own page (guard.py: Origin / Sec-Fetch-Site, JSON for
judgements, the session's CSRF token to sign out); a session's API calls must carry the binding its sign-in page
kept (accounts.py), so a session cookie planted from another port of the host answers nothing; and every body is
read only up to a small limit.

Each annotator's judgements go to `<out>/<annotator>.jsonl`, appended and fsynced before the browser hears
"saved"; the page opens at the annotator's first unjudged item.
"""

from __future__ import annotations

import hmac
import html
import json
import re
import threading
from collections import OrderedDict
from urllib.parse import parse_qs, quote

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response

from vital_hub.preferences.accounts import Account, Accounts, RateLimit, Sessions
from vital_hub.preferences.admin import admin_page, progress_report
from vital_hub.preferences.guard import (
    SAFE_METHODS,
    address_group,
    bounded_body,
    cross_origin_reason,
    host_of,
    is_loopback,
    require_json,
)
from vital_hub.preferences.items import ImageResolver, Item, image_mime
from vital_hub.preferences.page import APP_CSS, APP_JS, LOGIN_HTML, LOGIN_JS, page_html
from vital_hub.preferences.store import CANNOT_JUDGE, MAX_COMMENT_CHARS, JudgementStore, check_annotator

COOKIE = "vital_annotate_session"
BINDING_HEADER = "X-Vital-Binding"
BINDING = re.compile(r"[A-Za-z0-9_-]{32,128}")
IMAGE_CACHE_SIZE = 32
IMAGE_CACHE_BYTES = 256 * 1024 * 1024  # and at most this much: one figure may be up to MAX_FIGURE_BYTES
MAX_BODY_BYTES = 32 * 1024  # a judgement with a 4000-character comment, escaped
MAX_FORM_BYTES = 8 * 1024  # the sign-in and sign-out forms
OPEN_PATHS = ("/login", "/static/login.js", "/static/app.css")
JUDGEMENT_KEYS = {"index", "item_id", "acceptable_a", "acceptable_b", "better", "comment", "cannot_judge"}
LOGIN_MESSAGES = {
    "wrong": "That access key is not right.",
    "slow": "Too many wrong access keys from this address or for this name: check the key (the part after "
    "#key= in your invite link) and try again in a minute.",
    "out": "You are signed out.",
    "unbound": "This browser did not send its sign-in check: allow JavaScript and local storage for this site, "
    "then open your invite link again.",
}
CSP = (
    "default-src 'none'; img-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)


class Annotation:
    """The items, the image resolver and one judgement store per annotator (created on first use)."""

    def __init__(self, items: list[Item], out_dir: str, resolver: ImageResolver):
        self.items = items
        self.ids = [item.item_id for item in items]
        self.out_dir = out_dir
        self.resolver = resolver
        self._stores: dict[str, JudgementStore] = {}
        self._images: OrderedDict[int, tuple[bytes | None, str | None]] = OrderedDict()
        self._lock = threading.Lock()

    def store(self, annotator: str) -> JudgementStore:
        name = check_annotator(annotator)
        with self._lock:
            if name not in self._stores:
                self._stores[name] = JudgementStore(self.out_dir, name)
            return self._stores[name]

    def done(self, store: JudgementStore) -> int:
        return sum(item_id in store.latest for item_id in self.ids)

    def image(self, index: int) -> tuple[bytes | None, str | None]:
        """(picture, None) or (None, 'missing' | 'damaged' | 'too_large'); the last few are kept (at most
        IMAGE_CACHE_SIZE pictures and IMAGE_CACHE_BYTES), as pages ask repeatedly; the server log says why."""
        with self._lock:
            if index in self._images:
                self._images.move_to_end(index)
                return self._images[index]
            data, _, problem = self.resolver.resolve(self.items[index], report=True)
            self._images[index] = (data, problem)
            while len(self._images) > IMAGE_CACHE_SIZE or (
                len(self._images) > 1 and sum(len(d or b"") for d, _ in self._images.values()) > IMAGE_CACHE_BYTES
            ):
                self._images.popitem(last=False)
            return data, problem


class Gate:
    """Who a request is: a session, a bearer credential, or (without accounts) the local clinician."""

    def __init__(self, accounts: Accounts | None, local_annotator: str | None, session_hours: float):
        self.accounts = accounts
        self.local = Account(check_annotator(local_annotator), "annotator") if local_annotator else None
        self.sessions = Sessions(session_hours * 3600)
        self.per_client = RateLimit(burst=10, every_s=6.0)
        self.per_name = RateLimit(burst=5, every_s=12.0)

    def check_credential(self, credential: str, client: str | None) -> Account | None | str:
        """The account; for a wrong credential None, or 'slow' once its address or its name has used up its
        wrong attempts. The right credential is never refused: a flood of wrong ones locks nobody out."""
        account = self.accounts.verify(credential[:1024])
        if account is not None:
            return account
        name, client = Accounts.claimed_name(credential) or "?", address_group(client)
        if not self.per_client.allow(client):
            return "slow"
        if not self.per_name.allow(name):
            self.per_client.refund(client)
            return "slow"
        return None

    def who(self, request: Request) -> Account | None | str:
        if self.accounts is None:
            client = request.client.host if request.client else None
            local = is_loopback(client) and is_loopback(host_of(request.headers.get("host")))
            return self.local if local else None
        session = self.sessions.get(request.cookies.get(COOKIE))
        if session is not None:
            return self.accounts.current(session.name) if bound(request, session.binding) else None
        authorization = request.headers.get("authorization", "")
        if authorization.lower().startswith("bearer "):
            return self.check_credential(authorization[7:].strip(), request.client.host if request.client else None)
        return None


def bound(request: Request, binding: str) -> bool:
    """Whether a request may use the session whose binding is `binding`: API calls (all but the pictures, which
    are the same for everyone and load through <img>) must send it, so a session cookie planted by a page on
    another port of this host answers nothing. Pages and static files need no binding: they hold no one's data
    (the admin page only shows progress)."""
    path = request.url.path
    if not path.startswith("/api/") or path.startswith("/api/image/"):
        return True
    return hmac.compare_digest(request.headers.get(BINDING_HEADER, "").encode(), binding.encode())


def create_app(annotation: Annotation, gate: Gate):
    """The FastAPI app; every route but the login form sits behind `Gate`."""
    app = FastAPI(title="vital annotate", docs_url=None, redoc_url=None, openapi_url=None)

    @app.middleware("http")
    async def guard(request: Request, call_next):
        refused = refuse_early(request)
        if refused is not None:
            return refused
        account = None
        if request.url.path not in OPEN_PATHS:
            account = gate.who(request)
            if account == "slow":
                return JSONResponse({"detail": "too many attempts; wait a minute"}, status_code=429)
            if account is None:
                return refuse(request)
        request.state.account = account
        response = await call_next(request)
        response.headers["Content-Security-Policy"] = CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        # same-origin, not no-referrer: under no-referrer a browser sends `Origin: null` with the page's own forms,
        # which the same-origin check must refuse; other sites still get no Referer.
        response.headers["Referrer-Policy"] = "same-origin"
        response.headers["Cache-Control"] = "no-store"
        return response

    def refuse_early(request: Request) -> Response | None:
        """A state-changing request from another origin (403), or with a declared body over every limit (413),
        answered before anything is read or anyone is looked up."""
        if request.method in SAFE_METHODS:
            return None
        declared = request.headers.get("content-length", "0").strip()
        if not declared.isdigit():
            return JSONResponse({"detail": "malformed Content-Length"}, status_code=400)
        if int(declared) > MAX_BODY_BYTES:
            return JSONResponse({"detail": f"a request body is at most {MAX_BODY_BYTES} bytes"}, status_code=413)
        reason = cross_origin_reason(request)
        return None if reason is None else JSONResponse({"detail": reason}, status_code=403)

    def refuse(request: Request):
        if gate.accounts is None:
            return JSONResponse({"detail": "this server only answers local requests"}, status_code=403)
        if request.method == "GET" and "text/html" in request.headers.get("accept", ""):
            here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            return RedirectResponse(f"/login?next={quote(here, safe='/')}", status_code=303)
        return JSONResponse({"detail": "login required"}, status_code=401)

    def annotator(request: Request, claimed: str | None = None) -> JudgementStore:
        """The signed-in clinician's own store; naming anyone else, or being an admin, is refused."""
        account: Account = request.state.account
        if account.is_admin:
            raise HTTPException(403, "admin accounts see progress at /admin and judge nothing")
        for value in [claimed, *request.query_params.getlist("annotator")]:
            if value is not None and _normal(value) != account.name:
                raise HTTPException(403, f"you are signed in as {account.name}")
        return annotation.store(account.name)

    def item_at(index: int) -> Item:
        if not 0 <= index < len(annotation.items):
            raise HTTPException(404, f"no item {index}; there are {len(annotation.items)}")
        return annotation.items[index]

    @app.get("/login", response_class=HTMLResponse)
    def login_form(next: str = "/", error: str = ""):
        return login_page(next, LOGIN_MESSAGES.get(error, ""))

    @app.get("/static/login.js")
    def login_script():
        return Response(LOGIN_JS, media_type="text/javascript")

    @app.post("/login")
    async def login(request: Request):
        if gate.accounts is None:
            return RedirectResponse("/", status_code=303)
        form = parse_qs((await bounded_body(request, MAX_FORM_BYTES, "a sign-in form")).decode("utf-8", "replace"))
        target = safe_next((form.get("next") or ["/"])[0])
        client = request.client.host if request.client else None
        binding = (form.get("binding") or [""])[0]
        if not BINDING.fullmatch(binding):
            return HTMLResponse(login_page(target, LOGIN_MESSAGES["unbound"]), status_code=400)
        account = gate.check_credential((form.get("key") or [""])[0].strip(), client)
        if not isinstance(account, Account):
            code = "slow" if account == "slow" else "wrong"
            status = 429 if code == "slow" else 401
            return HTMLResponse(login_page(target, LOGIN_MESSAGES[code]), status_code=status)
        if account.is_admin and target == "/":
            target = "/admin"
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(
            COOKIE,
            gate.sessions.start(account.name, binding),
            max_age=int(gate.sessions.lifetime_s),
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return response

    @app.post("/logout")
    async def logout(request: Request):
        form = parse_qs((await bounded_body(request, MAX_FORM_BYTES, "a sign-out form")).decode("utf-8", "replace"))
        session = request.cookies.get(COOKIE)
        expected = gate.sessions.csrf_token(session)
        sent = (form.get("csrf") or [""])[0].encode()
        if expected is not None and not hmac.compare_digest(sent, expected.encode()):
            raise HTTPException(403, "sign out from the app's own page")
        gate.sessions.end(session)
        response = RedirectResponse("/login?error=out" if gate.accounts else "/", status_code=303)
        response.delete_cookie(COOKIE, httponly=True, samesite="strict", secure=request.url.scheme == "https")
        return response

    @app.get("/", response_class=HTMLResponse)
    def page(request: Request):
        if request.state.account.is_admin:
            return RedirectResponse("/admin", status_code=303)
        return page_html(csrf_token=gate.sessions.csrf_token(request.cookies.get(COOKIE)))

    @app.get("/admin", response_class=HTMLResponse)
    def admin(request: Request):
        if not request.state.account.is_admin:
            raise HTTPException(403, "only admin accounts see everyone's progress")
        token = gate.sessions.csrf_token(request.cookies.get(COOKIE))
        return admin_page(progress_report(annotation, gate.accounts), token)

    @app.get("/api/admin")
    def admin_api(request: Request):
        if not request.state.account.is_admin:
            raise HTTPException(403, "only admin accounts see everyone's progress")
        return progress_report(annotation, gate.accounts)

    @app.get("/static/app.js")
    def script():
        return Response(APP_JS, media_type="text/javascript")

    @app.get("/static/app.css")
    def stylesheet():
        return Response(APP_CSS, media_type="text/css")

    @app.get("/api/state")
    def state(request: Request):
        store = annotator(request)
        return {
            "annotator": store.annotator,
            "total": len(annotation.items),
            "done": annotation.done(store),
            "position": store.resume_position(annotation.ids),
        }

    @app.get("/api/item/{index}")
    def item(request: Request, index: int):
        store = annotator(request)
        chosen = item_at(index)
        public = chosen.public()
        public.pop("image")  # a server path is nobody's business in the browser
        data, problem = annotation.image(index)
        return {
            "index": index,
            "total": len(annotation.items),
            "done": annotation.done(store),
            "item": public,
            "has_image": data is not None,
            "figure_problem": problem,
            "judgement": store.latest.get(chosen.item_id),
        }

    @app.get("/api/image/{index}")
    def image(index: int):
        item_at(index)
        data, problem = annotation.image(index)
        if data is None:
            return PlainTextResponse(f"figure not available ({problem})", status_code=404)
        return Response(data, media_type=image_mime(data))

    @app.post("/api/judgements")
    async def judge(request: Request):
        require_json(request)
        raw = await bounded_body(request, MAX_BODY_BYTES, "a judgement")
        try:
            body = json.loads(raw)
        except ValueError as err:
            raise HTTPException(400, "the body must be a JSON object") from err
        if not isinstance(body, dict):
            raise HTTPException(422, "the body must be a JSON object")
        store = annotator(request, body.pop("annotator", None))
        index = body.get("index")
        if not isinstance(index, int) or isinstance(index, bool):
            raise HTTPException(422, "'index' must be an integer")
        chosen = item_at(index)
        if body.get("item_id") != chosen.item_id:
            raise HTTPException(409, f"item {index} is {chosen.item_id!r}, not the item this page showed")
        figure, _ = annotation.image(index)
        store.append(judgement_record(chosen, index, body, "shown" if figure is not None else "unavailable"))
        return {
            "saved_index": index,
            "done": annotation.done(store),
            "total": len(annotation.items),
            "position": store.resume_position(annotation.ids),
        }

    return app


def _normal(name) -> str | None:
    try:
        return check_annotator(name)
    except ValueError:
        return None


def checked_verdict(body: dict) -> dict:
    """The verdict fields of a request, or a 422 that says which one is wrong (and nothing about the server)."""
    unknown = sorted(set(body) - JUDGEMENT_KEYS)
    if unknown:
        raise HTTPException(422, f"unknown fields: {', '.join(map(str, unknown))[:200]}")
    cannot = body.get("cannot_judge")
    if cannot not in (None, *CANNOT_JUDGE):
        raise HTTPException(422, f"'cannot_judge' must be one of {list(CANNOT_JUDGE)} or null")
    for key in ("acceptable_a", "acceptable_b"):
        value = body.get(key)
        if not isinstance(value, bool) and not (cannot and value is None):
            raise HTTPException(422, f"{key!r} must be true or false")
    if body.get("better") not in ("a", "b", None, ""):
        raise HTTPException(422, "'better' must be 'a', 'b' or null")
    comment = body.get("comment")
    if comment is not None and not isinstance(comment, str):
        raise HTTPException(422, "'comment' must be text")
    if comment is not None and len(comment) > MAX_COMMENT_CHARS:
        raise HTTPException(413, f"a comment is at most {MAX_COMMENT_CHARS} characters")
    return {
        "acceptable_a": body.get("acceptable_a"),
        "acceptable_b": body.get("acceptable_b"),
        "better": body.get("better") or None,
        "comment": (comment or "").strip(),
        "cannot_judge": cannot,
    }


def judgement_record(item: Item, index: int, body: dict, figure_status: str) -> dict:
    """What goes to disk: the verdict plus the item's text, so pairs can be built from the log alone."""
    public = item.public()
    keys = ("item_id", "pair_id", "candidate_id", "question", "answer_a", "answer_b", "caption", "mentions")
    return {
        **{key: public[key] for key in keys},
        "index": index,
        "figure_status": figure_status,
        **checked_verdict(body),
    }


def safe_next(target: str) -> str:
    """Only same-site paths after login (no '//host' or 'http://...')."""
    return target if target.startswith("/") and not target.startswith(("//", "/\\")) else "/"


def login_page(next_path: str, message: str) -> str:
    return LOGIN_HTML.replace("__NEXT__", html.escape(safe_next(next_path))).replace(
        "__MESSAGE__", html.escape(message)
    )
