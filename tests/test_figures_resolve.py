"""The PMC layout without HTTP: record formats, bucket URLs, listings, metadata, JATS matching, shards, backoff."""

import asyncio
import json
import time

import pytest

from vital_hub.figures.download import HostRateLimiter, HttpOptions, backoff_delay, etag_md5, retry_after_seconds
from vital_hub.figures.index import Journal, Shard
from vital_hub.figures.resolve import (
    BucketLayout,
    iter_requests,
    jats_graphics,
    legacy_tarball_urls,
    match_media,
    parse_metadata,
    parse_record,
    parse_version_listing,
)
from vital_hub.schema import Location, RecordError

LEGACY = {
    "pmc_tar_url": "https://ftp.ncbi.nlm.nih.gov/pub/pmc/oa_package/b8/2b/PMC5201076.tar.gz",
    "image_file_path": "PMC5201076/IJRI-26-469-g002.jpg",
    "pair_id": "28104940_F2",
}


def test_legacy_and_new_records_resolve_to_the_same_figure():
    legacy = parse_record(LEGACY, Location("urls.jsonl", 0))
    new = parse_record({"pmcid": "5201076", "file": "IJRI-26-469-g002.jpg", "pair_id": "28104940_F2"}, Location())
    assert (legacy.pmcid, legacy.file, legacy.pmid, legacy.fig_id) == (
        "PMC5201076",
        "IJRI-26-469-g002.jpg",
        "28104940",
        "F2",
    )
    assert (new.pmcid, new.file, new.pair_id) == (legacy.pmcid, legacy.file, legacy.pair_id)
    assert legacy.tar_url == LEGACY["pmc_tar_url"] and new.tar_url is None
    assert legacy.image_name == "28104940_F2.jpg"


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        ({"image_file_path": "PMC1/a.jpg"}, "no 'pair_id'"),
        ({"pair_id": 12345, "image_file_path": "PMC1/a.jpg"}, "'pair_id' must be a string, got int 12345"),
        ({"pair_id": " ", "image_file_path": "PMC1/a.jpg"}, "empty 'pair_id'"),
        ({**LEGACY, "pair_id": "../../etc/passwd"}, "cannot be a file name"),
        ({**LEGACY, "pair_id": ".hidden"}, "cannot be a file name"),
        ({"pmcid": "not-an-id", "file": "a.jpg", "pair_id": "1_F1"}, "is not a PMC id"),
        ({"pmcid": "PMC1", "file": "../a.jpg", "pair_id": "1_F1"}, "plain file name"),
        ({"pair_id": "1_F1"}, "neither 'image_file_path'"),
        ({**LEGACY, "pmc_tar_url": "not a url"}, "not an absolute URL"),
        (["a list"], "must be a JSON object"),
    ],
)
def test_bad_records_name_the_file_the_record_and_the_reason(record, reason):
    with pytest.raises(RecordError) as caught:
        parse_record(record, Location("urls.jsonl", 7))
    assert reason in str(caught.value)
    assert "urls.jsonl" in str(caught.value) and "record 7" in str(caught.value)


def test_iter_requests_reports_the_line_of_a_bad_record(tmp_path):
    path = tmp_path / "urls.jsonl"
    path.write_text(
        json.dumps(LEGACY) + "\n" + json.dumps({"pair_id": "x/y", "pmcid": "PMC1", "file": "a.jpg"}) + "\n"
    )
    with pytest.raises(RecordError, match=r"record 1, id 'x/y'"):
        list(iter_requests(path))


