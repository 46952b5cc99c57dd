"""The rubric judge: every (question, answer) of the candidates scored 0-10 by a vision LLM.

    vital judge rubric --candidates cands/ --images figs/ --model gpt-4o --out judge/ [--prompt-file F]

Each answer is judged alone against a clinician-derived rubric, seeing the figure, its caption and in-text
mentions, the question and the answer; the reply's score is parsed robustly (see `parse_rubric_score`) and
replies without a usable score are kept as "unparsed", failed requests as "error", never dropped.
Requests go through the generation client, so its request cache, rate limits and retries apply: re-running the
same command resumes (answered units are skipped, failed ones retried, cached replies cost nothing). With
`--backend batch` the pending requests go to the Batch API; re-run the command later to collect the replies.

Output folder: `scores.jsonl` (one line per unit; the last line of a unit wins), `cache.sqlite`, `run.json`,
`summary.json` and `score_histogram.png`.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from vital_hub.generation.client import ServerOptions
from vital_hub.io import iter_jsonl_log, read_text, repair_tail, write_json_atomic
from vital_hub.preferences.items import (
    ImageResolver,
    Item,
    items_from_candidate_row,
    iter_candidate_rows,
    labelled_caption,
    load_items,
)
from vital_hub.schema import IMAGE_TOKEN, RecordError, mention_texts

RUBRIC_V1 = """You are a senior clinician reviewing training data for a medical vision-language assistant.
You will see a medical figure, its caption, sentences from the article that mention it, and one question with
one answer written about the figure. Judge how good this question-answer pair is as training material.

Weigh these criteria:
1. Relevance: the question targets what the figure and caption actually show.
2. Training value: the pair would teach an assistant something clinically worthwhile.
3. Responsiveness: the answer addresses the question that was asked.
4. Correctness: every medical statement in the answer is accurate; invented findings weigh heavily.
5. Usefulness: the answer gives information a clinician could act on or learn from.
6. Use of the image: the answer recognises what is visible and grounds its statements in it.
Also consider clarity, appropriate depth, and precise medical terminology.

