"""`vital fetch figures`: resolve, download, verify and index every wanted figure of one shard.

Each article is handled by one task that tries its figures in the order of REFERENCE section 3: the bucket
object `PMC<id>.1/<file>`, then the `media_urls` of each version's metadata (newest first, md5-checked), then
the JATS figure id -> graphic href match, then the legacy tarball (downloaded once for all its wanted figures),
and records the rest as unavailable. Re-running the same command is the resume.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from vital_hub.config import help_field
from vital_hub.figures.download import Fetched, HttpClient, HttpOptions, etag_md5, md5_hex
from vital_hub.figures.index import (
    STATUSES,
    ErrorSamples,
    Journal,
    JournalEntry,
    Shard,
    ShardFiles,
    mark_done,
    read_marker,
    write_index,
    write_stats,
)
from vital_hub.figures.resolve import (
    DEFAULT_BUCKET,
    ArticleMetadata,
    BucketLayout,
    FigureRequest,
    iter_requests,
    jats_graphics,
    legacy_tarball_urls,
    match_media,
    parse_metadata,
    parse_version_listing,
    strip_image_extension,
)
from vital_hub.figures.safety import Limits, Rejected, read_wanted_members, verify_image
from vital_hub.io import atomic_path
from vital_hub.schema import RecordError

MiB = 1 << 20
MAX_DOCUMENT_BYTES = 64 * MiB  # metadata JSON, listings and JATS XML
PARTIAL_DIR = ".partial"
# Options that change what a figure's row or file is; the others (speed, retries, progress) do not.
RESULT_OPTIONS = (
    "base_url", "legacy_base_url", "licence", "legacy", "max_image_mb", "max_pixels", "max_archive_mb",
    "max_unpacked_mb", "max_held_mb",
)  # fmt: skip
REJECTED_MEMBER_SAMPLES = 20

log = logging.getLogger(__name__)


@dataclass
class FetchConfig:
    """Everything `vital fetch figures` needs; YAML (`--config`) then command-line flags override the defaults.

    The HTTP and safety defaults are those of `HttpOptions` and `Limits`, in this command's units (MB, not bytes).
    """

    urls: str = help_field("JSONL of image URL records (legacy or new format)")
    out: str = help_field("folder for <pair_id>.jpg files and index/")
    base_url: str = help_field("bucket root", default=DEFAULT_BUCKET)
    legacy_base_url: str | None = help_field(
        "replaces scheme and host of pmc_tar_url (a mirror or a local server)", default=None
    )
    concurrency: int = help_field("requests in flight at once (one connection pool)", default=HttpOptions.concurrency)
    rate_limit: float = help_field(
        "requests per second per host: the most, halved on each 503 Slow Down and regained on success (0 = unlimited)",
        default=HttpOptions.requests_per_second_per_host,
    )
    max_retries: int = help_field(
        "retries on 429, 5xx, timeouts and truncated bodies", default=HttpOptions.max_retries
    )
    backoff_base: float = help_field(
        "first backoff in seconds (doubles, with jitter)", default=HttpOptions.backoff_base_s
    )
    backoff_max: float = help_field("longest backoff in seconds", default=HttpOptions.backoff_max_s)
    timeout: float = help_field("connect and read timeout in seconds", default=HttpOptions.timeout_s)
    shard: str = help_field("I/N: fetch shard I (0-based) of N", default="0/1")
    retry_failed: bool = help_field("retry figures whose status is not ok", default=False)
    licence: bool = help_field("read article metadata for the licence of every figure", default=True)
    legacy: bool = help_field("fall back to legacy tarballs", default=True)
    max_image_mb: float = help_field("largest image file accepted", default=Limits.max_image_bytes / MiB)
    max_pixels: int = help_field("largest image accepted, in pixels", default=Limits.max_pixels)
    max_archive_mb: float = help_field("largest tarball downloaded", default=Limits.max_archive_bytes / MiB)
    max_unpacked_mb: float = help_field(
        "most bytes unpacked from one tarball", default=Limits.max_unpacked_bytes / MiB
    )
    max_held_mb: float = help_field(
        "most bytes of wanted figures kept from one tarball", default=Limits.max_held_bytes / MiB
    )
    progress: bool = help_field("show a progress bar", default=True)

    def __post_init__(self):
        Shard.parse(self.shard)  # a bad --shard is an error here, before any work
        if self.concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if self.max_retries < 0:
            raise ValueError("max_retries cannot be negative")

    @property
    def shard_spec(self) -> Shard:
        """The `--shard I/N` option as a Shard (checked once in __post_init__)."""
        return Shard.parse(self.shard)

    def limits(self) -> Limits:
        return Limits(
            max_image_bytes=int(self.max_image_mb * MiB),
            max_pixels=self.max_pixels,
            max_archive_bytes=int(self.max_archive_mb * MiB),
            max_unpacked_bytes=int(self.max_unpacked_mb * MiB),
            max_held_bytes=int(self.max_held_mb * MiB),
        )

    def http_options(self) -> HttpOptions:
        return HttpOptions(
            concurrency=self.concurrency,
            requests_per_second_per_host=self.rate_limit,
            max_retries=self.max_retries,
            backoff_base_s=self.backoff_base,
            backoff_max_s=self.backoff_max,
            timeout_s=self.timeout,
        )


@dataclass
class FigureState:
    """What the sources said about one figure so far; becomes its index row."""

    request: FigureRequest
    notes: list[str] = field(default_factory=list)
    tried: set[str] = field(default_factory=set)
    saw_corrupt: bool = False
    saw_error: bool = False
    saw_forbidden: bool = False
    row: dict | None = None

    @property
    def done(self) -> bool:
        return self.row is not None

    def final_row(self, licence: str | None, retracted: bool | None) -> dict:
        if self.row is not None:
            return self.row
        if self.saw_corrupt:
            status = "corrupt"
        elif self.saw_error:
            status = "error"
        elif self.saw_forbidden:
            status = "not_permitted"
        else:
            status = "missing"
        return base_row(self.request, status, licence, retracted, error="; ".join(self.notes) or "no source")


def base_row(request: FigureRequest, status: str, licence: str | None, retracted: bool | None, **values) -> dict:
    row = {
        "pair_id": request.pair_id,
        "pmcid": request.pmcid,
        "pmid": request.pmid,
        "fig_id": request.fig_id,
        "file": request.file,
        "status": status,
        "licence": licence,
        "retracted": retracted,
    }
    row.update(values)
    return row


class ArticleFetcher:
    """Resolves all wanted figures of one article, looking each article document up at most once."""

    def __init__(self, client: HttpClient, config: FetchConfig, out: Path, partial: Path):
        self.client, self.config, self.out, self.partial = client, config, out, partial
        self.layout = BucketLayout(config.base_url)
        self.limits = config.limits()
        self.rejected_members: list[tuple[str, str, str]] = []

    async def fetch(self, pmcid: str, requests: list[FigureRequest]) -> list[dict]:
        article = ArticleDocuments(self, pmcid)
        states = [FigureState(request) for request in requests]
        licence_task = asyncio.ensure_future(article.newest_metadata()) if self.config.licence else None
        await asyncio.gather(*(self._from_bucket_v1(article, state) for state in states))
        if any(not s.done for s in states):
            await self._from_metadata(article, states)
        if any(not s.done for s in states):
            await self._from_jats(article, states)
        if self.config.legacy and any(not s.done and s.request.tar_url for s in states):
            await self._from_tarballs(states)
        for state in states:
            if not state.done and not state.request.tar_url:
                state.notes.append("legacy: the record names no tarball")
            elif not state.done and not self.config.legacy:
                state.notes.append("legacy: tarballs not tried (--no-legacy)")
        newest = await licence_task if licence_task is not None else None
        licence, retracted = (newest.licence, newest.retracted) if newest is not None else article.licence()
        rows = []
        for state in states:
            row = state.final_row(licence, retracted)
            if row["status"] == "ok":
                row["licence"], row["retracted"] = licence, retracted
            rows.append(row)
        return rows

    async def _from_bucket_v1(self, article: ArticleDocuments, state: FigureState) -> None:
        """GET `PMC<id>.1/<file>`; its md5 is checked against version 1's metadata (the object's answer shows that
        version 1 exists), else, when that lists no md5 for it, against the S3 ETag: with or without --licence,
        the same bytes are kept."""
        url = self.layout.file_url(article.pmcid, 1, state.request.file)
        state.tried.add(url)
        fetched = await self.client.get(url, self.limits.max_image_bytes)
        expected = None
        if fetched.ok:
            metadata = await article.metadata(1)
            media = metadata.media.get(state.request.file) if metadata else None
            expected = media.md5 if media else None
        await self._accept(state, fetched, "bucket", "bucket v1", expected)

    async def _from_metadata(self, article: ArticleDocuments, states: list[FigureState]) -> None:
        versions = await article.versions()
        if not versions:
            for state in states:
                state.notes.append("bucket: no article versions listed")
        for version in versions:
            if all(state.done for state in states):
                return
            metadata = await article.metadata(version)
            if metadata is None:
                for state in states:
                    if not state.done:
                        state.notes.append(f"metadata v{version}: {article.metadata_tried(version)} not readable")
                continue
            if not metadata.media:
                for state in states:
                    if not state.done:
                        state.saw_forbidden = True
                        state.notes.append(f"v{version}: no media files (not permitted by the licence)")
                continue
            tries = []
            for state in states:
                media = metadata.media.get(state.request.file)
                if state.done or (media is not None and media.url in state.tried):
                    continue
                if media is None:
                    state.notes.append(f"metadata v{version}: file not listed")
                    continue
                tries.append(self._try_url(state, media.url, "metadata", f"metadata v{version}", media.md5))
            await asyncio.gather(*tries)

    async def _from_jats(self, article: ArticleDocuments, states: list[FigureState]) -> None:
        for version in await article.versions():
            if all(state.done for state in states):
                return
            metadata = await article.metadata(version)
            if metadata is None or not metadata.media:
                continue
            graphics = await article.jats(version)
            if graphics is None:
                continue
            names = sorted(metadata.media)
            tries = []
            for state in states:
                if state.done:
                    continue
                name = self._jats_match(state.request, graphics, names)
                if name is None:
                    state.notes.append(f"jats v{version}: no graphic for fig {state.request.fig_id!r}")
                    continue
                media = metadata.media[name]
                if media.url not in state.tried:
                    tries.append(self._try_url(state, media.url, "jats", f"jats v{version}", media.md5))
            await asyncio.gather(*tries)

    @staticmethod
    def _jats_match(request: FigureRequest, graphics: dict[str, list[str]], names: list[str]) -> str | None:
        """The media file of the figure's graphic: by fig id, else by an href with the record's file stem."""
        hrefs = list(graphics.get(request.fig_id or "", []))
        stem = strip_image_extension(request.file)
        hrefs += [
            h for group in graphics.values() for h in group if strip_image_extension(h.rsplit("/", 1)[-1]) == stem
        ]
        for href in hrefs:
            name = match_media(href, names)
            if name is not None:
                return name
        return None

    async def _try_url(self, state: FigureState, url: str, source: str, label: str, expected_md5: str | None) -> None:
        state.tried.add(url)
        fetched = await self.client.get(url, self.limits.max_image_bytes)
        await self._accept(state, fetched, source, label, expected_md5)

    async def _accept(
        self, state: FigureState, fetched: Fetched, source: str, label: str, expected_md5: str | None
    ) -> None:
        """Keep a download whose md5 matches (the metadata's, else a plain-md5 ETag) and that decodes fully."""
        url = fetched.url
        if not fetched.ok:
            self._note_failure(state, label, fetched)
            return
        md5 = md5_hex(fetched.data)
        expected = expected_md5 or etag_md5(fetched.etag)
        if expected and md5 != expected:
            state.saw_corrupt = True
            state.notes.append(f"{label}: md5 {md5} does not match {expected}")
            return
        await self._keep(state, fetched.data, source, url, md5, label)

    def _note_failure(self, state: FigureState, label: str, fetched: Fetched) -> None:
        if fetched.status == 403:
            state.saw_forbidden = True
        elif fetched.status == 200:  # an answer that came but broke a cap
            state.saw_corrupt = True
        elif fetched.status not in (404, 410):
            state.saw_error = True
        state.notes.append(f"{label}: {fetched.describe()}")

    async def _keep(self, state: FigureState, data: bytes, source: str, url: str, md5: str, label: str) -> None:
        try:
            state.row = await asyncio.to_thread(self._verify_and_write, state.request, data, source, url, md5)
        except Rejected as err:
            state.saw_corrupt = True
            state.notes.append(f"{label}: {err}")

    def _verify_and_write(self, request: FigureRequest, data: bytes, source: str, url: str, md5: str) -> dict:
        """Decode the bytes fully, then write the JPEG under a temporary name and rename it onto `<pair_id>.jpg`."""
        image = verify_image(data, self.limits)
        # No fsync per figure (~6.5 ms each): a resume re-checks every journalled figure's size (and sha256 with
        # --retry-failed), so one lost to a power cut is fetched again; the shard syncs once before its marker.
        with atomic_path(self.out / request.image_name, fsync=False) as tmp:
            tmp.write_bytes(image.jpeg)
        return base_row(
            request,
            "ok",
            None,
            None,
            source=source,
            source_url=url,
            md5=md5,
            sha256=hashlib.sha256(image.jpeg).hexdigest(),
            bytes=len(image.jpeg),
            width=image.width,
            height=image.height,
            format=image.format,
            error=None,
        )

    async def _from_tarballs(self, states: list[FigureState]) -> None:
        by_url: dict[str, list[FigureState]] = {}
        for state in states:
            if not state.done and state.request.tar_url:
                by_url.setdefault(state.request.tar_url, []).append(state)
        for tar_url, group in by_url.items():
            await self._from_tarball(tar_url, group)

    async def _from_tarball(self, tar_url: str, states: list[FigureState]) -> None:
        """Download the article's package once, then stream through it for every figure still wanted."""
        path = self.partial / f"{hashlib.sha256(tar_url.encode()).hexdigest()[:24]}.tar.gz"
        try:
            fetched = None
            for url in legacy_tarball_urls(tar_url, self.config.legacy_base_url):
                fetched = await self.client.get_to_file(url, path, self.limits.max_archive_bytes)
                if fetched.status not in (404, 410):
                    break
            if not fetched.ok:
                for state in states:
                    self._note_failure(state, "legacy tarball", fetched)
                return
            wanted = {state.request.file for state in states}
            scan = await asyncio.to_thread(self._scan_archive, path, wanted)
        finally:
            path.unlink(missing_ok=True)
        room = REJECTED_MEMBER_SAMPLES - len(self.rejected_members)
        self.rejected_members += [(fetched.url, name, reason) for name, reason in scan.unwanted_rejected][
            : max(room, 0)
        ]
        for state in states:
            await self._take_from_scan(state, scan, fetched.url)

    def _scan_archive(self, path: Path, wanted: set[str]):
        with open(path, "rb") as handle:
            return read_wanted_members(handle, wanted, self.limits)

    async def _take_from_scan(self, state: FigureState, scan, url: str) -> None:
        name = state.request.file
        if name in scan.found:
            data = scan.found[name]
            await self._keep(state, data, "legacy", f"{url}#{name}", md5_hex(data), "legacy tarball")
        elif name in scan.rejected:
            state.saw_corrupt = True
            state.notes.append(f"legacy tarball: rejected member: {scan.rejected[name]}")
        elif scan.stopped:
            state.saw_corrupt = True
            state.notes.append(f"legacy tarball: {scan.stopped}")
        else:
            state.notes.append("legacy tarball: file not in the archive")


class ArticleDocuments:
    """The version list, metadata and JATS of one article, each fetched at most once."""

    def __init__(self, fetcher: ArticleFetcher, pmcid: str):
        self.fetcher, self.pmcid = fetcher, pmcid
        self.client, self.layout = fetcher.client, fetcher.layout
        self._versions: asyncio.Task | None = None
        self._metadata: dict[int, asyncio.Task] = {}
        self._jats: dict[int, asyncio.Task] = {}

    def versions(self) -> asyncio.Task:
        if self._versions is None:
            self._versions = asyncio.ensure_future(self._list_versions())
        return self._versions

    def metadata(self, version: int) -> asyncio.Task:
        if version not in self._metadata:
            self._metadata[version] = asyncio.ensure_future(self._read_metadata(version))
        return self._metadata[version]

    def jats(self, version: int) -> asyncio.Task:
        if version not in self._jats:
            self._jats[version] = asyncio.ensure_future(self._read_jats(version))
        return self._jats[version]

    async def newest_metadata(self) -> ArticleMetadata | None:
        """The newest version's metadata: licence and retraction are the article's as PMC states them now (a
        retraction is a new version; the figure itself may have been found at version 1)."""
        versions = await self.versions()
        return await self.metadata(versions[0]) if versions else None

    def metadata_tried(self, version: int) -> str:
        return " and ".join(self.layout.metadata_urls(self.pmcid, version))

    def licence(self) -> tuple[str | None, bool | None]:
        """Without --licence: the newest version's licence and retraction when resolving happened to list the
        versions and read that one's metadata; otherwise unknown (an older version's could be stale)."""
        if self._versions is None or not self._versions.done() or not self._versions.result():
            return None, None
        task = self._metadata.get(self._versions.result()[0])
        newest = task.result() if task is not None and task.done() else None
        return (newest.licence, newest.retracted) if newest is not None else (None, None)

    async def _list_versions(self) -> tuple[int, ...]:
        versions: set[int] = set()
        token = None
        while True:
            fetched = await self.client.get(self.layout.versions_url(self.pmcid, token), MAX_DOCUMENT_BYTES)
            if not fetched.ok:
                return tuple(sorted(versions, reverse=True))
            try:
                listing = parse_version_listing(fetched.data, self.pmcid)
            except Exception:  # a malformed listing means "no versions known"; the tarball is still tried
                return tuple(sorted(versions, reverse=True))
            versions.update(listing.versions)
            token = listing.next_token
            if not token:
                return tuple(sorted(versions, reverse=True))

    async def _read_metadata(self, version: int) -> ArticleMetadata | None:
        """`metadata/PMC<id>.<N>.json`, else the copy inside the version folder (`PMC<id>.<N>/PMC<id>.<N>.json`)."""
        for url in self.layout.metadata_urls(self.pmcid, version):
            fetched = await self.client.get(url, MAX_DOCUMENT_BYTES)
            if not fetched.ok:
                continue
            try:
                return parse_metadata(fetched.data, version, self.layout)
            except ValueError:
                continue
        return None

    async def _read_jats(self, version: int) -> dict[str, list[str]] | None:
        fetched = await self.client.get(self.layout.jats_url(self.pmcid, version), MAX_DOCUMENT_BYTES)
        if not fetched.ok:
            return None
        try:
            return jats_graphics(fetched.data)
        except Exception:  # ElementTree raises ParseError, or ValueError for refused entities
            return None


def read_shard_requests(urls: str | Path, shard: Shard) -> tuple[list[FigureRequest], int]:
    """The shard's records in input order; a pair id seen twice keeps its first record (the repeats are counted
    in the stats as `duplicates_skipped` and named in a warning)."""
    seen: set[str] = set()
    kept, duplicates, total, repeated = [], 0, 0, []
    for request in iter_requests(urls):
        total += 1
        if not shard.holds(request.pmcid):
            continue
        if request.pair_id in seen:
            duplicates += 1
            repeated.append(request.pair_id)
            continue
        seen.add(request.pair_id)
        kept.append(request)
    if not total:  # a shard of an empty list would be marked done, and the corrected list then never fetched
        raise RecordError("no figure records in the file", file=str(urls))
    if repeated:
        log.warning(
            "%s: %d records repeat an earlier pair_id and were skipped (first: %s)", urls, duplicates, repeated[:5]
        )
    return kept, duplicates


def plan_shard(
    requests: list[FigureRequest], journal: dict[str, JournalEntry], out: Path, retry_failed: bool, read_row=None
):
    """Skip figures already finished: ok ones whose file is still there whole, failures unless retrying them.

    Whole means the indexed size on a resume; with `retry_failed` (the repair pass) also the indexed sha256, so a
    file damaged in place without changing size is fetched again (`read_row` gives an entry's journal row)."""
    done, todo = set(), []
    for request in requests:
        entry = journal.get(request.pair_id)
        if entry is not None and _still_done(request, entry, out, retry_failed, read_row):
            done.add(request.pair_id)
        else:
            todo.append(request)
    return done, todo


def _still_done(request: FigureRequest, entry: JournalEntry, out: Path, retry_failed: bool, read_row) -> bool:
    if entry.status != "ok":
        return not retry_failed
    path = out / request.image_name
    if not (path.is_file() and path.stat().st_size == entry.bytes):
        return False
    if not retry_failed or read_row is None:
        return True
    return _sha256_of(path) == read_row(entry).get("sha256")


def _sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()  # a figure is a few hundred KB at most


def group_by_article(requests: list[FigureRequest]) -> Iterator[tuple[str, list[FigureRequest]]]:
    groups: dict[str, list[FigureRequest]] = {}
    for request in requests:
        groups.setdefault(request.pmcid, []).append(request)
    yield from groups.items()


def remove_stale_temporaries(out: Path, requests: list[FigureRequest], partial: Path, files: ShardFiles) -> int:
    """Delete temporary files a killed run of THIS shard left (images, tarballs, index files being written);
    other shards may be writing beside us."""
    names = {request.image_name for request in requests}
    stale = [path for path in out.glob(".*.tmp") if path.name[1:].rsplit(".", 2)[0] in names]
    stale += list(files.folder.glob(f".{files.shard.name}.*.tmp"))
    stale += list(partial.iterdir()) if partial.exists() else []
    for path in stale:
        path.unlink(missing_ok=True)
    return len(stale)


class Progress:
    """A tqdm bar of figures with figures/s as its rate and bytes/s in the postfix."""

    def __init__(self, total: int, enabled: bool, desc: str):
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, unit="fig", desc=desc, disable=not enabled, dynamic_ncols=True)
        self.started = time.monotonic()
        self.last_postfix = 0.0

    def advance(self, count: int, bytes_so_far: int) -> None:
        self.bar.update(count)
        now = time.monotonic()
        if now - self.last_postfix > 0.5:
            rate = bytes_so_far / max(now - self.started, 1e-9)
            self.bar.set_postfix_str(f"{rate / MiB:.2f} MB/s", refresh=False)
            self.last_postfix = now

    def close(self) -> None:
        self.bar.close()


