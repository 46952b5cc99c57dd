"""What the rubric judge scores: one (question, answer) with its figure's context, and the chat request for it.

An items file gives two units per item (answers a and b); a candidates dataset gives the same for dual-answer rows
and one unit per human/gpt round of single-answer rows.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from vital_hub.preferences.items import (
    Item,
    items_from_candidate_row,
    iter_candidate_rows,
    labelled_caption,
    load_items,
)
from vital_hub.schema import IMAGE_TOKEN, mention_texts

ROUNDS = ("first", "all")


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
