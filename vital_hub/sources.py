"""The released source files: where each one comes from, how big it is, and its checksum.

Two origins: files of the Hub dataset `mao1207/BioMed-VITAL-instructions` (downloaded through `vital_hub.hub`, so
HF_ENDPOINT and HF_TOKEN apply) and Git LFS files of `microsoft/LLaVA-Med` served by GitHub's media host (the base
URL can be changed with --github-base or VITAL_GITHUB_MEDIA_BASE, e.g. for a mirror or a test server).

Every download streams to a hidden partial file, resumes it with an HTTP Range request when re-run, and is renamed to
the released name only after its size and sha256 match. Checksums the registry does not know (the BioMed-VITAL
files) are recorded in a lock file (`sources.lock.json` beside the files) on first download and enforced after that,
so a file replaced upstream, or corrupted on disk, is noticed.

The registry itself (names, origins, sizes, published checksums, groups) is `vital_hub.source_registry`; its names
are importable from here too. The command line (`vital sources list | fetch | verify`) is `vital_hub.sources_cli`.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from vital_hub.io import CHUNK, read_text, sha256_file, write_json_atomic
from vital_hub.source_registry import (
    DEFAULT_GROUP,
    GITHUB_BASE_ENV,
    GITHUB_MEDIA_BASE,
    GITHUB_REPO,
    GROUPS,
    HUB_REPO,
    SOURCES,
    ChecksumMismatch,
    SourceError,
    SourceFile,
    expand_names,
    get_source,
    github_media_base,
)

LOCK_NAME = "sources.lock.json"
HUB_STAGING = ".vital-download"  # huggingface_hub keeps its resumable partial files here
LOCK_VERSION = 1
USER_AGENT = "vital-hub sources"

# The public names of the sources, wherever they are defined: callers import them from here.
__all__ = [
    "DEFAULT_GROUP",
    "GITHUB_BASE_ENV",
    "GITHUB_MEDIA_BASE",
    "GITHUB_REPO",
    "GROUPS",
    "HUB_REPO",
    "LOCK_NAME",
    "SOURCES",
    "ChecksumMismatch",
    "FetchResult",
    "SourceError",
    "SourceFile",
    "check_source_file",
    "download_from_hub",
    "download_url",
    "expand_names",
    "expected_checksum",
    "fetch_source",
    "get_source",
    "github_media_base",
    "partial_path",
    "read_lock",
    "record_in_lock",
    "sha256_and_size",
    "verify_folder",
]


# ---- lock file


def read_lock(path: Path) -> dict:
    """The lock file's {name: {sha256, size, ...}}; empty when it does not exist yet."""
    if not path.exists() and not path.is_symlink():  # a link that leads nowhere is an error, not "no lock yet"
        return {}
    try:
        data = json.loads(read_text(path))
    except json.JSONDecodeError as err:
        raise SourceError(f"{path}: lock file is not valid JSON ({err.msg}); fix or delete it") from err
    files = data.get("files") if isinstance(data, dict) else None
    if not isinstance(files, dict):
        raise SourceError(f"{path}: lock file has no 'files' mapping; fix or delete it")
    return files


