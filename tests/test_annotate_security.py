"""The annotation app against forged requests, oversized bodies, sign-in floods, hostile figures and a broken
accounts file, through its HTTP API on a real server (`vital annotate serve` in a subprocess). Requests carry
the headers a browser would (Origin, Sec-Fetch-Site); test_annotate_browser.py replays the attacks in Chromium."""

import json
import os
import socket
import struct
import time
import zlib

import httpx
import pytest

from tests.annotate_helpers import (
    BOUND,
    invite,
    log_lines,
    login_form,
    phantom_png,
    start_server,
    stop,
    verdict,
    vital,
    write_items,
)

JUDGEMENT = verdict("30000_F1#q0", 0, comment="forged")


def client(port: int, **options) -> httpx.Client:
    return httpx.Client(
        base_url=f"http://127.0.0.1:{port}", trust_env=False, follow_redirects=False, headers=BOUND, **options
    )


def forged_requests(port: int) -> dict[str, dict]:
    """Headers of a request that a page elsewhere makes a browser send to the app (name -> headers)."""
    return {
        "another port of this host": {"Origin": f"http://127.0.0.1:{port + 1}", "Sec-Fetch-Site": "same-site"},
        "another host": {"Origin": "http://evil.example", "Sec-Fetch-Site": "cross-site"},
        "an opaque origin (sandboxed frame, file://)": {"Origin": "null", "Sec-Fetch-Site": "cross-site"},
        "another scheme": {"Origin": f"https://127.0.0.1:{port}"},
        "no Origin, same-site": {"Sec-Fetch-Site": "same-site"},
        "no Origin, cross-site": {"Sec-Fetch-Site": "cross-site"},
        "no Origin, typed by no one": {"Sec-Fetch-Site": "none"},
    }


def same_origin(port: int) -> dict:
    return {"Origin": f"http://127.0.0.1:{port}", "Sec-Fetch-Site": "same-origin"}


@pytest.mark.parametrize("mode", ["accounts", "local"])
def test_forged_requests_write_nothing_and_sign_no_one_in(tmp_path, mode):
    items = write_items(tmp_path / "items")
    out = tmp_path / "annotations"
    key = invite(out, "dr_a") if mode == "accounts" else None
    intruder = invite(out, "intruder") if mode == "accounts" else None
    proc, port = start_server(items, out, annotator=None if key else "dr_a")
    try:
        victim = client(port)
        if key:
            assert victim.post("/login", data=login_form(key), headers=same_origin(port)).status_code == 303
        for name, headers in forged_requests(port).items():
            # a JSON body sent as text/plain is what a no-cors fetch or a text/plain form can send
            for extra in ({"Content-Type": "text/plain"}, {"Content-Type": "application/json"}):
                answer = victim.post("/api/judgements", content=json.dumps(JUDGEMENT), headers={**headers, **extra})
                assert answer.status_code == 403, (name, answer.text)
                assert "another site" in answer.json()["detail"]
            signed = victim.post("/login", data=login_form(intruder or "x:y"), headers=headers)
            assert signed.status_code in (403, 303) and "set-cookie" not in signed.headers, name
            assert victim.post("/logout", headers=headers).status_code == 403, name
            assert victim.post("/api/anything", headers=headers).status_code == 403, name
        # the app's own page: JSON only
        text = victim.post("/api/judgements", content=json.dumps(JUDGEMENT), headers={**same_origin(port),
                           "Content-Type": "text/plain"})  # fmt: skip
        assert text.status_code == 415
        assert victim.get("/api/state").json()["annotator"] == "dr_a"  # still the victim, still signed in
        assert victim.post("/api/judgements", json=verdict("30000_F1#q0", 0), headers=same_origin(port)).is_success
    finally:
        stop(proc)
    assert [r["comment"] for r in log_lines(out, "dr_a")] == [""]
    assert not log_lines(out, "intruder")


def test_signing_out_needs_the_pages_token(tmp_path):
    items = write_items(tmp_path / "items")
    out = tmp_path / "annotations"
    keys = {"/": invite(out, "dr_a"), "/admin": invite(out, "boss", admin=True)}
    proc, port = start_server(items, out)
    try:
        for page_path, key in keys.items():  # the clinician's page and the admin's
            browser = client(port)
            browser.post("/login", data=login_form(key), headers=same_origin(port))
            page = browser.get(page_path, headers={"Accept": "text/html"}).text
            token = page.split('name="csrf" value="', 1)[1].split('"', 1)[0]
            for guess in ("guess", "é" * 43, ""):
                assert browser.post("/logout", data={"csrf": guess}, headers=same_origin(port)).status_code == 403
            assert browser.get("/api/admin" if page_path == "/admin" else "/api/state").status_code == 200
            assert browser.post("/logout", data={"csrf": token}, headers=same_origin(port)).status_code == 303
            assert browser.get("/api/state").status_code == 401
    finally:
        stop(proc)


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))


