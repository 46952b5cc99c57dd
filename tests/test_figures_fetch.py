"""`vital fetch figures` against a local fake of PMC: resolution order, statuses, politeness, resume, shards."""

import json
import time

import pyarrow.parquet as pq
import pytest
from PIL import Image

from tests.conftest import shared_fixture
from tests.fakes.pmc_server import FakeArticle, FakePmc, TarEntry, make_jpeg, populate, tar_gz
from vital_hub.cli import main as vital
from vital_hub.figures.cli import fetch_main, load_fetch_config
from vital_hub.figures.pipeline import FetchConfig, run_fetch

INDEX = "index/shard-00000-of-00001.parquet"


def write_urls(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def config_for(pmc, urls, out, **overrides):
    values = dict(
        urls=str(urls),
        out=str(out),
        base_url=pmc.url,
        legacy_base_url=pmc.url,
        concurrency=8,
        backoff_base=0.01,
        backoff_max=0.2,
        max_retries=3,
        progress=False,
    )
    values.update(overrides)
    return FetchConfig(**values)


def read_rows(out, name=INDEX):
    return {row["pair_id"]: row for row in pq.read_table(out / name).to_pylist()}


def test_every_route_of_the_2026_layout_and_the_legacy_fallback(tmp_path):
    with FakePmc() as pmc:
        scenario = populate(pmc, articles=8, figures_per_article=3)
        urls = write_urls(tmp_path / "urls.jsonl", scenario.records)
        stats = run_fetch(config_for(pmc, urls, tmp_path / "out"))
        hits = dict(pmc.hits)
    rows = read_rows(tmp_path / "out")
    assert stats["counts"]["ok"] == 24 and list(rows) == [r["pair_id"] for r in scenario.records]
    expected_source = {"bucket": "bucket", "newer_version": "metadata", "jats": "jats", "legacy": "legacy"}
    for pair_id, data in scenario.expected.items():
        row = rows[pair_id]
        assert (tmp_path / "out" / f"{pair_id}.jpg").read_bytes() == data
        assert row["source"] == expected_source[scenario.route_of[pair_id]]
        assert (row["width"], row["height"], row["format"], row["bytes"]) == (64, 48, "JPEG", len(data))
        assert row["licence"] == ("CC BY" if row["source"] != "legacy" else None)
    # Each article document is fetched once, and a legacy tarball once for all three of its figures.
    tarballs = {k: v for k, v in hits.items() if k.endswith(".tar.gz")}
    assert len(tarballs) == 2 and set(tarballs.values()) == {1}
    assert all(v == 1 for k, v in hits.items() if k.startswith("/metadata/") or k.endswith(".xml"))


def test_statuses_missing_not_permitted_corrupt_and_error(tmp_path):
    with FakePmc() as pmc:
        pmc.add(FakeArticle("PMC1", versions={1: {"ok.jpg": make_jpeg(1), "cut.jpg": make_jpeg(2)[:300]}}))
        pmc.add(FakeArticle("PMC2", versions={1: {"w.jpg": make_jpeg(3)}}, permitted=False))
        pmc.add(
            FakeArticle(
                "PMC3", versions={1: {"other.jpg": make_jpeg(4)}, 2: {"m.jpg": make_jpeg(5)}}, bad_md5={"m.jpg"}
            )
        )
        pmc.add(FakeArticle("PMC4", versions={1: {"down.jpg": make_jpeg(6), "big.jpg": b"\xff\xd8" + bytes(20_000)}}))
        pmc.add(FakeArticle("PMC6", versions={1: {"b.jpg": make_jpeg(7)}}, bad_md5={"b.jpg"}))
        pmc.throttle["/PMC4.1/down.jpg"] = 100
        records = [
            {"pmcid": "PMC1", "file": "ok.jpg", "pair_id": "1_F1"},
            {"pmcid": "PMC1", "file": "cut.jpg", "pair_id": "1_F2"},
            {"pmcid": "PMC1", "file": "absent.jpg", "pair_id": "1_F3"},
            {"pmcid": "PMC2", "file": "w.jpg", "pair_id": "2_F1"},
            {"pmcid": "PMC3", "file": "m.jpg", "pair_id": "3_F1"},
            {"pmcid": "PMC4", "file": "down.jpg", "pair_id": "4_F1"},
            {"pmcid": "PMC5", "file": "gone.jpg", "pair_id": "5_F1"},
            {"pmcid": "PMC4", "file": "big.jpg", "pair_id": "4_F2"},
            {"pmcid": "PMC6", "file": "b.jpg", "pair_id": "6_F1"},
        ]
        config = config_for(
            pmc, write_urls(tmp_path / "u.jsonl", records), tmp_path / "out", max_retries=2, max_image_mb=0.01
        )
        stats = run_fetch(config)
        hits = dict(pmc.hits)
    rows = read_rows(tmp_path / "out")
    status = {pair_id: row["status"] for pair_id, row in rows.items()}
    assert status == {
        "1_F1": "ok",
        "1_F2": "corrupt",
        "1_F3": "missing",
        "2_F1": "not_permitted",
        "3_F1": "corrupt",
        "4_F1": "error",
        "5_F1": "missing",
        "4_F2": "corrupt",
        "6_F1": "corrupt",
    }
    assert rows["6_F1"]["error"].startswith("bucket v1: md5 ")  # the bucket object checked against its metadata
    assert "body exceeds the cap" in rows["4_F2"]["error"]
    assert "not a decodable image" in rows["1_F2"]["error"]
    assert "does not match" in rows["3_F1"]["error"]
    assert "gave up after 3 attempts: HTTP 503" in rows["4_F1"]["error"]
    assert "no article versions listed" in rows["5_F1"]["error"]
    assert sorted(p.name for p in (tmp_path / "out").glob("*.jpg")) == ["1_F1.jpg"]
    # 403 and 404 are final answers: asked once; 503 is retried max_retries times.
    assert hits["/PMC2.1/w.jpg"] == 1 and hits["/PMC5.1/gone.jpg"] == 1 and hits["/PMC4.1/down.jpg"] == 3
    assert "1_F2" in [sample["pair_id"] for sample in stats["error_samples"]["corrupt"]]  # articles end in any order
    assert stats["this_run"]["throttled"] >= 3


def test_throttling_and_truncated_bodies_are_retried_after_retry_after(tmp_path):
    with FakePmc(retry_after="0.2") as pmc:
        scenario = populate(pmc, articles=4, figures_per_article=2, routes=("bucket", "legacy"))
        first, second = scenario.records[0], scenario.records[2]
        pmc.throttle[f"/{first['image_file_path'].split('/')[0]}.1/{first['image_file_path'].split('/')[1]}"] = 2
        pmc.truncate[second["pmc_tar_url"].split("nih.gov")[1]] = 1
        pmc.truncate[f"/{scenario.records[4]['image_file_path'].replace('/', '.1/')}"] = 2
        started = time.monotonic()
        stats = run_fetch(config_for(pmc, write_urls(tmp_path / "u.jsonl", scenario.records), tmp_path / "out"))
        elapsed = time.monotonic() - started
    assert stats["counts"]["ok"] == 8
    assert stats["this_run"]["retries"] >= 5 and stats["this_run"]["throttled"] >= 2
    assert elapsed >= 0.4  # two Retry-After: 0.2 pauses, although the backoff itself is 0.01 s
    for pair_id, data in scenario.expected.items():
        assert (tmp_path / "out" / f"{pair_id}.jpg").read_bytes() == data


def test_rerun_skips_finished_figures_and_retry_failed_retries_only_failures(tmp_path):
    with FakePmc() as pmc:
        scenario = populate(pmc, articles=4, figures_per_article=2, routes=("bucket",))
        flaky = scenario.records[1]
        flaky_path = "/" + flaky["image_file_path"].replace("/", ".1/")
        pmc.throttle[flaky_path] = 4
        urls = write_urls(tmp_path / "u.jsonl", scenario.records)
        out = tmp_path / "out"
        first = run_fetch(config_for(pmc, urls, out, max_retries=1))
        assert first["counts"] == {"ok": 7, "missing": 0, "not_permitted": 0, "corrupt": 0, "error": 1}
        before = pmc.requests
        again = run_fetch(config_for(pmc, urls, out))
        assert pmc.requests == before and again["counts"]["error"] == 1  # complete shard: nothing fetched
        (out / "index" / "shard-00000-of-00001.done").unlink()
        (out / f"{scenario.records[0]['pair_id']}.jpg").unlink()  # a lost file is fetched again
        stale = [
            out / f".{scenario.records[0]['pair_id']}.jpg.k1ll3d.tmp",
            out / "index" / ".shard-00000-of-00001.parquet.k1ll3d.parquet.tmp",
            out / ".partial" / "shard-00000-of-00001" / "0123.tar.gz",
        ]
        other_shard = out / "index" / ".shard-00001-of-00002.parquet.busy.parquet.tmp"
        for path in [*stale, other_shard]:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"half")
        resumed = run_fetch(config_for(pmc, urls, out, max_retries=1))
        assert not any(path.exists() for path in stale) and other_shard.exists()
        assert resumed["this_run"]["fetched"] == 1 and resumed["this_run"]["already_done"] == 7
        pmc.throttle[flaky_path] = 0
        hits_before = dict(pmc.hits)
        retried = run_fetch(config_for(pmc, urls, out, retry_failed=True))
        assert retried["this_run"]["fetched"] == 1 and retried["counts"]["ok"] == 8
        new_hits = {k for k, v in pmc.hits.items() if v != hits_before.get(k)}
        assert flaky_path in new_hits and all(
            scenario.records[0]["image_file_path"].split("/")[0] in k for k in new_hits
        )
    assert (out / f"{flaky['pair_id']}.jpg").read_bytes() == scenario.expected[flaky["pair_id"]]


