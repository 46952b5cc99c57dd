"""Replies to conversations, keeping what the paper's line-by-line parser lost.

The original kept only lines starting with `User:` / `Assistant:`, so multi-line answers lost every line but
the first and markdown (`**User:**`), numbered turns (`1. User:`, `Q1:`) or headings silently produced
nothing. Here a label starts a turn and every following line continues it. A reply that does not come out as
an alternating conversation of at least `min_rounds` rounds is returned as `unparsed` with its raw text kept
by the caller, never dropped. When the reply was cut off (`finish_reason == "length"`) the last round may be
incomplete and is dropped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from vital_hub.schema import IMAGE_TOKEN, Location, RecordError, validate_llava

MARKUP = r"(?:\*\*|__|\*|_)?"
LABELS = r"user|human|question|q|assistant|gpt|ai|answer|a"
# `User: x`, `**User:** x`, `**User**: x`, `1. User: x`, `- Q1: x`, `### Answer 2: x`, `Answer (B): x`
LABELLED_LINE = re.compile(
    rf"^\s*(?:[>#\-+]+\s*|\*\s+)?(?:\(?\d{{1,3}}[.)]\s*)?{MARKUP}\s*(?P<label>{LABELS})"
    rf"\s*\(?\s*(?P<number>\d{{1,2}}|[ab](?![a-z]))?\s*\)?\s*{MARKUP}\s*[:：]\s*{MARKUP}\s*(?P<rest>.*)$",
    re.IGNORECASE,
)
# A label alone on its line (`### User`, `**Assistant**`), the text following on the next lines.
BARE_LABEL_LINE = re.compile(
    rf"^\s*(?:#+\s*)?{MARKUP}\s*(?P<label>user|human|question|assistant|gpt|answer)"
    rf"\s*(?P<number>\d{{1,2}}|[ab])?\s*{MARKUP}\s*[:：]?\s*$",
    re.IGNORECASE,
)
USER_LABELS = {"user", "human", "question", "q"}
SECOND_ANSWER = {"2", "b"}
FIRST_ANSWER = {"1", "a"}


@dataclass
class Segment:
    role: str  # "user" | "assistant"
    number: str | None
    lines: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        return clean_text("\n".join(self.lines))


@dataclass
class ParsedReply:
    status: str  # "ok" | "unparsed"
    conversations: list[dict] = field(default_factory=list)
    dual_answers: list[dict] = field(default_factory=list)
    problem: str | None = None


def clean_text(text: str) -> str:
    """Trim, drop stray markdown emphasis left around a turn, collapse runs of blank lines, remove `<image>`."""
    text = text.replace(IMAGE_TOKEN, "").strip()
    for mark in ("**", "__"):
        if text.count(mark) % 2 and (text.startswith(mark) or text.endswith(mark)):
            text = text[len(mark) :] if text.startswith(mark) else text[: -len(mark)]
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.strip()


def segments_of(text: str) -> list[Segment]:
    """Labelled turns in order; text before the first label is ignored, later lines continue the open turn."""
    segments: list[Segment] = []
    for line in text.splitlines():
        match = LABELLED_LINE.match(line) or BARE_LABEL_LINE.match(line)
        if match:
            label = match.group("label").lower()
            role = "user" if label in USER_LABELS else "assistant"
            number = (match.group("number") or "").lower() or None
            rest = match.groupdict().get("rest") or ""
            segments.append(Segment(role, number, [rest] if rest else []))
        elif segments:
            segments[-1].lines.append(line)
    return segments


def parse_reply(text: str | None, mode: str = "conversation", min_rounds: int = 1, finish_reason: str | None = None):
    """A reply as LLaVA turns (`conversation`) or questions with two answers each (`dual-answer`)."""
    if not text or not text.strip():
        return ParsedReply("unparsed", problem="empty reply")
    segments = segments_of(text)
    if not segments:
        return ParsedReply("unparsed", problem="no `User:` / `Assistant:` labels found")
    if mode == "dual-answer":
        return _dual(segments, min_rounds, truncated=finish_reason == "length")
    if mode != "conversation":
        raise ValueError(f"unknown reply mode {mode!r}; known: ['conversation', 'dual-answer']")
    return _conversation(segments, min_rounds, truncated=finish_reason == "length")


def _conversation(segments: list[Segment], min_rounds: int, truncated: bool) -> ParsedReply:
    segments = drop_empty_repeats(segments)
    for position, segment in enumerate(segments):
        expected = "user" if position % 2 == 0 else "assistant"
        if segment.role != expected:
            return ParsedReply(
                "unparsed", problem=f"turn {position + 1} is from the {segment.role}, not the {expected}"
            )
        if not segment.text:
            return ParsedReply("unparsed", problem=f"turn {position + 1} is empty")
    rounds = [(segments[i].text, segments[i + 1].text) for i in range(0, len(segments) - 1, 2)]
    if truncated and rounds:
        rounds = rounds[:-1]
    return _finish(rounds, [], min_rounds)


def drop_empty_repeats(segments: list[Segment]) -> list[Segment]:
    """`Assistant:` alone then `Answer: ...` is one turn written with two labels: keep the one with text."""
    kept: list[Segment] = []
    for segment in segments:
        if kept and kept[-1].role == segment.role and not kept[-1].text:
            kept[-1] = segment
        else:
            kept.append(segment)
    return kept


def _dual(segments: list[Segment], min_rounds: int, truncated: bool) -> ParsedReply:
    groups: list[tuple[str, list[Segment]]] = []
    for segment in segments:
        if segment.role == "user":
            groups.append((segment.text, []))
        elif not groups:
            return ParsedReply("unparsed", problem="an answer comes before the first question")
        else:
            groups[-1][1].append(segment)
    if truncated and groups:
        groups = groups[:-1]
    elif groups and len(groups[-1][1]) < 2:
        groups = groups[:-1]  # a last question left without both answers: the reply ran out
    items = []
    for number, (question, answers) in enumerate(groups, start=1):
        first, second = pick_two_answers(answers)
        if not question or first is None or second is None:
            return ParsedReply("unparsed", problem=f"question {number} does not have a question and two answers")
        items.append({"question": question, "answer_a": first, "answer_b": second})
    rounds = [(item["question"], item["answer_a"]) for item in items]
    return _finish(rounds, items, min_rounds)


def pick_two_answers(answers: list[Segment]) -> tuple[str | None, str | None]:
    """Answers 1 and 2 by their numbers (1/2 or A/B), else the first two in order; empty answers count as none."""
    numbered = {a.number: a.text for a in answers if a.number}
    first = next((numbered[n] for n in FIRST_ANSWER if numbered.get(n)), None)
    second = next((numbered[n] for n in SECOND_ANSWER if numbered.get(n)), None)
    if first is None and second is None and len(answers) == 2:
        first, second = answers[0].text, answers[1].text
    if len(answers) != 2:
        return None, None
    return first or None, second or None


def _finish(rounds: list[tuple[str, str]], dual: list[dict], min_rounds: int) -> ParsedReply:
    if len(rounds) < max(1, min_rounds):
        return ParsedReply("unparsed", problem=f"{len(rounds)} complete rounds, fewer than the {min_rounds} required")
    turns = []
    for question, answer in rounds:
        turns.append({"from": "human", "value": question})
        turns.append({"from": "gpt", "value": answer})
    turns[0]["value"] = f"{turns[0]['value']}\n{IMAGE_TOKEN}"
    try:
        validate_llava({"id": "reply", "image": "reply.jpg", "conversations": turns}, Location())
    except RecordError as err:
        return ParsedReply("unparsed", problem=err.reason)
    return ParsedReply("ok", conversations=turns, dual_answers=dual)
