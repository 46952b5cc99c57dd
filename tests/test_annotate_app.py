"""The annotation app's accounts, sessions, limits and figure handling, through its HTTP API on a real server
(`vital annotate serve` in a subprocess, httpx as the client). The browser tests are in test_annotate_browser.py."""

import json
import re
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

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
from tests.conftest import shared_fixture
from vital_hub.preferences.app import is_loopback
from vital_hub.preferences.items import ImageResolver, load_items


def client(port: int, credential: str | None = None, scheme: str = "http", **options) -> httpx.Client:
    headers = {**BOUND, **({"Authorization": f"Bearer {credential}"} if credential else {})}
    return httpx.Client(
        base_url=f"{scheme}://127.0.0.1:{port}", headers=headers, trust_env=False, follow_redirects=False, **options
    )


def sign_in(port: int, credential: str, **options) -> httpx.Client:
    session = client(port, **options)
    answer = session.post("/login", data=login_form(credential, next="/"))
    assert answer.status_code == 303, answer.text
    return session


def csrf_token(session: httpx.Client) -> str:
    """The sign-out form's token, from the page a signed-in browser gets."""
    page = session.get("/", headers={"Accept": "text/html"}).text
    return re.search(r'name="csrf" value="([^"]+)"', page).group(1)


def test_identity_comes_from_the_credential_alone(tmp_path):
    items = write_items(tmp_path / "items")
    out = tmp_path / "annotations"
    key_a, key_b = invite(out, "Dr_Dur"), invite(out, " dr_b ")
    admin = invite(out, "coordinator", admin=True)
    assert key_a.startswith("dr_dur:") and key_b.startswith("dr_b:")
    proc, port = start_server(items, out)
    try:
        a, b = sign_in(port, key_a), sign_in(port, key_b)
        assert a.get("/api/state").json()["annotator"] == "dr_dur"
        assert a.post("/api/judgements", json=verdict("30000_F1#q0", 0, comment="A only")).status_code == 200
        # dr_b, naming dr_dur in every way there is, can neither read nor replace dr_dur's verdict
        for params in ({"annotator": "dr_dur"}, {"annotator": "DR_DUR"}, {"annotator": " dr_dur"}):
            assert b.get("/api/state", params=params).status_code == 403
            assert b.get("/api/item/0", params=params).status_code == 403
            replaced = b.post("/api/judgements", params=params, json=verdict("30000_F1#q0", 0, False, False))
            assert replaced.status_code == 403
        spoofed = b.post("/api/judgements", json=verdict("30000_F1#q0", 0, False, False, annotator="dr_dur"))
        assert spoofed.status_code == 403
        assert b.get("/api/item/0").json()["judgement"] is None  # b sees only b's own (empty) log
        assert b.post("/api/judgements", json=verdict("30000_F1#q0", 0, False, True)).status_code == 200
        assert b.get("/api/admin").status_code == 403 and b.get("/admin").status_code == 403
        # without a credential: nothing, whatever the parameters say
        anonymous = client(port)
        assert anonymous.get("/api/item/0", params={"annotator": "dr_dur"}).status_code == 401
        assert anonymous.post("/api/judgements", json=verdict("30000_F1#q0", 0)).status_code == 401
        assert client(port, "dr_dur:not-the-secret").get("/api/state").status_code == 401
        assert client(port, key_a).get("/api/state").json()["annotator"] == "dr_dur"  # scripts: Bearer

        boss = sign_in(port, admin)
        assert boss.get("/api/state").status_code == 403  # admins judge nothing
        report = boss.get("/api/admin").json()
        assert report["annotators"]["dr_dur"]["judged"] == 1 and report["annotators"]["dr_b"]["judged"] == 1
        assert report["items_with_several_annotators"] == 1 and report["annotator_pairs"][0]["verdict_agreement"] == 0
        assert "dr_dur" in boss.get("/admin").text
    finally:
        logs = stop(proc)
    dur, other = log_lines(out, "dr_dur"), log_lines(out, "dr_b")
    assert [(r["annotator"], r["acceptable_a"], r["comment"]) for r in dur] == [("dr_dur", True, "A only")]
    assert [(r["annotator"], r["acceptable_b"]) for r in other] == [("dr_b", True)]
    stored = (out / "annotators.json").read_text()
    for key in (key_a, key_b, admin):
        secret = key.split(":", 1)[1]
        assert secret not in stored and secret not in logs
        assert not any(secret in p.read_text() for p in out.iterdir())
    assert oct((out / "annotators.json").stat().st_mode & 0o777) == "0o600"


