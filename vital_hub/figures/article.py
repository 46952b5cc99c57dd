"""One article's figures: every source tried in order, each article document looked up at most once.

`ArticleFetcher.fetch` takes the wanted figures of one article and returns their index rows. Sources, in order
(the figure layout of PMC's cloud bucket, https://pmc.ncbi.nlm.nih.gov/tools/pmcaws/): the bucket object
`PMC<id>.1/<file>`, then the `media_urls` of each version's metadata (newest first, md5-checked), then the JATS
figure id -> graphic href match, then the legacy tarball (downloaded once for all its wanted figures); a figure no
source gives is recorded as missing, corrupt, not permitted or an error, with the reasons.
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from vital_hub.figures.download import Fetched, HttpClient, etag_md5, md5_hex
from vital_hub.figures.resolve import (
    ArticleMetadata,
    BucketLayout,
    FigureRequest,
    jats_graphics,
    legacy_tarball_urls,
    match_media,
    parse_metadata,
    parse_version_listing,
    strip_image_extension,
)
from vital_hub.figures.safety import Rejected, read_wanted_members, verify_image
from vital_hub.io import atomic_path

if TYPE_CHECKING:
    from vital_hub.figures.options import FetchConfig

MiB = 1 << 20
MAX_DOCUMENT_BYTES = 64 * MiB  # metadata JSON, listings and JATS XML
REJECTED_MEMBER_SAMPLES = 20


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