async def fetch_articles(config: FetchConfig, todo: list[FigureRequest], out: Path, partial: Path, journal: Journal):
    """Fetch every article of `todo` with a bounded pool of article workers over one HTTP client."""
    samples = ErrorSamples()
    shard = config.shard_spec
    progress = Progress(len(todo), config.progress, f"figures {shard.index}/{shard.count}")
    articles = group_by_article(todo)
    async with HttpClient(config.http_options()) as client:
        fetcher = ArticleFetcher(client, config, out, partial)

        async def worker() -> None:
            for pmcid, requests in articles:
                try:
                    rows = await fetcher.fetch(pmcid, requests)
                except Exception as err:  # a bug must not stop 700k figures: record it per figure and go on
                    error = f"internal error: {type(err).__name__}: {err}"
                    rows = [base_row(request, "error", None, None, error=error) for request in requests]
                journal.append(rows)
                for row in rows:
                    samples.add(row)
                progress.advance(len(requests), client.stats.bytes)

        try:
            await asyncio.gather(*(worker() for _ in range(max(2, config.concurrency * 2))))
        finally:
            progress.close()
    client.stats.rate_limit = client.limiter.summary()
    return client.stats, samples, fetcher.rejected_members


def records_digest(requests: list[FigureRequest]) -> str:
    """sha256 of the shard's records as the fetch reads them (pair id, article, file, tarball), in order."""
    digest = hashlib.sha256()
    for request in requests:
        digest.update(f"{request.pair_id}\t{request.pmcid}\t{request.file}\t{request.tar_url or ''}\n".encode())
    return digest.hexdigest()


