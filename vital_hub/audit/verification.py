"""Verifying the candidate pairs of the hash search: each training figure that some evaluation figure's variant
came near is read once more, its regions recomputed, and the pair aligned and compared (`verify`), on worker
processes when there are several."""

from __future__ import annotations

import io
import os
from concurrent.futures import ProcessPoolExecutor

from vital_hub.audit.hashing import grey_of, stored_regions
from vital_hub.audit.regions import ORIENTATIONS
from vital_hub.audit.verify import WORK_SIDE, verify

# Candidate (orientation, region) combinations tried per pair, closest hashes first.
TRIES = 4


def _tries(found: list, lookup, train) -> list[tuple[int, int, int, tuple]]:
    """(distance, region index, orientation, evaluation box) of the closest distinct combinations."""
    out, seen = [], set()
    for distance, q, t in sorted(found):
        orientation, box = lookup.query_variant[q]
        key = (orientation, train.hash_region[t])
        if key not in seen:
            seen.add(key)
            out.append((distance, train.hash_region[t], orientation, box))
    return out[:TRIES]


def _verify_row(task) -> list[tuple[tuple, dict]]:
    """Verdicts for one training figure against every evaluation figure it is a candidate of."""
    data, pairs = task
    draft = grey_of(data)
    full = grey_of(data, WORK_SIDE)
    if draft is None or full is None:
        return [(key, None) for key, *_ in pairs]
    from PIL import Image

    width = Image.open(io.BytesIO(data)).size[0]
    to_original = width / full.shape[1]
    regions = [box for box, _ in stored_regions(draft)]
    out = []
    for key, eval_grey, eval_shape, tries in pairs:
        best = None
        for distance, region, orientation, box in tries:
            train_box = regions[region] if region < len(regions) else regions[0]
            verdict = verify(eval_grey, full, orientation, box, train_box, eval_shape, draft.shape)
            entry = {
                "confirmed": verdict.confirmed,
                "distance": distance,
                "signal": verdict.signal,
                "region": None if verdict.box is None else [round(v * to_original) for v in verdict.box],
                "confidence": round(verdict.confidence, 3),
                "correlation": round(verdict.correlation, 3),
                "orientation": ORIENTATIONS[orientation],
                "matched": "whole figure" if region == 0 else "region",
            }
            if verdict.confirmed:
                best = entry
                break
            if best is None or entry["confidence"] > best["confidence"]:
                best = entry
        out.append((key, best))
    return out


def verify_candidates(candidates: dict, lookup, eval_sets, train, source, options) -> dict:
    """(set, figure, training row) -> verdict dict (None: the training figure could not be read again)."""
    if not options.verify:
        return {
            key: {"confirmed": True, "distance": min(found)[0], "signal": "hash", "region": None,
                  "confidence": None, "correlation": None, "orientation": None, "matched": None}
            for key, found in candidates.items()
        }  # fmt: skip
    eval_greys = {}
    for s, f, _ in candidates:
        if (s, f) not in eval_greys:
            eval_greys[(s, f)] = grey_of(eval_sets[s].figures[f].data, WORK_SIDE)
    by_row: dict[int, list] = {}
    for key, found in candidates.items():
        s, f, row = key
        by_row.setdefault(row, []).append(
            (key, eval_greys[(s, f)], lookup.shapes[(s, f)], _tries(found, lookup, train))
        )
    wanted = {train.rows[row][:2]: row for row in by_row}
    tasks = ((data, by_row[wanted[key]]) for key, data in source.images(set(wanted)))
    verdicts = dict.fromkeys(candidates)
    pool = None
    if options.workers > 1:
        from vital_hub.workers import die_with_parent

        pool = ProcessPoolExecutor(options.workers, initializer=die_with_parent, initargs=(os.getpid(),))
    try:
        results = pool.map(_verify_row, tasks, chunksize=4) if pool else map(_verify_row, tasks)
        for result in results:
            verdicts.update(result)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    return verdicts