Reply with the score alone on the first line, as one integer from 0 (unusable) to 10 (excellent).
Then explain briefly what limits the score."""

RUBRIC_PROMPTS = {"vital-rubric-v1": RUBRIC_V1}
ROUNDS = ("first", "all")
BACKENDS = ("online", "batch")
REFUSAL = re.compile(
    r"^\s*(i'?m sorry|i am sorry|sorry|i can(?:no|')t|i cannot|i am unable|i'm unable|as an ai)", re.IGNORECASE
)
NUMBER = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?(?![\w])")
LABELLED_SCORE = re.compile(r"\bscore\b(?:\s*(?:[:=]|is|of)\s*|\s*\n\s*)(-?\d+(?:\.\d+)?)", re.IGNORECASE)


def get_rubric_prompt(name: str) -> str:
    if name not in RUBRIC_PROMPTS:
        raise ValueError(f"unknown rubric prompt {name!r}; known: {sorted(RUBRIC_PROMPTS)}")
    return RUBRIC_PROMPTS[name]


def parse_rubric_score(text: str | None) -> float | None:
    """The score of a judge reply, or None when there is no usable one.

    The paper takes the first integer on the first line. Here: a number in 0-10 opening the first non-empty
    line ("7", "Score: 7/10", "7 8" -> 7, "7.5" -> 7.5); else an explicit "score: N" anywhere. A refusal
    ("I'm sorry...", "I cannot..."), an empty reply or a number outside 0-10 gives None.
    """
    if not text or not text.strip():
        return None
    first_line = next(line for line in text.splitlines() if line.strip())
    if REFUSAL.match(first_line):
        return None
    match = NUMBER.search(first_line.replace("*", ""))
    if match:
        return _in_range(match.group())
    labelled = LABELLED_SCORE.search(text.replace("*", ""))
    return _in_range(labelled.group(1)) if labelled else None


def _in_range(number: str) -> float | None:
    value = float(number)
    return value if 0 <= value <= 10 and math.isfinite(value) else None


@dataclass
class JudgeUnit:
    """One (question, answer) to score, with its figure context."""

    score_id: str
    candidate_id: str | None
    item_id: str | None
    side: str | None
    round: int
    pair_id: str
    question: str
    answer: str
    caption: str
    mentions: list[str]
    image: str | None = None
    image_bytes: bytes | None = field(default=None, repr=False)

    def as_item(self) -> Item:
        return Item(
            self.score_id, self.pair_id, self.question, self.answer, "", image=self.image, image_bytes=self.image_bytes
        )


def units_of_item(item: Item) -> Iterator[JudgeUnit]:
    for side in ("a", "b"):
        yield JudgeUnit(
            score_id=f"{item.item_id}#{side}",
            candidate_id=item.candidate_id,
            item_id=item.item_id,
            side=side,
            round=0,
            pair_id=item.pair_id,
            question=item.question,
            answer=getattr(item, f"answer_{side}"),
            caption=item.caption,
            mentions=item.mentions,
            image=item.image,
            image_bytes=item.image_bytes,
        )


def units_of_conversation(row: dict, rounds: str) -> Iterator[JudgeUnit]:
    """A single-answer candidate: each human/gpt round is one unit (only the first with rounds='first')."""
    if row.get("status", "ok") != "ok":
        return
    turns = row.get("conversations") or []
    for number in range(len(turns) // 2):
        if rounds == "first" and number:
            break
        question = " ".join(turns[2 * number]["value"].replace(IMAGE_TOKEN, " ").split())
        yield JudgeUnit(
            score_id=f"{row['candidate_id']}#r{number}",
            candidate_id=row["candidate_id"],
            item_id=None,
            side=None,
            round=number,
            pair_id=row["pair_id"],
            question=question,
            answer=turns[2 * number + 1]["value"].strip(),
            caption=labelled_caption(row),
            mentions=mention_texts(row.get("mentions")),
            image=row.get("image"),
        )


def load_units(source: str, rounds: str = "all", cache_dir: str | None = None) -> list[JudgeUnit]:
    """Units of an items file (both answers of each item) or of a candidates dataset (dual or single answer)."""
    if rounds not in ROUNDS:
        raise ValueError(f"unknown rounds {rounds!r}; known: {list(ROUNDS)}")
    if Path(source).is_file():
        return [unit for item in load_items(source) for unit in units_of_item(item)]
    units = []
    for row in iter_candidate_rows(source, cache_dir):
        if row.get("dual_answers"):
            units += [unit for item in items_from_candidate_row(row) for unit in units_of_item(item)]
        else:
            units += list(units_of_conversation(row, rounds))
    return units


def user_text(unit: JudgeUnit) -> str:
    parts = []
    if unit.caption:
        parts.append(f"Figure Caption:\n{unit.caption}")
    if unit.mentions:
        parts.append("Figure Context:\n\t- " + "\n\t- ".join(unit.mentions))
    parts.append(f"Question:\n{unit.question}\n\nAnswer:\n{unit.answer}")
    return "\n\n".join(parts)


def build_request(
    unit: JudgeUnit,
    system_prompt: str,
    image_url: str | None,
    max_tokens: int,
    temperature: float | None,
    detail: str | None,
) -> dict:
    from vital_hub.generation.prompts import image_part

    content: list[dict] = [{"type": "text", "text": user_text(unit)}]
    if image_url is not None:
        content.append(image_part(image_url, detail))
    request = {
        "messages": [{"role": "system", "content": system_prompt}, {"role": "user", "content": content}],
        "max_tokens": max_tokens,
    }
    if temperature is not None:
        request["temperature"] = temperature
    return request


# ---------------------------------------------------------------- the job


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


def read_scores(path: str | Path) -> list[dict]:
    """The current row of every unit in a scores file (the last line of a unit wins).

    A torn last line (a crash mid-write) is skipped and its unit judged again; a bad line elsewhere is an error.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "scores.jsonl"
    rows: dict[str, dict] = {}
    for number, row in iter_jsonl_log(path):
        rows[_checked_score(row, number, path)] = row
    return list(rows.values())


