"""Hostile downloads: traversal, links, devices, lying sizes, decompression and pixel bombs, broken images."""

import asyncio
import io
import json
import tarfile

import pyarrow.parquet as pq
import pytest
from PIL import Image

from tests.fakes.http_files import serving_files
from tests.fakes.pmc_server import FakeArticle, FakePmc, TarEntry, make_jpeg, pixel_bomb_png, tar_gz
from vital_hub.figures.download import HttpClient, HttpOptions
from vital_hub.figures.pipeline import FetchConfig, run_fetch
from vital_hub.figures.safety import Limits, Rejected, read_wanted_members, verify_image

TEN_GB = 10 * (1 << 30)


def _info(name: str, **attributes) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    for key, value in attributes.items():
        setattr(info, key, value)
    return info


def hostile_tarball() -> bytes:
    return tar_gz(
        [
            TarEntry("PMC900/good.jpg", make_jpeg(1)),
            TarEntry("../../evil.jpg", make_jpeg(2)),
            TarEntry("", info=_info("PMC900/link.jpg", type=tarfile.SYMTYPE, linkname="/etc/passwd")),
            TarEntry("", info=_info("PMC900/hard.jpg", type=tarfile.LNKTYPE, linkname="PMC900/good.jpg")),
            TarEntry("", info=_info("PMC900/dev.jpg", type=tarfile.CHRTYPE, devmajor=1, devminor=3)),
            TarEntry("PMC900/bomb.png", pixel_bomb_png()),
            TarEntry("PMC900/huge.jpg", b"", info=_info("PMC900/huge.jpg", size=TEN_GB)),
        ]
    )


def test_scan_reads_wanted_members_only_and_rejects_the_rest_with_reasons():
    wanted = {"good.jpg", "evil.jpg", "link.jpg", "hard.jpg", "dev.jpg", "bomb.png", "huge.jpg"}
    scan = read_wanted_members(io.BytesIO(hostile_tarball()), wanted, Limits())
    assert set(scan.found) == {"good.jpg", "bomb.png"}
    assert scan.found["good.jpg"] == make_jpeg(1)
    assert "path escapes the archive" in scan.rejected["evil.jpg"]
    assert "link member" in scan.rejected["link.jpg"] and "link member" in scan.rejected["hard.jpg"]
    assert "device" in scan.rejected["dev.jpg"]
    assert f"claims {TEN_GB} bytes" in scan.rejected["huge.jpg"]
    assert scan.stopped and "past the archive cap" in scan.stopped


def test_many_wanted_members_cannot_add_up_past_the_held_cap():
    members = [TarEntry(f"PMC1/f{i}.jpg", make_jpeg(i)) for i in range(6)]
    cap = sum(len(entry.data) for entry in members[:3])
    scan = read_wanted_members(
        io.BytesIO(tar_gz(members)), {f"f{i}.jpg" for i in range(6)}, Limits(max_held_bytes=cap)
    )
    assert sorted(scan.found) == ["f0.jpg", "f1.jpg", "f2.jpg"] and scan.held_bytes == cap
    assert all("would hold more than" in scan.rejected[f"f{i}.jpg"] for i in range(3, 6))


def test_gzip_bomb_stops_at_the_unpacked_cap():
    bomb = tar_gz([TarEntry("PMC1/zeros.bin", b"\0" * (8 << 20)), TarEntry("PMC1/a.jpg", make_jpeg(3))])
    assert len(bomb) < 100_000
    scan = read_wanted_members(io.BytesIO(bomb), {"a.jpg"}, Limits(max_unpacked_bytes=2 << 20))
    assert scan.found == {} and "past the archive cap" in scan.stopped


def test_oversized_header_is_refused_before_it_is_read_into_memory():
    long_name = "PMC1/" + "a" * (3 << 20) + ".jpg"
    archive = tar_gz([TarEntry(long_name, make_jpeg(4)), TarEntry("PMC1/b.jpg", make_jpeg(5))])
    scan = read_wanted_members(io.BytesIO(archive), {"b.jpg"}, Limits())
    assert scan.found == {} and "beyond its cap" in scan.stopped


def test_truncated_archive_keeps_what_came_before_the_cut():
    archive = tar_gz([TarEntry("PMC1/a.jpg", make_jpeg(6)), TarEntry("PMC1/b.jpg", make_jpeg(7) * 50)])
    scan = read_wanted_members(io.BytesIO(archive[: len(archive) - 200]), {"a.jpg", "b.jpg"}, Limits())
    assert scan.found == {"a.jpg": make_jpeg(6)} and "truncated or unreadable" in scan.stopped