def test_shards_cover_the_list_once_and_merge_to_the_unsharded_result(tmp_path):
    with FakePmc() as pmc:
        scenario = populate(pmc, articles=12, figures_per_article=2)
        urls = write_urls(tmp_path / "u.jsonl", scenario.records)
        for i in range(3):
            run_fetch(config_for(pmc, urls, tmp_path / "sharded", shard=f"{i}/3"))
    merged = {}
    for i in range(3):
        part = read_rows(tmp_path / "sharded", f"index/shard-{i:05d}-of-00003.parquet")
        assert not set(part) & set(merged)
        merged.update(part)
    assert set(merged) == set(scenario.expected) and all(r["status"] == "ok" for r in merged.values())


def test_cli_fetch_prints_a_summary_and_accepts_yaml_with_overrides(tmp_path, capsys):
    with FakePmc() as pmc:
        scenario = populate(pmc, articles=2, figures_per_article=2, routes=("bucket",))
        urls = write_urls(tmp_path / "u.jsonl", scenario.records)
        yaml_path = tmp_path / "fetch.yaml"
        yaml_path.write_text(f"base_url: {pmc.url}\nconcurrency: 2\nbackoff_base: 0.01\n")
        code = fetch_main(
            ["--config", str(yaml_path), "--urls", str(urls), "--out", str(tmp_path / "o"), "--no-progress"]
        )
    printed = capsys.readouterr().out
    assert code == 0
    assert "ok                     4   100.0%" in printed and "figures/s" in printed and "MB/s" in printed
    config = load_fetch_config(["--config", str(yaml_path), "--urls", "u", "--out", "o", "--concurrency", "5"])
    assert (config.concurrency, config.backoff_base, config.base_url) == (5, 0.01, pmc.url)
    yaml_path.write_text("concurency: 3\n")
    capsys.readouterr()
    with pytest.raises(SystemExit):
        load_fetch_config(["--config", str(yaml_path), "--urls", "u", "--out", "o"])
    assert "unknown keys ['concurency']" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        load_fetch_config(["--urls", "u", "--out", "o", "--shard", "3/3"])
    assert "--shard" in capsys.readouterr().err


