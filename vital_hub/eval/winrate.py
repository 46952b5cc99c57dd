"""Win rate of model A over model B, decided by a pairwise judge against the ground truth.

The judge answers `[[A]]`, `[[B]]` or `[[C]]` (tie). Each question is judged in both orders (A shown first, then
B shown first) so that a judge's taste for one position cancels out. The paper's win-rate formula was not
published, so both are reported: wins / (wins + losses), ties left out, and wins / all decided-or-tied, plus
the tie share, at the level of single judgements and of questions (both orders combined: a question is won
when A wins at least one order and loses none; a win in one order and a loss in the other is a tie and counts
as position-inconsistent).
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from vital_hub.eval.judging import JudgeOptions, judge_and_log
from vital_hub.eval.records import (
    EvalQuestion,
    judgement_key,
    load_questions,
    read_answers,
    read_finished_judgements,
)
from vital_hub.eval.stats import bootstrap_ci
from vital_hub.io import write_json_atomic

DEFAULT_INSTRUCTION = (
    "You are an impartial judge of answers to medical questions about images. You are given the question, the "
    "ground-truth answer, and the answers of assistant A and assistant B. Decide which assistant's answer agrees "
    "better with the ground truth, taking correctness first and helpfulness second. The order of the answers, "
    "their length and the assistants' names must not influence you. Begin your reply with your verdict: "
    '"[[A]]" if assistant A is better, "[[B]]" if assistant B is better, "[[C]]" for a tie; then explain briefly.'
)
VERDICT = re.compile(r"\[\[\s*([ABC])\s*\]\]", re.IGNORECASE)
ORDERS = ("ab", "ba")  # ab: model A is shown as assistant A


@dataclass(frozen=True)
class Verdict:
    label: str | None  # A | B | C
    status: str  # ok | unparsed
    reason: str | None = None


def parse_verdict(text: str | None) -> Verdict:
    """The judge's verdict; several different verdicts count only when the reply opens with one."""
    if text is None or not text.strip():
        return Verdict(None, "unparsed", "empty reply")
    found = [match.group(1).upper() for match in VERDICT.finditer(text)]
    if not found:
        return Verdict(None, "unparsed", "no [[A]]/[[B]]/[[C]] verdict")
    if len(set(found)) == 1:
        return Verdict(found[0], "ok")
    opening = VERDICT.match(text.lstrip())
    if opening:
        return Verdict(opening.group(1).upper(), "ok")
    return Verdict(None, "unparsed", f"conflicting verdicts {sorted(set(found))}")


def outcome_for_a(label: str, order: str) -> str:
    """win | loss | tie for model A, given the label the judge gave with the answers in `order`."""
    if label == "C":
        return "tie"
    shown_first_is_a = order == "ab"
    return "win" if (label == "A") == shown_first_is_a else "loss"


@dataclass
class WinRateConfig(JudgeOptions):
    questions: str = field(metadata={"help": "questions with ground truth (VQA records or qa50)"})
    answers_a: str = field(metadata={"help": "answers JSONL of model A (the model whose win rate is reported)"})
    answers_b: str = field(metadata={"help": "answers JSONL of model B (the baseline)"})
    out_dir: str = field(metadata={"help": "folder for winrate_judgements.jsonl and winrate_summary.json"})
    name_a: str = field(default="A", metadata={"help": "label of model A in the summary"})
    name_b: str = field(default="B", metadata={"help": "label of model B in the summary"})
    both_orders: bool = field(default=True, metadata={"help": "judge A-first and B-first"})


def pairwise_request(question: EvalQuestion, first: str, second: str, instruction: str, config: WinRateConfig) -> dict:
    body = (
        f"[Question]\n{question.prompt}\n\n[Ground truth]\n{question.reference}\n\n"
        f"[The Start of Assistant A's Answer]\n{first}\n[The End of Assistant A's Answer]\n\n"
        f"[The Start of Assistant B's Answer]\n{second}\n[The End of Assistant B's Answer]"
    )
    return {
        "messages": [{"role": "system", "content": instruction}, {"role": "user", "content": body}],
        "max_tokens": config.max_tokens,
        "temperature": config.temperature,
    }


def verdict_row(question: EvalQuestion, order: str, result) -> dict:
    row = {"question_id": question.question_id, "order": order, "raw": result.text}
    if not result.ok:
        return {**row, "status": "error", "reason": result.error}
    verdict = parse_verdict(result.text)
    outcome = outcome_for_a(verdict.label, order) if verdict.status == "ok" else None
    return {
        **row,
        "status": verdict.status,
        "reason": verdict.reason,
        "verdict": verdict.label,
        "outcome_for_a": outcome,
    }