def test_verify_image_keeps_jpeg_bytes_converts_others_and_rejects_broken_ones():
    jpeg = make_jpeg(8, (80, 60))
    kept = verify_image(jpeg, Limits())
    assert kept.jpeg == jpeg and (kept.format, kept.width, kept.height, kept.converted) == ("JPEG", 80, 60, False)
    png = verify_image(make_jpeg(9, (30, 20), fmt="PNG"), Limits())
    assert png.format == "PNG" and png.converted
    with Image.open(io.BytesIO(png.jpeg)) as decoded:
        assert (decoded.format, decoded.mode, decoded.size) == ("JPEG", "RGB", (30, 20))
    for data, reason in [
        (b"", "empty file"),
        (jpeg[: len(jpeg) // 2], "not a decodable image"),
        (b"%!PS-Adobe-3.0 EPSF-3.0\n", "not a decodable image"),
        (pixel_bomb_png(), "pixel bomb"),
        (pixel_bomb_png(12_000, 12_000), "exceeds the cap"),
    ]:
        with pytest.raises(Rejected, match=reason):
            verify_image(data, Limits())
    with pytest.raises(Rejected, match="exceeds the image cap"):
        verify_image(jpeg, Limits(max_image_bytes=100))


def test_hostile_tarball_end_to_end_records_reasons_and_writes_nothing_outside_out(tmp_path):
    names = ["good.jpg", "evil.jpg", "link.jpg", "hard.jpg", "dev.jpg", "bomb.png", "huge.jpg"]
    with FakePmc() as pmc:
        article = pmc.add(FakeArticle("PMC900", tar_path=FakePmc.tar_path_of("PMC900"), tarball=hostile_tarball()))
        records = [pmc.legacy_record(article, name, f"900_F{i}") for i, name in enumerate(names)]
        urls = tmp_path / "urls.jsonl"
        urls.write_text("\n".join(json.dumps(r) for r in records) + "\n")
        out = tmp_path / "sandbox" / "out"
        config = FetchConfig(
            urls=str(urls), out=str(out), base_url=pmc.url, legacy_base_url=pmc.url, backoff_base=0.01, progress=False
        )
        stats = run_fetch(config)
    rows = {r["pair_id"]: r for r in pq.read_table(out / "index" / "shard-00000-of-00001.parquet").to_pylist()}
    assert rows["900_F0"]["status"] == "ok" and (out / "900_F0.jpg").read_bytes() == make_jpeg(1)
    expected = {
        "900_F1": "path escapes the archive",
        "900_F2": "link member",
        "900_F3": "link member",
        "900_F4": "device or fifo member",
        "900_F5": "pixel bomb",
        "900_F6": f"claims {TEN_GB} bytes",
    }
    for pair_id, reason in expected.items():
        assert rows[pair_id]["status"] == "corrupt", rows[pair_id]
        assert reason in rows[pair_id]["error"]
        assert not (out / f"{pair_id}.jpg").exists()
    assert stats["counts"]["corrupt"] == 6
    assert sorted(p.name for p in (tmp_path / "sandbox").iterdir()) == ["out"]
    assert sorted(p.name for p in out.iterdir() if p.is_file()) == ["900_F0.jpg"]
    assert not list(tmp_path.rglob("evil.jpg")) and not list(tmp_path.rglob("passwd"))


@pytest.mark.parametrize("announce_length", [True, False], ids=["announced", "unannounced"])
def test_a_body_over_the_byte_cap_is_refused_in_memory_and_on_disk(tmp_path, announce_length):
    small, large = b"x" * 64, b"y" * 4096
    expected = "Content-Length 4096 > 1000" if announce_length else "more than 1000 bytes"

    async def fetch_all(base: str):
        async with HttpClient(HttpOptions(max_retries=0)) as client:
            fits = await client.get(f"{base}/small", max_bytes=1000)
            too_big = await client.get(f"{base}/large", max_bytes=1000)
            to_file = await client.get_to_file(f"{base}/large", tmp_path / "large.bin", max_bytes=1000)
            return fits, too_big, to_file, client.stats.bytes

    with serving_files({"/small": small, "/large": large}, announce_length=announce_length) as server:
        fits, too_big, to_file, counted = asyncio.run(fetch_all(server.base_url))
    assert fits.ok and fits.data == small
    for refused in (too_big, to_file):
        assert not refused.ok and refused.data is None
        assert refused.error == f"body exceeds the cap: {expected}"
    assert (tmp_path / "large.bin").stat().st_size <= 1000 + (1 << 16)  # at most one chunk past the cap
    assert counted == len(small)  # refused bodies are not counted as transferred


def test_rejection_reasons_are_the_same_on_every_run():
    """Pillow names the file object (`<_io.BytesIO object at 0x...>`) in its messages: the index would differ
    between two runs on the same bytes."""
    reasons = set()
    for _ in range(3):
        with pytest.raises(Rejected) as err:
            verify_image(b"definitely not an image" * 4, Limits())
        reasons.add(str(err.value))
    assert len(reasons) == 1
    assert " at 0x" not in reasons.pop()
