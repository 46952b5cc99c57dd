"""A real local HTTP server standing in for PMC: the 2026 Open Access bucket and the legacy FTP tarballs.

Bucket side: S3 ListObjectsV2 XML for versions and folders, article folders `PMC<id>.<N>/` with media files
(ETag = md5), `metadata/PMC<id>.<N>.json` with `media_urls` carrying `?md5=`, JATS XML mapping fig ids to
graphic hrefs, 403 for media a licence withholds, 404 (NoSuchKey) for the rest. Legacy side: `.tar.gz`
packages under `/pub/pmc/oa_package/xx/yy/`. Faults on demand: a delay per request, 503 "Slow Down" with
Retry-After for chosen paths or every k-th request, and bodies cut off mid-transfer. Everything is built in
memory by the test, from generated images or real figure files.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import io
import json
import random
import struct
import tarfile
import threading
import zlib
from collections import Counter
from dataclasses import dataclass, field
from urllib.parse import quote, unquote

from aiohttp import web
from PIL import Image, ImageDraw

S3_XMLNS = "http://s3.amazonaws.com/doc/2006-03-01/"


def make_jpeg(seed: int, size: tuple[int, int] = (64, 48), fmt: str = "JPEG", noise: float = 0.0) -> bytes:
    """An image that differs per seed (coloured boxes, plus grain when `noise` > 0), in any Pillow format.

    Grain makes a 640x480 JPEG weigh about what a PMC figure does (tens of KB instead of a few).
    """
    rng = random.Random(seed)
    image = Image.new("RGB", size, tuple(rng.randrange(256) for _ in range(3)))
    draw = ImageDraw.Draw(image)
    for _ in range(4):
        x0, y0 = rng.randrange(size[0]), rng.randrange(size[1])
        draw.rectangle(
            [x0, y0, x0 + size[0] // 3, y0 + size[1] // 3], fill=tuple(rng.randrange(256) for _ in range(3))
        )
    if noise:
        dx, dy = rng.randrange(size[0]), rng.randrange(size[1])
        image = Image.blend(image, _grain(size).crop((dx, dy, dx + size[0], dy + size[1])), noise)
    if fmt == "PNG":
        image = image.convert("RGBA")
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


@functools.lru_cache(maxsize=4)
def _grain(size: tuple[int, int]) -> Image.Image:
    """One noise field twice the image size; each image crops it at its own offset (cheaper than new noise)."""
    return Image.effect_noise((size[0] * 2, size[1] * 2), 64).convert("RGB")


def md5_hex(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


@dataclass
class TarEntry:
    """One member of a package; `info` overrides the header (links, devices, lying sizes)."""

    name: str
    data: bytes = b""
    info: tarfile.TarInfo | None = None


def tar_gz(entries: list[TarEntry]) -> bytes:
    """A gzipped tarball; a header may claim more bytes than follow (the archive then simply ends)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", format=tarfile.GNU_FORMAT) as archive:
        for entry in entries:
            info = entry.info or tarfile.TarInfo(entry.name)
            if entry.info is None:
                info.size = len(entry.data)
            if info.isfile() and info.size != len(entry.data):
                archive.fileobj.write(info.tobuf(archive.format, archive.encoding, archive.errors))
                archive.fileobj.write(entry.data)
                archive.offset += tarfile.BLOCKSIZE + len(entry.data)
                continue
            archive.addfile(info, io.BytesIO(entry.data) if info.isfile() else None)
    return buffer.getvalue()


@dataclass
class FakeArticle:
    """An article as PMC serves it: media per version, fig id -> href, licence, and maybe a legacy package."""

    pmcid: str
    versions: dict[int, dict[str, bytes]] = field(default_factory=dict)
    figures: dict[str, str] = field(default_factory=dict)
    licence: str = "CC BY"
    permitted: bool = True
    tarball: bytes | None = None
    tar_path: str | None = None
    bad_md5: set[str] = field(default_factory=set)
    retracted_versions: set[int] = field(default_factory=set)  # versions whose metadata says is_retracted
    licences: dict[int, str] = field(default_factory=dict)  # a licence per version, where it changed
    no_metadata_key: set[int] = field(default_factory=set)  # versions missing from metadata/ (folder copy kept)

    def metadata(self, version: int) -> dict:
        media = []
        if self.permitted:
            for name, data in sorted(self.versions[version].items()):
                digest = "0" * 32 if name in self.bad_md5 else md5_hex(data)
                media.append(f"s3://pmc-oa-opendata/{self.pmcid}.{version}/{quote(name)}?md5={digest}")
        key = f"{self.pmcid}.{version}"
        return {
            "pmcid": self.pmcid,
            "version": version,
            "license_code": self.licences.get(version, self.licence),
            "is_retracted": version in self.retracted_versions,
            "xml_url": f"s3://pmc-oa-opendata/{key}/{key}.xml",
            "media_urls": media,
        }

    def jats(self) -> bytes:
        figs = "".join(
            f'<fig id="{fig_id}"><label>Figure</label><graphic xlink:href="{href}"/></fig>'
            for fig_id, href in self.figures.items()
        )
        return (
            '<?xml version="1.0"?><article xmlns:xlink="http://www.w3.org/1999/xlink">'
            f"<front><article-id pub-id-type='pmc'>{self.pmcid}</article-id></front><body>{figs}</body></article>"
        ).encode()


