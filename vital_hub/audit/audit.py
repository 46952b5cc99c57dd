"""The audit itself: identity matches, verified perceptual copies and copied text, per eval set and config.

One streaming pass over the training components (each read once, whatever the configs): identity keys and text
shingles are checked row by row, figures' region hashes are read from the repo (or hashed through the
sha256-keyed cache), then every variant of the evaluation figures (framings, flips and turns, crops, panels) is
searched in a multi-index over all training region hashes; each candidate pair is verified (aligned and compared
pixel by pixel) before it is reported.
"""

from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from vital_hub.audit.data import EvalSet, TrainSource, load_eval, open_training
from vital_hub.audit.hashing import HashCache, Hasher, grey_of, query_variants, sha256_hex
from vital_hub.audit.index import HashIndex
from vital_hub.audit.text import TextIndex
from vital_hub.audit.verification import verify_candidates

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
    verify: bool = True
    uneven_crops: bool = True

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
    text: list[dict] = field(default_factory=list)  # copied texts: field, score, rare shingles, exact
    figure_match: dict | None = None  # the verified figure match: signal, region, confidence, orientation


class _EvalLookup:
    """Identity keys, texts and query variants of every evaluation figure, for the training pass."""

    def __init__(self, eval_sets: list[EvalSet], workers: int = 1, uneven_crops: bool = True):
        self.keys: dict[str, dict[str, list[tuple[int, int]]]] = {k: defaultdict(list) for k in IDENTITY_KEYS}
        texts = []
        query_values, self.query_owner, self.query_variant = [], [], []
        self.shapes: dict[tuple[int, int], tuple[int, int]] = {}  # (set, figure) -> decoded size the boxes refer to
        figures = [(s, f, fig) for s, e in enumerate(eval_sets) for f, fig in enumerate(e.figures) if fig.data]
        variants = dict(
            zip(
                [(s, f) for s, f, _ in figures],
                _map(partial(_variants, uneven=uneven_crops), [fig.data for *_, fig in figures], workers),
                strict=True,
            )
        )
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
                    if variants[(s, f)] is None:
                        figure.problem = "unreadable"
                        continue
                    self.shapes[(s, f)], found = variants[(s, f)]
                    for value, orientation, box in found:
                        query_values.append(value)
                        self.query_owner.append((s, f))
                        self.query_variant.append((orientation, box))
            for text in eval_set.texts:
                texts.append(((s, figure_of[text.question_id], text.field), text.text))
        self.text = TextIndex(texts)
        self.queries = np.array(query_values, dtype=np.uint64)


def _variants(data: bytes, uneven: bool = True):
    """(decoded size, query variants) of an evaluation figure, or None when it does not decode."""
    grey = grey_of(data)
    return None if grey is None else (grey.shape, query_variants(grey, uneven))


