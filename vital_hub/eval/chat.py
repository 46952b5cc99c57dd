"""Open visual chat on qa50: a judge scores the reference answer and the model's answer, and the model's relative
score is the mean of per-question ratios (model / reference) x 100, by question type, by domain and overall.

What the original script did not do, and this module does:
- the judge's reply is parsed robustly ("8 7", "8/10 7/10", "Assistant 1: 8 ... Assistant 2: 7", scores after a
  preamble); a reply with no readable pair is recorded as `unparsed` with the reason and counted, never replaced
  by a default score;
- a reference scored 0 is handled by an explicit policy (`exclude`: left out of the mean and counted; `floor`:
  the reference counts as 1) instead of dividing by zero;
- an optional second judgement with the answers swapped (`swap=True`) measures position bias and cancels it:
  the combined ratio of a question is (model_forward + model_swapped) / (reference_forward + reference_swapped);
- bootstrap confidence intervals over questions for every reported score.

Judgements are appended to `judgements.jsonl` in the output folder as they arrive; re-running resumes, and
requests hit the judge client's SQLite cache.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from vital_hub.eval.answer import image_data_url
from vital_hub.eval.judging import JudgeOptions, judge_and_log
from vital_hub.eval.records import (
    EvalQuestion,
    judgement_key,
    load_image,
    load_questions,
    read_answers,
    read_finished_judgements,
)
from vital_hub.eval.stats import bootstrap_ci, mean
from vital_hub.io import write_json_atomic
from vital_hub.schema import first_domain

DEFAULT_SYSTEM = "You are a careful and impartial reviewer of answers to questions about biomedical figures."
DEFAULT_INSTRUCTION = (
    "Two AI assistants answered the question above about a biomedical figure. The figure's caption and the "
    "passages of the article that cite it are given as context. Rate each answer for helpfulness, relevance, "
    "accuracy with respect to the context, and level of detail, on a scale of 1 to 10 where 10 is best. "
    "On the first line write only the two scores, for Assistant 1 and then Assistant 2, separated by a space. "
    "From the second line on, explain your ratings briefly. Judge the content only: neither the order in which "
    "the answers appear nor their length should change your scores."
)
ZERO_REFERENCE_POLICIES = ("exclude", "floor")
ORDERS = ("forward", "swapped")  # forward: reference is Assistant 1, as in LLaVA-Med; swapped: model first
DOMAIN_ORDER = ("chest_xray", "mri", "histology", "gross", "ct_scan")
MAX_SCORE = 10.0

NUMBER = r"(\d+(?:\.\d+)?)"
SCORE_TOKEN = re.compile(NUMBER + r"(?:\s*(?:/|out\s+of)\s*10(?:\.0+)?(?!\d))?", re.IGNORECASE)
ASSISTANT_LABEL = re.compile(r"\b(?:assistant|answer|response)\s*(?:#\s*)?[12]\b", re.IGNORECASE)
LABELED_SCORE = re.compile(
    r"\b(?:assistant|answer|response)\s*(?:#\s*)?([12])\b[^\d\n]{0,30}?[:=\-]\s*\**\s*" + NUMBER + r"(?![\d.]*\d)",
    re.IGNORECASE,
)
NEGATIVE = re.compile(r"(?:^|[\s:=(\[,*])-\d")  # "-1 5"; not the dash of "8-9" or of "Assistant 1 - 8"
REFUSAL = re.compile(r"\b(?:i'?m sorry|i cannot|i can'?t|unable to|as an ai)\b", re.IGNORECASE)
MARKUP = re.compile(r"[*#_`>|]")


@dataclass(frozen=True)
class ScorePair:
    first: float | None
    second: float | None
    status: str  # ok | unparsed
    reason: str | None = None


def _in_range(values: list[float]) -> bool:
    return all(0 <= value <= MAX_SCORE for value in values)


def _line_scores(line: str) -> tuple[list[float], int]:
    """Score tokens of a line and how many other words it has (labels and markup removed)."""
    cleaned = ASSISTANT_LABEL.sub(" ", MARKUP.sub(" ", line))
    values = [float(match.group(1)) for match in SCORE_TOKEN.finditer(cleaned)]
    rest = SCORE_TOKEN.sub(" ", cleaned)
    words = [
        word for word in re.split(r"[\s,;:()\[\]]+", rest) if word and word.lower() not in ("and", "scores", "score")
    ]
    return values, len(words)


def _labeled_scores(text: str) -> tuple[dict[str, float], bool]:
    """{"1": score, "2": score} from "Assistant N: <score>" labels, and whether a labeled score was negative."""
    labeled: dict[str, float] = {}
    negative = False
    for match in LABELED_SCORE.finditer(text):
        before = text[: match.start(2)].rstrip("* ")
        if before.endswith("-") and before[:-1].rstrip("* ").endswith((":", "=")):
            negative = True
        labeled.setdefault(match.group(1), float(match.group(2)))
    return labeled, negative


def parse_two_scores(text: str | None) -> ScorePair:
    """The (Assistant 1, Assistant 2) scores of a judge reply, or an `unparsed` result with the reason.

    Tried in order: the first non-empty line when it holds exactly two scores (what LLaVA-Med's own parser reads,
    so a numbered explanation below it cannot override it); "Assistant 1: 8 ... Assistant 2: 7" anywhere; the
    first later line made of two scores and at most three other words ("Scores: 8 7"). A negative score is never
    read as its absolute value: the reply is unparsed.
    """
    if text is None or not text.strip():
        return ScorePair(None, None, "unparsed", "empty reply")
    lines = [line for line in text.splitlines() if line.strip()]
    values, _ = _line_scores(lines[0])
    if len(values) == 2 and NEGATIVE.search(lines[0]):
        return ScorePair(None, None, "unparsed", "negative score")
    if len(values) == 2 and _in_range(values):
        return ScorePair(values[0], values[1], "ok")
    labeled, negative = _labeled_scores(text)
    if negative:
        return ScorePair(None, None, "unparsed", "negative score")
    if len(labeled) == 2:
        pair = [labeled["1"], labeled["2"]]
        if _in_range(pair):
            return ScorePair(pair[0], pair[1], "ok")
    out_of_range = len(values) == 2
    for line in lines[1:]:
        values, other_words = _line_scores(line)
        if len(values) != 2 or other_words > 3:
            continue
        if NEGATIVE.search(line):
            return ScorePair(None, None, "unparsed", "negative score")
        if not _in_range(values):
            out_of_range = True
            continue
        return ScorePair(values[0], values[1], "ok")
    if out_of_range:
        return ScorePair(None, None, "unparsed", f"scores outside 0-{MAX_SCORE:g}")
    if REFUSAL.search(text):
        return ScorePair(None, None, "unparsed", "refusal")
    if not SCORE_TOKEN.search(text):
        return ScorePair(None, None, "unparsed", "no scores found")
    return ScorePair(None, None, "unparsed", "no line with exactly two scores")


@dataclass
class ChatJudgeConfig(JudgeOptions):
    questions: str | None = field(default=None, metadata={"help": "qa50 question file (llava_med_eval_qa50_qa.jsonl)"})
    answers: str | None = field(default=None, metadata={"help": "the model's answers JSONL"})
    out_dir: str | None = field(default=None, metadata={"help": "folder for judgements.jsonl and chat_summary.json"})
    reviews: str | None = field(
        default=None,
        metadata={"help": "LLaVA-Med review JSONL (gpt_eval, ans1, ans2 per question): re-score it, no judge call"},
    )
    reference_answers: str | None = field(
        default=None, metadata={"help": "answers JSONL used as reference instead of the file's gpt4_answer"}
    )
    swap: bool = field(default=False, metadata={"help": "also judge with the answers swapped"})
    zero_reference: str = field(default="exclude", metadata={"help": "exclude | floor (reference score 0)"})
    attach_image: bool = field(default=False, metadata={"help": "show the judge the figure (vision judges)"})
    image_folder: str | None = field(default=None, metadata={"help": "qa50 images, for attach_image"})

    def __post_init__(self):
        if self.out_dir is None:
            raise ValueError("--out is required")
        if self.reviews is None and (self.questions is None or self.answers is None):
            raise ValueError("give --questions and --answers (to judge), or --reviews (to re-score existing reviews)")
        if self.reviews is not None and (self.swap or self.answers is not None):
            raise ValueError("--reviews re-scores one order of existing reviews: no --answers, no --swap")
        if self.zero_reference not in ZERO_REFERENCE_POLICIES:
            raise ValueError(f"zero_reference must be one of {ZERO_REFERENCE_POLICIES}, got {self.zero_reference!r}")


def judge_request(
    question: EvalQuestion,
    first: str,
    second: str,
    instruction: str,
    config: ChatJudgeConfig,
    image_url: str | None = None,
) -> dict:
    """One judge request: context, question, the two answers in the given order, then the instruction."""
    body = (
        f"[Context]\n{question.context or '(no caption available)'}\n\n[Question]\n{question.prompt}\n\n"
        f"[Assistant 1]\n{first}\n\n[End of Assistant 1]\n\n[Assistant 2]\n{second}\n\n[End of Assistant 2]\n\n"
        f"[System]\n{instruction}\n"
    )
    content: str | list[dict] = body
    if image_url is not None:
        content = [{"type": "image_url", "image_url": {"url": image_url}}, {"type": "text", "text": body}]
    return {
        "messages": [{"role": "system", "content": DEFAULT_SYSTEM}, {"role": "user", "content": content}],
        "max_tokens": config.max_tokens,
        "temperature": config.temperature,
    }


def reference_text(question: EvalQuestion, references: dict[str, dict] | None) -> str | None:
    if references is None:
        return question.reference
    row = references.get(question.key)
    return None if row is None else row.get("text")


def run_chat_judge(config: ChatJudgeConfig) -> dict:
    """Judge every answered question (both orders with `swap`), then write and return the summary."""

    out_dir = Path(config.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    questions = load_questions(config.questions)
    answers = read_answers(config.answers)
    references = read_answers(config.reference_answers) if config.reference_answers else None
    instruction = config.instruction(DEFAULT_INSTRUCTION)
    judgements_path = out_dir / "judgements.jsonl"
    done = read_finished_judgements(judgements_path)
    orders = ORDERS if config.swap else ORDERS[:1]
    jobs, requests = [], []
    for question in questions:
        answer, reference = answers.get(question.key), reference_text(question, references)
        todo = [order for order in orders if judgement_key(question.question_id, order) not in done]
        if not answer or not answer.get("text") or not reference or not todo:
            continue
        image_url = None
        if config.attach_image:
            image = load_image(config.image_folder, question.image).image
            image_url = None if image is None else image_data_url(image)  # once for both orders
        for order in todo:
            first, second = (reference, answer["text"]) if order == "forward" else (answer["text"], reference)
            jobs.append((question, order))
            requests.append(judge_request(question, first, second, instruction, config, image_url))
    judge_and_log(
        config,
        jobs,
        requests,
        judgements_path,
        "judge qa50",
        lambda q, o, r: judgement_row(q, o, r, config.judge_model),
    )
    summary, rows = summarize_chat(questions, answers, read_finished_judgements(judgements_path), config, references)
    summary["judge"] = {
        "model": config.judge_model,
        "instruction_sha256": hashlib.sha256(instruction.encode()).hexdigest(),
        "prompt_file": config.prompt_file,
        "swap": config.swap,
    }
    write_json_atomic(out_dir / "chat_summary.json", summary)
    write_json_atomic(out_dir / "chat_details.json", rows)
    return summary


def judgement_row(question: EvalQuestion, order: str, result, judge_model: str) -> dict:
    row = {"question_id": question.question_id, "order": order, "judge_model": judge_model, "raw": result.text}
    if not result.ok:
        return {**row, "status": "error", "reason": result.error}
    parsed = parse_two_scores(result.text)
    reference, model = (parsed.first, parsed.second) if order == "forward" else (parsed.second, parsed.first)
    return {
        **row,
        "status": parsed.status,
        "reason": parsed.reason,
        "reference_score": reference,
        "model_score": model,
    }


# ---------------------------------------------------------------- scoring


def question_ratio(judged: list[dict], zero_reference: str) -> tuple[float | None, str]:
    """One question's ratio from its parsed judgement(s), and its status."""
    if not judged:
        return None, "unparsed"
    reference = sum(row["reference_score"] for row in judged)
    model = sum(row["model_score"] for row in judged)
    if reference == 0:
        if zero_reference == "exclude":
            return None, "zero_reference"
        reference = len(judged)  # floor: a reference scored 0 counts as 1 in each judgement
    return model / reference, "ok"