def test_cli_fetch_rejects_a_bad_record_before_downloading(tmp_path, capsys):
    urls = write_urls(tmp_path / "u.jsonl", [{"pmcid": "PMC1", "file": "a.jpg", "pair_id": "1_F1"}, {"pair_id": "2"}])
    code = vital(
        ["fetch", "figures", "--urls", str(urls), "--out", str(tmp_path / "o"), "--base-url", "http://127.0.0.1:9"]
    )
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("vital fetch figures: error: ") and "record 1" in err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("content", ["", "[]"])
def test_an_empty_url_list_is_an_error_and_marks_nothing_done(tmp_path, capsys, content):
    urls = tmp_path / "u.jsonl"
    urls.write_text(content)
    code = vital(
        ["fetch", "figures", "--urls", str(urls), "--out", str(tmp_path / "o"), "--base-url", "http://127.0.0.1:9"]
    )
    err = capsys.readouterr().err
    assert code == 1 and f"vital fetch figures: error: {urls}" in err
    assert not list((tmp_path / "o").rglob("*.done"))


def qa50_fake(pmc):
    """The real qa50 figures served by the fake, one route per record in turn; empty and cut-off files included."""
    urls_path = shared_fixture("llava_med", "qa50_image_urls.jsonl")
    images = shared_fixture("llava_med", "qa50_images")
    records = [json.loads(line) for line in urls_path.read_text().splitlines() if line.strip()]
    routes = {}
    for number, record in enumerate(records):
        pmcid, name = record["image_file_path"].split("/")
        data = (images / f"{record['pair_id']}.jpg").read_bytes()
        tar_path = record["pmc_tar_url"].split("nih.gov", 1)[1]
        article = pmc.articles.get(pmcid) or pmc.add(FakeArticle(pmcid, tar_path=tar_path))
        route = ("bucket", "newer_version", "jats", "legacy")[number % 4]
        routes[record["pair_id"]] = route
        if route == "bucket":
            article.versions.setdefault(1, {})[name] = data
        elif route == "newer_version":
            article.versions.setdefault(1, {})["cover.jpg"] = make_jpeg(number)
            article.versions.setdefault(2, {})[name] = data
        elif route == "jats":
            stem = f"{pmcid}.renamed.{number}"
            article.versions.setdefault(1, {})[f"{stem}.jpg"] = data
            article.figures[record["pair_id"].split("_", 1)[1]] = stem
        else:
            article.tarball = tar_gz(
                [TarEntry(f"{pmcid}/{pmcid}.nxml", b"<article/>"), TarEntry(f"{pmcid}/{name}", data)]
            )
    return records, images, routes