def test_sessions_are_random_end_at_logout_and_expire(tmp_path):
    items = write_items(tmp_path / "items")
    out = tmp_path / "annotations"
    key = invite(out, "dr_a")
    proc, port = start_server(items, out, "--session-hours", str(3 / 3600))
    try:
        first, second = sign_in(port, key), sign_in(port, key)
        cookie_1, cookie_2 = first.cookies["vital_annotate_session"], second.cookies["vital_annotate_session"]
        assert cookie_1 != cookie_2 and key.split(":", 1)[1] not in cookie_1
        assert first.get("/api/state").status_code == 200
        assert first.post("/logout").status_code == 403  # without the page's CSRF token: not signed out
        assert first.get("/api/state").status_code == 200
        assert first.post("/logout", data={"csrf": csrf_token(first)}).status_code == 303
        stale = client(port, cookies={"vital_annotate_session": cookie_1})
        assert stale.get("/api/state").status_code == 401  # logged out: the old cookie is worth nothing
        assert second.get("/api/state").status_code == 200  # the other session is untouched
        time.sleep(3.2)
        kept = client(port, cookies={"vital_annotate_session": cookie_2})  # a browser that ignores max-age
        assert kept.get("/api/state").status_code == 401  # expired on the server
        page = kept.get("/", headers={"Accept": "text/html"})
        assert page.status_code == 303 and page.headers["location"].startswith("/login")
    finally:
        stop(proc)


def test_two_hundred_parallel_wrong_logins_get_only_a_handful_of_answers(tmp_path):
    items = write_items(tmp_path / "items")
    out = tmp_path / "annotations"
    invite(out, "dr_a")
    other = invite(out, "dr_b")
    proc, port = start_server(items, out, "--forwarded-allow-ips", "127.0.0.1")
    limits = httpx.Limits(max_connections=64)
    try:
        with client(port, limits=limits) as session:

            def wrong(n: int, name: str, forwarded: bool) -> int:
                headers = {"X-Forwarded-For": f"198.51.100.{n % 250}"} if forwarded else {}
                return session.post("/login", data=login_form(f"{name}:guess{n}"), headers=headers).status_code

            started = time.monotonic()
            with ThreadPoolExecutor(48) as pool:
                codes = list(pool.map(lambda n: wrong(n, f"user{n}", False), range(200)))
            elapsed = time.monotonic() - started
            print(f"200 parallel wrong logins from one client: {codes.count(401)} answered 401 in {elapsed:.2f} s")
            assert codes.count(401) <= 10 + elapsed / 6 and set(codes) <= {401, 429}  # a burst of 10, then 1 per 6 s
            # one name from 200 addresses (through the trusted proxy): the per-name limit holds
            started = time.monotonic()
            with ThreadPoolExecutor(48) as pool:
                spread = list(pool.map(lambda n: wrong(n, "dr_a", True), range(200)))
            elapsed = time.monotonic() - started
            assert spread.count(401) <= 5 + elapsed / 12 and set(spread) <= {401, 429}  # 5, then 1 per 12 s
            # another clinician from another address is not locked out by either flood
            ok = session.post("/login", data=login_form(other), headers={"X-Forwarded-For": "203.0.113.9"})
            assert ok.status_code == 303
    finally:
        stop(proc)