def test_bucket_urls_follow_the_2026_layout():
    layout = BucketLayout()
    assert layout.versions_url("PMC5201076") == (
        "https://pmc-oa-opendata.s3.amazonaws.com/?list-type=2&prefix=PMC5201076.&delimiter=%2F"
    )
    assert (
        layout.file_url("PMC5201076", 1, "IJRI 26.jpg")
        == "https://pmc-oa-opendata.s3.amazonaws.com/PMC5201076.1/IJRI%2026.jpg"
    )
    assert layout.metadata_url("PMC1", 3) == "https://pmc-oa-opendata.s3.amazonaws.com/metadata/PMC1.3.json"
    assert layout.jats_url("PMC1", 3) == "https://pmc-oa-opendata.s3.amazonaws.com/PMC1.3/PMC1.3.xml"
    mirror = BucketLayout("http://127.0.0.1:9/mirror/")
    assert (
        mirror.from_s3("s3://pmc-oa-opendata/PMC12855588.1/gr1.jpg?md5=39209b49")
        == "http://127.0.0.1:9/mirror/PMC12855588.1/gr1.jpg"
    )


def test_legacy_base_url_replaces_scheme_and_host_and_adds_the_deprecated_path():
    urls = legacy_tarball_urls(LEGACY["pmc_tar_url"], "http://127.0.0.1:8000/mirror")
    assert urls == [
        "http://127.0.0.1:8000/mirror/pub/pmc/oa_package/b8/2b/PMC5201076.tar.gz",
        "http://127.0.0.1:8000/mirror/pub/pmc/deprecated/oa_package/b8/2b/PMC5201076.tar.gz",
    ]
    assert legacy_tarball_urls(LEGACY["pmc_tar_url"], None)[0] == LEGACY["pmc_tar_url"]


def test_version_listing_is_newest_first_and_ignores_other_articles():
    xml = (
        b'<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><IsTruncated>true</IsTruncated>'
        b"<NextContinuationToken>tok</NextContinuationToken>"
        b"<CommonPrefixes><Prefix>PMC12.1/</Prefix></CommonPrefixes><CommonPrefixes><Prefix>PMC12.10/</Prefix>"
        b"</CommonPrefixes><CommonPrefixes><Prefix>PMC12.2/</Prefix></CommonPrefixes>"
        b"<CommonPrefixes><Prefix>PMC123.4/</Prefix></CommonPrefixes></ListBucketResult>"
    )
    listing = parse_version_listing(xml, "PMC12")
    assert listing.versions == (10, 2, 1) and listing.next_token == "tok"


def test_metadata_media_urls_carry_md5_and_map_to_the_bucket_root():
    raw = json.dumps(
        {
            "license_code": "CC BY",
            "is_retracted": False,
            "media_urls": [
                "s3://pmc-oa-opendata/PMC7.2/fig%201.v2.jpg?md5=" + "A" * 32,
                "s3://pmc-oa-opendata/PMC7.2/x.gif",
            ],
        }
    ).encode()
    metadata = parse_metadata(raw, 2, BucketLayout("http://h"))
    assert metadata.licence == "CC BY" and metadata.retracted is False and metadata.version == 2
    assert metadata.media["fig 1.v2.jpg"].url == "http://h/PMC7.2/fig%201.v2.jpg"
    assert metadata.media["fig 1.v2.jpg"].md5 == "a" * 32 and metadata.media["x.gif"].md5 is None


def test_jats_hrefs_without_extension_and_with_dotted_stems_find_their_media():
    jats = (
        b'<article xmlns:xlink="http://www.w3.org/1999/xlink"><body>'
        b'<fig id="F2"><graphic xlink:href="IJRI-26-469-g002"/></fig>'
        b'<fig id="fig3"><graphic xlink:href="ijms.21.1234.g003"/></fig></body></article>'
    )
    graphics = jats_graphics(jats)
    assert graphics == {"F2": ["IJRI-26-469-g002"], "fig3": ["ijms.21.1234.g003"]}
    names = ["ijms.21.1234.g003.tif", "ijms.21.1234.g003.jpg", "IJRI-26-469-g002.jpg", "ijms.21.1234.g0031.jpg"]
    assert match_media("IJRI-26-469-g002", names) == "IJRI-26-469-g002.jpg"
    assert match_media("ijms.21.1234.g003", names) == "ijms.21.1234.g003.jpg"  # JPEG preferred, not the g0031 file
    assert match_media("ijms.21.1234.g003.tif", names) == "ijms.21.1234.g003.tif"
    assert match_media("nothing", names) is None


