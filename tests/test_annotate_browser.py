"""The annotation app in a real headless browser (Debian's chromium driven by Playwright).

The tests skip, saying why, only where no chromium exists (`apt-get install -y chromium`). With
VITAL_DOC_SCREENSHOTS=1 the two-clinician test also writes the screenshots that docs/ shows.
"""

import contextlib
import http.server
import json
import os
import re
import shutil
import threading
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import expect

from tests.annotate_helpers import (
    BOUND,
    invite,
    log_lines,
    login_form,
    qa50_items,
    start_server,
    stop,
    verdict,
    vital,
    write_items,
)
from tests.conftest import REPO_ROOT, shared_fixture

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="module")
def browser():
    executable = CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium")
    if not executable:
        pytest.skip(f"no browser: {CHROMIUM} is missing (apt-get install -y chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


def visit(page, url: str):
    page.goto(url)
    return ready(page)


def ready(page):
    page.wait_for_selector("body[data-ready=true]", timeout=20000)
    return page


def expect_progress(page, text: str) -> None:
    """Waits through locators: the page's CSP forbids the eval that wait_for_function would need."""
    expect(page.locator("#progress")).to_have_text(text, timeout=10000)


def expect_question(page, start: str) -> None:
    expect(page.locator("#question")).to_have_text(re.compile("^" + re.escape(start)), timeout=10000)


def test_one_clinician_flow(tmp_path, browser):
    items = write_items(tmp_path / "items")
    out = tmp_path / "annotations"
    proc, port = start_server(items, out, annotator="dr_a")
    page = browser.new_page(viewport={"width": 1280, "height": 500})
    try:
        visit(page, f"http://127.0.0.1:{port}/")
        expect_progress(page, "Item 1 of 5 · 0 judged")
        expect(page.locator("#figure")).to_have_js_property("naturalWidth", 160)
        # answers: a small markdown subset becomes elements, markup stays text and never runs
        assert page.inner_text("#answer-a strong") == "well-circumscribed"
        assert page.locator("#answer-a li").count() == 2
        assert "<script>window.pwned=1</script>" in page.inner_text("#answer-b")
        assert page.evaluate("window.pwned") is None
        # click to zoom, Esc closes
        page.click("#figure")
        expect(page.locator("#zoom")).to_be_visible()
        page.keyboard.press("Escape")
        expect(page.locator("#zoom")).to_be_hidden()

        # a contradictory pick is flagged before it is saved, and kept only when Save is pressed twice
        page.keyboard.press("1")
        page.keyboard.press("4")
        page.keyboard.press("b")
        expect(page.locator("#warning")).to_be_visible()
        page.keyboard.press("Enter")
        expect(page.locator("#status")).to_have_text(re.compile("press Save again"))
        expect_progress(page, "Item 1 of 5 · 0 judged")
        page.evaluate("window.scrollTo(0, 10000)")
        assert page.evaluate("window.scrollY") > 0
        page.keyboard.press("Enter")
        expect_progress(page, "Item 2 of 5 · 1 judged")
        assert page.evaluate("window.scrollY") == 0  # each item opens at its top

        # after Ctrl+Enter in the comment box the keys are shortcuts again on the next item
        page.keyboard.press("2")
        page.keyboard.press("3")
        page.keyboard.press("c")
        page.keyboard.type("B is right")
        page.keyboard.press("Control+Enter")
        expect_progress(page, "Item 3 of 5 · 2 judged")
        page.keyboard.press("1")
        assert page.input_value("#comment") == "" and page.get_attribute("#a-yes", "class") == "on"

        # leaving with unsaved changes asks; dismissing stays, accepting leaves
        dialogs = []
        page.once("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
        page.keyboard.press("ArrowRight")
        expect_question(page, "Question number 2")
        assert dialogs and "not saved" in dialogs[0]
        page.once("dialog", lambda dialog: dialog.accept())
        page.keyboard.press("ArrowRight")
        expect_question(page, "Question number 3")
        page.keyboard.press("ArrowLeft")
        expect_question(page, "Question number 2")

        # keys pressed while the next item is still loading are queued, shown busy, and land on that item
        held = []
        page.route("**/api/item/*", lambda route: held.append(route))
        page.keyboard.press("1")
        page.keyboard.press("3")
        page.keyboard.press("Enter")
        expect(page.locator("body")).to_have_attribute("data-busy", "true")
        page.keyboard.press("2")
        page.keyboard.press("3")
        page.keyboard.press("Enter")
        for route in held:
            route.continue_()
        page.unroute("**/api/item/*")
        expect_progress(page, "Item 5 of 5 · 4 judged")
        lines = log_lines(out, "dr_a")
        assert [(r["acceptable_a"], r["acceptable_b"], r["better"], r["comment"]) for r in lines] == [
            (True, False, "b", ""),
            (False, True, None, "B is right"),
            (True, True, None, ""),
            (False, True, None, ""),
        ]
        assert [r["figure_status"] for r in lines] == ["shown"] * 4

        # the last item has no figure: said so, and "cannot judge" is recorded
        expect(page.locator("#no-image")).to_be_visible()
        expect(page.locator("#no-image-text")).to_have_text(re.compile("missing"))
        page.keyboard.press("u")
        expect(page.locator("#status")).to_have_text("Saved item 5.")
        assert log_lines(out, "dr_a")[-1]["cannot_judge"] == "figure_unavailable"

        # the server dies: a failed move and a failed save are shown, never "saved"
        proc.kill()
        proc.wait()
        page.keyboard.press("ArrowLeft")
        expect(page.locator("#status")).to_have_text(
            re.compile("^Could not open item 4: the server cannot be reached")
        )
        expect(page.locator("#status")).to_have_class("error")
        page.keyboard.press("1")
        page.keyboard.press("4")
        page.keyboard.press("Enter")
        expect(page.locator("#status")).to_have_text(re.compile("^Not saved"))
    finally:
        page.close()
        stop(proc)
    assert len(log_lines(out, "dr_a")) == 5


def bound_headers(page) -> dict:
    """The header the app's script sends with API calls, for requests made outside the page."""
    return {"X-Vital-Binding": page.evaluate("localStorage.getItem('vital_annotate_binding')")}


def open_invite(context, base: str, credential: str):
    page = context.new_page()
    page.goto(f"{base}/login#key={credential}")
    return page


def test_two_clinicians_with_their_own_invite_links(tmp_path, browser):
    images = shared_fixture("llava_med", "qa50_images")
    items, states = qa50_items(tmp_path / "items", images, good=3, broken=2)
    broken = states.index("broken")
    out = tmp_path / "annotations"
    key_a, key_b = invite(out, "dr_a"), invite(out, "dr_b")
    admin_key = invite(out, "coordinator", admin=True)
    proc, port = start_server(items, out, "--images", str(images))
    base = f"http://127.0.0.1:{port}"
    wide = browser.new_context(viewport={"width": 1366, "height": 768})
    tablet = browser.new_context(viewport={"width": 768, "height": 1024})
    boss = browser.new_context()
    try:
        page_a, page_b = ready(open_invite(wide, base, key_a)), ready(open_invite(tablet, base, key_b))
        assert "#key=" not in page_a.url  # the key leaves the address bar at once
        assert page_a.inner_text("#annotator") == "dr_a" and page_b.inner_text("#annotator") == "dr_b"
        for page, keys in ((page_a, "14"), (page_b, "23")):
            for key in keys:
                page.keyboard.press(key)
            page.keyboard.press("Enter")
            expect_progress(page, f"Item 2 of {len(states)} · 1 judged")

        # dr_b names dr_a in the page address and in API calls made with dr_b's session: refused or ignored
        visit(page_b, f"{base}/?annotator=dr_a")
        assert page_b.inner_text("#annotator") == "dr_b"
        bound_b = bound_headers(page_b)
        assert page_b.request.get(f"{base}/api/item/0?annotator=dr_a", headers=bound_b).status == 403
        forged = {"index": 0, "item_id": json.loads(items.read_text().splitlines()[0])["item_id"],
                  "acceptable_a": False, "acceptable_b": False}  # fmt: skip
        assert page_b.request.post(f"{base}/api/judgements?annotator=dr_a", data=forged, headers=bound_b).status == 403
        spoofed = dict(forged, annotator="dr_a")
        assert page_b.request.post(f"{base}/api/judgements", data=spoofed, headers=bound_b).status == 403
        assert page_b.request.get(f"{base}/api/admin", headers=bound_b).status == 403
        own = page_b.request.get(f"{base}/api/item/0", headers=bound_b).json()["judgement"]
        assert (own["annotator"], own["acceptable_a"]) == ("dr_b", False)

        # a broken real download: said so; dr_a cannot judge it, dr_b judges it from the text
        for page in (page_a, page_b):
            for index in range(2, broken + 1):
                page.keyboard.press("ArrowRight")
                expect(page.locator("#progress")).to_have_text(re.compile(f"^Item {index + 1} of"))
            expect(page.locator("#no-image")).to_be_visible()
            expect(page.locator("#no-image-text")).to_have_text(re.compile("damaged"))
        page_a.click("#cannot-judge")
        expect(page_a.locator("#status")).to_have_text(f"Saved item {broken + 1}.")
        page_b.keyboard.press("1")
        page_b.keyboard.press("4")
        page_b.keyboard.press("Enter")
        expect(page_b.locator("#status")).to_have_text(f"Saved item {broken + 1}.")

        # screenshots: two columns on a laptop, one column on a tablet
        for page in (page_a, page_b):
            visit(page, base)  # back at the first item not judged yet, a figure that opens
            expect(page.locator("#figure")).to_be_visible()
        page_a.keyboard.press("1")
        figure_b, judge_b = (
            page_b.locator("section.figure").bounding_box(),
            page_b.locator("section.judge").bounding_box(),
        )
        assert judge_b["y"] >= figure_b["y"] + figure_b["height"] and figure_b["width"] > 700
        figure_a, judge_a = (
            page_a.locator("section.figure").bounding_box(),
            page_a.locator("section.judge").bounding_box(),
        )
        assert judge_a["x"] > figure_a["x"] + figure_a["width"] - 1
        targets = [tmp_path / "wide.png", tmp_path / "tablet.png"]
        if os.environ.get("VITAL_DOC_SCREENSHOTS"):
            targets = [REPO_ROOT / "docs" / "annotate-1366x768.png", REPO_ROOT / "docs" / "annotate-768x1024.png"]
        page_a.screenshot(path=str(targets[0]))
        page_b.screenshot(path=str(targets[1]))

        # the admin sees both clinicians' progress
        admin = ready_admin(open_invite(boss, base, admin_key))
        table = admin.inner_text("#progress-table")
        assert re.search(r"dr_a\s+2 / 5\s+1\s+0", table) and re.search(r"dr_b\s+2 / 5\s+0\s+1", table), table
        assert admin.inner_text("#mean-agreement") == "0.00"

        # kill -9 mid-session: every confirmed judgement survives, and the invite link signs in again
        before = {name: log_lines(out, name) for name in ("dr_a", "dr_b")}
        proc.kill()
        proc.wait()
        proc, port = start_server(items, out, "--images", str(images))
        base = f"http://127.0.0.1:{port}"
        assert {name: log_lines(out, name) for name in ("dr_a", "dr_b")} == before
        page_a = ready(open_invite(wide, base, key_a))
        expect_progress(page_a, f"Item 2 of {len(states)} · 2 judged")
        page_a.click("#logout")
        page_a.wait_for_selector("input[name=key]")
        assert page_a.request.get(f"{base}/api/state").status == 401
    finally:
        for context in (wide, tablet, boss):
            context.close()
        logs = stop(proc)
    for key in (key_a, key_b, admin_key):
        assert key.split(":", 1)[1] not in logs

    prefs = tmp_path / "prefs"
    built = vital("preferences", "build", "--annotations", str(out), "--out", str(prefs), "--aggregate", "each")
    assert built.returncode == 0, built.stderr
    outcomes = [json.loads(line) for line in (prefs / "stats" / "clinician_outcomes.jsonl").open()]
    on_broken = sorted(o["outcome"] for o in outcomes if o["item_id"].startswith(json.loads(
        items.read_text().splitlines()[broken])["pair_id"]))  # fmt: skip
    assert on_broken == ["cannot_judge", "without_figure"]
    assert all(o["outcome"] in ("cannot_judge", "without_figure", "a", "b") for o in outcomes)


def ready_admin(page):
    page.wait_for_selector("#progress-table", timeout=20000)
    return page


ATTACK_PAGE = """<!doctype html><html><body>
<iframe name="sink"></iframe>
<form id="judge" method="post" action="__APP__/api/judgements" enctype="text/plain" target="sink">
<input name='{"index": 0, "item_id": "30000_F1#q0", "acceptable_a": false, "acceptable_b": false,
"comment": "forged form", "x": "' value='"}'></form>
<form id="login" method="post" action="__APP__/login"><input name="key" value="__KEY__">
<input name="next" value="/"></form>
<script>
async function forge() {
  const body = JSON.stringify({index: 0, item_id: "30000_F1#q0", acceptable_a: false, acceptable_b: false,
                               comment: "forged fetch"});
  for (const options of [{mode: "no-cors"}, {mode: "no-cors", headers: {"Content-Type": "text/plain"}},
                         {mode: "cors", headers: {"Content-Type": "application/json"}}]) {
    try {
      await fetch("__APP__/api/judgements", Object.assign({method: "POST", credentials: "include", body}, options));
    } catch (err) { /* a refused preflight */ }
  }
}
</script></body></html>"""


@contextlib.contextmanager
def attacker_site(host: str, page: str, cookie: str | None = None):
    """A page served from `host` on a port of its own: the attacker's (setting `cookie` for that host if given)."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 -- the name http.server calls
            body = page.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            if cookie:
                self.send_header("Set-Cookie", cookie)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer((host, 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{host}:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("where", ["another port of this host", "another site"])
@pytest.mark.parametrize("mode", ["accounts", "local"])
def test_pages_elsewhere_cannot_write_judgements_or_sign_a_browser_in(tmp_path, browser, mode, where):
    """A clinician's browser, signed in (or local), opens a page on another port of the same host (same-site, so a
    SameSite=Strict cookie goes along) or on another site: its no-cors fetches, its text/plain form carrying JSON
    and its auto-submitted sign-in form with the attacker's own key change nothing."""
    items = write_items(tmp_path / "items")
    out = tmp_path / "annotations"
    key = invite(out, "dr_a") if mode == "accounts" else None
    intruder = invite(out, "intruder") if mode == "accounts" else "intruder:unused"
    proc, port = start_server(items, out, annotator=None if key else "dr_a")
    base = f"http://127.0.0.1:{port}"
    context = browser.new_context()
    seen = []
    try:
        if key:
            ready(open_invite(context, base, key))
        else:
            visit(context.new_page(), base)
        host = "127.0.0.1" if where == "another port of this host" else "127.0.0.2"
        with attacker_site(host, ATTACK_PAGE.replace("__APP__", base).replace("__KEY__", intruder)) as url:
            page = context.new_page()
            page.on("response", lambda r: seen.append((r.request.method, r.url.removeprefix(base), r.status)))
            page.goto(url)
            page.evaluate("forge()")
            with page.expect_response(lambda r: r.url == f"{base}/api/judgements" and r.request.method == "POST"):
                page.evaluate("document.getElementById('judge').submit()")
            with page.expect_response(lambda r: r.url == f"{base}/login" and r.request.method == "POST"):
                page.evaluate("document.getElementById('login').submit()")
        forged = [status for method, path, status in seen if method == "POST" and path == "/api/judgements"]
        assert len(forged) >= 3 and set(forged) == {403}, seen  # two no-cors fetches and the form reached the app
        assert [status for method, path, status in seen if method == "POST" and path == "/login"] == [403], seen
        ok = visit(context.new_page(), base)  # the app's own page still works in this browser
        state = context.request.get(f"{base}/api/state", headers=bound_headers(ok))
        assert state.ok and state.json()["annotator"] == "dr_a"  # and it is still the clinician's
        ok.keyboard.press("1")
        ok.keyboard.press("4")
        ok.keyboard.press("Enter")
        expect(ok.locator("#status")).to_have_text("Saved item 1.")
    finally:
        context.close()
        stop(proc)
    assert [(r["annotator"], r["comment"]) for r in log_lines(out, "dr_a")] == [("dr_a", "")]
    assert not log_lines(out, "intruder")


def test_a_session_cookie_planted_from_another_port_answers_nothing(tmp_path, browser):
    """Cookies ignore ports: a server on another port of the host can overwrite the clinician's session cookie
    with the attacker's own session. The app's script sends the value its sign-in page kept in this origin's
    localStorage, which the planted session lacks, so the page signs in again instead of judging as the attacker."""
    items = write_items(tmp_path / "items")
    out = tmp_path / "annotations"
    key, intruder = invite(out, "dr_a"), invite(out, "intruder")
    proc, port = start_server(items, out)
    base = f"http://127.0.0.1:{port}"
    with httpx.Client(base_url=base, headers=BOUND, trust_env=False) as attacker:
        assert attacker.post("/login", data=login_form(intruder)).status_code == 303
        planted = attacker.cookies["vital_annotate_session"]
    context = browser.new_context()
    try:
        ready(open_invite(context, base, key))
        plant = f"vital_annotate_session={planted}; Path=/; HttpOnly; SameSite=Strict"
        with attacker_site("127.0.0.1", "<p>nothing to see</p>", cookie=plant) as url:
            context.new_page().goto(url)
        assert [c["value"] for c in context.cookies(base) if c["name"] == "vital_annotate_session"] == [planted]
        victim = context.new_page()
        victim.goto(base)
        victim.wait_for_selector("input[name=key]", timeout=20000)  # asked to sign in, not shown as the intruder
        assert victim.url.startswith(f"{base}/login")
        answer = context.request.post(f"{base}/api/judgements", data=verdict("30000_F1#q0", 0),
                                      headers={"Origin": base, **bound_headers(victim)})  # fmt: skip
        assert answer.status == 401
        ready(open_invite(context, base, key))  # the invite link signs the clinician in again
        expect_progress(context.pages[-1], "Item 1 of 5 · 0 judged")
    finally:
        context.close()
        stop(proc)
    assert not log_lines(out, "intruder") and not log_lines(out, "dr_a")