class FakePmc:
    """The server; `with FakePmc() as pmc:` serves on `pmc.url` until the block ends."""

    def __init__(self, delay_s: float = 0.0, throttle_every: int = 0, retry_after: str = "0"):
        self.delay_s, self.throttle_every, self.retry_after = delay_s, throttle_every, retry_after
        self.articles: dict[str, FakeArticle] = {}
        self.throttle: Counter[str] = Counter()  # path -> 503 answers still to give
        self.truncate: Counter[str] = Counter()  # path -> cut-off bodies still to give
        self.hits: Counter[str] = Counter()
        self.requests = 0
        self.url = ""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None

    # --- content -------------------------------------------------------------------------------------------------
    def add(self, article: FakeArticle) -> FakeArticle:
        self.articles[article.pmcid] = article
        return article

    def legacy_record(self, article: FakeArticle, file: str, pair_id: str, host: str = "https://ftp.ncbi.nlm.nih.gov"):
        return {
            "pmc_tar_url": f"{host}{article.tar_path}",
            "image_file_path": f"{article.pmcid}/{file}",
            "pair_id": pair_id,
        }

    @staticmethod
    def tar_path_of(pmcid: str) -> str:
        digest = hashlib.sha256(pmcid.encode()).hexdigest()
        return f"/pub/pmc/oa_package/{digest[:2]}/{digest[2:4]}/{pmcid}.tar.gz"

    # --- lifecycle -----------------------------------------------------------------------------------------------
    def __enter__(self) -> FakePmc:
        ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, args=(ready,), daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("fake PMC server did not start")
        return self

    def __exit__(self, *exc) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def _serve(self, ready: threading.Event) -> None:
        self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self._loop)
        app = web.Application()
        app.router.add_get("/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        self._loop.run_until_complete(self._runner.setup())
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        self._loop.run_until_complete(site.start())
        port = site._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        ready.set()
        self._loop.run_forever()
        self._loop.close()

    # --- requests ------------------------------------------------------------------------------------------------
    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        path = unquote(request.rel_url.raw_path)
        key = path if path != "/" else f"/?{request.query_string}"
        self.hits[key] += 1
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.throttle[key] > 0 or (self.throttle_every and self.requests % self.throttle_every == 0):
            self.throttle[key] -= 1 if self.throttle[key] > 0 else 0
            return self._s3_error(
                503, "SlowDown", "Please reduce your request rate.", {"Retry-After": self.retry_after}
            )
        found = self._route(path, request.query)
        if isinstance(found, web.StreamResponse):
            return found
        body, content_type = found
        if self.truncate[key] > 0:
            self.truncate[key] -= 1
            return await self._cut_off(request, body)
        return web.Response(body=body, content_type=content_type, headers={"ETag": f'"{md5_hex(body)}"'})

    def _route(self, path: str, query) -> tuple[bytes, str] | web.StreamResponse:
        if path == "/" and query.get("list-type") == "2":
            return self._listing(query.get("prefix", ""), query.get("delimiter"))
        if path.startswith("/pub/pmc/"):
            return self._tarball(path)
        parts = path.lstrip("/").split("/")
        if len(parts) == 2 and parts[0] == "metadata" and parts[1].endswith(".json"):
            return self._metadata(parts[1][: -len(".json")])
        if len(parts) == 2:
            return self._object(parts[0], parts[1])
        return self._s3_error(404, "NoSuchKey", "The specified key does not exist.")

    def _split_version(self, key: str) -> tuple[FakeArticle, int] | None:
        pmcid, _, version = key.partition(".")
        article = self.articles.get(pmcid)
        if article is None or not version.isdigit() or int(version) not in article.versions:
            return None
        return article, int(version)

    def _metadata(self, key: str):
        found = self._split_version(key)
        if found is None:
            return self._s3_error(404, "NoSuchKey", "The specified key does not exist.")
        article, version = found
        if version in article.no_metadata_key:
            return self._s3_error(404, "NoSuchKey", "The specified key does not exist.")
        return json.dumps(article.metadata(version)).encode(), "application/json"

    def _object(self, folder: str, name: str):
        found = self._split_version(folder)
        if found is None:
            return self._s3_error(404, "NoSuchKey", "The specified key does not exist.")
        article, version = found
        if name == f"{folder}.xml":
            return article.jats(), "application/xml"
        if name == f"{folder}.json":
            return json.dumps(article.metadata(version)).encode(), "application/json"
        media = article.versions[version]
        if name not in media:
            return self._s3_error(404, "NoSuchKey", "The specified key does not exist.")
        if not article.permitted:
            return self._s3_error(403, "AccessDenied", "Access Denied")
        return media[name], "image/jpeg"

    def _tarball(self, path: str):
        for article in self.articles.values():
            if article.tar_path == path and article.tarball is not None:
                return article.tarball, "application/gzip"
        return web.Response(status=404, text="Not Found")

    def _listing(self, prefix: str, delimiter: str | None):
        pmcid, _, rest = prefix.partition(".")
        article = self.articles.get(pmcid)
        entries = ""
        if article is not None and delimiter == "/" and rest == "":
            entries = "".join(
                f"<CommonPrefixes><Prefix>{pmcid}.{v}/</Prefix></CommonPrefixes>" for v in sorted(article.versions)
            )
        elif article is not None and rest.endswith("/") and rest[:-1].isdigit() and int(rest[:-1]) in article.versions:
            version = int(rest[:-1])
            names = sorted(article.versions[version]) + [f"{pmcid}.{version}.xml", f"{pmcid}.{version}.json"]
            entries = "".join(f"<Contents><Key>{pmcid}.{version}/{name}</Key></Contents>" for name in names)
        body = (
            f'<?xml version="1.0" encoding="UTF-8"?><ListBucketResult xmlns="{S3_XMLNS}">'
            f"<Name>pmc-oa-opendata</Name><Prefix>{prefix}</Prefix><IsTruncated>false</IsTruncated>{entries}"
            "</ListBucketResult>"
        )
        return body.encode(), "application/xml"

    @staticmethod
    def _s3_error(status: int, code: str, message: str, headers: dict | None = None) -> web.Response:
        body = f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code><Message>{message}</Message></Error>'
        return web.Response(status=status, body=body.encode(), content_type="application/xml", headers=headers)

    @staticmethod
    async def _cut_off(request: web.Request, body: bytes) -> web.StreamResponse:
        """Promise the whole body, send half, drop the connection: what a reset mid-download looks like."""
        response = web.StreamResponse(status=200)
        response.content_length = len(body)
        response.content_type = "application/octet-stream"
        await response.prepare(request)
        await response.write(body[: len(body) // 2])
        request.transport.close()
        return response


def pixel_bomb_png(width: int = 40_000, height: int = 40_000) -> bytes:
    """A PNG of a few dozen bytes whose header declares width x height pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


def grey_png(side: int) -> bytes:
    """A valid, fully decodable side x side grey PNG (rows of zeros, streamed through zlib: about 1 KB on disk per
    million pixels), for sizes between PIL's warning and its refusal."""
    compressor, row = zlib.compressobj(9), b"\0" * (side + 1)  # filter byte + one row

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    pixels = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


ROUTES = ("bucket", "newer_version", "jats", "legacy")


@dataclass
class Scenario:
    """Records to fetch and the bytes each figure must end up with (None: it must not be kept)."""

    records: list[dict]
    expected: dict[str, bytes | None]
    route_of: dict[str, str]


def populate(
    pmc: FakePmc,
    articles: int,
    figures_per_article: int,
    routes: tuple[str, ...] = ROUTES,
    tarballs_everywhere: bool = False,
    filler_bytes: int = 0,
    first_id: int = 1000,
    size: tuple[int, int] = (64, 48),
    noise: float = 0.0,
) -> Scenario:
    """Synthetic articles, each served by one route (round robin):

    - bucket: the figure is `PMC<id>.1/<file>`;
    - newer_version: only version 2 lists it (version 1 holds another file);
    - jats: the bucket renamed it; the JATS href (no extension, dots in the stem) names the new file;
    - legacy: the article is not in the bucket, only in its legacy tarball.
    """
    rng = random.Random(first_id)
    scenario = Scenario([], {}, {})
    for number in range(articles):
        pmcid, pmid = f"PMC{first_id + number}", str(30_000_000 + first_id + number)
        route = routes[number % len(routes)]
        files = {
            f"a{number}-g{f:03d}.jpg": make_jpeg(first_id * 7919 + number * 100 + f, size, noise=noise)
            for f in range(figures_per_article)
        }
        article = pmc.add(FakeArticle(pmcid, tar_path=FakePmc.tar_path_of(pmcid)))
        if route == "bucket":
            article.versions = {1: dict(files)}
        elif route == "newer_version":
            article.versions = {1: {"cover.jpg": make_jpeg(number)}, 2: dict(files)}
        elif route == "jats":
            renamed = {f"a{number}.fig.{f}.hires.jpg": data for f, data in enumerate(files.values())}
            article.versions = {1: renamed}
            article.figures = {f"F{f}": f"a{number}.fig.{f}.hires" for f in range(figures_per_article)}
        if route == "legacy" or tarballs_everywhere:
            entries = [TarEntry(f"{pmcid}/{pmcid}.nxml", b"<article/>")]
            if filler_bytes:
                entries.append(TarEntry(f"{pmcid}/{pmcid}.pdf", rng.randbytes(filler_bytes)))
            entries += [TarEntry(f"{pmcid}/{name}", data) for name, data in files.items()]
            article.tarball = tar_gz(entries)
        for f, (name, data) in enumerate(files.items()):
            pair_id = f"{pmid}_F{f}"
            scenario.records.append(pmc.legacy_record(article, name, pair_id))
            scenario.expected[pair_id] = data
            scenario.route_of[pair_id] = route
    return scenario
