"""Where a PMC figure lives: the input records, PMC's 2026 bucket layout, article metadata, JATS and legacy tarballs.

PMC removed the per-article tarballs that `llava_med_image_urls.jsonl` points at (August 2026). Today an article
version is a folder `PMC<id>.<N>/` of the public bucket `pmc-oa-opendata`, with `metadata/PMC<id>.<N>.json`
listing its media files (with md5) and `PMC<id>.<N>.xml` holding the JATS text that maps a figure id to the
file name of its graphic. This module knows those URLs and formats and nothing about HTTP, so the fetcher and
the fake server in the tests share one description of the layout.
"""

from __future__ import annotations

import json
import posixpath
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, unquote, urlencode, urlsplit

from vital_hub.io import iter_json_records
from vital_hub.schema import Location

DEFAULT_BUCKET = "https://pmc-oa-opendata.s3.amazonaws.com"
BUCKET_S3_PREFIX = "s3://pmc-oa-opendata/"
S3_NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"
XLINK_HREF = "{http://www.w3.org/1999/xlink}href"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".tif", ".tiff", ".bmp", ".webp")
LEGACY_PACKAGE_DIR = "/pub/pmc/oa_package/"
DEPRECATED_PACKAGE_DIR = "/pub/pmc/deprecated/oa_package/"

_PMCID = re.compile(r"^(?:PMC)?(\d+)$", re.IGNORECASE)
_VERSION_PREFIX = re.compile(r"^PMC\d+\.(\d+)/$")
_UNSAFE_ID = re.compile(r"[/\\\x00-\x1f]")


@dataclass(frozen=True, slots=True)
class FigureRequest:
    """One wanted figure: which article holds it, under which file name, and where to write it."""

    pair_id: str
    pmcid: str
    file: str
    tar_url: str | None = None

    @property
    def pmid(self) -> str | None:
        """`<PMID>_<fig id>`: the part before the first underscore, when it is a number."""
        head = self.pair_id.split("_", 1)[0]
        return head if head.isdigit() and "_" in self.pair_id else None

    @property
    def fig_id(self) -> str | None:
        return self.pair_id.split("_", 1)[1] if self.pmid else None

    @property
    def image_name(self) -> str:
        return f"{self.pair_id}.jpg"


def normalise_pmcid(value: str) -> str | None:
    match = _PMCID.match(str(value).strip())
    return f"PMC{int(match.group(1))}" if match else None


def parse_record(record: object, where: Location) -> FigureRequest:
    """A FigureRequest from either record format, or RecordError naming the file, record and reason.

    Legacy: `{"pmc_tar_url", "image_file_path": "PMC5201076/IJRI-26-469-g002.jpg", "pair_id"}`.
    New: `{"pmcid": "PMC5201076", "file": "IJRI-26-469-g002.jpg", "pair_id"}` (a `pmc_tar_url` is kept if given).
    """
    if not isinstance(record, dict):
        raise where.error(f"a record must be a JSON object, got {type(record).__name__}")
    pair_id = record.get("pair_id")
    if pair_id is None:
        raise where.error("no 'pair_id'")
    if not isinstance(pair_id, str):
        raise where.error(f"'pair_id' must be a string, got {type(pair_id).__name__} {pair_id!r}")
    if not pair_id.strip():
        raise where.error("empty 'pair_id'")
    if _UNSAFE_ID.search(pair_id) or pair_id.startswith(".") or len(pair_id) > 200:
        raise where.error("'pair_id' cannot be a file name (slashes, control characters or a leading dot)", pair_id)
    tar_url = record.get("pmc_tar_url")
    if tar_url is not None and (not isinstance(tar_url, str) or not urlsplit(tar_url).netloc):
        raise where.error(f"'pmc_tar_url' is not an absolute URL: {tar_url!r}", pair_id)
    if "file" in record or "pmcid" in record:
        pmcid, file = _new_format_fields(record, where, pair_id)
    elif "image_file_path" in record:
        pmcid, file = _legacy_fields(record, where, pair_id)
    else:
        raise where.error("neither 'image_file_path' (legacy format) nor 'pmcid' + 'file' (new format)", pair_id)
    return FigureRequest(pair_id=pair_id, pmcid=pmcid, file=file, tar_url=tar_url)