def test_jats_entity_bombs_fail_to_parse_instead_of_expanding():
    bomb = (
        b'<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x "xxxxxxxxxx"><!ENTITY y "&x;&x;&x;&x;&x;&x;&x;&x;&x;&x;">'
        b'<!ENTITY z "&y;&y;&y;&y;&y;&y;&y;&y;&y;&y;"><!ENTITY w "&z;&z;&z;&z;&z;&z;&z;&z;&z;&z;">'
        b'<!ENTITY v "&w;&w;&w;&w;&w;&w;&w;&w;&w;&w;"><!ENTITY u "&v;&v;&v;&v;&v;&v;&v;&v;&v;&v;">'
        b'<!ENTITY t "&u;&u;&u;&u;&u;&u;&u;&u;&u;&u;"><!ENTITY s "&t;&t;&t;&t;&t;&t;&t;&t;&t;&t;">]>'
        b'<article><fig id="&s;"/></article>'
    )
    with pytest.raises(Exception):  # noqa: B017 - expat's amplification guard raises ParseError
        jats_graphics(bomb)


def test_shards_split_articles_deterministically_with_no_overlap():
    pmcids = [f"PMC{n}" for n in range(2000)]
    shards = [Shard.parse(f"{i}/4") for i in range(4)]
    owners = [[s.index for s in shards if s.holds(p)] for p in pmcids]
    assert all(len(o) == 1 for o in owners)
    assert all(300 < sum(o == [i] for o in owners) < 700 for i in range(4))
    assert Shard.parse("2/4").name == "shard-00002-of-00004"
    for bad in ("4/4", "1", "-1/2", "a/b"):
        with pytest.raises(ValueError):
            Shard.parse(bad)


def test_backoff_grows_with_jitter_and_honours_retry_after():
    options = HttpOptions(backoff_base_s=1.0, backoff_max_s=8.0)
    delays = [backoff_delay(attempt, options, None) for attempt in range(6)]
    assert 0.5 <= delays[0] <= 1.0 and 4.0 <= delays[3] <= 8.0 and delays[5] <= 8.0
    assert backoff_delay(0, options, retry_after=5.0) >= 5.0
    assert retry_after_seconds("3") == 3.0 and retry_after_seconds(None) is None
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0
    assert etag_md5('"0123456789abcdef0123456789abcdef"') == "0123456789abcdef0123456789abcdef"
    assert etag_md5('"0123456789abcdef0123456789abcdef-3"') is None


def test_journal_cuts_a_torn_last_line_before_appending(tmp_path):
    path = tmp_path / "j.jsonl"
    path.write_bytes(b'{"pair_id": "a", "status": "ok"}\n{"pair_id": "b", "sta')
    journal = Journal(path)
    entries = journal.load()
    assert list(entries) == ["a"] and journal.read(entries["a"]) == {"pair_id": "a", "status": "ok"}
    journal.append([{"pair_id": "c", "status": "missing"}, {"pair_id": "a", "status": "error", "bytes": None}])
    journal.close()
    reloaded = Journal(path)
    entries = reloaded.load()
    assert list(entries) == ["a", "c"] and entries["a"].status == "error"
    assert reloaded.read(entries["c"]) == {"pair_id": "c", "status": "missing"}
    reloaded.close()


def test_host_rate_limiter_spaces_requests_and_pauses_a_host():
    async def timed() -> tuple[float, float]:
        limiter = HostRateLimiter(rate=50)
        started = time.monotonic()
        for _ in range(6):
            await limiter.wait("bucket")
        await limiter.wait("other-host")  # another host is not held back
        spaced = time.monotonic() - started
        limiter.pause("bucket", 0.2)
        started = time.monotonic()
        await limiter.wait("bucket")
        return spaced, time.monotonic() - started

    spaced, paused = asyncio.run(timed())
    assert spaced >= 5 / 50 and paused >= 0.19
