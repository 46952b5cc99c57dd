"""The text a selector reads for one candidate: caption + mention + "Question:" + q + "Answer:" + a.

This is the released training and filter code's format (`filter/train_clip_filter.py`): the parts are joined with
no separator, and only the first question/answer round counts. Two deliberate differences, both documented:
the `<image>` placeholder is removed from the question (the pictures go to the image tower), and a list of
in-text mentions is joined with newlines (the released code read one pre-joined string), as the `preferences`
configs store them, so that training and selection read the same text.
"""

from __future__ import annotations

from collections.abc import Sequence

from vital_hub.schema import IMAGE_TOKEN


def strip_image_token(question: str) -> str:
    """`q\\n<image>` and `<image>\\nq` both become `q`."""
    return question.replace(IMAGE_TOKEN, "").strip()


def mention_text(mentions: str | Sequence[str] | None) -> str:
    if mentions is None:
        return ""
    if isinstance(mentions, str):
        return mentions
    return "\n".join(m for m in mentions if m)


def selector_text(caption: str | None, mention: str | Sequence[str] | None, question: str, answer: str) -> str:
    return f"{caption or ''}{mention_text(mention)}Question:{strip_image_token(question)}Answer:{answer}"


def first_round(conversations: Sequence[dict]) -> tuple[str, str]:
    """(question, answer) of the first round of LLaVA turns ({from, value}), `<image>` removed from the question."""
    if len(conversations) < 2:
        raise ValueError(f"a conversation needs a question and an answer, got {len(conversations)} turn(s)")
    question, answer = conversations[0], conversations[1]
    if question.get("from") != "human" or answer.get("from") != "gpt":
        raise ValueError(f"first round must be human then gpt, got {question.get('from')!r}, {answer.get('from')!r}")
    return strip_image_token(question["value"]), answer["value"]


def candidate_text(candidate: dict) -> str:
    """The selector text of a candidates-dataset row (or any LLaVA record with caption and mentions beside it)."""
    question, answer = first_round(candidate["conversations"])
    return selector_text(candidate.get("caption"), candidate.get("mentions"), question, answer)