def test_api_input_is_checked_and_errors_reveal_no_server_paths(tmp_path):
    items = write_items(tmp_path / "items")
    out = tmp_path / "annotations"
    proc, port = start_server(items, out, annotator="dr_a")
    try:
        local = client(port)
        bad = [
            (verdict("30000_F1#q0", 0, comment={"x": 1}), 422),
            (verdict("30000_F1#q0", 0, comment="x" * 4001), 413),
            (verdict("30000_F1#q0", True), 422),
            (verdict("30000_F1#q0", 0, a="yes"), 422),
            (verdict("30000_F1#q0", 0, better="c"), 422),
            (verdict("30000_F1#q0", 0, sneaky=1), 422),
            (verdict("30000_F1#q0", 0, a=None), 422),
            (verdict("30001_F1#q0", 0), 409),
            ([1, 2], 422),
        ]
        for body, status in bad:
            answer = local.post("/api/judgements", json=body)
            assert answer.status_code == status, (body, answer.text)
            assert str(tmp_path) not in answer.text and "/" not in answer.json()["detail"].replace("a/b", "")
        json_type = {"Content-Type": "application/json"}
        assert local.post("/api/judgements", content=b"{not json", headers=json_type).status_code == 400
        assert local.post("/api/judgements", content=b"[" * 40000, headers=json_type).status_code == 413
        assert not log_lines(out, "dr_a")
        assert local.post("/api/judgements", json=verdict("30000_F1#q0", 0, comment="x" * 4000)).status_code == 200
        assert local.get("/api/state", params={"annotator": "dr_b"}).status_code == 403
        login = local.get("/login", params={"message": "<b>call 555</b>", "error": "<i>x</i>"}).text
        assert "call 555" not in login and "<i>x" not in login
        assert "script-src 'self'" in local.get("/").headers["content-security-policy"]
        assert local.get("/api/state", headers={"Host": "evil.example:7860"}).status_code == 403
    finally:
        stop(proc)


def test_figures_that_failed_are_said_recorded_and_kept_out_of_pairs(tmp_path):
    images = shared_fixture("llava_med", "qa50_images")
    items, states = qa50_items(tmp_path / "items", images)
    out = tmp_path / "annotations"
    proc, port = start_server(items, out, "--images", str(images), annotator="dr_a")
    try:
        local = client(port)
        shown = [local.get(f"/api/item/{i}").json() for i in range(len(states))]
        assert [s["has_image"] for s in shown] == [state == "ok" for state in states]
        assert {s["figure_problem"] for s in shown if not s["has_image"]} <= {"missing", "damaged"}
        assert all(
            local.get(f"/api/image/{i}").status_code == (200 if ok == "ok" else 404) for i, ok in enumerate(states)
        )
        broken = [i for i, state in enumerate(states) if state == "broken"]
        good = [i for i, state in enumerate(states) if state == "ok"]
        ids = [s["item"]["item_id"] for s in shown]
        for i in good:
            local.post("/api/judgements", json=verdict(ids[i], i, True, False, comment=f"fine {i}")).raise_for_status()
        # one broken figure judged from the text anyway, the other marked "cannot judge"
        local.post("/api/judgements", json=verdict(ids[broken[0]], broken[0], True, False)).raise_for_status()
        cannot = verdict(ids[broken[1]], broken[1], None, None, cannot_judge="figure_unavailable")
        local.post("/api/judgements", json=cannot).raise_for_status()
    finally:
        stop(proc)
    records = {r["item_id"]: r for r in log_lines(out, "dr_a")}
    assert records[ids[broken[0]]]["figure_status"] == "unavailable"
    assert records[ids[broken[1]]]["cannot_judge"] == "figure_unavailable"
    assert all(records[ids[i]]["figure_status"] == "shown" for i in good)

    prefs = tmp_path / "prefs"
    built = vital("preferences", "build", "--annotations", str(out), "--out", str(prefs))
    assert built.returncode == 0, built.stderr
    from vital_hub.preferences.repo import read_config

    rows = read_config(prefs, "clinician")  # both splits: clinician pairs are held out by default
    assert sorted(r["pair_key"] for r in rows) == sorted(f"clinician:{ids[i]}" for i in good)
    assert {r["figure_status"] for r in rows} == {"shown"} and rows[0]["comments"].startswith("dr_a: fine")
    outcomes = [json.loads(line) for line in (prefs / "stats" / "clinician_outcomes.jsonl").open()]
    assert sorted(o["outcome"] for o in outcomes if o["item_id"] in {ids[i] for i in broken}) == [
        "cannot_judge",
        "without_figure",
    ]
    stats = json.loads((prefs / "stats" / "annotators.json").read_text())["annotators"]["dr_a"]
    assert stats["without_figure"] == 1 and stats["cannot_judge"] == 1
    with_them = vital(
        "preferences", "build", "--annotations", str(out), "--out", str(prefs), "--include-without-figure",
        "--embed-images", "--images", str(images),
    )  # fmt: skip
    assert with_them.returncode == 0, with_them.stderr
    assert "warning: 1 figures could not be embedded" in with_them.stderr
    rows = read_config(prefs, "clinician")
    assert len(rows) == len(good) + 1 and "unavailable" in {r["figure_status"] for r in rows}


