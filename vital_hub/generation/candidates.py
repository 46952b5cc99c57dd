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
without a readable image become `error` rows; nothing is dropped. The rows, their parts and the dataset's shards
are made and written by `vital_hub.generation.candidate_rows`.
"""

from __future__ import annotations

import asyncio
import json
import threading
from dataclasses import dataclass, field, fields

from vital_hub.generation.candidate_rows import OutputFolder, PartWriter, RowMaker, candidate_id, write_dataset
from vital_hub.generation.client import ChatClient, ProgressBar, ServerOptions
from vital_hub.generation.figure_input import normalise_figure, open_figure_source
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
from vital_hub.io import atomic_path, sha256_file, write_json_atomic

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
