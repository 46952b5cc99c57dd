"""Copied evaluation text: questions, answers and captions found in training rows whatever their length, without
counting the sentences that many training rows share.

Texts are lower-cased word sequences (letters and digits). Each evaluation text is cut into word 3-grams
(shingles; a text under 3 words is one shingle, looked for among the rows' n-grams of its length). One pass over the training rows counts, for every shingle of an
evaluation text, how many rows hold it (its document frequency), and keeps the rows that share at least a quarter
of some evaluation text's shingles. Then each shingle is weighted by its rarity, log((N + 1) / (df + 1)) + 1 (an
IDF, Sparck Jones 1972), and a shingle held by at least 0.2% of the rows (and 5 of them) weighs nothing: model
boilerplate such as "a healthcare professional should be consulted" then cannot make an overlap by itself. A row
copies an evaluation text when the shingles it shares carry at least half of that text's weight and are at least 3
rare ones (or all of them, for a short text). GPT-3's decontamination used 13-gram overlap (Brown et al. 2020,
appendix C): it misses short questions and counts shared boilerplate.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from dataclasses import dataclass

SHINGLE = 3
COMMON_SHARE, COMMON_ROWS = 0.002, 5
MIN_SCORE, MIN_RARE = 0.5, 3
PREFILTER = 0.25
_WORD = re.compile(r"[^\W_]+")


def words(text: str) -> list[str]:
    return _WORD.findall(text.replace("<image>", " ").lower())


def shingles(text: str, size: int = SHINGLE) -> set[int]:
    """Hashes of the text's word n-grams of `size` words, or of the whole text when it is shorter (Python's tuple
    hash: stable within one process, all a run needs)."""
    tokens = words(text)
    if len(tokens) < size:
        return {hash(tuple(tokens))} if tokens else set()
    return {hash(tuple(tokens[i : i + size])) for i in range(len(tokens) - size + 1)}


@dataclass
class TextMatch:
    row: int  # index of the training row, in the order scanned
    item: int  # index of the evaluation text
    score: float  # share of the text's rarity weight that the row holds
    rare_shared: int
    exact: bool  # the whole normalised text occurs in the row


class TextIndex:
    """Evaluation texts (any key each) looked for in training rows fed one at a time to `scan`."""

    def __init__(self, texts: list[tuple[object, str]]):
        self.keys = [key for key, _ in texts]
        self.normalised = [" ".join(words(text)) for _, text in texts]
        self.shingles = [shingles(text) for _, text in texts]
        # a text under 3 words is one shingle of its length: rows are cut into those lengths too
        self.sizes = sorted({min(SHINGLE, len(words(text))) for _, text in texts} - {0})
        self.owners: dict[int, list[int]] = defaultdict(list)
        for item, found in enumerate(self.shingles):
            for shingle in found:
                self.owners[shingle].append(item)
        self.df: dict[int, int] = defaultdict(int)
        self.candidates: list[tuple[int, int, frozenset[int], bool]] = []
        self.rows = 0

    def scan(self, text: str) -> None:
        row = self.rows
        self.rows += 1
        shared = set().union(*(shingles(text, size) for size in self.sizes)) & self.owners.keys()
        if not shared:
            return
        per_item: dict[int, set[int]] = defaultdict(set)
        for shingle in shared:
            self.df[shingle] += 1
            for item in self.owners[shingle]:
                per_item[item].add(shingle)
        padded = None
        for item, found in per_item.items():
            if len(found) >= PREFILTER * len(self.shingles[item]):
                padded = padded if padded is not None else f" {' '.join(words(text))} "
                exact = f" {self.normalised[item]} " in padded
                self.candidates.append((row, item, frozenset(found), exact))

    def weight(self, shingle: int) -> float:
        df = self.df.get(shingle, 0)
        if df >= max(COMMON_ROWS, COMMON_SHARE * self.rows):
            return 0.0
        return math.log((self.rows + 1) / (df + 1)) + 1.0

    def matches(self) -> list[TextMatch]:
        """The (row, text) pairs that copy: enough of the text's rare weight, in enough rare shingles."""
        out = []
        totals: dict[int, tuple[float, int]] = {}
        for row, item, found, exact in self.candidates:
            if item not in totals:
                weights = [self.weight(s) for s in self.shingles[item]]
                totals[item] = (sum(weights), sum(w > 0 for w in weights))
            total, rare_total = totals[item]
            if rare_total == 0:
                continue  # nothing but common phrasing: no evidence of a copy
            weights = [self.weight(s) for s in found]
            rare = sum(w > 0 for w in weights)
            score = sum(weights) / total
            if score >= MIN_SCORE and rare >= min(MIN_RARE, rare_total):
                out.append(TextMatch(row, item, score, rare, exact))
        return out