def test_bad_sources_and_unsafe_serving_are_refused_at_start(tmp_path):
    items = write_items(tmp_path / "items")
    out = tmp_path / "annotations"
    cases = [
        (["--items", str(items), "--annotator", "a", "--figures", str(tmp_path / "no-figures")], "--figures"),
        (["--items", str(items), "--annotator", "a", "--images", str(tmp_path / "no-images")], "--images"),
        (["--items", str(tmp_path / "items" / "itmes.jsonl"), "--annotator", "a"], "--items"),
        (["--items", "items/itmes.jsonl", "--annotator", "a"], "--items"),
        (["--items", str(items), "--annotator", "a", "--host", "0.0.0.0"], "without accounts"),
        (["--items", str(items)], "give --annotator"),
    ]
    for args, said in cases:
        started = time.monotonic()
        result = vital("annotate", "serve", "--out", str(out), "--port", "0", *args)
        assert result.returncode == 1 and said in result.stderr, (args, result.stderr)
        assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
        assert time.monotonic() - started < 15  # no Hub attempt for a misspelt path
    invite(out, "dr_a")
    plain = vital("annotate", "serve", "--out", str(out), "--items", str(items), "--host", "0.0.0.0", "--port", "0")
    assert plain.returncode == 1 and "over plain HTTP" in plain.stderr
    local = vital("annotate", "serve", "--out", str(out), "--items", str(items), "--annotator", "dr_a")
    assert local.returncode == 1 and "drop --annotator" in local.stderr
    proc, port = start_server(items, out, "--allow-insecure-http", host="0.0.0.0")  # forced: it starts
    try:
        assert client(port).get("/api/state").status_code == 401
    finally:
        stop(proc)


def test_https_with_secure_cookies(tmp_path):
    items = write_items(tmp_path / "items")
    out = tmp_path / "annotations"
    key = invite(out, "dr_a")
    cert, private = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(private), "-out", str(cert),
         "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    address = non_loopback_address()
    host = "0.0.0.0" if address else "127.0.0.1"
    proc, port = start_server(items, out, "--tls-cert", str(cert), "--tls-key", str(private), host=host)
    try:
        import ssl

        trust = ssl.create_default_context(cafile=str(cert))
        with client(port, scheme="https", verify=trust) as session:
            answer = session.post("/login", data=login_form(key, next="/"))
            assert answer.status_code == 303
            cookie = answer.headers["set-cookie"].lower()
            assert "secure" in cookie and "httponly" in cookie and "samesite=strict" in cookie
            assert session.get("/api/state").json()["annotator"] == "dr_a"
    finally:
        stop(proc)


