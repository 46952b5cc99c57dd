"""The annotation app in a real headless browser (Debian's chromium driven by Playwright) and its access rules.

The browser tests skip, saying why, only where no chromium exists (`apt-get install -y chromium`).
"""

import io
import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image, ImageDraw
from playwright.sync_api import expect

from vital_hub.preferences.app import Access, Annotation, create_app, is_loopback
from vital_hub.preferences.items import ImageResolver, load_items

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
TOKEN = "s3cret-token-for-tests"


def phantom_png(shade: int) -> bytes:
    """A small synthetic 'scan': an ellipse with two darker blobs."""
    picture = Image.new("L", (160, 120), 10)
    draw = ImageDraw.Draw(picture)
    draw.ellipse((20, 10, 140, 110), fill=shade)
    draw.ellipse((50, 40, 75, 70), fill=shade // 3)
    draw.ellipse((90, 45, 110, 80), fill=shade // 2)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


def write_items(folder: Path, count: int = 5) -> Path:
    """An items JSONL file: pictures as files beside it, the last item without any picture."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(count):
        item = {
            "item_id": f"3000{i}_F1#q0",
            "pair_id": f"3000{i}_F1",
            "caption": f"Figure {i}: axial CT, case {i}.",
            "mentions": [f"As shown in Figure {i}, a mass is present.", "It measured 3 cm."],
            "question": f"Question number {i}: what does the image show?",
            "answer_a": f"Answer A{i}: a well-circumscribed lesion.",
            "answer_b": f"Answer B{i}: <script>window.pwned=1</script> normal anatomy.",
        }
        if i < count - 1:
            (folder / f"3000{i}_F1.png").write_bytes(phantom_png(120 + 25 * i))
            item["image"] = f"3000{i}_F1.png"
        lines.append(json.dumps(item))
    path = folder / "items.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def start_server(items, out: Path, annotator="dr_a", host="127.0.0.1", token=None, env=None, extra=()):
    """`vital annotate serve` in a subprocess on a free port; returns (process, port) once it listens."""
    env = dict(os.environ if env is None else env)
    env.pop("VITAL_ANNOTATE_TOKEN", None)
    if token:
        env["VITAL_ANNOTATE_TOKEN"] = token
    command = [sys.executable, "-m", "vital_hub.cli", "annotate", "serve", "--items", str(items), "--out", str(out),
               "--annotator", annotator, "--host", host, "--port", "0", *extra]  # fmt: skip
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.5)
        if ready:
            line = proc.stdout.readline()
            if "http://" in line:
                port = int(line.split("http://", 1)[1].split("/", 1)[0].rsplit(":", 1)[1])
                wait_until_listening(host, port)
                return proc, port
        if proc.poll() is not None:
            raise AssertionError(f"server exited with {proc.returncode}: {proc.stderr.read()}")
    proc.kill()
    raise AssertionError("server did not start within 60 s")


def wait_until_listening(host: str, port: int) -> None:
    connect_host = "127.0.0.1" if host in ("0.0.0.0", "") else host
    for _ in range(100):
        try:
            socket.create_connection((connect_host, port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)


def stop(proc) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def log_lines(out: Path, annotator: str) -> list[dict]:
    path = out / f"{annotator}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def non_loopback_address() -> str | None:
    """This machine's address on its network interface (no packet is sent to find it)."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect(("192.0.2.254", 9))
        address = probe.getsockname()[0]
    except OSError:
        return None
    finally:
        probe.close()
    return None if is_loopback(address) else address


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists() and not shutil.which("chromium"):
        pytest.skip(f"no browser: {CHROMIUM} is missing (apt-get install -y chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium"), args=CHROMIUM_ARGS
        )
        yield launched
        launched.close()


def open_page(browser, url: str):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(url)
    page.wait_for_selector("body[data-ready=true]", timeout=20000)
    return page


def expect_progress(page, text: str) -> None:
    """Waits through locators: the page's CSP forbids the eval that wait_for_function would need."""
    expect(page.locator("#progress")).to_have_text(text, timeout=10000)


def expect_question(page, start: str) -> None:
    expect(page.locator("#question")).to_have_text(re.compile("^" + re.escape(start)), timeout=10000)


def test_annotate_three_items_with_mouse_and_keys_then_reload_and_survive_a_kill(tmp_path, browser):
    items = write_items(tmp_path / "items")
    out = tmp_path / "annotations"
    proc, port = start_server(items, out)
    try:
        page = open_page(browser, f"http://127.0.0.1:{port}/")
        expect_progress(page, "Item 1 of 5 · 0 judged")
        assert page.inner_text("#question") == "Question number 0: what does the image show?"
        assert page.inner_text("#annotator") == "dr_a"
        expect(page.locator("#figure")).to_have_js_property("naturalWidth", 160)
        assert "<script>window.pwned=1</script>" in page.inner_text("#answer-b")
        assert page.evaluate("window.pwned") is None
        assert page.is_disabled("#save")
        assert "save and go to the next item" in page.inner_text("#shortcuts")

        # item 1 with the mouse
        page.click("#a-yes")
        page.click("#b-no")
        page.click("#better-a")
        page.fill("#comment", "B misses the lesion")
        page.click("#save")
        expect_progress(page, "Item 2 of 5 · 1 judged")
        assert page.inner_text("#question").startswith("Question number 1")

        # item 2 with the keyboard
        page.keyboard.press("2")
        page.keyboard.press("3")
        page.keyboard.press("Enter")
        expect_progress(page, "Item 3 of 5 · 2 judged")

        # item 3: keyboard marks, then a comment typed after the C shortcut
        page.keyboard.press("1")
        page.keyboard.press("3")
        page.keyboard.press("b")
        page.keyboard.press("c")
        page.keyboard.type("both fine, B more precise")
        page.keyboard.press("Escape")
        page.keyboard.press("Enter")
        expect_progress(page, "Item 4 of 5 · 3 judged")

        page.reload()
        page.wait_for_selector("body[data-ready=true]")
        expect_progress(page, "Item 4 of 5 · 3 judged")
        assert page.inner_text("#question").startswith("Question number 3")

        lines = log_lines(out, "dr_a")
        assert [(r["item_id"], r["acceptable_a"], r["acceptable_b"], r["better"], r["comment"]) for r in lines] == [
            ("30000_F1#q0", True, False, "a", "B misses the lesion"),
            ("30001_F1#q0", False, True, None, ""),
            ("30002_F1#q0", True, True, "b", "both fine, B more precise"),
        ]
        assert lines[0]["question"].startswith("Question number 0") and lines[0]["mentions"][1] == "It measured 3 cm."
        assert all(r["annotator"] == "dr_a" for r in lines)

        # going back shows the saved judgement
        page.keyboard.press("ArrowLeft")
        expect_question(page, "Question number 2")
        assert page.get_attribute("#b-yes", "class") == "on" and page.input_value("#comment").startswith("both")
        page.keyboard.press("ArrowRight")
        expect_question(page, "Question number 3")

        # item 4, then the server dies without warning
        page.keyboard.press("2")
        page.keyboard.press("4")
        page.keyboard.press("Enter")
        expect_progress(page, "Item 5 of 5 · 4 judged")
        proc.kill()
        proc.wait()
        # a save the dead server never confirmed is reported as not saved, never as saved
        page.keyboard.press("1")
        page.keyboard.press("4")
        page.keyboard.press("Enter")
        expect(page.locator("#status")).to_have_text(re.compile("^Not saved"))
        expect(page.locator("#status")).to_have_class("error")
    finally:
        stop(proc)

    proc, port = start_server(items, out)
    try:
        page = open_page(browser, f"http://127.0.0.1:{port}/")
        expect_progress(page, "Item 5 of 5 · 4 judged")
        assert page.is_visible("#no-image") and not page.is_visible("#figure")
        assert [r["item_id"] for r in log_lines(out, "dr_a")] == [f"3000{i}_F1#q0" for i in range(4)]

        # a second annotator on the same items keeps a separate record
        other = open_page(browser, f"http://127.0.0.1:{port}/?annotator=dr_b")
        expect_progress(other, "Item 1 of 5 · 0 judged")
        other.keyboard.press("1")
        other.keyboard.press("4")
        other.keyboard.press("Enter")
        expect_progress(other, "Item 2 of 5 · 1 judged")
        assert [r["item_id"] for r in log_lines(out, "dr_b")] == ["30000_F1#q0"]
        assert len(log_lines(out, "dr_a")) == 4
    finally:
        stop(proc)


def test_login_is_required_beyond_localhost(tmp_path, browser):
    address = non_loopback_address()
    if address is None:
        pytest.skip("this machine has no non-loopback IPv4 address to make a non-local request from")
    items = write_items(tmp_path / "items")
    out = tmp_path / "annotations"
    proc, port = start_server(items, out, host="0.0.0.0", token=TOKEN)
    base = f"http://{address}:{port}"
    try:
        with httpx.Client(base_url=base, follow_redirects=False, trust_env=False) as client:
            for path in ("/api/state", "/api/item/0", "/api/image/0", "/static/app.js"):
                assert client.get(path).status_code == 401, path
            post = client.post(
                "/api/judgements",
                json={"index": 0, "item_id": "30000_F1#q0", "acceptable_a": True, "acceptable_b": False},
            )
            assert post.status_code == 401
            assert client.get("/api/state", headers={"Authorization": "Bearer wrong-token"}).status_code == 401
            redirect = client.get("/", headers={"Accept": "text/html"})
            assert redirect.status_code == 303 and redirect.headers["location"].startswith("/login")
            assert client.post("/login", data={"token": "wrong-token", "next": "/"}).status_code == 401
            bearer = client.get("/api/image/0", headers={"Authorization": f"Bearer {TOKEN}"})
            assert bearer.status_code == 200 and bearer.headers["content-type"] == "image/png"
        assert not (out / "dr_a.jsonl").exists()

        page = browser.new_page()
        page.goto(f"{base}/?annotator=dr_c")
        page.wait_for_selector("input[name=token]")
        page.fill("input[name=token]", TOKEN)
        page.click("button[type=submit]")
        page.wait_for_selector("body[data-ready=true]", timeout=20000)
        expect_progress(page, "Item 1 of 5 · 0 judged")
        assert page.inner_text("#annotator") == "dr_c"
        page.keyboard.press("1")
        page.keyboard.press("4")
        page.keyboard.press("Enter")
        expect_progress(page, "Item 2 of 5 · 1 judged")
        assert [r["item_id"] for r in log_lines(out, "dr_c")] == ["30000_F1#q0"]
        assert not (out / "dr_a.jsonl").exists()
    finally:
        stop(proc)


def test_refuses_to_listen_beyond_localhost_without_a_token(tmp_path):
    items = write_items(tmp_path / "items")
    env = {k: v for k, v in os.environ.items() if k != "VITAL_ANNOTATE_TOKEN"}
    command = [sys.executable, "-m", "vital_hub.cli", "annotate", "serve", "--items", str(items),
               "--out", str(tmp_path / "out"), "--annotator", "dr_a", "--host", "0.0.0.0", "--port", "0"]  # fmt: skip
    result = subprocess.run(
        command,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert result.returncode == 2 and "refusing to listen on 0.0.0.0 without a login" in result.stderr
    result = subprocess.run(
        command,
        capture_output=True,
        text=True,
        env=dict(env, VITAL_ANNOTATE_TOKEN="short"),
        timeout=60,
    )
    assert result.returncode != 0 and "shorter than 8" in result.stderr


def test_local_only_server_refuses_other_clients_and_foreign_host_names(tmp_path):
    from starlette.testclient import TestClient

    items = write_items(tmp_path / "items")
    annotation = Annotation(load_items(items), str(tmp_path / "out"), "dr_a", ImageResolver())
    app = create_app(annotation, token=None)
    remote = TestClient(app, base_url="http://127.0.0.1", client=("192.0.2.77", 40000))
    assert remote.get("/api/state").status_code == 403
    assert remote.get("/api/image/0").status_code == 403
    local = TestClient(app, base_url="http://127.0.0.1", client=("127.0.0.1", 40000))
    state = local.get("/api/state")
    assert state.status_code == 200 and state.json() == {"annotator": "dr_a", "total": 5, "done": 0, "position": 0}
    assert local.get("/api/state", headers={"Host": "evil.example:7860"}).status_code == 403
    assert local.get("/api/item/9").status_code == 404
    assert local.get("/api/image/4").status_code == 404
    assert "image" not in local.get("/api/item/0").json()["item"]
    bad = local.post(
        "/api/judgements", json={"index": 1, "item_id": "30000_F1#q0", "acceptable_a": True, "acceptable_b": True}
    )
    assert bad.status_code == 409
    bad = local.post("/api/judgements", json={"index": 0, "item_id": "30000_F1#q0", "acceptable_a": True})
    assert bad.status_code == 422
    assert local.get("/api/state?annotator=../x").status_code == 400
    assert not (tmp_path / "out" / "dr_a.jsonl").exists() or not log_lines(tmp_path / "out", "dr_a")
    assert "script-src 'self'" in local.get("/").headers["content-security-policy"]


def test_access_rule():
    assert is_loopback("127.0.0.2") and is_loopback("::1") and is_loopback("::ffff:127.0.0.1")
    assert not is_loopback("192.0.2.1") and not is_loopback("testclient") and not is_loopback(None)
    local = Access(token=None)
    assert local.allows("127.0.0.1", "localhost:7860", None, None)
    assert not local.allows("10.0.0.5", "localhost:7860", None, None)
    guarded = Access(token=TOKEN)
    assert not guarded.allows("127.0.0.1", "localhost:7860", None, None)
    assert guarded.allows("10.0.0.5", "example.org", None, TOKEN)
    assert not guarded.allows("10.0.0.5", "example.org", TOKEN, None)  # the cookie holds a derived value


def test_broken_real_downloads_are_reported_missing_not_shown():
    from tests.conftest import shared_fixture
    from vital_hub.preferences.items import Item

    folder = shared_fixture("llava_med", "qa50_images")
    resolver = ImageResolver(folder)
    found = {p.stem: resolver.bytes_for(Item(p.stem, p.stem, "q", "a", "b")) for p in folder.glob("*.jpg")}
    assert len(found) == 50
    assert sum(data is not None for data in found.values()) == 29  # 19 empty files and 2 cut-off JPEGs refused


def test_app_serves_a_candidates_folder_with_an_images_folder(tmp_path):
    from starlette.testclient import TestClient

    from tests.test_preferences_sample import write_candidates

    cands = write_candidates(tmp_path / "cands", tmp_path / "figs")
    annotation = Annotation(load_items(cands), str(tmp_path / "out"), "dr_a", ImageResolver(tmp_path / "figs"))
    local = TestClient(create_app(annotation), base_url="http://127.0.0.1", client=("127.0.0.1", 40000))
    assert local.get("/api/state").json()["total"] == 18
    item = local.get("/api/item/0").json()
    assert item["has_image"] and item["item"]["item_id"] == "xray0_F1#0#q0"
    assert local.get("/api/image/0").headers["content-type"] == "image/png"
    saved = local.post(
        "/api/judgements",
        json={
            "index": 0,
            "item_id": "xray0_F1#0#q0",
            "acceptable_a": True,
            "acceptable_b": False,
            "better": "a",
            "comment": " ok ",
        },
    )
    assert saved.json() == {"saved_index": 0, "done": 1, "total": 18, "position": 1}
    (record,) = log_lines(tmp_path / "out", "dr_a")
    assert record["candidate_id"] == "xray0_F1#0" and record["comment"] == "ok" and record["index"] == 0


def test_pictures_can_come_from_the_figure_store(tmp_path):
    from tests.test_preferences_sample import write_candidates
    from vital_hub.preferences.items import Item

    write_candidates(tmp_path / "cands", tmp_path / "figs")
    import io

    from PIL import Image

    resolver = ImageResolver(figures=str(tmp_path / "figs"))
    served = resolver.bytes_for(Item("x", "histo1_F1", "q", "a", "b"))
    # The store serves every figure as JPEG (these test files hold PNG bytes): same picture, JPEG-encoded.
    assert served[:2] == b"\xff\xd8"
    with Image.open(io.BytesIO(served)) as got, Image.open(tmp_path / "figs" / "histo1_F1.jpg") as original:
        assert got.size == original.size
        served_pixel, original_pixel = got.convert("RGB").getpixel((5, 5)), original.convert("RGB").getpixel((5, 5))
        assert max(abs(a - b) for a, b in zip(served_pixel, original_pixel, strict=True)) < 12
    assert resolver.bytes_for(Item("y", "unknown_F9", "q", "a", "b")) is None


def test_items_from_a_candidates_repo_on_the_hub(tmp_path):
    from tests.conftest import REPO_ROOT
    from tests.fakes.hub_server import running_hub
    from tests.test_preferences_sample import write_candidates

    cands = write_candidates(tmp_path / "cands", tmp_path / "figs")
    card = (
        "---\nconfigs:\n- config_name: candidates\n  data_files:\n  - split: train\n"
        "    path: data/candidates/*.parquet\n---\n# candidates\n"
    )
    shard = "data/candidates/train-00000-of-00001.parquet"
    with running_hub(tmp_path / "hub") as hub:
        hub.add_files("org/cands", {"README.md": card.encode(), shard: (cands / shard).read_bytes()})
        env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
        env.update(
            HF_ENDPOINT=hub.endpoint, HF_HOME=str(tmp_path / "hf"), HF_HUB_DISABLE_XET="1", PYTHONPATH=str(REPO_ROOT)
        )
        proc, port = start_server("org/cands", tmp_path / "out", env=env, extra=("--images", str(tmp_path / "figs")))
        try:
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", trust_env=False) as client:
                assert client.get("/api/state").json()["total"] == 18
                item = client.get("/api/item/2").json()
                assert item["item"]["item_id"] == "xray1_F1#0#q0" and item["has_image"]
        finally:
            stop(proc)
