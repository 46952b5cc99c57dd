"""Eval questions, model answers and eval images: the shapes every evaluation step reads and writes.

Questions come in two shapes, both accepted as a JSON array or JSONL:
- qa50 open-chat questions: `question_id, image, text ("q\\n<image>"), gpt4_answer, fig_caption, ...`;
- LLaVA-Med VQA records: `id, image, answer_type, conversations` (one human/gpt round).

Answers are JSONL lines `{"question_id", "text", "model_id", ...}`, appended one per question so that a crash
loses at most the line being written; `vital eval answer` drops a torn last line of its own file when it resumes,
while the judges read an answers file whole, as the user's input it is: a bad line there is an error.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vital_hub.io import iter_json_records, iter_jsonl_file, iter_jsonl_log, repair_tail
from vital_hub.schema import IMAGE_TOKEN, Location, RecordError, conversation_of, mention_texts

IMAGE_STATUSES = ("ok", "no_image", "absent", "empty", "corrupt")


@dataclass(frozen=True)
class EvalQuestion:
    question_id: Any
    image: str | None
    prompt: str  # the question without the image token
    reference: str | None  # the reference answer (qa50's GPT-4 answer, a VQA ground truth)
    answer_type: str | None = None  # OPEN | CLOSED for VQA
    question_type: str | None = None  # conversation | detailed_description for qa50
    domain: dict | None = None
    context: str | None = None  # caption and mentions, shown to judges
    record: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def key(self) -> str:
        return str(self.question_id)


def strip_image_token(text: str) -> str:
    return text.replace(IMAGE_TOKEN, "").strip()


def figure_context(record: dict) -> str | None:
    """Caption and in-text mentions in the layout the generation prompt used, for judges that see no image."""
    caption = record.get("fig_caption") or record.get("caption")
    mentions = mention_texts(record.get("in_text_mention", record.get("mentions")))
    if not caption and not mentions:
        return None
    parts = []
    if caption:
        label = record.get("fig_label")
        parts.append(f"Figure Caption:\n{label}: {caption}" if label else f"Figure Caption:\n{caption}")
    if mentions:
        parts.append("Figure Context:\n\t- " + "\n\t- ".join(mentions))
    return "\n\n".join(parts)


def question_from_record(record: Any, where: Location = Location()) -> EvalQuestion:
    if not isinstance(record, dict):
        raise where.error(f"a question must be a JSON object, got {type(record).__name__}")
    if "question_id" in record and "text" in record:
        if not isinstance(record["text"], str) or not record["text"].strip():
            raise where.error("empty 'text'", record["question_id"])
        return EvalQuestion(
            question_id=record["question_id"],
            image=record.get("image"),
            prompt=strip_image_token(record["text"]),
            reference=record.get("gpt4_answer", record.get("answer")),
            answer_type=record.get("answer_type"),
            question_type=record.get("type"),
            domain=record.get("domain"),
            context=figure_context(record),
            record=record,
        )
    if "id" in record:
        turns = conversation_of(record, where)
        if len(turns) < 2 or not all(isinstance(t, dict) and isinstance(t.get("value"), str) for t in turns[:2]):
            raise where.error("a VQA record needs one human turn and one gpt turn", record["id"])
        answer_type = record.get("answer_type")
        if answer_type is not None and str(answer_type).upper() not in ("OPEN", "CLOSED"):
            raise where.error(f"answer_type must be OPEN or CLOSED, got {answer_type!r}", record["id"])
        return EvalQuestion(
            question_id=record["id"],
            image=record.get("image"),
            prompt=strip_image_token(turns[0]["value"]),
            reference=turns[1]["value"],
            answer_type=None if answer_type is None else str(answer_type).upper(),
            question_type=record.get("type"),
            domain=record.get("domain"),
            context=figure_context(record),
            record=record,
        )
    raise where.error("neither a qa50 question (question_id, text) nor a VQA record (id, conversations)")


def load_questions(path: str | Path) -> list[EvalQuestion]:
    """All questions of a file, failing on the first bad record or duplicate id with file, index and id."""
    questions, seen = [], {}
    for where, record in iter_json_records(path):
        question = question_from_record(record, where)
        if question.key in seen:
            raise where.error(f"duplicate question id (first at record {seen[question.key]})", question.question_id)
        seen[question.key] = where.index
        questions.append(question)
    if not questions:
        raise RecordError("no questions in the file", file=str(path))
    return questions


def read_answers(path: str | Path) -> dict[str, dict]:
    """A user's answers file, by question id (as text), read whole: the file must exist and hold answers, every
    line must be JSON with a `question_id` and a `text` that is a string (null for a question left unanswered), and
    one question has one answer (duplicates are an error naming how many and the first ids)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: answers file does not exist")
    answers: dict[str, dict] = {}
    duplicates: list[Any] = []
    for number, answer in iter_jsonl_file(path):
        _check_answer(answer, number, path)
        key = str(answer["question_id"])
        if key in answers:
            duplicates.append(answer["question_id"])
        answers[key] = answer
    if duplicates:
        raise RecordError(
            f"{len(duplicates)} questions answered more than once (first: {duplicates[:5]}); keep one answer each",
            file=str(path),
        )
    if not answers:
        raise RecordError("no answers in the file", file=str(path))
    return answers