def record_in_lock(path: Path, name: str, sha256: str, size: int, origin: str) -> None:
    """Add or confirm one file in the lock. A recorded checksum is never silently replaced."""
    files = read_lock(path)
    previous = files.get(name)
    if previous and previous.get("sha256") != sha256:
        raise ChecksumMismatch(name, previous.get("sha256"), sha256, f"recorded in {path}")
    if previous:
        return
    files[name] = {
        "sha256": sha256,
        "size": size,
        "origin": origin,
        "recorded": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    write_json_atomic(path, {"version": LOCK_VERSION, "files": dict(sorted(files.items()))})


def expected_checksum(
    name: str, lock: dict, lock_path: Path | None = None, source: SourceFile | None = None
) -> tuple[str | None, str]:
    """The sha256 a file must have and where that value comes from (the registry wins over the lock)."""
    source = source or SOURCES.get(name)
    if source is not None and source.sha256:
        return source.sha256, "registry"
    entry = lock.get(name)
    if entry and entry.get("sha256"):
        return entry["sha256"], f"recorded in {lock_path or LOCK_NAME}"
    return None, "not known"


def sha256_and_size(path: Path, desc: str | None = None) -> tuple[str, int]:
    return sha256_file(path, desc), path.stat().st_size


def check_source_file(path: str | Path, allow_unverified: bool = False, lock_path: str | Path | None = None) -> dict:
    """Size and sha256 of a source file, checked against the registry (or the lock file beside it).

    Used by `vital build instructions`. Returns {"size", "sha256", "verified"}: `verified` is True when a known
    checksum matched. The result depends only on the file and the lock, so builds stay reproducible; a mismatch
    raises ChecksumMismatch unless `allow_unverified`, which only warns."""
    path = Path(path)
    if not path.is_file():
        raise SourceError(f"{path}: source file not found (fetch it with `vital sources fetch --dir {path.parent}`)")
    lock_path = Path(lock_path) if lock_path else path.parent / LOCK_NAME
    expected, where = expected_checksum(path.name, read_lock(lock_path), lock_path)
    sha256, size = sha256_and_size(path)
    matched = _verify(path, sha256, size, SOURCES.get(path.name), expected, where, allow_unverified, "used anyway")
    return {"size": size, "sha256": sha256, "verified": expected is not None and matched}


# ---- downloads


def partial_path(final: Path) -> Path:
    return final.with_name(f".{final.name}.part")


def download_url(url: str, final: Path, expected_size: int | None = None, timeout: float = 60.0) -> Path:
    """Stream `url` to the partial file beside `final`, resuming it with a Range request; returns the partial file.

    A server that ignores Range (200 instead of 206) restarts the download from zero. A body larger than the
    expected size is cut off with an error instead of filling the disk."""
    from tqdm import tqdm

    part = partial_path(final)
    part.parent.mkdir(parents=True, exist_ok=True)
    have = part.stat().st_size if part.exists() else 0
    if expected_size is not None and have > expected_size:
        part.unlink()
        have = 0
    if expected_size is not None and have == expected_size:
        return part
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416 and have:
            return part  # the partial file already holds everything
        raise SourceError(f"{final.name}: download from {url} failed: HTTP {err.code} {err.reason}") from None
    except urllib.error.URLError as err:
        raise SourceError(f"{final.name}: cannot reach {url}: {err.reason}") from None
    with response:
        resumed = have and response.status == 206 and _range_start(response) == have
        if not resumed:
            have = 0
        total = _total_size(response, have) or expected_size
        mode = "ab" if resumed else "wb"
        with (
            open(part, mode) as handle,
            tqdm(total=total, initial=have, unit="B", unit_scale=True, desc=final.name) as bar,
        ):
            try:
                for chunk in iter(lambda: response.read(CHUNK), b""):
                    have += len(chunk)
                    if expected_size is not None and have > expected_size:
                        raise SourceError(f"{final.name}: {url} sent more than the expected {expected_size:,} bytes")
                    handle.write(chunk)
                    bar.update(len(chunk))
            except (OSError, http.client.HTTPException) as err:
                raise SourceError(_interrupted(final, have, total, err)) from None
    if total is not None and have < total:
        raise SourceError(_interrupted(final, have, total, "connection closed early"))
    return part


def _interrupted(final: Path, have: int, total: int | None, why) -> str:
    of = f" of {total:,}" if total else ""
    return f"{final.name}: download interrupted after {have:,}{of} bytes ({why}); re-run the same command to resume"


def _range_start(response) -> int | None:
    content_range = response.headers.get("Content-Range", "")
    try:
        return int(content_range.split()[1].split("-")[0])
    except (IndexError, ValueError):
        return None


def _total_size(response, have: int) -> int | None:
    content_range = response.headers.get("Content-Range", "")
    if "/" in content_range and content_range.rsplit("/", 1)[1].isdigit():
        return int(content_range.rsplit("/", 1)[1])
    length = response.headers.get("Content-Length")
    return int(length) + have if length and length.isdigit() else None


def download_from_hub(source: SourceFile, final: Path, revision: str | None = None) -> Path:
    """Download a Hub file into a staging folder beside `final` (huggingface_hub resumes it there)."""
    from vital_hub.hub import HubError, download_file

    staging = final.parent / HUB_STAGING
    try:
        return download_file(HUB_REPO, source.path, staging, repo_type="dataset", revision=revision)
    except HubError as err:
        raise SourceError(f"{final.name}: {err}") from None


@dataclass
class FetchResult:
    name: str
    path: Path
    sha256: str
    size: int
    status: str  # "downloaded", "present", "unverified"


def fetch_source(
    source: SourceFile,
    folder: Path,
    lock_path: Path,
    allow_unverified: bool = False,
    github_base: str | None = None,
    revision: str | None = None,
) -> FetchResult:
    """Make `folder/<name>` the verified released file: download it if absent, check size and sha256, record an
    unknown checksum in the lock. A file that fails the check never takes the released name (unless
    `allow_unverified`), so a later build cannot pick it up by mistake."""
    final = folder / source.name
    lock = read_lock(lock_path)
    expected, where = expected_checksum(source.name, lock, lock_path, source)
    if final.exists():
        sha256, size = sha256_and_size(final, desc=f"checking {source.name}")
        _verify(final, sha256, size, source, expected, where, allow_unverified)
        _record(lock_path, source, sha256, size, expected, allow_unverified)
        return FetchResult(source.name, final, sha256, size, "present")
    if source.origin == "hub":
        fetched = download_from_hub(source, final, revision=revision)
    else:
        fetched = download_url(source.url(github_base), final, expected_size=source.size)
    sha256, size = sha256_and_size(fetched, desc=f"checking {source.name}")
    try:
        _verify(final, sha256, size, source, expected, where, allow_unverified)
    except SourceError:
        fetched.unlink(missing_ok=True)  # complete but wrong: resuming it could never succeed
        _remove_staging(final, source)
        raise
    os.replace(fetched, final)
    _remove_staging(final, source)
    _record(lock_path, source, sha256, size, expected, allow_unverified)
    status = "downloaded" if expected is None or expected == sha256 else "unverified"
    return FetchResult(source.name, final, sha256, size, status)


def _remove_staging(final: Path, source: SourceFile) -> None:
    if source.origin == "hub":
        shutil.rmtree(final.parent / HUB_STAGING, ignore_errors=True)


def _verify(path, sha256, size, source, expected, where, allow_unverified, accepted_as="kept") -> bool:
    """True when the file matches its known checksum and registry size (`source` may be None: not registered).
    A mismatch raises, or with `allow_unverified` is reported as accepted and returns False."""
    problem = None
    if expected is not None and sha256 != expected:
        problem = ChecksumMismatch(path, expected, sha256, where)
    elif source is not None and source.size is not None and size != source.size:
        problem = SourceError(f"{path}: {size:,} bytes, expected {source.size:,} (registry)")
    if problem is None:
        return True
    if not allow_unverified:
        raise problem
    print(f"warning: {problem} ({accepted_as}: --allow-unverified)", file=sys.stderr)
    return False


def _record(lock_path: Path, source: SourceFile, sha256: str, size: int, expected: str | None, allow: bool) -> None:
    """Record what was verified (or first seen); a file accepted despite a mismatch is not recorded."""
    if expected is not None and sha256 != expected and allow:
        return
    record_in_lock(lock_path, source.name, sha256, size, f"{source.origin}:{source.repo}/{source.path}")


def verify_folder(folder: Path, lock_path: Path, names: list[str] | None = None) -> list[tuple[str, str, str]]:
    """(name, status, detail) for each registered file: ok, mismatch, unverified (checksum not known) or missing."""
    lock = read_lock(lock_path)
    rows = []
    for source in expand_names(names or ["all"]):
        path = folder / source.name
        if not path.exists():
            rows.append((source.name, "missing", ""))
            continue
        expected, where = expected_checksum(source.name, lock, lock_path)
        sha256, size = sha256_and_size(path, desc=f"checking {source.name}")
        if source.size is not None and size != source.size:
            rows.append((source.name, "mismatch", f"{size:,} bytes, expected {source.size:,}"))
        elif expected is None:
            rows.append((source.name, "unverified", f"sha256 {sha256} not known and not in the lock"))
        elif sha256 != expected:
            rows.append((source.name, "mismatch", f"sha256 {sha256}, expected {expected} ({where})"))
        else:
            rows.append((source.name, "ok", f"sha256 matches ({where})"))
    return rows