def post_raw(port: int, path: str, headers: dict, body_chunks, limit_bytes: int) -> tuple[str, int]:
    """POST over a raw socket, sending body chunks until the server answers; returns (status line, bytes sent)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    head = "".join(f"{k}: {v}\r\n" for k, v in {"Host": f"127.0.0.1:{port}", **headers}.items())
    sock.sendall(f"POST {path} HTTP/1.1\r\n{head}\r\n".encode())
    sent = 0
    sock.setblocking(False)
    reply = b""
    try:
        for chunk in body_chunks:
            try:
                reply += sock.recv(65536)
            except BlockingIOError:
                pass
            if reply or sent > limit_bytes:
                break
            try:
                sent += sock.send(chunk)
            except BlockingIOError:
                time.sleep(0.01)
            except (BrokenPipeError, ConnectionResetError):
                break
        sock.setblocking(True)
        sock.settimeout(30)
        while b"\r\n" not in reply:
            data = sock.recv(65536)
            if not data:
                break
            reply += data
    except (BrokenPipeError, ConnectionResetError):
        pass
    finally:
        sock.close()
    return reply.split(b"\r\n", 1)[0].decode(), sent


@pytest.mark.parametrize("mode", ["accounts", "local"])
def test_oversized_bodies_are_refused_without_being_read(tmp_path, mode):
    items = write_items(tmp_path / "items")
    out = tmp_path / "annotations"
    key = invite(out, "dr_a") if mode == "accounts" else None
    proc, port = start_server(items, out, annotator=None if key else "dr_a")
    megabyte = b"k" * (1024 * 1024)
    # signed in (or local), so that every route gets as far as reading; without accounts /login reads nothing
    expected = {"/login": "303" if mode == "local" else "413", "/api/judgements": "413", "/logout": "413"}
    try:
        cookie = {}
        if key:
            with client(port) as browser:
                browser.post("/login", data=login_form(key))
                cookie = {"Cookie": f"vital_annotate_session={browser.cookies['vital_annotate_session']}", **BOUND}
        before = rss_kib(proc.pid)
        for path in ("/login", "/api/judgements", "/logout"):
            # a declared 300 MB body: refused from its headers
            declared = {"Content-Length": str(300 * 1024 * 1024), "Content-Type": "application/json", **cookie}
            status, sent = post_raw(port, path, declared, iter(lambda: megabyte, None), 300 * 1024 * 1024)
            assert status.startswith("HTTP/1.1 413"), (path, status)
            assert sent < 64 * 1024 * 1024, sent  # answered long before the body could have been read
            # a streamed body of unknown length: cut off once it passes the limit
            streamed = {"Transfer-Encoding": "chunked", "Content-Type": "application/json", **cookie}
            chunks = (b"%x\r\n%s\r\n" % (len(megabyte), megabyte) for _ in range(300))
            status, sent = post_raw(port, path, streamed, chunks, 300 * 1024 * 1024)
            assert status.split()[1] == expected[path], (path, status)
            assert sent < 64 * 1024 * 1024, sent
        grown = rss_kib(proc.pid) - before
        print(f"server memory after six 300 MB posts: {grown / 1024:+.1f} MiB")
        assert grown < 40 * 1024
        with client(port) as fresh:  # and it still serves
            assert fresh.get("/login").status_code == 200
    finally:
        stop(proc)


def test_a_flood_of_wrong_keys_locks_no_clinician_out(tmp_path):
    items = write_items(tmp_path / "items")
    out = tmp_path / "annotations"
    key = invite(out, "dr_a")
    proc, port = start_server(items, out, "--forwarded-allow-ips", "127.0.0.1")
    try:
        attacker = {"X-Forwarded-For": "198.51.100.7"}
        with client(port) as session:
            codes = [session.post("/login", data=login_form(f"dr_a:guess{n}"), headers=attacker).status_code
                     for n in range(40)]  # fmt: skip
            assert codes.count(401) <= 12 and codes[-1] == 429, codes
            refused = session.post("/login", data=login_form("dr_a:guess"), headers={"X-Forwarded-For": "203.0.113.5"})
            assert refused.status_code == 429 and "Too many wrong access keys" in refused.text
            bearer = session.get("/api/state", headers={"Authorization": "Bearer dr_a:guess", **attacker})
            assert bearer.status_code == 429 and "wait a minute" in bearer.json()["detail"]
            # the clinician's own key: from another address, and from the attacker's own (a shared NAT)
            for address in ("203.0.113.5", "198.51.100.7"):
                signed = client(port)
                answer = signed.post("/login", data=login_form(key), headers={"X-Forwarded-For": address})
                assert answer.status_code == 303, (address, answer.text)
                assert signed.get("/api/state").json()["annotator"] == "dr_a"
            assert session.get("/api/state", headers={"Authorization": f"Bearer {key}", **attacker}).is_success
    finally:
        stop(proc)


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_png(width: int, height: int) -> bytes:
    """A tiny PNG claiming width x height 1-bit pixels (its pixel data a few bytes of zlib): a decompression bomb."""
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    pixels = zlib.compress(b"\x00" * (1 + width // 8) * 64, 9)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", pixels) + png_chunk(b"IEND", b"")


def test_hostile_figures_make_their_item_figure_unavailable(tmp_path):
    folder = tmp_path / "items"
    figures = {
        "bomb": bomb_png(100_000, 100_000),
        "bomb below twice the limit": bomb_png(10_000, 10_000),
        "not an image": b"<html>404 not found</html>",
        "truncated": phantom_png(100)[:200],
        "good": phantom_png(140),
    }
    records = []
    for i, (name, data) in enumerate(figures.items()):
        (folder / f"f{i}.png").parent.mkdir(parents=True, exist_ok=True)
        (folder / f"f{i}.png").write_bytes(data)
        records.append({"item_id": f"i{i}", "pair_id": f"p{i}", "question": name, "answer_a": "a", "answer_b": "b",
                        "image": f"f{i}.png"})  # fmt: skip
    unreadable = folder / "f-unreadable.png"
    unreadable.mkdir()  # a folder where a file should be
    records.append({"item_id": "i9", "pair_id": "p9", "question": "folder", "answer_a": "a", "answer_b": "b",
                    "image": "f-unreadable.png"})  # fmt: skip
    items = folder / "items.jsonl"
    items.write_text("".join(json.dumps(r) + "\n" for r in records))
    out = tmp_path / "annotations"
    proc, port = start_server(items, out, annotator="dr_a")
    try:
        with client(port) as local:
            shown = [local.get(f"/api/item/{i}") for i in range(len(records))]
            assert [answer.status_code for answer in shown] == [200] * len(records)
            problems = [answer.json()["figure_problem"] for answer in shown]
            assert problems == ["too_large", "too_large", "damaged", "damaged", None, "missing"]
            images = [local.get(f"/api/image/{i}").status_code for i in range(len(records))]
            assert images == [404, 404, 404, 404, 200, 404]
            saved = local.post("/api/judgements", json=verdict("i0", 0, None, None, cannot_judge="figure_unavailable"))
            assert saved.is_success
    finally:
        logs = stop(proc)
    assert "Traceback" not in logs
    assert log_lines(out, "dr_a")[0]["figure_status"] == "unavailable"


def test_a_bomb_and_a_cut_off_figure_log_one_line_each_naming_file_and_item(tmp_path):
    """A PNG whose header claims 30000 x 30000 px and a cut-off one: the browser gets only the reason code, the
    server's log one line per item naming its file (however often the page asks), and judgements go on."""
    items = write_items(tmp_path / "items", count=4)  # item 2 has a good figure, item 3 none
    bomb, cut = tmp_path / "items" / "30000_F1.png", tmp_path / "items" / "30001_F1.png"
    bomb.write_bytes(bomb_png(30_000, 30_000))
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])
    out = tmp_path / "annotations"
    proc, port = start_server(items, out, annotator="dr_a")
    try:
        with client(port) as local:
            for _ in range(2):
                shown = [local.get(f"/api/item/{i}").json() for i in range(4)]
                assert [s["figure_problem"] for s in shown] == ["too_large", "damaged", None, "missing"]
                served = [local.get(f"/api/image/{i}") for i in range(4)]
                assert [answer.status_code for answer in served] == [404, 404, 200, 404]
                assert served[0].text == "figure not available (too_large)" and str(tmp_path) not in served[0].text
            for index in range(4):
                saved = local.post(
                    "/api/judgements",
                    json=verdict(f"3000{index}_F1#q0", index, None, None, cannot_judge="figure_unavailable"),
                )
                assert saved.is_success
    finally:
        logs = stop(proc)
    assert "Traceback" not in logs
    lines = [line for line in logs.splitlines() if line.startswith("figure of item ")]
    assert len(lines) == 3, logs
    assert lines[0].startswith(f"figure of item 30000_F1#q0 not shown: {bomb}: too large to open")
    assert lines[1].startswith(f"figure of item 30001_F1#q0 not shown: {cut}: damaged (cut off")
    assert lines[2].startswith("figure of item 30003_F1#q0 not shown: not found")
    assert [line["item_id"] for line in log_lines(out, "dr_a")] == [f"3000{i}_F1#q0" for i in range(4)]