def per_question(questions, answers, judgements, config: ChatJudgeConfig, references=None, orders=None) -> list[dict]:
    """One detail row per question: its answer, the judgements used and the ratio or why there is none."""
    orders = orders or (ORDERS if config.swap else ORDERS[:1])
    rows = []
    for question in questions:
        answer = answers.get(question.key)
        row = {
            "question_id": question.question_id,
            "type": question.question_type,
            "domain": first_domain(question.domain) or "unknown",
            "question": question.prompt,
            "reference": reference_text(question, references),
            "answer": None if answer is None else answer.get("text"),
            "image_status": None if answer is None else answer.get("image_status"),
        }
        found = [judgements.get(judgement_key(question.question_id, order)) for order in orders]
        for order, judgement in zip(orders, found, strict=True):
            row[f"{order}_reference_score"] = None if judgement is None else judgement.get("reference_score")
            row[f"{order}_model_score"] = None if judgement is None else judgement.get("model_score")
            row[f"{order}_judge_status"] = None if judgement is None else judgement["status"]
            row[f"{order}_judge_reason"] = None if judgement is None else judgement.get("reason")
            row[f"{order}_judge_raw"] = None if judgement is None else judgement.get("raw")
        if answer is None:
            row["ratio"], row["status"] = None, "missing_answer"
        elif not answer.get("text"):
            row["ratio"], row["status"] = None, "no_answer_text"
        elif any(judgement is None for judgement in found):
            row["ratio"], row["status"] = None, "not_judged"
        else:
            parsed = [judgement for judgement in found if judgement["status"] == "ok"]
            if len(parsed) < len(found):
                row["ratio"], row["status"] = None, "unparsed"
            else:
                row["ratio"], row["status"] = question_ratio(parsed, config.zero_reference)
        rows.append(row)
    return rows


