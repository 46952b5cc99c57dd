"""Long n-gram overlap, the common decontamination rule: a training text that shares any 13-word sequence with
an evaluation text, after lower-casing and keeping only letters and digits (Brown et al. 2020, "Language Models
are Few-Shot Learners", appendix C)."""

from __future__ import annotations

import re

NGRAM = 13
_WORD = re.compile(r"[^\W_]+")


def words(text: str) -> list[str]:
    return _WORD.findall(text.replace("<image>", " ").lower())


def ngram_keys(text: str, n: int = NGRAM) -> set[int]:
    """Hashes of the text's n-grams (Python's tuple hash: stable within one process, which is all a run needs)."""
    tokens = words(text)
    return {hash(tuple(tokens[i : i + n])) for i in range(len(tokens) - n + 1)}