def annotators(records) -> str:
    return json.dumps({"annotators": records})


GOOD_HASH = "a" * 64
BROKEN_ACCOUNTS = {
    "malformed secret_sha256": (annotators({"dr_a": {"role": "annotator", "secret_sha256": "not-hex"}}), "dr_a"),
    "secret_sha256 a number": (annotators({"dr_a": {"role": "annotator", "secret_sha256": 12345}}), "dr_a"),
    "upper-case hash": (annotators({"dr_a": {"role": "annotator", "secret_sha256": "A" * 64}}), "dr_a"),
    "unknown role": (annotators({"dr_a": {"role": "boss", "secret_sha256": GOOD_HASH}}), "dr_a"),
    "entry a list": (annotators({"dr_a": ["annotator", GOOD_HASH]}), "dr_a"),
    "name not normalised": (annotators({"Dr_A": {"role": "annotator", "secret_sha256": GOOD_HASH}}), "Dr_A"),
    "name unsafe": (annotators({"../x": {"role": "annotator", "secret_sha256": GOOD_HASH}}), "../x"),
    "created a number": (annotators({"dr_a": {"role": "admin", "secret_sha256": GOOD_HASH, "created": 5}}), "dr_a"),
    "a name given twice": (
        f'{{"annotators": {{"dr_a": {{"role": "admin", "secret_sha256": "{GOOD_HASH}"}}, '
        f'"dr_a": {{"role": "annotator", "secret_sha256": "{GOOD_HASH}"}}}}}}',
        "dr_a",
    ),
    "annotators a list": (json.dumps({"annotators": [{"dr_a": 1}]}), "'annotators' mapping"),
    "not JSON": ('{"annotators": {', "not a readable annotators file"),
    "not UTF-8": (b'{"annotators": {"dr_\xff": 1}}', "not a readable annotators file"),
    "nested 100,000 deep": ("[" * 100_000, "not a readable annotators file"),
}


