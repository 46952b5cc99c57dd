"""The rubric the judge scores answers by, and how its reply is read back as a 0-10 score."""

from __future__ import annotations

import math
import re

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
