"""The annotation app in a real headless browser (Debian's chromium driven by Playwright).

The tests skip, saying why, only where no chromium exists (`apt-get install -y chromium`). With
VITAL_DOC_SCREENSHOTS=1 the two-clinician test also writes the screenshots that docs/ shows.
"""

import json
import os
import re
import shutil
from pathlib import Path

import pytest
from playwright.sync_api import expect

from tests.annotate_helpers import invite, log_lines, qa50_items, start_server, stop, vital, write_items
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
        assert page_b.request.get(f"{base}/api/item/0?annotator=dr_a").status == 403
        forged = {"index": 0, "item_id": json.loads(items.read_text().splitlines()[0])["item_id"],
                  "acceptable_a": False, "acceptable_b": False}  # fmt: skip
        assert page_b.request.post(f"{base}/api/judgements?annotator=dr_a", data=forged).status == 403
        assert page_b.request.post(f"{base}/api/judgements", data=dict(forged, annotator="dr_a")).status == 403
        assert page_b.request.get(f"{base}/api/admin").status == 403
        own = page_b.request.get(f"{base}/api/item/0").json()["judgement"]
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