@pytest.mark.parametrize("case", list(BROKEN_ACCOUNTS))
def test_a_broken_accounts_file_stops_the_server_at_start(tmp_path, case):
    content, named = BROKEN_ACCOUNTS[case]
    out = tmp_path / "annotations"
    out.mkdir()
    path = out / "annotators.json"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    env = dict(os.environ)
    env.pop("VITAL_DEBUG", None)
    done = vital("annotate", "serve", "--items", str(write_items(tmp_path / "items")), "--out", str(out), "--port",
                 "0", env=env, timeout=30)  # fmt: skip
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stderr and done.stderr.count("\n") == 1, done.stderr
    assert str(path) in done.stderr and named in done.stderr, done.stderr


def test_an_accounts_file_broken_while_serving_keeps_the_accounts_read_before(tmp_path):
    items = write_items(tmp_path / "items")
    out = tmp_path / "annotations"
    key = invite(out, "dr_a")
    proc, port = start_server(items, out)
    try:
        path = out / "annotators.json"
        path.write_text(annotators({"dr_a": {"role": "annotator", "secret_sha256": "broken"}}))
        with client(port) as session:
            assert session.post("/login", data=login_form(key)).status_code == 303
            assert session.get("/api/state").json()["annotator"] == "dr_a"
            assert session.post("/login", data=login_form("dr_a:wrong")).status_code == 401
    finally:
        logs = stop(proc)
    assert logs.count("'secret_sha256' must be 64 lowercase hex digits") == 1 and "Traceback" not in logs


def test_sign_in_limits_keep_a_bounded_table_and_count_ipv6_by_network():
    from vital_hub.preferences.accounts import RateLimit
    from vital_hub.preferences.guard import address_group

    limit = RateLimit(burst=2, every_s=60.0, max_keys=100)
    for n in range(5000):  # a flood from ever new addresses
        limit.allow(f"198.51.{n // 250}.{n % 250}")
    assert len(limit._buckets) <= 100
    assert limit.allow("victim") and limit.allow("victim") and not limit.allow("victim")
    assert address_group("2001:db8::1") == address_group("2001:db8::ffff:2") == "2001:db8::/64"
    assert address_group("::ffff:192.0.2.7") == "192.0.2.7" and address_group("192.0.2.7") == "192.0.2.7"
    assert address_group(None) == "?" and address_group("testclient") == "testclient"


def test_the_picture_cache_is_bounded_in_bytes(tmp_path, monkeypatch):
    from vital_hub.preferences import app
    from vital_hub.preferences.items import ImageResolver, load_items

    annotation = app.Annotation(load_items(write_items(tmp_path / "items")), str(tmp_path / "out"), ImageResolver())
    size = len(annotation.image(0)[0])
    monkeypatch.setattr(app, "IMAGE_CACHE_BYTES", int(size * 2.5))
    for index in range(4):
        assert annotation.image(index)[0] is not None
    assert sum(len(data) for data, _ in annotation._images.values()) <= size * 2.5 + 200
    assert list(annotation._images) == [2, 3]
