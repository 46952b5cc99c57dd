"""A candidate generation job: figures in, the `candidates` dataset out, resumable by re-running it.

Where the work is kept while a job runs (all under `--out`):

    cache.sqlite            every reply (and Batch API job ids), committed as it arrives
    .parts/part-*.parquet   finished rows, flushed every few hundred rows (atomic renames)
    run.json                the job's identity (model, prompt version, seed, sampling...) checked on re-runs
    prompts/<version>.txt   the system prompt of that prompt version
    data/candidates/*.parquet + README.md   the dataset, written when every figure has its rows

A killed job is resumed by running the same command: rows already in parts or shards are skipped, requests
already answered come from the cache, and only the rest is sent. Rows that ended in an error are retried.
One row per (figure, sample) always: unparsable replies become `unparsed` rows with their raw text, figures
without a readable image become `error` rows; nothing is dropped.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from dataclasses import dataclass, field, fields
from pathlib import Path

from vital_hub.generation.client import ChatClient, ChatResult, ProgressBar, ServerOptions
from vital_hub.generation.figure_input import normalise_figure, open_figure_source
from vital_hub.generation.parse import parse_reply
from vital_hub.generation.pricing import load_prices
from vital_hub.generation.prompts import (
    ImageError,
    PromptBuilder,
    PromptOptions,
    get_prompt_set,
    load_demonstrations,
    missing_modalities,
    prompt_set_from_file,
    request_seed,
)
from vital_hub.io import atomic_path, download_checksums, sha256_file, write_card_config, write_json_atomic
from vital_hub.schema import DOMAINS

CONFIG_NAME = "candidates"
STATUS_RANK = {"ok": 2, "unparsed": 1, "error": 0}
MODES = ("conversation", "dual-answer")
BACKENDS = ("online", "batch")
# Fields whose change would make new rows incomparable with the ones already in --out.
IDENTITY_FIELDS = (
    "model", "mode", "prompt_version", "seed", "sampling", "detail", "max_image_side", "demo_images", "send_seed",
    "min_rounds", "demos_sha256",
)  # fmt: skip


@dataclass
class GenerateConfig(ServerOptions):
    figures: str = field(metadata={"help": "figures dataset (Hub repo id or folder) or a folder of <pair_id>.jpg"})
    out: str = field(metadata={"help": "output folder (dataset + cache + work files)"})
    model: str = field(metadata={"help": "model (Azure: deployment) name"})
    demos: str | None = field(default=None, metadata={"help": "demonstration pool (clinician_demonstrations format)"})
    captions: str | None = field(default=None, metadata={"help": "LLaVA-Med captions JSON for a folder of JPEGs"})
    mode: str = field(default="conversation", metadata={"help": "conversation | dual-answer"})
    prompt_file: str | None = field(default=None, metadata={"help": "system prompt file replacing the built-in one"})
    samples: int = field(default=1, metadata={"help": "candidates per figure"})
    seed: int = field(default=0, metadata={"help": "run seed: demonstrations and API seed derive from it"})
    min_rounds: int = field(default=3, metadata={"help": "fewer complete rounds than this -> status unparsed"})
    limit: int | None = field(default=None, metadata={"help": "only the first N figures"})
    include_retracted: bool = field(
        default=False, metadata={"help": "also generate for figures of retracted articles (left out by default)"}
    )
    backend: str = field(default="online", metadata={"help": "online | batch (OpenAI Batch API)"})
    max_tokens: int = field(default=4096, metadata={"help": "completion budget per request (the paper: 4096)"})
    max_tokens_field: str = field(
        default="max_tokens", metadata={"help": "max_tokens | max_completion_tokens (OpenAI reasoning models)"}
    )
    temperature: float | None = field(default=None, metadata={"help": "None: the server default (as the paper)"})
    top_p: float | None = field(default=None, metadata={"help": "None: the server default"})
    detail: str | None = field(default=None, metadata={"help": "image detail: low | high | auto (None: default)"})
    max_image_side: int | None = field(default=None, metadata={"help": "downscale images larger than this (px)"})
    demo_images: str | None = field(default=None, metadata={"help": "folder of demonstration images to attach"})
    send_seed: bool = field(default=True, metadata={"help": "send the request seed as the API `seed` parameter"})
    prices: str | None = field(default=None, metadata={"help": "price table file (YAML/JSON) over the defaults"})
    retry_failed: bool = field(default=False, metadata={"help": "resubmit requests a Batch API job failed"})
    batch_max_requests: int = field(default=50_000, metadata={"help": "requests per Batch API job (OpenAI: 50,000)"})
    flush_rows: int = field(default=200, metadata={"help": "rows per work part written during the run"})
    shard_rows: int = field(default=20000, metadata={"help": "rows per parquet shard of the dataset"})

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        for name in ("samples", "flush_rows", "shard_rows", "batch_max_requests"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.min_rounds < 1:
            raise ValueError(f"min_rounds must be at least 1, got {self.min_rounds}")

    @classmethod
    def from_dict(cls, data: dict) -> GenerateConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown generation settings {unknown}; known: {sorted(known)}")
        return cls(**data)

    def prompt_options(self) -> PromptOptions:
        return PromptOptions(
            max_tokens=self.max_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            detail=self.detail,
            max_image_side=self.max_image_side,
            demo_images=self.demo_images,
            send_seed=self.send_seed,
            max_tokens_field=self.max_tokens_field,
        )


# ------------------------------------------------------------------------------------------------ rows


def candidate_schema():
    import pyarrow as pa

    turn = pa.struct([("from", pa.string()), ("value", pa.string())])
    dual = pa.struct([("question", pa.string()), ("answer_a", pa.string()), ("answer_b", pa.string())])
    return pa.schema(
        [
            ("candidate_id", pa.string()),
            ("pair_id", pa.string()),
            ("sample", pa.int32()),
            ("image", pa.string()),
            ("fig_label", pa.string()),
            ("caption", pa.string()),
            ("mentions", pa.list_(pa.string())),
            ("domain", pa.struct([(name, pa.bool_()) for name in DOMAINS])),
            ("conversations", pa.list_(turn)),
            ("dual_answers", pa.list_(dual)),
            ("status", pa.string()),
            ("raw_text", pa.string()),
            ("error", pa.string()),
            ("model", pa.string()),
            ("prompt_version", pa.string()),
            ("seed", pa.int64()),
            ("sampling", pa.string()),
            ("prompt_tokens", pa.int64()),
            ("completion_tokens", pa.int64()),
            ("cost_usd", pa.float64()),
            ("finish_reason", pa.string()),
        ]
    )


def candidate_id(pair_id: str, sample: int) -> str:
    return f"{pair_id}#{sample}"


@dataclass
class RowMaker:
    """Builds candidate rows; holds what every row of the job shares."""

    model: str
    mode: str
    prompt_version: str
    sampling: str
    min_rounds: int

    def base(self, figure: dict, sample: int, seed: int) -> dict:
        domain = figure.get("domain")
        return {
            "candidate_id": candidate_id(figure["pair_id"], sample),
            "pair_id": figure["pair_id"],
            "sample": sample,
            "image": f"{figure['pair_id']}.jpg",
            "fig_label": figure.get("fig_label"),
            "caption": figure.get("caption"),
            "mentions": list(figure.get("mentions") or []),
            "domain": None if domain is None else {name: domain.get(name) for name in DOMAINS},
            "conversations": [],
            "dual_answers": [],
            "status": "error",
            "raw_text": None,
            "error": None,
            "model": self.model,
            "prompt_version": self.prompt_version,
            "seed": seed,
            "sampling": self.sampling,
            "prompt_tokens": 0,
            "completion_tokens": 0,
            "cost_usd": None,
            "finish_reason": None,
        }

    def failed(self, row: dict, error: str) -> dict:
        return {**row, "status": "error", "error": error}

    def answered(self, row: dict, result: ChatResult) -> dict:
        row = {
            **row,
            "raw_text": result.text,
            "prompt_tokens": result.prompt_tokens,
            "completion_tokens": result.completion_tokens,
            "cost_usd": result.cost_usd,
            "finish_reason": result.finish_reason,
        }
        if not result.ok:
            return self.failed(row, result.error or "request failed")
        parsed = parse_reply(result.text, self.mode, self.min_rounds, result.finish_reason)
        row.update(status=parsed.status, conversations=parsed.conversations, dual_answers=parsed.dual_answers)
        row["error"] = parsed.problem
        return row


# ------------------------------------------------------------------------------------------------ storage


class OutputFolder:
    """The files of one job under --out (see the module docstring)."""

    def __init__(self, out: str | Path):
        self.root = Path(out)
        self.parts = self.root / ".parts"
        self.data = self.root / "data" / CONFIG_NAME
        self.cache_path = self.root / "cache.sqlite"
        self.run_json = self.root / "run.json"

    def part_files(self) -> list[Path]:
        return sorted(self.parts.glob("part-*.parquet")) if self.parts.exists() else []

    def shard_files(self) -> list[Path]:
        return sorted(self.data.glob("*.parquet")) if self.data.exists() else []

    def read_rows_table(self):
        """Every stored row, shards first then parts in the order written (later rows win ties)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        tables = [pq.read_table(path, schema=candidate_schema()) for path in self.shard_files() + self.part_files()]
        return pa.concat_tables(tables) if tables else candidate_schema().empty_table()

    def finished_ids(self) -> set[str]:
        """Candidates that need no more work: stored as ok or unparsed (error rows are retried)."""
        table = self.read_rows_table()
        ids, statuses = table["candidate_id"].to_pylist(), table["status"].to_pylist()
        return {i for i, s in zip(ids, statuses, strict=True) if s != "error"}


