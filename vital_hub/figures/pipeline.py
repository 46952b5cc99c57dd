"""`vital fetch figures`: resolve, download, verify and index every wanted figure of one shard.

Each article is handled by one task (`vital_hub.figures.article.ArticleFetcher`: every source in order, each
article document looked up once); this module plans the shard, skips what an earlier run finished, runs the
tasks with a progress bar and writes the index and stats. Re-running the same command is the resume.
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
from dataclasses import asdict
from pathlib import Path

from vital_hub.figures.article import REJECTED_MEMBER_SAMPLES, ArticleFetcher, base_row
from vital_hub.figures.download import HttpClient
from vital_hub.figures.index import (
    STATUSES,
    ErrorSamples,
    Journal,
    JournalEntry,
    ShardFiles,
    mark_done,
    read_marker,
    write_index,
    write_stats,
)
from vital_hub.figures.options import RESULT_OPTIONS, FetchConfig, MiB, Shard
from vital_hub.figures.resolve import (
    FigureRequest,
    iter_requests,
)
from vital_hub.io import atomic_path
from vital_hub.schema import RecordError

PARTIAL_DIR = ".partial"
log = logging.getLogger(__name__)


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
