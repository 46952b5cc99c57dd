"""The Batch API backend: half the price, replies within 24 hours, nothing to keep running meanwhile.

`vital generate candidates --backend batch` builds the same requests as the online backend, writes the ones
not yet answered (and not already waiting in a submitted job) to JSONL files, uploads them with
`files.create(purpose="batch")`, starts `batches.create` jobs and stores the job ids in the cache database.
`vital generate collect --out DIR` later fetches finished jobs' output into the same request cache (custom_id
is the request key), marks each job collected only once all of its replies are stored (so a collect that dies
half-way simply fetches that job again, at no cost), then assembles the dataset from the cache. Items a job
answered with an error become `error` rows naming the error (`--retry-failed` submits them again); items of
an expired or cancelled job are submitted again by the next run.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vital_hub.generation.client import (
    ChatClient,
    ClientConfig,
    FatalAPIError,
    backoff_s,
    error_message,
    is_retryable,
    make_openai,
    retry_after,
)
from vital_hub.redaction import without_credentials

ENDPOINT = "/v1/chat/completions"
MAX_LINES = 50_000  # OpenAI's per-batch limits
MAX_BYTES = 190 * 1024 * 1024
FINAL_STATES = {"completed", "failed", "expired", "cancelled"}


def with_retries(call: Callable[[], Any], what: str, redact: Callable[[str], str], attempts: int = 6) -> Any:
    """A control-plane call (upload, create, retrieve, download) retried like chat requests are; a final error is
    passed through `redact` (the client's: the key, every credential of the environment, the URL's password)."""
    import openai

    for attempt in range(attempts):
        try:
            return call()
        except openai.APIStatusError as err:
            if not is_retryable(err.status_code):
                message = f"{what} failed: HTTP {err.status_code}: {error_message(err)}"
                raise FatalAPIError(redact(message)) from None
            wait = retry_after(err.response.headers)
        except (openai.APITimeoutError, openai.APIConnectionError):
            wait = None
        if attempt == attempts - 1:
            break
        time.sleep(wait if wait is not None else backoff_s(attempt))
    raise FatalAPIError(f"{what} failed after {attempts} attempts")


class BatchFiles:
    """JSONL input files of at most MAX_LINES lines and MAX_BYTES bytes, written as requests come."""

    def __init__(self, folder: Path, model: str, max_lines: int = MAX_LINES):
        self.folder, self.model, self.max_lines = folder, model, min(max_lines, MAX_LINES)
        self.stamp = f"{time.strftime('%Y%m%d%H%M%S')}-{uuid.uuid4().hex[:6]}"  # several writers a second
        self.files: list[tuple[Path, list[str]]] = []
        self._handle = None
        self._bytes = 0

    def add(self, key: str, request: dict) -> None:
        line = json.dumps(
            {"custom_id": key, "method": "POST", "url": ENDPOINT, "body": {"model": self.model, **request}}
        )
        size = len(line.encode("utf-8")) + 1
        if self._handle is None or len(self.files[-1][1]) >= self.max_lines or self._bytes + size > MAX_BYTES:
            self._open_next()
        self._handle.write(line + "\n")
        self._bytes += size
        self.files[-1][1].append(key)

    def _open_next(self) -> None:
        self.close()
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"input-{self.stamp}-{len(self.files):04d}.jsonl"
        self._handle = open(path, "w", encoding="utf-8")
        self._bytes = 0
        self.files.append((path, []))

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None


def submit(client: ChatClient, files: BatchFiles) -> list[str]:
    """Upload each input file and start a batch job on it; job ids go to the cache database at once."""
    api = make_openai(client.config, asynchronous=False)
    batch_ids = []
    for path, keys in files.files:
        uploaded = with_retries(
            lambda p=path: api.files.create(file=(p.name, p.read_bytes()), purpose="batch"),
            f"upload {path.name}",
            client.redact,
        )
        job = with_retries(
            lambda u=uploaded: api.batches.create(input_file_id=u.id, endpoint=ENDPOINT, completion_window="24h"),
            f"create batch for {path.name}",
            client.redact,
        )
        client.cache.add_batch_job(job.id, uploaded.id, keys, job.status)
        batch_ids.append(job.id)
        print(f"submitted batch {job.id}: {len(keys)} requests ({path.name})")
    return batch_ids


def run_batch_job(job, client: ChatClient) -> dict:
    """Rows for what is cached; new batch jobs for what is neither cached nor waiting; the dataset when done."""
    from vital_hub.generation.candidate_rows import PartWriter
    from vital_hub.generation.candidates import finish

    cache = client.cache
    if job.config.retry_failed:
        print(f"{cache.clear_failures()} failed batch items will be submitted again")
    waiting_keys = {key for j in cache.batch_jobs(pending_only=True) for key in j["keys"]}
    writer = PartWriter(job.folder, job.config.flush_rows)
    files = BatchFiles(job.folder.root / "batches", job.config.model, job.config.batch_max_requests)
    waiting = 0
    try:
        for row, request in pending_requests(job):
            key = client.key_of(request) if request is not None else None
            stored = cache.get(key) if key is not None else None
            if request is None:
                writer.add(row)
            elif stored is not None:
                reply, source = stored
                writer.add(job.rows.answered(row, client.result_from_reply(key, reply, batch=source == "batch")))
            elif (failure := cache.failure(key)) is not None:
                writer.add(job.rows.failed(row, f"batch item failed: {failure}"))
            elif key in waiting_keys:
                waiting += 1
            elif (refused := client.unsendable(key, request)) is not None:
                writer.add(job.rows.failed(row, refused.error))
            else:
                files.add(key, request)
                waiting_keys.add(key)
                waiting += 1
    finally:
        files.close()
        writer.flush()
    if files.files:
        submit(client, files)
    return finish(job, client, writer, waiting=waiting)


def pending_requests(job):
    """(row, request or None) for every sample still to do, built figure by figure."""
    for pair_id, samples in job.pending():
        yield from job.requests_for(pair_id, samples)


def collect(out: str | Path, poll: bool = False, poll_interval_s: float = 60.0, base_url: str | None = None) -> dict:
    """Fetch finished jobs' replies into the cache, then assemble the dataset when no job is left waiting.

    run.json keeps the endpoint without credentials, so an endpoint that needs `user:password@` is given again
    as `base_url` (it must name the recorded endpoint)."""
    from vital_hub.generation.candidate_rows import OutputFolder
    from vital_hub.generation.candidates import GenerateConfig, run_job

    folder = OutputFolder(out)
    if not folder.run_json.exists():
        raise SystemExit(f"{folder.root} has no run.json: start the job with `vital generate candidates` first")
    config = GenerateConfig.from_dict(json.loads(folder.run_json.read_text(encoding="utf-8"))["config"])
    if base_url is not None:
        if without_credentials(base_url) != without_credentials(config.base_url):
            raise SystemExit(
                f"--base-url {without_credentials(base_url)} is not the endpoint these jobs were submitted to "
                f"({without_credentials(config.base_url) or 'OPENAI_BASE_URL or OpenAI'})"
            )
        config.base_url = base_url
    client_config = config.client_config(config.model, str(folder.cache_path))
    counts = {"collected_jobs": 0, "stored": 0, "failed_items": 0, "still_waiting_jobs": 0}
    while True:
        pending = collect_once(client_config, counts)
        if not pending or not poll:
            break
        time.sleep(poll_interval_s)
    counts["still_waiting_jobs"] = pending
    print(f"collect: {counts}")
    if pending == 0:
        config.backend = "batch"
        counts["candidates"] = run_job(config)
    return counts


def collect_once(client_config: ClientConfig, counts: dict) -> int:
    """One pass over uncollected jobs; returns how many are still running."""
    client = ChatClient(client_config)
    api = make_openai(client_config, asynchronous=False)
    still_running = 0
    try:
        for entry in client.cache.batch_jobs(pending_only=True):
            batch = with_retries(
                lambda e=entry: api.batches.retrieve(e["batch_id"]),
                f"retrieve {entry['batch_id']}",
                client.redact,
            )
            if batch.status not in FINAL_STATES:
                client.cache.mark_batch(entry["batch_id"], batch.status)
                still_running += 1
                continue
            if batch.output_file_id:
                stored, failed = store_output(api, client, batch.output_file_id)
                counts["stored"] += stored
                counts["failed_items"] += failed
            if batch.error_file_id:
                counts["failed_items"] += store_errors(api, client, batch.error_file_id)
            client.cache.mark_batch(entry["batch_id"], batch.status, collected=True)
            counts["collected_jobs"] += 1
    finally:
        client.close()
    return still_running


def store_output(api, client: ChatClient, file_id: str) -> tuple[int, int]:
    text = with_retries(lambda: api.files.content(file_id).text, f"download {file_id}", client.redact)
    stored = failed = 0
    for line in text.splitlines():
        if not line.strip():
            continue
        item = json.loads(line)
        response = item.get("response") or {}
        body = response.get("body")
        if response.get("status_code") == 200 and isinstance(body, dict) and body.get("choices"):
            client.store(item["custom_id"], body, source="batch")
            stored += 1
        else:
            client.store_failure(item["custom_id"], item_error(item))
            failed += 1
    return stored, failed


def store_errors(api, client: ChatClient, file_id: str) -> int:
    text = with_retries(lambda: api.files.content(file_id).text, f"download {file_id}", client.redact)
    items = [json.loads(line) for line in text.splitlines() if line.strip()]
    for item in items:
        client.store_failure(item["custom_id"], item_error(item))
    return len(items)


def item_error(item: dict) -> str:
    """The message of a failed batch item, from its `error` or its non-200 response body."""
    error = item.get("error") or {}
    if error.get("message"):
        return f"{error.get('code') or 'error'}: {error['message']}"
    response = item.get("response") or {}
    body = response.get("body") or {}
    inner = body.get("error") if isinstance(body, dict) else None
    message = inner.get("message") if isinstance(inner, dict) else None
    return f"HTTP {response.get('status_code')}: {message or 'no reply'}"