def _map(function, items: list, workers: int) -> list:
    """function over items, on worker processes (which die with the audit) when there are several."""
    if workers <= 1 or len(items) < 2:
        return [function(item) for item in items]
    from concurrent.futures import ProcessPoolExecutor

    from vital_hub.workers import die_with_parent

    with ProcessPoolExecutor(workers, initializer=die_with_parent, initargs=(os.getpid(),)) as pool:
        return list(pool.map(function, items, chunksize=max(1, len(items) // (8 * workers))))


def run_audit(options: AuditOptions) -> dict:
    eval_sets = [load_eval(spec) for spec in options.evals]
    source = open_training(options.train, options.configs)
    names = [e.name for e in eval_sets]
    if len(set(names)) != len(names):
        raise ValueError(f"--eval names must be distinct, got {names}")
    lookup = _EvalLookup(eval_sets, options.workers, options.uneven_crops)
    cache = HashCache(options.hash_cache or options.out / "figure_hashes.jsonl")
    hasher = Hasher(cache, options.workers)
    matches: dict[tuple, Match] = {}
    train = _Training()
    try:
        for component in source.components:
            rows = source.rows(component)
            batch = []
            for row in tqdm(rows, desc=f"audit {component}", unit=" rows", disable=not options.show_progress):
                batch.append(row)
                if len(batch) == 256:
                    _check_batch(batch, hasher, lookup, eval_sets, matches, train)
                    batch = []
            _check_batch(batch, hasher, lookup, eval_sets, matches, train)
    finally:
        hasher.close()
    _copied_texts(lookup, eval_sets, train, matches)
    verification = _near_duplicates(lookup, eval_sets, train, source, options, matches)
    return _report(source, eval_sets, matches, options, cache, train, verification)


class _Training:
    """What the pass keeps of the training rows: ids of every row, and each region hash with its row."""

    def __init__(self):
        self.rows: list[tuple[str, str, str | None]] = []
        self.hashes: list[int] = []
        self.hash_row: list[int] = []
        self.hash_region: list[int] = []
        self.hashed_rows = 0
        self.from_column = 0


def _match(matches, eval_sets, s: int, f: int, component: str, row_id: str, image_id) -> Match:
    key = (s, f, component, row_id)
    if key not in matches:
        matches[key] = Match(eval_sets[s].name, f, component, row_id, image_id)
    return matches[key]


def _check_batch(batch, hasher, lookup, eval_sets, matches, train: _Training) -> None:
    if not batch:
        return
    hashed = hasher.hash_batch([None if row.stored else row.image for row in batch])
    for row, (digest, values) in zip(batch, hashed, strict=True):
        if row.stored:  # hashed when the repo was built
            digest = row.sha256 or (sha256_hex(row.image) if row.image else None)
            values = row.phash
        for key, found in (("pair_id", row.pair_id), ("pmid", row.pmid), ("pmcid", row.pmcid), ("sha256", digest)):
            for s, f in lookup.keys[key].get(str(found), ()) if found else ():
                _match(matches, eval_sets, s, f, row.component, row.row_id, row.pair_id).reasons.add(key)
        lookup.text.scan(row.text)
        index = len(train.rows)
        train.rows.append((row.component, row.row_id, row.pair_id))
        if values:
            train.hashed_rows += 1
            train.hashes += values
            train.hash_row += [index] * len(values)
            train.hash_region += range(len(values))
    train.from_column += sum(row.stored for row in batch)


def _copied_texts(lookup, eval_sets, train: _Training, matches) -> None:
    for found in lookup.text.matches():
        s, f, text_field = lookup.text.keys[found.item]
        component, row_id, image_id = train.rows[found.row]
        match = _match(matches, eval_sets, s, f, component, row_id, image_id)
        match.reasons.add("text")
        match.text.append(
            {
                "field": text_field,
                "score": round(found.score, 3),
                "rare_shingles": found.rare_shared,
                "exact": found.exact,
            }
        )


def _near_duplicates(lookup, eval_sets, train: _Training, source, options, matches) -> dict:
    """Search every query variant, verify the candidates, record the confirmed ones; returns the candidate pairs
    (evaluation figure, training row), how many verification rejected and the CPU seconds it took."""
    if not train.hashes or not len(lookup.queries):
        return {"candidate_pairs": 0, "rejected": 0, "cpu_s": 0.0}
    index = HashIndex(np.array(train.hashes, dtype=np.uint64), options.max_distance)
    query_ids, hash_ids, distances = index.search(lookup.queries)
    candidates: dict[tuple, list] = defaultdict(list)  # (set, figure, training row) -> [(distance, query, hash)]
    for q, t, d in zip(query_ids.tolist(), hash_ids.tolist(), distances.tolist(), strict=True):
        s, f = lookup.query_owner[q]
        candidates[(s, f, train.hash_row[t])].append((d, q, t))
    verdicts, cpu = verify_candidates(candidates, lookup, eval_sets, train, source, options)
    rejected = 0
    for (s, f, row), verdict in verdicts.items():
        if verdict is None or not verdict["confirmed"]:
            rejected += 1
            continue
        component, row_id, image_id = train.rows[row]
        match = _match(matches, eval_sets, s, f, component, row_id, image_id)
        match.reasons.add("phash")
        match.distance = verdict.pop("distance")
        del verdict["confirmed"]
        match.figure_match = verdict
    return {"candidate_pairs": len(candidates), "rejected": rejected, "cpu_s": round(cpu, 2)}


def _report(source: TrainSource, eval_sets, matches: dict, options: AuditOptions, cache, train, verification) -> dict:
    ordered = sorted(matches.values(), key=_match_order)
    configs = {}
    for config in source.configs:
        ids = source.config_ids(config)
        per_eval = {}
        for eval_set in eval_sets:
            inside = [m for m in ordered if m.eval_set == eval_set.name and (m.component, m.row_id) in ids]
            counts = {
                reason: len({(m.component, m.row_id) for m in inside if reason in m.reasons})
                for reason in (*IDENTITY_KEYS, "phash", "text")
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
        "verified": options.verify,
        "uneven_crops": options.uneven_crops,
        "hashed_training_figures": train.hashed_rows,
        "region_hashes": len(train.hashes),
        "rows_with_stored_hashes": train.from_column,
        "candidates_rejected": verification["rejected"],
        "verification": verification,
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
        -max([t["score"] for t in match.text], default=0),
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
        "figure_match": match.figure_match,
        "text": sorted(match.text, key=lambda t: (t["field"], -t["score"])),
    }


__all__ = ["AuditOptions", "run_audit", "load_eval"]