def group_score(rows: list[dict], config: ChatJudgeConfig) -> dict:
    ratios = [row["ratio"] for row in rows if row["status"] == "ok"]
    interval = bootstrap_ci(ratios, config.bootstrap, config.seed)
    model = [row["model_score"] for row in rows if row.get("model_score") is not None]
    reference = [row["reference_score"] for row in rows if row.get("reference_score") is not None]
    return {
        "relative_score": None if not ratios else 100 * mean(ratios),
        "ci95": None if interval is None else [100 * value for value in interval],
        "ratio_of_means": 100 * sum(model) / sum(reference) if model and sum(reference) else None,
        "n_questions": len(rows),
        "n_scored": len(ratios),
        "status_counts": dict(Counter(row["status"] for row in rows)),
    }


def grouped(rows: list[dict], config: ChatJudgeConfig) -> dict:
    """Scores overall, per question type and per domain (LLaVA-Med's domain order)."""
    by_type, by_domain = defaultdict(list), defaultdict(list)
    for row in rows:
        by_type[row["type"] or "unknown"].append(row)
        by_domain[row["domain"]].append(row)
    domain_names = [d for d in DOMAIN_ORDER if d in by_domain] + sorted(set(by_domain) - set(DOMAIN_ORDER))
    return {
        "overall": group_score(rows, config),
        "by_type": {name: group_score(by_type[name], config) for name in sorted(by_type)},
        "by_domain": {name: group_score(by_domain[name], config) for name in domain_names},
    }