def run_winrate(config: WinRateConfig) -> dict:
    """Judge every question both models answered (in both orders), then write and return the summary."""

    out_dir = Path(config.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    questions = load_questions(config.questions)
    answers_a, answers_b = read_answers(config.answers_a), read_answers(config.answers_b)
    instruction = config.instruction(DEFAULT_INSTRUCTION)
    path = out_dir / "winrate_judgements.jsonl"
    done = read_finished_judgements(path)
    orders = ORDERS if config.both_orders else ORDERS[:1]
    jobs, requests = [], []
    for question in questions:
        a, b = (answers_a.get(question.key) or {}).get("text"), (answers_b.get(question.key) or {}).get("text")
        if not a or not b or not question.reference:
            continue
        for order in orders:
            if judgement_key(question.question_id, order) not in done:
                first, second = (a, b) if order == "ab" else (b, a)
                jobs.append((question, order))
                requests.append(pairwise_request(question, first, second, instruction, config))
    judge_and_log(config, jobs, requests, path, "judge win rate", verdict_row)
    summary, details = summarize_winrate(questions, answers_a, answers_b, read_finished_judgements(path), config)
    summary["judge"] = {
        "model": config.judge_model,
        "instruction_sha256": hashlib.sha256(instruction.encode()).hexdigest(),
        "prompt_file": config.prompt_file,
    }
    write_json_atomic(out_dir / "winrate_summary.json", summary)
    write_json_atomic(out_dir / "winrate_details.json", details)
    return summary


def rates(counts: Counter) -> dict:
    wins, losses, ties = counts["win"], counts["loss"], counts["tie"]
    decided, total = wins + losses, wins + losses + ties
    return {
        "wins": wins,
        "losses": losses,
        "ties": ties,
        "win_rate_excluding_ties": 100 * wins / decided if decided else None,
        "win_rate_over_all": 100 * wins / total if total else None,
        "tie_rate": 100 * ties / total if total else None,
    }


def question_outcome(outcomes: list[str]) -> tuple[str, bool]:
    """Both orders folded into one outcome for the question, and whether the two orders agreed."""
    kinds = set(outcomes)
    consistent = len(kinds) == 1
    if "win" in kinds and "loss" not in kinds:
        return "win", consistent
    if "loss" in kinds and "win" not in kinds:
        return "loss", consistent
    return "tie", consistent


def summarize_winrate(questions, answers_a, answers_b, judgements, config: WinRateConfig) -> tuple[dict, list]:
    """Rates over single judgements and over questions, status counts, and one detail row per question."""
    orders = ORDERS if config.both_orders else ORDERS[:1]
    per_judgement, statuses, per_question, consistent, details = Counter(), Counter(), Counter(), 0, []
    for question in questions:
        rows = [judgements.get(judgement_key(question.question_id, order)) for order in orders]
        for row in rows:
            statuses[row["status"] if row else "not_judged"] += 1
            if row and row["status"] == "ok":
                per_judgement[row["outcome_for_a"]] += 1
        parsed = [row["outcome_for_a"] for row in rows if row and row["status"] == "ok"]
        outcome, agreed = question_outcome(parsed) if len(parsed) == len(orders) else (None, False)
        if outcome:
            per_question[outcome] += 1
            consistent += agreed
        details.append(
            {
                "question_id": str(question.question_id),
                "question": question.prompt,
                "reference": question.reference,
                "answer_a": (answers_a.get(question.key) or {}).get("text"),
                "answer_b": (answers_b.get(question.key) or {}).get("text"),
                **{f"verdict_{order}": (row or {}).get("verdict") for order, row in zip(orders, rows, strict=True)},
                **{f"raw_{order}": (row or {}).get("raw") for order, row in zip(orders, rows, strict=True)},
                "outcome_for_a": outcome,
            }
        )
    judged_questions = sum(per_question.values())
    wins_each = [1.0 if d["outcome_for_a"] == "win" else 0.0 for d in details if d["outcome_for_a"]]
    interval = bootstrap_ci(wins_each, config.bootstrap, config.seed)
    return {
        "task": "pairwise_win_rate",
        "model_a": config.name_a,
        "model_b": config.name_b,
        "judgements": {**rates(per_judgement), "status_counts": dict(statuses)},
        "questions": {
            **rates(per_question),
            "n_judged": judged_questions,
            "position_consistency": 100 * consistent / judged_questions if judged_questions else None,
            "win_rate_over_all_ci95": None if interval is None else [100 * v for v in interval],
        },
        "n_questions": len(questions),
        "config": config.recorded_settings(),
    }, details
