"""Re-score judge replies a user already has: LLaVA-Med's qa50 review file, with no judge call.

LLaVA-Med's `llava/eval/eval_multimodal_chat_gpt_score.py` writes its `--scores-file` as JSON lines, one per
question: the qa50 question record (`question_id`, `text`, `type`, `domain`, ...) plus `ans1` (the GPT-4 reference,
shown as Assistant 1), `ans2` (the model's answer, Assistant 2) and `gpt_eval` (the judge's reply). Each reply is
parsed with this package's parser and scored as `vital eval chat` scores its own forward judgements, so paid-for
reviews give the same summary files (`chat_summary.json`, `chat_details.json`) without a second bill.
"""

from __future__ import annotations

from pathlib import Path

from vital_hub.eval.chat import ChatJudgeConfig, parse_two_scores, summarize_chat
from vital_hub.eval.records import judgement_key, question_from_record
from vital_hub.io import iter_jsonl_log, write_json_atomic
from vital_hub.schema import Location, RecordError

REVIEW_FIELDS = ("ans1", "ans2", "gpt_eval")


def read_reviews(path: str | Path) -> tuple[list, dict, dict, dict]:
    """(questions, answers, references, judgements) from a LLaVA-Med review file; a bad line names its number."""
    questions, answers, references, judgements = [], {}, {}, {}
    for number, line in iter_jsonl_log(path):
        where = Location(str(path), number)
        if not isinstance(line, dict):
            raise where.error("a review line must be a JSON object")
        missing = [name for name in REVIEW_FIELDS if not isinstance(line.get(name), str)]
        if missing:
            raise where.error(f"no {missing} (expected LLaVA-Med's review fields {list(REVIEW_FIELDS)})")
        question = question_from_record(line, where)
        if question.key in answers:
            raise where.error("question reviewed twice", question.question_id)
        questions.append(question)
        answers[question.key] = {"question_id": question.question_id, "text": line["ans2"]}
        references[question.key] = {"question_id": question.question_id, "text": line["ans1"]}
        parsed = parse_two_scores(line["gpt_eval"])
        judgements[judgement_key(question.question_id, "forward")] = {
            "question_id": question.question_id,
            "order": "forward",
            "raw": line["gpt_eval"],
            "status": parsed.status,
            "reason": parsed.reason,
            "reference_score": parsed.first,
            "model_score": parsed.second,
        }
    if not questions:
        raise RecordError("no reviews in the file", file=str(path))
    return questions, answers, references, judgements


def score_reviews(config: ChatJudgeConfig) -> dict:
    """The summary of `config.reviews`, written to `config.out_dir` like a judged run's."""
    questions, answers, references, judgements = read_reviews(config.reviews)
    summary, rows = summarize_chat(questions, answers, judgements, config, references)
    summary["judge"] = {"reviews_file": str(config.reviews), "model": None, "swap": False}
    out_dir = Path(config.out_dir)
    write_json_atomic(out_dir / "chat_summary.json", summary)
    write_json_atomic(out_dir / "chat_details.json", rows)
    return summary