def test_real_qa50_figures_through_every_route(tmp_path):
    with FakePmc(throttle_every=9) as pmc:  # every 9th request answers 503 Slow Down
        records, images, routes = qa50_fake(pmc)
        pmc.throttle[f"/{records[0]['image_file_path'].replace('/', '.1/')}"] = 1
        urls = write_urls(tmp_path / "qa50.jsonl", records)
        stats = run_fetch(config_for(pmc, urls, tmp_path / "out", max_retries=8))
    assert stats["this_run"]["throttled"] >= stats["this_run"]["requests"] // 10
    rows = read_rows(tmp_path / "out")
    whole = {p.stem for p in images.glob("*.jpg") if _decodes(p)}
    assert len(whole) == 29 and stats["counts"]["ok"] == 29
    assert set(routes.values()) == {"bucket", "newer_version", "jats", "legacy"}
    for record in records:
        pair_id = record["pair_id"]
        target = tmp_path / "out" / f"{pair_id}.jpg"
        if pair_id in whole:
            assert rows[pair_id]["status"] == "ok"
            assert target.read_bytes() == (images / f"{pair_id}.jpg").read_bytes()  # JPEG kept byte for byte
        else:
            assert rows[pair_id]["status"] in ("missing", "corrupt") and not target.exists()
    empty = [r for r in records if (images / f"{r['pair_id']}.jpg").stat().st_size == 0]
    assert len(empty) == 19 and all("empty file" in rows[r["pair_id"]]["error"] for r in empty)


def _decodes(path):
    try:
        with Image.open(path) as image:
            image.load()
        return True
    except Exception:
        return False


def test_png_is_converted_and_a_deprecated_tarball_path_is_tried(tmp_path):
    png = make_jpeg(11, (40, 30), fmt="PNG")
    with FakePmc() as pmc:
        pmc.add(FakeArticle("PMC7", versions={1: {"g1.png": png}}))
        moved = pmc.add(FakeArticle("PMC8", tar_path=FakePmc.tar_path_of("PMC8")))
        record = pmc.legacy_record(moved, "a.jpg", "8_F1")
        moved.tar_path = moved.tar_path.replace("/oa_package/", "/deprecated/oa_package/")
        moved.tarball = tar_gz([TarEntry("PMC8/a.jpg", make_jpeg(12))])
        records = [{"pmcid": "PMC7", "file": "g1.png", "pair_id": "7_F1"}, record]
        urls = write_urls(tmp_path / "u.jsonl", records)
        run_fetch(config_for(pmc, urls, tmp_path / "off", legacy=False))
        run_fetch(config_for(pmc, urls, tmp_path / "out"))
    rows = read_rows(tmp_path / "out")
    assert (rows["7_F1"]["format"], rows["7_F1"]["status"]) == ("PNG", "ok")
    with Image.open(tmp_path / "out" / "7_F1.jpg") as converted:
        assert (converted.format, converted.size) == ("JPEG", (40, 30))
    assert (
        rows["8_F1"]["source_url"]
        .split("#")[0]
        .endswith("/pub/pmc/deprecated/oa_package/" + moved.tar_path.split("oa_package/")[1])
    )
    assert (tmp_path / "out" / "8_F1.jpg").read_bytes() == make_jpeg(12)
    skipped = read_rows(tmp_path / "off")["8_F1"]
    assert skipped["status"] == "missing" and "tarballs not tried" in skipped["error"]


