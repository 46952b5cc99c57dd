"""The rubric judge: every (question, answer) of the candidates scored 0-10 by a vision LLM.

    vital judge rubric --candidates cands/ --images figs/ --model gpt-4o --out judge/ [--prompt-file F]

Each answer is judged alone against a clinician-derived rubric, seeing the figure, its caption and in-text
mentions, the question and the answer; the reply's score is parsed robustly (see `rubric.parse_rubric_score`) and
replies without a usable score are kept as "unparsed", failed requests as "error", never dropped.
Requests go through the generation client, so its request cache, rate limits and retries apply: re-running the
same command resumes (answered units are skipped, failed ones retried, cached replies cost nothing). With
`--backend batch` the pending requests go to the Batch API; re-run the command later to collect the replies.

Output folder: `scores.jsonl` (one line per unit; the last line of a unit wins), `cache.sqlite`, `run.json`,
`summary.json` and `score_histogram.png`. The rubric is in `rubric`, the units judged and their requests in
`judge_units`, the scores file and summary in `judge_scores`.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from vital_hub.generation.client import ServerOptions
from vital_hub.io import read_text, write_json_atomic
from vital_hub.preferences.items import ImageResolver
from vital_hub.preferences.judge_scores import ScoreLog, plot_scores, score_row, summarise
from vital_hub.preferences.judge_units import ROUNDS, JudgeUnit, build_request, load_units
from vital_hub.preferences.rubric import RUBRIC_PROMPTS, get_rubric_prompt

BACKENDS = ("online", "batch")


@dataclass
class JudgeConfig(ServerOptions):
    candidates: str = field(metadata={"help": "items JSON/JSONL file, candidates folder or Hub repo id"})
    out: str = field(metadata={"help": "output folder (scores.jsonl, cache.sqlite, run.json, summary.json)"})
    model: str = field(metadata={"help": "judge model name (a vision model unless --no-send-images)"})
    prompt: str = field(default="vital-rubric-v1", metadata={"help": f"rubric prompt: {sorted(RUBRIC_PROMPTS)}"})
    prompt_file: str | None = field(default=None, metadata={"help": "system prompt from this file (overrides)"})
    images: str | None = field(default=None, metadata={"help": "folder of <pair_id>.jpg figures"})
    figures: str | None = field(default=None, metadata={"help": "figures dataset to look pictures up by pair_id"})
    send_images: bool = field(default=True, metadata={"help": "attach the figure (units without one fail)"})
    image_max_side: int = field(default=1024, metadata={"help": "downscale larger figures to this many pixels"})
    detail: str | None = field(default=None, metadata={"help": "image detail hint: low | high | auto"})
    rounds: str = field(default="all", metadata={"help": "single-answer candidates: first | all rounds"})
    max_tokens: int = field(default=512, metadata={"help": "reply length limit"})
    temperature: float | None = field(default=None, metadata={"help": "sampling temperature (server default)"})
    backend: str = field(default="online", metadata={"help": "online | batch (Batch API; re-run to collect)"})
    chunk_size: int = field(default=256, metadata={"help": "units answered before their scores are written"})
    limit: int | None = field(default=None, metadata={"help": "judge only the first N units (a dry run)"})

    def __post_init__(self):
        if self.rounds not in ROUNDS:
            raise ValueError(f"rounds must be one of {list(ROUNDS)}, got {self.rounds!r}")
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {list(BACKENDS)}, got {self.backend!r}")
        if self.prompt_file is None:
            get_rubric_prompt(self.prompt)
        if self.chunk_size < 1:
            raise ValueError("chunk_size must be at least 1")

    def system_prompt(self) -> tuple[str, str]:
        """(text, version): a file's text is versioned by its hash, so editing it never mixes runs."""
        if self.prompt_file:
            text = read_text(self.prompt_file).strip()
            return text, f"file:{_short_hash(text)}"
        text = get_rubric_prompt(self.prompt)
        return text, f"{self.prompt}:{_short_hash(text)}"