class PartWriter:
    """Finished rows go to small parquet parts so a killed run keeps them."""

    def __init__(self, folder: OutputFolder, flush_rows: int, flush_seconds: float = 30.0):
        self.folder, self.flush_rows, self.flush_seconds = folder, flush_rows, flush_seconds
        self.run_id = f"{time.strftime('%Y%m%d%H%M%S')}-{uuid.uuid4().hex[:6]}"
        self.rows: list[dict] = []
        self.count = 0
        self.last_flush = time.monotonic()
        self.status_counts: dict[str, int] = {}

    def add(self, row: dict) -> None:
        self.rows.append(row)
        self.status_counts[row["status"]] = self.status_counts.get(row["status"], 0) + 1
        if len(self.rows) >= self.flush_rows or time.monotonic() - self.last_flush > self.flush_seconds:
            self.flush()

    def flush(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not self.rows:
            return
        table = pa.Table.from_pylist(self.rows, schema=candidate_schema())
        final = self.folder.parts / f"part-{self.run_id}-{self.count:06d}.parquet"
        with atomic_path(final) as tmp:
            pq.write_table(table, tmp)
        self.rows, self.count, self.last_flush = [], self.count + 1, time.monotonic()


def best_rows(table, order: list[str]):
    """One row per candidate (ok over unparsed over error, later over earlier), in figure order then sample."""
    ids, statuses = table["candidate_id"].to_pylist(), table["status"].to_pylist()
    best: dict[str, int] = {}
    for index, (cid, status) in enumerate(zip(ids, statuses, strict=True)):
        kept = best.get(cid)
        if kept is None or STATUS_RANK[status] >= STATUS_RANK[statuses[kept]]:
            best[cid] = index
    position = {pair_id: n for n, pair_id in enumerate(order)}
    pair_ids, samples = table["pair_id"].to_pylist(), table["sample"].to_pylist()
    chosen = sorted(best.values(), key=lambda i: (position.get(pair_ids[i], len(order)), pair_ids[i], samples[i]))
    return table.take(chosen)


def write_dataset(folder: OutputFolder, order: list[str], shard_rows: int) -> dict[str, int]:
    """Merge shards and parts into the final shards + README; parts are deleted only once shards are written."""
    import pyarrow.parquet as pq

    parts = folder.part_files()
    old_shards = folder.shard_files()
    table = best_rows(folder.read_rows_table(), order)
    count = max(1, -(-table.num_rows // shard_rows))
    written = []
    for number in range(count):
        path = folder.data / f"train-{number:05d}-of-{count:05d}.parquet"
        with atomic_path(path) as tmp:
            pq.write_table(table.slice(number * shard_rows, shard_rows), tmp)
        written.append(path)
    for stale in old_shards:
        if stale not in written:
            stale.unlink(missing_ok=True)
    for part in parts:
        part.unlink(missing_ok=True)
    write_readme(folder, written)
    statuses = table["status"].to_pylist()
    return {status: statuses.count(status) for status in STATUS_RANK if status in statuses}


def write_readme(folder: OutputFolder, shards: list[Path]) -> None:
    """README.md whose YAML declares the `candidates` config, keeping any other configs already declared.

    The per-config `download_checksums` change whenever a shard does, so `datasets` does not serve a stale cache
    of an earlier build of the same folder (https://huggingface.co/docs/datasets/cache).
    """
    config = {"config_name": CONFIG_NAME, "data_files": [{"split": "train", "path": f"data/{CONFIG_NAME}/*.parquet"}]}
    info = {"config_name": CONFIG_NAME, "download_checksums": download_checksums(folder.root, shards)}
    model = "the model named in each row's `model` column"
    if folder.run_json.exists():
        model = f"`{json.loads(folder.run_json.read_text(encoding='utf-8'))['identity']['model']}`"
    with atomic_path(folder.root / TERMS_FILE) as tmp:
        tmp.write_text(TERMS.format(model=model), encoding="utf-8")
    defaults = {
        "pretty_name": "Candidate instruction data",
        "license": "other",
        "license_name": "model-output-provider-terms",
        "license_link": TERMS_FILE,
        "language": ["en"],
        "task_categories": ["image-text-to-text", "visual-question-answering"],
        "tags": ["biomedical", "medical", "synthetic", "vital-hub"],
    }
    write_card_config(folder.root / "README.md", config, info, DATASET_CARD, defaults=defaults)


TERMS_FILE = "LICENSE.md"
TERMS = """# Terms of this dataset

The conversations are the output of {model}, generated with `vital generate candidates` (vital-hub): their use
is governed by the terms of that model's provider (for a hosted model, its usage policy and terms of service;
for a self-hosted one, the model's licence). The figures they are about are PubMed Central Open Access figures,
each under its article's licence (https://pmc.ncbi.nlm.nih.gov/tools/openftlist/).
"""


DATASET_CARD = """
# Candidate instruction data

Generated by `vital generate candidates` (vital-hub). One row per (figure, sample); `conversations` is a LLaVA
conversation (`<image>` in the first human turn), `status` is `ok`, `unparsed` (raw reply kept in `raw_text`) or
`error`. The generating run's `run.json` (kept with the run, not published) records the model, prompt version,
seed and sampling parameters; terms of use: [LICENSE.md](LICENSE.md).
"""


# ------------------------------------------------------------------------------------------------ the job


@dataclass
class Job:
    """Everything a run needs, built once from the config."""

    config: GenerateConfig
    folder: OutputFolder
    builder: PromptBuilder
    rows: RowMaker
    source: object
    order: list[str]
    identity: dict
    source_lock: threading.Lock = field(default_factory=threading.Lock)
    retracted_left_out: int = 0

    @classmethod
    def prepare(cls, config: GenerateConfig) -> Job:
        folder = OutputFolder(config.out)
        prompt_set = (
            prompt_set_from_file(config.prompt_file, config.mode)
            if config.prompt_file
            else get_prompt_set(config.mode)
        )
        pool = load_demonstrations(config.demos) if config.demos else []
        if config.demos and (missing := missing_modalities(pool)):
            print(f"warning: {config.demos} has no demonstration for {missing}; requests will have fewer than 5")
        options = config.prompt_options()
        sampling = json.dumps(options.sampling(), sort_keys=True)
        rows = RowMaker(config.model, config.mode, prompt_set.version, sampling, config.min_rounds)
        source = open_figure_source(config.figures, config.captions)
        order = list(source.pair_ids())
        if not order:  # nothing to send: an error, not an empty dataset that looks like a finished run
            described = f"{config.figures} (captions {config.captions})" if config.captions else config.figures
            raise ValueError(f"{described}: no figures found to generate for")
        retracted = source.retracted_ids() if hasattr(source, "retracted_ids") else set()
        if retracted and not config.include_retracted:
            order = [pair_id for pair_id in order if pair_id not in retracted]
            print(f"left out {len(retracted)} figures of retracted articles (--include-retracted keeps them)")
        if config.limit is not None:
            order = order[: config.limit]
        identity = {
            "model": config.model,
            "mode": config.mode,
            "prompt_version": prompt_set.version,
            "seed": config.seed,
            "sampling": sampling,
            "detail": config.detail,
            "max_image_side": config.max_image_side,
            "demo_images": config.demo_images,
            "send_seed": config.send_seed,
            "min_rounds": config.min_rounds,
            "demos_sha256": sha256_file(config.demos) if config.demos else None,
        }
        job = cls(config, folder, PromptBuilder(prompt_set, pool, options), rows, source, order, identity)
        job.retracted_left_out = 0 if config.include_retracted else len(retracted)
        job.record_run(prompt_set.system)
        return job

    def record_run(self, system_prompt: str) -> None:
        """Write run.json on the first run; refuse to mix a different configuration into the same folder."""
        if self.folder.run_json.exists():
            before = json.loads(self.folder.run_json.read_text(encoding="utf-8")).get("identity", {})
            changed = [k for k in IDENTITY_FIELDS if k in before and before[k] != self.identity[k]]
            if changed:
                details = "; ".join(f"{k}: {before[k]!r} -> {self.identity[k]!r}" for k in changed)
                raise SystemExit(
                    f"{self.folder.root} holds candidates of another configuration ({details}); use a new --out folder"
                )
        settings = self.config.recorded_settings(leave_out=())  # the key variable's name stays: collect needs it
        write_json_atomic(self.folder.run_json, {"identity": self.identity, "config": settings})
        prompt_path = self.folder.root / "prompts" / f"{self.identity['prompt_version']}.txt"
        if not prompt_path.exists():
            with atomic_path(prompt_path) as tmp:
                tmp.write_text(system_prompt, encoding="utf-8")

    def pending(self) -> list[tuple[str, list[int]]]:
        """(pair_id, samples still to do) for every figure with work left, in figure order."""
        done = self.folder.finished_ids()
        work = []
        for pair_id in self.order:
            samples = [s for s in range(self.config.samples) if candidate_id(pair_id, s) not in done]
            if samples:
                work.append((pair_id, samples))
        return work

    def figure(self, pair_id: str) -> dict:
        with self.source_lock:  # figure stores cache decoded row groups: one reader at a time
            row = self.source.get(pair_id)
        return normalise_figure(row)  # never None: `order` holds only the source's own pair ids

    def requests_for(self, pair_id: str, samples: list[int]) -> list[tuple[dict, dict | None]]:
        """(base row, request or None when the image is unusable) per sample; the image is encoded once."""
        figure = self.figure(pair_id)
        url = problem = None
        if figure["image"] is None:
            problem = f"no usable image (figure status: {figure.get('image_status') or 'missing'})"
        else:
            try:
                url = self.builder.image_url(figure)
            except ImageError as err:
                problem = str(err)
        out = []
        for sample in samples:
            seed = request_seed(self.config.seed, pair_id, sample)
            row = self.rows.base(figure, sample, seed)
            if problem is None:
                out.append((row, self.builder.build(figure, seed, url)))
            else:
                out.append((self.rows.failed(row, problem), None))
        return out


def run_job(config: GenerateConfig) -> dict:
    """Run (or resume) a job; returns a summary dict (also printed)."""
    job = Job.prepare(config)
    prices = load_prices(config.prices) if config.prices else None
    client = ChatClient(config.client_config(config.model, str(job.folder.cache_path)), prices)
    try:
        if config.backend == "batch":
            from vital_hub.generation.batch import run_batch_job

            return run_batch_job(job, client)
        return run_online(job, client)
    finally:
        client.close()


def run_online(job: Job, client: ChatClient) -> dict:
    from vital_hub.generation.client import run_sync

    work = job.pending()
    writer = PartWriter(job.folder, job.config.flush_rows)
    total = sum(len(samples) for _, samples in work)
    already = len(job.order) * job.config.samples - total
    print(f"{len(job.order)} figures x {job.config.samples} samples: {already} done, {total} to generate")
    try:
        stopped = run_sync(generate_online(job, client, work, writer, total))
    except asyncio.CancelledError:
        stopped = True
    finally:
        writer.flush()
    if stopped:
        print(f"stopped: {sum(writer.status_counts.values())} rows kept; run the same command again to resume")
        print(f"usage: {client.stats.summary()}")
        return {"usage": client.stats.summary(), "this_run": dict(writer.status_counts), "interrupted": True}
    return finish(job, client, writer)


async def generate_online(job: Job, client: ChatClient, work: list, writer: PartWriter, total: int) -> bool:
    """Send every pending request; returns True when stopped early by SIGINT/SIGTERM.

    Figures are read and encoded in worker threads, a bounded window ahead of the requests in flight. The first
    SIGINT or SIGTERM stops new requests and waits for those in flight, so none of them is paid for twice on
    the re-run; a second one aborts at once.
    """
    progress = ProgressBar(total, f"candidates ({job.config.model})", client.stats)
    window = asyncio.Semaphore(max(2, job.config.concurrency * 2))
    stop = asyncio.Event()
    restore = install_stop_handlers(stop, asyncio.current_task())

    async def one_figure(pair_id: str, samples: list[int]) -> None:
        try:
            prepared = await asyncio.to_thread(job.requests_for, pair_id, samples)
            await asyncio.gather(*(one_sample(row, request) for row, request in prepared))
        finally:
            window.release()

    async def one_sample(row: dict, request: dict | None) -> None:
        if request is not None:
            row = job.rows.answered(row, await client.chat(request))
        writer.add(row)
        progress.update()

    try:
        async with asyncio.TaskGroup() as group:
            for pair_id, samples in work:
                await window.acquire()
                if stop.is_set():
                    break
                group.create_task(one_figure(pair_id, samples))
    except* Exception as failure:
        raise failure.exceptions[0] from None
    finally:
        restore()
        progress.close()
        await client.aclose()
    return stop.is_set()


def install_stop_handlers(stop: asyncio.Event, task: asyncio.Task | None):
    """First SIGINT/SIGTERM sets `stop`, the second cancels `task`; returns a function removing the handlers."""
    import signal

    loop = asyncio.get_running_loop()
    signals = (signal.SIGINT, signal.SIGTERM)

    def on_signal() -> None:
        if stop.is_set() and task is not None:
            task.cancel()
            return
        stop.set()
        print("\nstopping: waiting for the requests in flight (send the signal again to abort)", flush=True)

    installed = []
    for number in signals:
        try:
            loop.add_signal_handler(number, on_signal)
            installed.append(number)
        except (NotImplementedError, RuntimeError, ValueError):  # not the main thread, or no signal support
            pass
    return lambda: [loop.remove_signal_handler(number) for number in installed]


def finish(job: Job, client: ChatClient, writer: PartWriter, waiting: int = 0) -> dict:
    summary = {"usage": client.stats.summary(), "this_run": dict(writer.status_counts), "waiting_in_batches": waiting}
    summary["retracted_left_out"] = job.retracted_left_out
    if waiting == 0:
        summary["dataset"] = write_dataset(job.folder, job.order, job.config.shard_rows)
        summary["path"] = str(job.folder.data)
    print(f"usage: {summary['usage']}")
    if waiting:
        print(f"{waiting} requests wait in Batch API jobs: run `vital generate collect --out {job.folder.root}` later")
    else:
        print(f"candidates: {summary['dataset']} -> {summary['path']}")
    return summary