def test_progress_bar_shows_figures_and_bytes_per_second(tmp_path, capsys):
    with FakePmc() as pmc:
        scenario = populate(pmc, articles=3, figures_per_article=2, routes=("bucket",))
        run_fetch(config_for(pmc, write_urls(tmp_path / "u.jsonl", scenario.records), tmp_path / "o", progress=True))
    bar = capsys.readouterr().err
    assert "6/6" in bar and "fig/s" in bar and "MB/s" in bar


def test_a_finished_shard_fetches_added_records_and_refuses_changed_options(tmp_path, capsys):
    """The completion marker names what it completed: more records are fetched, not "complete already"."""
    with FakePmc() as pmc:
        scenario = populate(pmc, articles=4, figures_per_article=2, routes=("bucket",))
        urls = write_urls(tmp_path / "u.jsonl", scenario.records[:4])
        out = tmp_path / "out"
        assert run_fetch(config_for(pmc, urls, out))["counts"]["ok"] == 4
        assert run_fetch(config_for(pmc, urls, out)).get("already_complete")
        write_urls(urls, scenario.records)  # four more records, same --out
        grown = run_fetch(config_for(pmc, urls, out))
        assert not grown.get("already_complete")
        assert grown["this_run"] == {**grown["this_run"], "fetched": 4, "already_done": 4}
        assert grown["counts"]["ok"] == 8 and len(read_rows(out)) == 8
        assert run_fetch(config_for(pmc, urls, out)).get("already_complete")

        argv = ["--urls", str(urls), "--out", str(out), "--base-url", pmc.url, "--legacy-base-url", pmc.url,
                "--no-licence", "--no-progress"]  # fmt: skip
        before = pmc.requests
        assert vital(["fetch", "figures", *argv]) == 1  # the `vital` entry point's one-line error
        err = capsys.readouterr().err
        assert err.startswith("vital fetch figures: error: ") and "--licence True -> False" in err
        assert "new --out" in err and pmc.requests == before and len(err.strip().splitlines()) == 1


def test_licence_and_retraction_come_from_the_newest_version(tmp_path):
    """A figure found at version 1 of an article retracted at version 2 is indexed retracted, with v2's licence."""
    with FakePmc() as pmc:
        scenario = populate(pmc, articles=2, figures_per_article=1, routes=("bucket",))
        retracted = pmc.articles["PMC1000"]
        retracted.versions[2] = dict(retracted.versions[1])
        retracted.retracted_versions = {2}
        retracted.licences = {2: "CC0"}
        urls = write_urls(tmp_path / "u.jsonl", scenario.records)
        run_fetch(config_for(pmc, urls, tmp_path / "out"))
        rows = {row["pmcid"]: row for row in read_rows(tmp_path / "out").values()}
    assert rows["PMC1000"]["status"] == "ok" and rows["PMC1000"]["source"] == "bucket"
    assert (rows["PMC1000"]["retracted"], rows["PMC1000"]["licence"]) == (True, "CC0")
    assert (rows["PMC1001"]["retracted"], rows["PMC1001"]["licence"]) == (False, "CC BY")


def test_metadata_falls_back_to_the_version_folder_and_absent_versions_are_not_asked_for(tmp_path):
    with FakePmc() as pmc:
        scenario = populate(pmc, articles=2, figures_per_article=1, routes=("newer_version",))
        for article in pmc.articles.values():
            article.no_metadata_key = {2}  # metadata/PMC<id>.2.json absent; PMC<id>.2/PMC<id>.2.json is there
        only_v2 = pmc.articles["PMC1001"]
        only_v2.versions = {2: only_v2.versions[2]}  # an article without a version 1
        urls = write_urls(tmp_path / "u.jsonl", scenario.records)
        run_fetch(config_for(pmc, urls, tmp_path / "out"))
        rows = {row["pmcid"]: row for row in read_rows(tmp_path / "out").values()}
        assert pmc.hits["/metadata/PMC1001.1.json"] == 0
    assert {row["status"] for row in rows.values()} == {"ok"}
    assert {row["source"] for row in rows.values()} == {"metadata"}
    assert rows["PMC1000"]["licence"] == "CC BY" and rows["PMC1000"]["retracted"] is False


