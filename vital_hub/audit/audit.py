"""The audit itself: identity matches, perceptual near-duplicates and 13-gram overlap, per eval set and config.

One streaming pass over the training components (each read once, whatever the configs): identity keys and
n-grams are checked row by row, figures are hashed through the sha256-keyed cache, then the evaluation figures'
framings are searched in a multi-index over all training hashes.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from vital_hub.audit.data import EvalSet, TrainSource, load_eval, open_training
from vital_hub.audit.hashing import HashCache, Hasher, query_hashes, sha256_hex
from vital_hub.audit.index import HashIndex
from vital_hub.audit.text import ngram_keys

# Chosen on the transformations of tests/test_audit.py: every planted copy of the qa50 figures is within it and
# unrelated figures are far beyond it (docs/audit.md).
DEFAULT_MAX_DISTANCE = 10
IDENTITY_KEYS = ("pair_id", "pmid", "pmcid", "sha256")


@dataclass
class AuditOptions:
    train: str
    evals: list[str]
    out: Path
    configs: list[str] | None = None
    max_distance: int = DEFAULT_MAX_DISTANCE
    workers: int = 1
    hash_cache: Path | None = None
    show_progress: bool = True

    def __post_init__(self):
        self.out = Path(self.out)
        if not 0 <= self.max_distance <= 12:
            raise ValueError(f"--max-distance must be in 0..12 (64-bit hashes), got {self.max_distance}")
        if not self.evals:
            raise ValueError("give at least one --eval NAME=SOURCE")


@dataclass
class Match:
    eval_set: str
    figure: int  # index into the eval set's figures
    component: str
    row_id: str
    image_id: str | None
    reasons: set[str] = field(default_factory=set)
    distance: int | None = None
    shared_ngrams: int = 0
    fields: set[str] = field(default_factory=set)


class _EvalLookup:
    """Identity keys, n-grams and query hashes of every evaluation figure, for the training pass."""

    def __init__(self, eval_sets: list[EvalSet]):
        self.keys: dict[str, dict[str, list[tuple[int, int]]]] = {k: defaultdict(list) for k in IDENTITY_KEYS}
        self.ngrams: dict[int, set[tuple[int, int, str]]] = defaultdict(set)
        query_values, self.query_owner = [], []
        for s, eval_set in enumerate(eval_sets):
            figure_of = {}
            for f, figure in enumerate(eval_set.figures):
                for question_id in figure.question_ids:
                    figure_of[question_id] = f
                for key in ("pair_id", "pmid", "pmcid"):
                    if getattr(figure, key):
                        self.keys[key][str(getattr(figure, key))].append((s, f))
                if figure.data is not None:
                    self.keys["sha256"][sha256_hex(figure.data)].append((s, f))
                    hashes = query_hashes(figure.data)
                    if not hashes:
                        figure.problem = "unreadable"
                    query_values += hashes
                    self.query_owner += [(s, f)] * len(hashes)
            for text in eval_set.texts:
                for key in ngram_keys(text.text):
                    self.ngrams[key].add((s, figure_of[text.question_id], text.field))
        self.queries = np.array(query_values, dtype=np.uint64)


def run_audit(options: AuditOptions) -> dict:
    eval_sets = [load_eval(spec) for spec in options.evals]
    source = open_training(options.train, options.configs)
    names = [e.name for e in eval_sets]
    if len(set(names)) != len(names):
        raise ValueError(f"--eval names must be distinct, got {names}")
    lookup = _EvalLookup(eval_sets)
    cache = HashCache(options.hash_cache or options.out / "figure_hashes.jsonl")
    hasher = Hasher(cache, options.workers)
    matches: dict[tuple, Match] = {}
    train_rows: list[tuple[str, str, str | None]] = []
    train_hashes: list[int] = []
    from_column = 0  # training rows whose hashes came from the repo's phash column
    try:
        for component in source.components:
            rows = source.rows(component)
            batch = []
            for row in tqdm(rows, desc=f"audit {component}", unit=" rows", disable=not options.show_progress):
                batch.append(row)
                if len(batch) == 256:
                    from_column += _check_batch(batch, hasher, lookup, eval_sets, matches, train_rows, train_hashes)
                    batch = []
            from_column += _check_batch(batch, hasher, lookup, eval_sets, matches, train_rows, train_hashes)
    finally:
        hasher.close()
    _near_duplicates(lookup, eval_sets, train_rows, np.array(train_hashes, dtype=np.uint64), options, matches)
    return _report(source, eval_sets, matches, options, cache, len(train_rows), from_column)


def _match(matches, eval_sets, s: int, f: int, component: str, row_id: str, image_id) -> Match:
    key = (s, f, component, row_id)
    if key not in matches:
        matches[key] = Match(eval_sets[s].name, f, component, row_id, image_id)
    return matches[key]


def _check_batch(batch, hasher, lookup, eval_sets, matches, train_rows, train_hashes) -> int:
    """Check a batch of training rows; returns how many carried their figure's hash."""
    if not batch:
        return 0
    hashed = hasher.hash_batch([None if row.stored else row.image for row in batch])
    for row, (digest, value) in zip(batch, hashed, strict=True):
        if row.stored:  # hashed when the repo was built
            digest = row.sha256 or (sha256_hex(row.image) if row.image else None)
            value = row.phash
        for key, found in (("pair_id", row.pair_id), ("pmid", row.pmid), ("pmcid", row.pmcid), ("sha256", digest)):
            for s, f in lookup.keys[key].get(str(found), ()) if found else ():
                _match(matches, eval_sets, s, f, row.component, row.row_id, row.pair_id).reasons.add(key)
        shared = defaultdict(set)
        for ngram in ngram_keys(row.text) & lookup.ngrams.keys():
            for s, f, text_field in lookup.ngrams[ngram]:
                shared[(s, f)].add((ngram, text_field))
        for (s, f), hits in shared.items():
            match = _match(matches, eval_sets, s, f, row.component, row.row_id, row.pair_id)
            match.reasons.add("text13")
            match.shared_ngrams = len({n for n, _ in hits})
            match.fields |= {text_field for _, text_field in hits}
        if value is not None:
            train_rows.append((row.component, row.row_id, row.pair_id))
            train_hashes.append(value)
    return sum(row.stored for row in batch)