def result_options(config: FetchConfig) -> dict:
    return {name: getattr(config, name) for name in RESULT_OPTIONS}


def check_same_options(files: ShardFiles, options: dict) -> None:
    """Refuse to mix rows fetched under different result-shaping options in one shard's index."""
    before = read_marker(files.options)
    if before is None:
        with atomic_path(files.options) as tmp:
            tmp.write_text(json.dumps(options, sort_keys=True, indent=1) + "\n")
        return
    changed = [f"--{name.replace('_', '-')} {before.get(name)!r} -> {options[name]!r}" for name in options
               if before.get(name) != options[name]]  # fmt: skip
    if changed:
        raise ValueError(
            f"{files.options}: this shard was fetched with other options ({'; '.join(changed)}); its rows would "
            "mix both. Run with the same options, or fetch into a new --out."
        )


def run_fetch(config: FetchConfig) -> dict:
    """Fetch one shard to completion (or resume it) and return its stats; the index is written at the end.

    A shard is complete only for the records and options its marker names: added records are fetched (the
    journal keeps what was done), and a changed result-shaping option is refused."""
    out, shard = Path(config.out), config.shard_spec
    files = ShardFiles(out, shard)
    requests, duplicates = read_shard_requests(config.urls, shard)
    completed = {"records": len(requests), "records_sha256": records_digest(requests), **result_options(config)}
    marker = read_marker(files.done)
    if marker == completed and not config.retry_failed and files.stats.exists():
        return {**json.loads(files.stats.read_text()), "already_complete": True}
    out.mkdir(parents=True, exist_ok=True)
    files.folder.mkdir(parents=True, exist_ok=True)
    check_same_options(files, result_options(config))
    partial = out / PARTIAL_DIR / shard.name
    remove_stale_temporaries(out, requests, partial, files)
    partial.mkdir(parents=True, exist_ok=True)
    files.done.unlink(missing_ok=True)
    journal = Journal(files.journal)
    already_done, todo = plan_shard(requests, journal.load(), out, config.retry_failed, journal.read)
    started = time.monotonic()
    try:
        transfer, samples, rejected = asyncio.run(fetch_articles(config, todo, out, partial, journal))
    finally:
        journal.close()
    elapsed = time.monotonic() - started
    counts = dict.fromkeys(STATUSES, 0)

    def rows_in_input_order() -> Iterator[dict]:
        entries = journal.load()
        for request in requests:
            row = journal.read(entries[request.pair_id])
            counts[row["status"]] += 1
            if request.pair_id in already_done:
                samples.add(row)
            yield row

    try:
        write_index(rows_in_input_order(), files.parquet)
    finally:
        journal.close()
    stats = {
        "shard": shard.name,
        "urls": str(config.urls),
        "figures": len(requests),
        "duplicates_skipped": duplicates,
        "counts": counts,
        "this_run": {
            "fetched": len(todo),
            "already_done": len(already_done),
            "elapsed_s": round(elapsed, 3),
            "figures_per_s": round(len(todo) / elapsed, 2) if elapsed > 0 else None,
            "bytes": transfer.bytes,
            "bytes_per_s": round(transfer.bytes / elapsed, 1) if elapsed > 0 else None,
            "requests": transfer.requests,
            "retries": transfer.retries,
            "throttled": transfer.throttled,
            "rate_limit": transfer.rate_limit,
            "http_statuses": dict(sorted(transfer.by_status.items())),
        },
        "error_samples": samples.samples,
        "rejected_archive_members": [
            {"archive": url, "member": name, "reason": reason}
            for url, name, reason in rejected[:REJECTED_MEMBER_SAMPLES]
        ],
        "config": {k: v for k, v in asdict(config).items() if k != "progress"},
    }
    write_stats(files.stats, stats)
    os.sync()  # the figures written without their own fsync are durable before the shard says it is complete
    mark_done(files.done, completed)
    for folder in (partial, partial.parent):
        with contextlib.suppress(OSError):  # still in use by another shard, or not empty
            folder.rmdir()
    return stats


def summary_table(stats: dict) -> str:
    """The end-of-run table: figures per status, then this run's speed and traffic."""
    run = stats["this_run"]
    total = max(stats["figures"], 1)
    if stats.get("already_complete"):
        head = f"{stats['shard']}: complete already, nothing fetched (--retry-failed retries failures); last run:"
    else:
        head = f"{stats['shard']}: {stats['figures']} figures ({run['fetched']} fetched now, {run['already_done']} already done)"
    lines = [
        head,
        f"{'status':<14}{'figures':>10}{'share':>9}",
    ]
    for status, count in stats["counts"].items():
        lines.append(f"{status:<14}{count:>10}{count / total:>9.1%}")
    rate = run.get("figures_per_s") or 0.0
    byte_rate = (run.get("bytes_per_s") or 0.0) / MiB
    lines.append(
        f"this run: {run['elapsed_s']:.1f} s, {rate:.1f} figures/s, {byte_rate:.2f} MB/s, "
        f"{run['requests']} requests, {run['retries']} retries ({run['throttled']} throttled)"
    )
    return "\n".join(lines)