def test_retry_failed_repairs_an_ok_image_damaged_in_place(tmp_path):
    """Same size, other bytes: the indexed sha256 catches it, and the figure is fetched again."""
    with FakePmc() as pmc:
        scenario = populate(pmc, articles=2, figures_per_article=1, routes=("bucket",))
        urls = write_urls(tmp_path / "u.jsonl", scenario.records)
        out = tmp_path / "out"
        run_fetch(config_for(pmc, urls, out))
        pair_id = scenario.records[0]["pair_id"]
        figure = out / f"{pair_id}.jpg"
        damaged = bytearray(figure.read_bytes())
        damaged[len(damaged) // 2] ^= 0xFF
        figure.write_bytes(bytes(damaged))
        repaired = run_fetch(config_for(pmc, urls, out, retry_failed=True))
    assert repaired["this_run"]["fetched"] == 1 and repaired["this_run"]["already_done"] == 1
    assert figure.read_bytes() == scenario.expected[pair_id]


def test_the_rate_limit_halves_on_slow_down_and_recovers_on_success():
    from vital_hub.figures.download import HostRateLimiter

    limiter = HostRateLimiter(1000.0)
    assert limiter.rate("h") == 1000.0
    limiter.slow_down("h")
    limiter.slow_down("h")
    assert limiter.rate("h") == 250.0 and limiter.rate("other") == 1000.0  # per host
    for _ in range(100):
        limiter.succeeded("h")
    assert limiter.rate("h") == pytest.approx(350.0)
    for _ in range(10_000):
        limiter.succeeded("h")
    assert limiter.rate("h") == 1000.0  # never above the configured rate
    for _ in range(50):
        limiter.slow_down("h")
    assert limiter.rate("h") == 1.0  # the floor
    assert limiter.summary()["adapted"]["h"]["lowest"] == 1.0


def test_a_throttling_bucket_slows_the_fetch_down_and_every_figure_still_arrives(tmp_path):
    """503 Slow Down on every 5th request: the per-host rate drops below the default ceiling, nothing is lost."""
    with FakePmc(throttle_every=5) as pmc:
        scenario = populate(pmc, articles=6, figures_per_article=2, routes=("bucket",))
        urls = write_urls(tmp_path / "u.jsonl", scenario.records)
        stats = run_fetch(config_for(pmc, urls, tmp_path / "out", max_retries=8))
    assert stats["counts"]["ok"] == 12 and stats["this_run"]["throttled"] > 0
    limit = stats["this_run"]["rate_limit"]
    assert limit["configured_per_host"] == FetchConfig.rate_limit == 1000.0
    (adapted,) = limit["adapted"].values()
    assert adapted["lowest"] < 1000.0


def test_figures_are_not_fsynced_one_by_one(tmp_path, monkeypatch):
    """An fsync per figure costs milliseconds each; durability comes from one sync per shard and the re-checks
    of resume (size) and --retry-failed (sha256), so the fetch issues a handful of fsyncs, not one per figure."""
    import os

    calls = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: calls.append(fd) or real_fsync(fd))
    with FakePmc() as pmc:
        scenario = populate(pmc, articles=10, figures_per_article=3, routes=("bucket",))
        urls = write_urls(tmp_path / "u.jsonl", scenario.records)
        stats = run_fetch(config_for(pmc, urls, tmp_path / "out"))
    assert stats["counts"]["ok"] == 30
    assert len(calls) < 10, f"{len(calls)} fsyncs for 30 figures"


@pytest.mark.parametrize("licence", [True, False], ids=["licence", "no-licence"])
def test_bucket_bytes_contradicting_the_metadata_md5_are_refused_with_or_without_licence(tmp_path, licence):
    """--no-licence skips the licence lookup, not the md5 check: both runs keep the same bytes."""
    with FakePmc() as pmc:
        scenario = populate(pmc, articles=2, figures_per_article=1, routes=("bucket",))
        bad = pmc.articles["PMC1000"]
        bad.bad_md5 = set(bad.versions[1])  # the metadata's md5 contradicts the object (whose ETag is its md5)
        urls = write_urls(tmp_path / "u.jsonl", scenario.records)
        run_fetch(config_for(pmc, urls, tmp_path / "out", licence=licence, legacy=False))
        rows = {row["pmcid"]: row for row in read_rows(tmp_path / "out").values()}
    assert rows["PMC1000"]["status"] == "corrupt" and "does not match" in rows["PMC1000"]["error"]
    assert rows["PMC1001"]["status"] == "ok"
    assert (rows["PMC1001"]["licence"] is not None) == licence