def _new_format_fields(record: dict, where: Location, pair_id: str) -> tuple[str, str]:
    pmcid = normalise_pmcid(str(record.get("pmcid", "")))
    if pmcid is None:
        raise where.error(f"'pmcid' is not a PMC id: {record.get('pmcid')!r}", pair_id)
    file = record.get("file")
    if not isinstance(file, str) or not file or "/" in file or file in (".", ".."):
        raise where.error(f"'file' must be a plain file name, got {file!r}", pair_id)
    return pmcid, file


def _legacy_fields(record: dict, where: Location, pair_id: str) -> tuple[str, str]:
    path = record.get("image_file_path")
    if not isinstance(path, str) or "/" not in path:
        raise where.error(f"'image_file_path' must look like 'PMC<id>/<file>', got {path!r}", pair_id)
    folder, file = path.rsplit("/", 1)
    pmcid = normalise_pmcid(folder.rsplit("/", 1)[-1])
    if pmcid is None and record.get("pmc_tar_url"):
        pmcid = normalise_pmcid(posixpath.basename(urlsplit(record["pmc_tar_url"]).path).split(".")[0])
    if pmcid is None:
        raise where.error(f"no PMC id in 'image_file_path' {path!r} or 'pmc_tar_url'", pair_id)
    if not file or file in (".", ".."):
        raise where.error(f"'image_file_path' has no file name: {path!r}", pair_id)
    return pmcid, file


def iter_requests(path: str | Path) -> Iterator[FigureRequest]:
    """Stream FigureRequests from a JSONL (or JSON array) file of either record format."""
    for where, record in iter_json_records(path):
        yield parse_record(record, where)


@dataclass(frozen=True)
class BucketLayout:
    """URLs of the PMC Open Access bucket (or a mirror or local server standing in for it)."""

    root: str = DEFAULT_BUCKET

    def __post_init__(self):
        object.__setattr__(self, "root", self.root.rstrip("/"))

    def versions_url(self, pmcid: str, continuation: str | None = None) -> str:
        query = {"list-type": "2", "prefix": f"{pmcid}.", "delimiter": "/"}
        if continuation:
            query["continuation-token"] = continuation
        return f"{self.root}/?{urlencode(query)}"

    def file_url(self, pmcid: str, version: int, file: str) -> str:
        return f"{self.root}/{pmcid}.{version}/{quote(file, safe='')}"

    def metadata_url(self, pmcid: str, version: int) -> str:
        return f"{self.root}/metadata/{pmcid}.{version}.json"

    def metadata_urls(self, pmcid: str, version: int) -> tuple[str, str]:
        """Where a version's metadata is: `metadata/`, then the copy in the version folder."""
        return self.metadata_url(pmcid, version), f"{self.root}/{pmcid}.{version}/{pmcid}.{version}.json"

    def jats_url(self, pmcid: str, version: int) -> str:
        return f"{self.root}/{pmcid}.{version}/{pmcid}.{version}.xml"

    def from_s3(self, uri: str) -> str:
        """`s3://pmc-oa-opendata/PMC1.1/gr1.jpg?md5=...` -> the same object under this root (query dropped)."""
        key = uri[len(BUCKET_S3_PREFIX) :] if uri.startswith(BUCKET_S3_PREFIX) else urlsplit(uri).path.lstrip("/")
        key = key.split("?", 1)[0]
        return f"{self.root}/{quote(unquote(key), safe='/')}"


def legacy_tarball_urls(tar_url: str, legacy_base: str | None) -> list[str]:
    """The tarball URL (scheme and host replaced by `legacy_base` when given), then its `deprecated/` twin.

    PMC kept the packages under `/pub/pmc/deprecated/oa_package/` for a few months before removing them; mirrors
    and old snapshots may use either path.
    """
    parts = urlsplit(tar_url)
    root = legacy_base.rstrip("/") if legacy_base else f"{parts.scheme}://{parts.netloc}"
    path = parts.path
    urls = [root + path]
    if LEGACY_PACKAGE_DIR in path:
        urls.append(root + path.replace(LEGACY_PACKAGE_DIR, DEPRECATED_PACKAGE_DIR, 1))
    return urls