def read_answer_log(path: str | Path) -> dict[str, dict]:
    """The answers `vital eval answer` has written so far (none when the file does not exist yet); a torn last
    line is ignored, and later lines win."""
    answers: dict[str, dict] = {}
    if not Path(path).exists():
        return answers
    for number, answer in iter_jsonl_log(path):
        _check_answer(answer, number, Path(path))
        answers[str(answer["question_id"])] = answer
    return answers


def _check_answer(answer: Any, number: int, path: Path) -> None:
    if not isinstance(answer, dict) or "question_id" not in answer:
        raise RecordError(f"line {number} has no 'question_id'", file=str(path))
    text = answer.get("text")
    if text is not None and not isinstance(text, str):
        raise RecordError(
            f"line {number} (question {answer['question_id']!r}): 'text' must be a string, got {type(text).__name__}",
            file=str(path),
        )


class JsonlAppender:
    """Append JSON lines, flushed one by one; the file is the checkpoint of a resumable job."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        repair_tail(self.path)
        self.handle = open(self.path, "a", encoding="utf-8")

    def write(self, row: dict) -> None:
        self.handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        self.handle.flush()

    def write_many(self, rows: Iterable[dict]) -> None:
        for row in rows:
            self.write(row)

    def close(self) -> None:
        self.handle.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


@dataclass(frozen=True)
class ImageCheck:
    image: Any  # a PIL image in RGB, or None
    status: str  # one of IMAGE_STATUSES
    detail: str | None = None


def load_image(folder: str | Path | None, name: str | None) -> ImageCheck:
    """Open an eval image fully, so that empty files and cut-off downloads count as missing, never as pictures."""
    from PIL import Image, UnidentifiedImageError

    from vital_hub.figures.safety import open_within_pixel_limit

    if not name:
        return ImageCheck(None, "no_image")
    if folder is None:
        return ImageCheck(None, "absent", "no image folder given")
    path = Path(folder) / name
    if not path.is_file():
        return ImageCheck(None, "absent", f"{path} does not exist")
    data = path.read_bytes()
    if not data:
        return ImageCheck(None, "empty", f"{path} is an empty file")
    try:
        with open_within_pixel_limit(data) as opened:  # over PIL's pixel limit: refused from the header
            opened.load()  # decodes every byte: a truncated JPEG fails here, not at open()
            return ImageCheck(opened.convert("RGB"), "ok")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        return ImageCheck(None, "corrupt", f"{path}: {err}")  # a decompression bomb is never decoded


def judgement_key(question_id, order: str) -> str:
    return f"{question_id}|{order}"


def read_finished_judgements(path: Path) -> dict[str, dict]:
    """A judge log's finished judgements by (question, order); a later error row undoes an earlier success, so
    that a re-run asks again."""
    rows: dict[str, dict] = {}
    if not path.exists():
        return rows
    for _, row in iter_jsonl_log(path):
        key = judgement_key(row["question_id"], row["order"])
        if row.get("status") == "error":
            rows.pop(key, None)
        else:
            rows[key] = row
    return rows