def test_accounts_file_is_reread_and_names_normalised(tmp_path):
    from vital_hub.preferences.accounts import Accounts, RateLimit, add_annotator

    out = tmp_path / "annotations"
    accounts = Accounts(out)
    assert not accounts
    name, credential = add_annotator(out, "  Dr_Lee ")
    assert name == "dr_lee" and accounts.verify(credential).name == "dr_lee"
    assert accounts.verify(credential.replace("dr_lee:", "dr_x:")) is None
    with pytest.raises(ValueError, match="already has an account"):
        add_annotator(out, "DR_LEE")
    _, renewed = add_annotator(out, "dr_lee", replace=True)
    assert accounts.verify(credential) is None and accounts.verify(renewed).name == "dr_lee"
    limit = RateLimit(burst=3, every_s=60)
    assert [limit.allow("k") for _ in range(5)] == [True, True, True, False, False]
    results = []
    threads = [threading.Thread(target=lambda: results.append(limit.allow("p"))) for _ in range(50)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert results.count(True) == 3


def non_loopback_address() -> str | None:
    import socket

    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect(("192.0.2.254", 9))
        address = probe.getsockname()[0]
    except OSError:
        return None
    finally:
        probe.close()
    return None if is_loopback(address) else address


def test_broken_real_downloads_are_reported_missing_not_shown():
    from vital_hub.preferences.items import Item

    folder = shared_fixture("llava_med", "qa50_images")
    resolver = ImageResolver(folder)
    found = {p.stem: resolver.resolve(Item(p.stem, p.stem, "q", "a", "b")) for p in folder.glob("*.jpg")}
    assert len(found) == 50
    assert sum(data is not None for data, _, _ in found.values()) == 29  # 19 empty files and 2 cut-off JPEGs
    assert {problem for data, _, problem in found.values() if data is None} == {"damaged"}


def test_app_serves_a_candidates_folder_with_an_images_folder(tmp_path):
    from tests.test_preferences_sample import write_candidates

    cands = write_candidates(tmp_path / "cands", tmp_path / "figs")
    out = tmp_path / "out"
    proc, port = start_server(cands, out, "--images", str(tmp_path / "figs"), annotator="Dr_A")
    try:
        local = client(port)
        assert local.get("/api/state").json()["total"] == 18
        item = local.get("/api/item/0").json()
        assert item["has_image"] and item["item"]["item_id"] == "xray0_F1#0#q0" and "image" not in item["item"]
        assert local.get("/api/image/0").headers["content-type"] == "image/png"
        saved = local.post("/api/judgements", json=verdict("xray0_F1#0#q0", 0, better="a", comment=" ok "))
        assert saved.json() == {"saved_index": 0, "done": 1, "total": 18, "position": 1}
    finally:
        stop(proc)
    (record,) = log_lines(out, "dr_a")
    assert record["candidate_id"] == "xray0_F1#0" and record["comment"] == "ok" and record["annotator"] == "dr_a"


def test_pictures_can_come_from_the_figure_store(tmp_path):
    import io

    from PIL import Image

    from tests.test_preferences_sample import write_candidates
    from vital_hub.preferences.items import Item

    write_candidates(tmp_path / "cands", tmp_path / "figs")
    resolver = ImageResolver(figures=str(tmp_path / "figs"))
    resolver.check_sources()
    served = resolver.bytes_for(Item("x", "histo1_F1", "q", "a", "b"))
    # The store serves every figure as JPEG (these test files hold PNG bytes): same picture, JPEG-encoded.
    assert served[:2] == b"\xff\xd8"
    with Image.open(io.BytesIO(served)) as got, Image.open(tmp_path / "figs" / "histo1_F1.jpg") as original:
        assert got.size == original.size
    assert resolver.resolve(Item("y", "unknown_F9", "q", "a", "b")) == (None, None, "missing")
    assert len(load_items(tmp_path / "cands")) == 18


def test_items_from_a_candidates_repo_on_the_hub(tmp_path):
    import os

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
        env.update(HF_ENDPOINT=hub.endpoint, HF_HOME=str(tmp_path / "hf"), HF_HUB_DISABLE_XET="1")
        proc, port = start_server(
            "org/cands", tmp_path / "out", "--images", str(tmp_path / "figs"), annotator="dr_a", env=env
        )
        try:
            with client(port) as local:
                assert local.get("/api/state").json()["total"] == 18
                item = local.get("/api/item/2").json()
                assert item["item"]["item_id"] == "xray1_F1#0#q0" and item["has_image"]
        finally:
            stop(proc)


def test_without_accounts_only_local_clients_naming_the_loopback_are_served(tmp_path):
    from starlette.testclient import TestClient

    from vital_hub.preferences.app import Annotation, Gate, create_app

    annotation = Annotation(load_items(write_items(tmp_path / "items")), str(tmp_path / "out"), ImageResolver())
    app = create_app(annotation, Gate(None, "Dr_A", 1.0))
    remote = TestClient(app, base_url="http://127.0.0.1", client=("192.0.2.77", 40000))
    assert remote.get("/api/state").status_code == 403 and remote.get("/api/image/0").status_code == 403
    local = TestClient(app, base_url="http://127.0.0.1", client=("127.0.0.1", 40000))
    assert local.get("/api/state").json() == {"annotator": "dr_a", "total": 5, "done": 0, "position": 0}
    assert local.get("/api/state", headers={"Host": "rebound.example"}).status_code == 403
    assert is_loopback("127.0.0.2") and is_loopback("::1") and is_loopback("::ffff:127.0.0.1")
    assert not is_loopback("192.0.2.1") and not is_loopback("testclient") and not is_loopback(None)