@dataclass(frozen=True)
class VersionListing:
    versions: tuple[int, ...]
    next_token: str | None


def parse_version_listing(xml_bytes: bytes, pmcid: str) -> VersionListing:
    """Versions from a ListObjectsV2 answer for `prefix=PMC<id>.&delimiter=/`, newest first."""
    root = ET.fromstring(xml_bytes)
    versions = set()
    for prefix in root.iter(f"{S3_NS}Prefix"):
        text = prefix.text or ""
        match = _VERSION_PREFIX.match(text)
        if match and text.startswith(f"{pmcid}."):
            versions.add(int(match.group(1)))
    truncated = (root.findtext(f"{S3_NS}IsTruncated") or "").strip().lower() == "true"
    token = root.findtext(f"{S3_NS}NextContinuationToken") if truncated else None
    return VersionListing(tuple(sorted(versions, reverse=True)), token or None)


@dataclass(frozen=True)
class MediaFile:
    name: str
    url: str
    md5: str | None


@dataclass(frozen=True)
class ArticleMetadata:
    """What `metadata/PMC<id>.<N>.json` says about an article version."""

    version: int
    licence: str | None
    retracted: bool | None
    media: dict[str, MediaFile] = field(default_factory=dict)


def parse_metadata(raw: bytes, version: int, layout: BucketLayout) -> ArticleMetadata:
    data = json.loads(raw)
    if not isinstance(data, dict):
        raise ValueError("article metadata is not a JSON object")
    media = {}
    for uri in data.get("media_urls") or []:
        if not isinstance(uri, str):
            continue
        md5 = re.search(r"[?&]md5=([0-9a-fA-F]{32})", uri)
        name = unquote(uri.split("?", 1)[0].rsplit("/", 1)[-1])
        media[name] = MediaFile(name=name, url=layout.from_s3(uri), md5=md5.group(1).lower() if md5 else None)
    retracted = data.get("is_retracted")
    return ArticleMetadata(
        version=version,
        licence=data.get("license_code") or None,
        retracted=retracted if isinstance(retracted, bool) else None,
        media=media,
    )


def jats_graphics(raw: bytes) -> dict[str, list[str]]:
    """Figure id -> graphic hrefs, from an article's JATS XML, whatever namespaces the file declares.

    Python's expat refuses entity-expansion bombs and ElementTree never fetches external entities, so a hostile
    XML file can fail to parse but cannot explode.
    """
    root = ET.fromstring(raw)
    graphics: dict[str, list[str]] = {}
    for element in root.iter():
        if _local(element.tag) != "fig" or not element.get("id"):
            continue
        hrefs = [
            g.get(XLINK_HREF) or g.get("href")
            for g in element.iter()
            if _local(g.tag) == "graphic" and (g.get(XLINK_HREF) or g.get("href"))
        ]
        graphics.setdefault(element.get("id"), []).extend(hrefs)
    return graphics


def _local(tag: object) -> str:
    return tag.rsplit("}", 1)[-1] if isinstance(tag, str) else ""


def strip_image_extension(name: str) -> str:
    """`ijms.21.g002.jpg` -> `ijms.21.g002`; only a known image extension is removed, as stems may hold dots."""
    lower = name.lower()
    for extension in IMAGE_EXTENSIONS:
        if lower.endswith(extension):
            return name[: -len(extension)]
    return name


def match_media(href: str, names: list[str]) -> str | None:
    """The media file a JATS href points at: the same name, else the same stem, preferring a JPEG."""
    href = href.rsplit("/", 1)[-1]
    if href in names:
        return href
    stem = strip_image_extension(href)
    same_stem = [name for name in names if strip_image_extension(name) == stem]
    same_stem.sort(key=lambda name: (not name.lower().endswith((".jpg", ".jpeg")), name))
    return same_stem[0] if same_stem else None