def _near_duplicates(lookup, eval_sets, train_rows, train_hashes, options, matches) -> None:
    if not len(train_hashes) or not len(lookup.queries):
        return
    index = HashIndex(train_hashes, options.max_distance)
    query_ids, train_ids, distances = index.search(lookup.queries)
    for q, t, d in zip(query_ids.tolist(), train_ids.tolist(), distances.tolist(), strict=True):
        s, f = lookup.query_owner[q]
        component, row_id, image_id = train_rows[t]
        match = _match(matches, eval_sets, s, f, component, row_id, image_id)
        match.reasons.add("phash")
        match.distance = d if match.distance is None else min(match.distance, d)


def _report(
    source: TrainSource, eval_sets, matches: dict, options: AuditOptions, cache, hashed_rows: int, from_column: int
) -> dict:
    ordered = sorted(matches.values(), key=_match_order)
    configs = {}
    for config in source.configs:
        ids = source.config_ids(config)
        per_eval = {}
        for eval_set in eval_sets:
            inside = [m for m in ordered if m.eval_set == eval_set.name and (m.component, m.row_id) in ids]
            counts = {
                reason: len({(m.component, m.row_id) for m in inside if reason in m.reasons})
                for reason in (*IDENTITY_KEYS, "phash", "text13")
            }
            counts["flagged_rows"] = len({(m.component, m.row_id) for m in inside})
            counts["eval_figures_hit"] = len({m.figure for m in inside})
            per_eval[eval_set.name] = counts
        configs[config] = {"rows": len(ids), "eval_sets": per_eval}
    flagged: dict[str, list[str]] = defaultdict(list)
    for component, row_id in sorted({(m.component, m.row_id) for m in ordered}):
        flagged[component].append(row_id)
    return {
        "train": options.train,
        "train_kind": source.kind,
        "max_distance": options.max_distance,
        "hashed_training_figures": hashed_rows,
        "rows_with_stored_hashes": from_column,
        "hash_cache": {"path": str(cache.path), "entries": len(cache.hashes), "added": cache.added},
        "eval_sets": {e.name: _eval_summary(e) for e in eval_sets},
        "configs": configs,
        "flagged": dict(flagged),
        "matches": [_match_dict(m, eval_sets) for m in ordered],
    }


def _match_order(match: Match):
    identity = sum(key in match.reasons for key in ("sha256", "pair_id"))
    return (
        -identity,
        99 if match.distance is None else match.distance,
        -match.shared_ngrams,
        match.eval_set,
        match.figure,
        match.component,
        match.row_id,
    )


def _eval_summary(eval_set: EvalSet) -> dict:
    problems = defaultdict(int)
    for figure in eval_set.figures:
        if figure.problem:
            problems[figure.problem] += 1
    return {
        "source": eval_set.source,
        "questions": eval_set.questions,
        "figures": len(eval_set.figures),
        "figures_without_hash": dict(sorted(problems.items())),
    }


def _match_dict(match: Match, eval_sets) -> dict:
    figure = next(e for e in eval_sets if e.name == match.eval_set).figures[match.figure]
    return {
        "eval_set": match.eval_set,
        "eval_image": figure.image,
        "eval_pair_id": figure.pair_id,
        "eval_questions": figure.question_ids,
        "component": match.component,
        "row_id": match.row_id,
        "image_id": match.image_id,
        "reasons": sorted(match.reasons),
        "distance": match.distance,
        "shared_13grams": match.shared_ngrams,
        "text_fields": sorted(match.fields),
    }


__all__ = ["AuditOptions", "run_audit", "load_eval"]