def _short_hash(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest()[:12]


def check_run(out: Path, config: JudgeConfig, prompt_version: str) -> None:
    """One output folder holds one judge: mixing models or prompts would make levels meaningless."""
    run_json = out / "run.json"
    if run_json.exists():
        previous = json.loads(run_json.read_text(encoding="utf-8"))
        for key, value in (("model", config.model), ("prompt_version", prompt_version)):
            if previous.get(key) != value:
                raise SystemExit(
                    f"{out} holds scores of {key} {previous.get(key)!r}, not {value!r}: use another --out"
                )
    settings = config.recorded_settings()
    write_json_atomic(run_json, {"model": config.model, "prompt_version": prompt_version, "config": settings})


def run_judge(config: JudgeConfig) -> dict:
    """Judge every pending unit; returns the summary also written to summary.json."""
    from vital_hub.generation.client import ChatClient
    from vital_hub.generation.prompts import ImageError

    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    system_prompt, prompt_version = config.system_prompt()
    check_run(out, config, prompt_version)
    units = load_units(config.candidates, config.rounds)[: config.limit]
    log = ScoreLog(out / "scores.jsonl")
    done = log.finished()
    pending = [unit for unit in units if unit.score_id not in done]
    resolver = ImageResolver(config.images, config.figures)
    client = ChatClient(config.client_config(config.model, str(Path(config.out) / "cache.sqlite")))
    waiting = 0
    try:
        if config.backend == "batch":
            from vital_hub.generation.batch import collect_once

            collect_once(client.config, Counter())
        for start in range(0, len(pending), config.chunk_size):
            chunk = pending[start : start + config.chunk_size]
            rows, requests, image_urls = {}, [], {}
            for unit in chunk:
                try:
                    request = request_for(unit, config, system_prompt, resolver, image_urls)
                except ImageError as err:
                    rows[unit.score_id] = score_row(unit, config.model, prompt_version, error=str(err))
                    continue
                requests.append((unit, request))
            if not requests:
                answered = []
            elif config.backend == "batch":
                answered, still_waiting = batch_answers(client, requests, out)
                waiting += still_waiting
            else:
                answered = zip(requests, client.chat_many([r for _, r in requests], desc="rubric judge"), strict=True)
            for (unit, _), result in answered:
                rows[unit.score_id] = score_row(unit, config.model, prompt_version, result)
            log.append([rows[unit.score_id] for unit in chunk if unit.score_id in rows])
    finally:
        client.close()
    summary = summarise([log.rows[u.score_id] for u in units if u.score_id in log.rows], len(units), waiting)
    summary["usage"] = client.stats.summary()
    write_json_atomic(out / "summary.json", summary)
    plot_scores([log.rows[u.score_id] for u in units if u.score_id in log.rows], out / "score_histogram.png")
    return summary


def request_for(
    unit: JudgeUnit, config: JudgeConfig, system_prompt: str, resolver: ImageResolver, image_urls: dict
) -> dict:
    """The chat request of one unit; ImageError when its figure is needed but missing or unreadable.

    Units share figures, so `image_urls` keeps each figure's data URL (or its ImageError) by what the resolver
    reads to find it: the embedded bytes, the image path and the pair id. The first unit of a figure that fails
    logs one line on stderr naming the file and why (a decompression bomb is refused from its header, never
    decoded).
    """
    from vital_hub.generation.prompts import ImageError

    image_url = None
    if config.send_images:
        key = (unit.image_bytes, unit.image, unit.pair_id)
        if key not in image_urls:
            image_urls[key] = figure_url(unit, resolver, config.image_max_side)
            if isinstance(image_urls[key], ImageError):
                print(
                    f"warning: {unit.score_id} (and any other unit of its figure): {image_urls[key]}; "
                    "not sent, scored as an error",
                    file=sys.stderr,
                    flush=True,
                )
        if isinstance(image_urls[key], ImageError):
            raise image_urls[key]
        image_url = image_urls[key]
    return build_request(unit, system_prompt, image_url, config.max_tokens, config.temperature, config.detail)


def figure_url(unit: JudgeUnit, resolver: ImageResolver, max_side: int):
    """The data URL of the unit's figure, or the ImageError saying which file failed and why."""
    from vital_hub.generation.prompts import ImageError, image_data_url

    data, path, _, why = resolver.diagnose(unit.as_item())
    if data is None:
        return ImageError(f"figure of {unit.pair_id}: {why}")
    try:
        return image_data_url(data, max_side)
    except ImageError as err:
        return ImageError(f"figure of {unit.pair_id}: {path or 'embedded image'}: {err}")


def batch_answers(client, requests: list[tuple[JudgeUnit, dict]], out: Path):
    """Cached replies now; the rest submitted as Batch API jobs (unless already waiting in one)."""
    from vital_hub.generation.batch import BatchFiles, submit

    waiting_keys = {key for job in client.cache.batch_jobs(pending_only=True) for key in job["keys"]}
    files = BatchFiles(out / "batches", client.config.model)
    answered, waiting = [], 0
    try:
        for unit, request in requests:
            key = client.key_of(request)
            stored = client.cache.get(key)
            if stored is not None:
                reply, source = stored
                answered.append(((unit, request), client.result_from_reply(key, reply, batch=source == "batch")))
                continue
            if (refused := client.unsendable(key, request)) is not None:
                answered.append(((unit, request), refused))
                continue
            waiting += 1
            if key not in waiting_keys:
                files.add(key, request)
                waiting_keys.add(key)
    finally:
        files.close()
    if files.files:
        submit(client, files)
    return answered, waiting
