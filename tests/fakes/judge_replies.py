"""Deterministic judge behaviour for the fake OpenAI server (`FakeOpenAIServer(reply=...)`) in eval tests.

The chat judge scores an answer by its content, not its position (so a position swap changes nothing), and
a few requests, chosen by a hash of the question, get the replies real judges produce: a refusal, an
"8/10 7/10" line after a preamble, and a reference scored 0.
"""

from __future__ import annotations

import hashlib
import re

ANSWER = re.compile(r"\[Assistant ([12])\]\n(.*?)\n\n\[End of Assistant \1\]", re.DOTALL)
QUESTION = re.compile(r"\[Question\]\n(.*?)\n\n", re.DOTALL)
PAIRWISE = re.compile(r"\[The Start of Assistant ([AB])'s Answer\]\n(.*?)\n\[The End", re.DOTALL)
GROUND_TRUTH = re.compile(r"\[Ground truth\]\n(.*?)\n\n", re.DOTALL)


def user_text(body: dict) -> str:
    content = body["messages"][-1]["content"]
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if part.get("type") == "text")
    return content


def question_bucket(text: str) -> int:
    question = QUESTION.search(text)
    return int(hashlib.sha256((question.group(1) if question else "").encode()).hexdigest()[:8], 16) % 10


def content_score(answer: str) -> int:
    """References (GPT-4 answers, over 30 characters) score 8, short model answers 4."""
    return 8 if len(answer) > 30 else 4


def chat_judge_reply(body: dict) -> str:
    text = user_text(body)
    answers = dict(ANSWER.findall(text))
    bucket = question_bucket(text)
    if bucket == 0:
        return "I'm sorry, but I can't help with evaluating medical content."
    first, second = content_score(answers["1"]), content_score(answers["2"])
    if bucket == 1:
        first, second = (0, second) if first == 8 else (first, 0)  # the reference scored 0
    if bucket == 2:
        return f"Here is my assessment.\n{first}/10 {second}/10\nThe first answer is more complete."
    return f"{first} {second}\nAssistant 1 is more detailed than Assistant 2."


def pairwise_judge_reply(body: dict) -> str:
    """Prefers the answer that contains the ground truth; a tie when both or neither do."""
    text = user_text(body)
    truth = GROUND_TRUTH.search(text).group(1).strip().lower()
    answers = dict(PAIRWISE.findall(text))
    a_has, b_has = truth in answers["A"].lower(), truth in answers["B"].lower()
    if a_has == b_has:
        return "[[C]]\nBoth answers are equally good."
    return "[[A]]\nA matches the ground truth." if a_has else "[[B]]\nB matches the ground truth."