def view_rows(rows: list[dict], order: str, config: ChatJudgeConfig) -> list[dict]:
    """The rows re-scored from one order's judgement alone (to compare forward with swapped)."""
    out = []
    for row in rows:
        new = dict(row)
        new["model_score"], new["reference_score"] = (
            row.get(f"{order}_model_score"),
            row.get(f"{order}_reference_score"),
        )
        if row["status"] in ("missing_answer", "no_answer_text"):
            out.append(new)
            continue
        status = row.get(f"{order}_judge_status")
        if status != "ok":
            new["ratio"], new["status"] = None, "unparsed" if status == "unparsed" else "not_judged"
        else:
            judged = [{"model_score": new["model_score"], "reference_score": new["reference_score"]}]
            new["ratio"], new["status"] = question_ratio(judged, config.zero_reference)
        out.append(new)
    return out


def summarize_chat(questions, answers, judgements, config: ChatJudgeConfig, references=None) -> tuple[dict, list]:
    """The summary (scores by view, type and domain, counts) and the per-question detail rows."""
    rows = per_question(questions, answers, judgements, config, references)
    views = {"forward": grouped(view_rows(rows, "forward", config), config)}
    if config.swap:
        views["swapped"] = grouped(view_rows(rows, "swapped", config), config)
        for row in rows:
            scored = [row.get(f"{o}_model_score") for o in ORDERS] + [row.get(f"{o}_reference_score") for o in ORDERS]
            if row["status"] == "ok" and None not in scored:
                row["model_score"] = (row["forward_model_score"] + row["swapped_model_score"]) / 2
                row["reference_score"] = (row["forward_reference_score"] + row["swapped_reference_score"]) / 2
        views["combined"] = grouped(rows, config)
    headline = "combined" if config.swap else "forward"
    image_status = Counter(row["image_status"] or "unknown" for row in rows if row["status"] != "missing_answer")
    summary = {
        "task": "qa50_open_visual_chat",
        "headline_view": headline,
        **views[headline],
        "views": views,
        "image_status_counts": dict(image_status),
        "zero_reference_policy": config.zero_reference,
        "bootstrap_samples": config.bootstrap,
        "config": config.recorded_settings(),
    }
    if config.swap:
        summary["position_bias"] = position_bias(rows)
    return summary, rows


def position_bias(rows: list[dict]) -> dict:
    """How much the second slot gains: mean over questions of (score in slot 2 - score in slot 1), per answer.

    Forward puts the model in slot 2, swapped puts it in slot 1; half the difference of the model's scores
    between the two orders is the advantage of being second (positive: the judge favours the second answer)."""
    shifts, flips = [], 0
    for row in rows:
        model_f, model_s = row.get("forward_model_score"), row.get("swapped_model_score")
        ref_f, ref_s = row.get("forward_reference_score"), row.get("swapped_reference_score")
        if None in (model_f, model_s, ref_f, ref_s):
            continue
        shifts.append(((model_f - model_s) + (ref_s - ref_f)) / 2)
        flips += (model_f > ref_f) != (model_s > ref_s) or (model_f == ref_f) != (model_s == ref_s)
    return {
        "second_slot_advantage": mean(shifts),
        "n_pairs": len(shifts),
        "preference_flips": flips,
    }
