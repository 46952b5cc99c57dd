"""Verifying the candidate pairs of the hash search: each training figure that some evaluation figure's variant
came near is read once more (decoded in draft mode, large enough for its smallest matched region), its regions
recomputed when a candidate matched one, and the pair aligned and compared (`verify`), on worker processes when
there are several. Per pair, the closest (orientation, region) combinations are tried in turn until one confirms;
evaluation figures' views are cached per process."""

from __future__ import annotations

import io
import os
import time
from collections import OrderedDict
from concurrent.futures import ProcessPoolExecutor

from vital_hub.audit.hashing import grey_of, stored_regions
from vital_hub.audit.regions import ORIENTATIONS, orient
from vital_hub.audit.verify import WORK_SIDE, part_of, verify_views, view

# Candidate (orientation, region) combinations tried per pair, closest hashes first.
TRIES = 4
# Evaluation figures are decoded with at least this many pixels a side (a panel of one is compared at working
# size); training figures with enough that their smallest matched region has WORK_SIDE, up to MAX_SIDE.
EVAL_SIDE, MAX_SIDE = 2 * WORK_SIDE, 4 * WORK_SIDE


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


def _verify_row(task) -> tuple[list[tuple[tuple, dict]], float]:
    """(verdicts for one training figure against every evaluation figure it is a candidate of, CPU seconds)."""
    start = time.process_time()
    out = _verdicts(*task)
    return out, time.process_time() - start


class _Lru(OrderedDict):
    """A dict that forgets its least recently used entries beyond `size`."""

    def __init__(self, size: int):
        super().__init__()
        self.size = size

    def get_or(self, key, make):
        if key in self:
            self.move_to_end(key)
            return self[key]
        value = self[key] = make()
        if len(self) > self.size:
            self.popitem(last=False)
        return value


# Per process: evaluation figures decoded, and their views (ORB features) per orientation and part, reused by every
# training figure that is a candidate of them (the pool's tasks are training figures, in storage order).
_EVAL_GREYS, _EVAL_VIEWS = _Lru(64), _Lru(256)


def _eval_view(figure_id, data: bytes, orientation: int, box, shape):
    """(view, box in pixels of the oriented decoded figure) of an evaluation figure for a variant's box given in
    pixels of the figure decoded at `shape`."""
    grey = _EVAL_GREYS.get_or(figure_id, lambda: grey_of(data, EVAL_SIDE))
    if grey is None:
        return None, None
    ratio = (grey.shape[0] / shape[0] + grey.shape[1] / shape[1]) / 2
    box = [v * ratio for v in box]
    oriented = orient(grey, orientation) if orientation else grey
    part = part_of(oriented, box)
    return _EVAL_VIEWS.get_or((figure_id, orientation, part), lambda: view(oriented, part)), box


def _verdicts(data, pairs) -> list[tuple[tuple, dict]]:
    draft = grey_of(data)
    if draft is None:
        return [(key, None) for key, *_ in pairs]
    regions = [(0, 0, draft.shape[1], draft.shape[0])]
    if any(region for *_, tries in pairs for _, region, _, _ in tries):  # the regions only when a try needs one
        regions = [box for box, _ in stored_regions(draft)]
    boxes = [[regions[region] if region < len(regions) else regions[0] for _, region, _, _ in tries]
             for *_, tries in pairs]  # fmt: skip
    # Decoded large enough that the smallest matched region is WORK_SIDE pixels a side (not beyond MAX_SIDE).
    smallest = min(max((r - left) / draft.shape[1], (b - top) / draft.shape[0]) for row in boxes
                   for left, top, r, b in row)  # fmt: skip
    full = grey_of(data, min(MAX_SIDE, round(WORK_SIDE / max(smallest, 1e-3))))
    if full is None:
        return [(key, None) for key, *_ in pairs]
    from PIL import Image

    to_original = Image.open(io.BytesIO(data)).size[0] / full.shape[1]
    ratio = (full.shape[0] / draft.shape[0] + full.shape[1] / draft.shape[1]) / 2
    targets = {}
    out = []
    for (key, figure_id, eval_data, eval_shape, tries), train_boxes in zip(pairs, boxes, strict=True):
        best = None
        for (distance, region, orientation, box), train_box in zip(tries, train_boxes, strict=True):
            source, eval_box = _eval_view(figure_id, eval_data, orientation, box, eval_shape)
            if source is None:
                break
            train_box = [v * ratio for v in train_box]
            part = part_of(full, train_box)
            if part not in targets:
                targets[part] = view(full, part)
            verdict = verify_views(source, targets[part], eval_box, train_box)
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


def verify_candidates(candidates: dict, lookup, eval_sets, train, source, options) -> tuple[dict, float]:
    """((set, figure, training row) -> verdict dict (None: the training figure could not be read again), CPU seconds
    spent verifying, worker processes included)."""
    if not options.verify:
        return {
            key: {"confirmed": True, "distance": min(found)[0], "signal": "hash", "region": None,
                  "confidence": None, "correlation": None, "orientation": None, "matched": None}
            for key, found in candidates.items()
        }, 0.0  # fmt: skip
    _EVAL_GREYS.clear()  # keyed by (set, figure): another audit in this process has other figures there
    _EVAL_VIEWS.clear()
    by_row: dict[int, list] = {}
    for key, found in candidates.items():
        s, f, row = key
        by_row.setdefault(row, []).append(
            (key, (s, f), eval_sets[s].figures[f].data, lookup.shapes[(s, f)], _tries(found, lookup, train))
        )
    wanted = {train.rows[row][:2]: row for row in by_row}
    tasks = ((data, by_row[wanted[key]]) for key, data in source.images(set(wanted)))
    verdicts = dict.fromkeys(candidates)
    pool = None
    if options.workers > 1:
        from vital_hub.workers import die_with_parent

        pool = ProcessPoolExecutor(options.workers, initializer=die_with_parent, initargs=(os.getpid(),))
    cpu = 0.0
    try:
        results = pool.map(_verify_row, tasks, chunksize=4) if pool else map(_verify_row, tasks)
        for result, seconds in results:
            verdicts.update(result)
            cpu += seconds
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    return verdicts, cpu