def _checked_score(row, number: int, path: Path) -> str:
    """The score_id of a scores line, or RecordError naming the line and what is wrong with it."""
    if not isinstance(row, dict) or not isinstance(row.get("score_id"), str) or not row["score_id"]:
        raise RecordError(f"line {number} has no 'score_id'", file=str(path))
    score = row.get("score")
    if score is not None and (isinstance(score, bool) or not isinstance(score, int | float)):
        raise RecordError(f"line {number}: 'score' must be a number or null, got {score!r}", file=str(path))
    for key in ("question", "answer", "pair_id", "caption"):
        if row.get(key) is not None and not isinstance(row[key], str):
            raise RecordError(f"line {number}: {key!r} must be text, got {type(row[key]).__name__}", file=str(path))
    return row["score_id"]


class ScoreLog:
    """scores.jsonl: rows appended chunk by chunk, each chunk flushed and fsynced."""

    def __init__(self, path: Path):
        self.path = path
        repair_tail(path)
        self.rows = {row["score_id"]: row for row in read_scores(path)} if path.exists() else {}

    def finished(self) -> set[str]:
        return {key for key, row in self.rows.items() if row["status"] in ("ok", "unparsed")}

    def append(self, rows: list[dict]) -> None:
        if not rows:
            return
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
            handle.flush()
            os.fsync(handle.fileno())
        self.rows.update({row["score_id"]: row for row in rows})


def score_row(unit: JudgeUnit, model: str, prompt_version: str, result=None, error: str | None = None) -> dict:
    """A scores.jsonl row from a ChatResult (or an error before sending)."""
    row = {k: v for k, v in asdict(unit).items() if k not in ("image_bytes", "mentions")}
    row["mention"] = "\n".join(unit.mentions)
    row.update(
        model=model,
        prompt_version=prompt_version,
        score=None,
        raw_text=None,
        error=error,
        cached=False,
        prompt_tokens=0,
        completion_tokens=0,
        cost_usd=None,
        status="error",
    )
    if result is not None:
        score = parse_rubric_score(result.text) if result.ok else None
        row.update(
            raw_text=result.text,
            error=result.error,
            cached=result.cached,
            prompt_tokens=result.prompt_tokens,
            completion_tokens=result.completion_tokens,
            cost_usd=result.cost_usd,
            status="error" if not result.ok else ("ok" if score is not None else "unparsed"),
            score=score,
        )
        if result.ok and score is None:
            row["error"] = "no score in 0-10 on the reply's first line or after 'score:'"
    return row


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
                    rows[unit.score_id] = score_row(unit, config.model, prompt_version, error=f"figure: {err}")
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
    reads to find it: the embedded bytes, the image path and the pair id.
    """
    from vital_hub.generation.prompts import ImageError, image_data_url

    image_url = None
    if config.send_images:
        key = (unit.image_bytes, unit.image, unit.pair_id)
        if key not in image_urls:
            try:
                image_urls[key] = image_data_url(resolver.bytes_for(unit.as_item()), config.image_max_side)
            except ImageError as err:
                image_urls[key] = err
        if isinstance(image_urls[key], ImageError):
            raise image_urls[key]
        image_url = image_urls[key]
    return build_request(unit, system_prompt, image_url, config.max_tokens, config.temperature, config.detail)


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


def summarise(rows: list[dict], total: int, waiting: int) -> dict:
    statuses = Counter(row["status"] for row in rows)
    levels = Counter(str(math.floor(row["score"])) for row in rows if row["status"] == "ok")
    return {
        "units": total,
        "scored": statuses.get("ok", 0),
        "unparsed": statuses.get("unparsed", 0),
        "errors": statuses.get("error", 0),
        "not_yet_judged": total - len(rows),
        "waiting_in_batch_jobs": waiting,
        "levels": dict(sorted(levels.items(), key=lambda kv: int(kv[0]))),
    }


def plot_scores(rows: list[dict], path: Path) -> None:
    scores = [row["score"] for row in rows if row["status"] == "ok"]
    if not scores:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 3.5))
    axes.hist(scores, bins=[x - 0.5 for x in range(12)], rwidth=0.85, color="#12355b")
    axes.set_xticks(range(11))
    axes.set_xlabel("rubric score")
    axes.set_ylabel("answers")
    axes.set_title(f"{len(scores)} answers scored ({len(rows) - len(scores)} unparsed or failed)")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
