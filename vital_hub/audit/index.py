"""Search 64-bit hashes within a Hamming distance: multi-index hashing, vectorised with numpy.

The hash is cut into chunks of `w_i` bits, each given a radius `r_i` with sum(r_i + 1) = t + 1. Two hashes within
distance t then differ, by the pigeonhole principle, in at most r_i bits of some chunk i, so every pair is found by
looking up, per chunk, the buckets of the query chunk flipped in up to r_i bits, then checking the full distance.
Norouzi, Punjani and Fleet, "Fast Search in Hamming Space with Multi-Index Hashing", CVPR 2012. The chunk widths
and radii are chosen for the number of hashes by a cost model (lookups, and slots checked per lookup): for 500K
hashes at t = 10 that is chunks of 17, 17, 17 and 13 bits with radii 2, 2, 2, 1 (476 lookups a query).
"""

from __future__ import annotations

import math
from itertools import combinations, combinations_with_replacement

import numpy as np

BITS = 64
MAX_WIDTH = 22  # a chunk's table has 2**width rows
# Relative costs of a bucket lookup and of one slot checked, measured on numpy 2 (only their ratio matters).
LOOKUP_COST, SLOT_COST = 1.0, 1.4


def _ball(width: int, radius: int) -> int:
    return sum(math.comb(width, k) for k in range(radius + 1)) if radius >= 0 else 0


def _capacity(mean: float) -> int:
    # Poisson-sized buckets: mean plus 1.5 standard deviations (measured: 1.0 and 2.0 were 7% slower at 500K).
    return max(1, math.ceil(mean + 1.5 * math.sqrt(mean)))


def plan_chunks(size: int, max_distance: int) -> list[tuple[int, int, int]]:
    """(first bit, width, radius) of each chunk searched, cheapest under the cost model for `size` hashes.
    Widths are enumerated; the radii of given widths by a knapsack over sum(r_i + 1) = t + 1 (r_i = -1: unused)."""
    best = None
    for count in range(2, 6):
        for widths in combinations_with_replacement(range(MAX_WIDTH, 7, -1), count):
            if sum(widths) != BITS:
                continue
            # table[j] = (cost, radii) of the chunks so far using j units of sum(r + 1)
            table = {0: (0.0, ())}
            for width in widths:
                slots = _capacity(size / 2**width)
                step = {}
                for used, (cost, radii) in table.items():
                    for units in range(0, max_distance + 2 - used):
                        radius = units - 1
                        extra = _ball(width, radius) * (LOOKUP_COST + SLOT_COST * slots)
                        key = used + units
                        if key not in step or cost + extra < step[key][0]:
                            step[key] = (cost + extra, (*radii, radius))
                table = step
            if max_distance + 1 in table and (best is None or table[max_distance + 1][0] < best[0]):
                best = (table[max_distance + 1][0], widths, table[max_distance + 1][1])
    _, widths, radii = best
    starts = np.cumsum((0, *widths[:-1])).tolist()
    return [(start, width, radius) for start, width, radius in zip(starts, widths, radii, strict=True) if radius >= 0]


def _flip_masks(width: int, radius: int) -> np.ndarray:
    masks = [0]
    for flips in range(1, radius + 1):
        masks += [sum(1 << bit for bit in bits) for bits in combinations(range(width), flips)]
    return np.array(masks, dtype=np.int64)


def _window(values: np.ndarray, end: int) -> np.ndarray:
    """The 32 bits of each hash from bit `end` on (wrapping round): none of them in a chunk that ends at `end`."""
    shift = end % BITS
    if shift:
        values = (values >> np.uint64(shift)) | (values << np.uint64(BITS - shift))
    return (values & np.uint64(0xFFFFFFFF)).astype(np.uint32)


class _Chunk:
    """One chunk's buckets: a dense table of `capacity` slots per bucket (mean size plus 1.5 standard deviations)
    holding 32 other bits of each hash (a first check: those bits alone must be within t minus the bits flipped in
    the chunk), the training ids of the slots (-1: empty), and a sorted overflow list for the few entries of
    buckets larger than the capacity."""

    def __init__(self, hashes: np.ndarray, start: int, width: int, radius: int, max_distance: int):
        self.start, self.width = start, width
        self.masks = _flip_masks(width, radius)
        flips = np.bitwise_count(self.masks.astype(np.uint64)).astype(np.int64)
        buckets = 1 << width
        self.capacity = _capacity(len(hashes) / buckets)
        # Per slot of one query's row of lookups: how many of the 32 window bits may differ.
        self.allowance = np.repeat(max_distance - flips, self.capacity).astype(np.uint8)
        keys = self.key(hashes)
        order = np.argsort(keys, kind="stable")
        starts = np.concatenate([[0], np.cumsum(np.bincount(keys, minlength=buckets))])
        sorted_keys = keys[order]
        slot = np.arange(len(order)) - starts[sorted_keys]
        fits = slot < self.capacity
        self.table = np.zeros((buckets, self.capacity), dtype=np.uint32)
        self.ids = np.full((buckets, self.capacity), -1, dtype=np.int32 if len(hashes) < 2**31 else np.int64)
        self.table[sorted_keys[fits], slot[fits]] = _window(hashes[order[fits]], start + width)
        self.ids[sorted_keys[fits], slot[fits]] = order[fits]
        self.spill = order[~fits]
        self.spill_hashes = hashes[self.spill]
        spill_counts = np.bincount(keys[self.spill], minlength=buckets)
        self.spill_starts = np.concatenate([[0], np.cumsum(spill_counts)])
        self.spilled = spill_counts > 0

    def key(self, values: np.ndarray) -> np.ndarray:
        return ((values >> np.uint64(self.start)) & np.uint64((1 << self.width) - 1)).astype(np.int64)


class HashIndex:
    """All training hashes in multi-index tables; `search` returns every pair within `max_distance`, exactly."""

    def __init__(self, hashes: np.ndarray, max_distance: int):
        if not 0 <= max_distance <= 12:
            raise ValueError(f"max_distance must be in 0..12, got {max_distance}")
        self.hashes = np.ascontiguousarray(hashes, dtype=np.uint64)
        self.max_distance = max_distance
        self.plan = plan_chunks(len(self.hashes), max_distance)
        self.chunks = [_Chunk(self.hashes, s, w, r, max_distance) for s, w, r in self.plan]

    def search(self, queries: np.ndarray, block: int = 512) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(query index, training index, distance) of every pair within max_distance, each pair once, sorted.

        Chunks are the outer loop, so that one chunk's table stays in cache while every query block uses it."""
        queries = np.asarray(queries, dtype=np.uint64)
        found = []
        for chunk in self.chunks:
            for at in range(0, len(queries), block):
                found.append(self._search_chunk(chunk, queries[at : at + block], at))
        if not found:
            return _empty()
        pairs = np.stack([np.concatenate(parts) for parts in zip(*found, strict=True)], axis=1)
        pairs = np.unique(pairs, axis=0)  # a pair close in several chunks is found once per chunk
        return pairs[:, 0], pairs[:, 1], pairs[:, 2]

    def _search_chunk(self, chunk: _Chunk, queries: np.ndarray, offset: int):
        lookups = len(chunk.masks)
        keys = (chunk.key(queries)[:, None] ^ chunk.masks[None, :]).ravel()
        # One row of `capacity` slots per looked-up bucket, laid out as one long row per query, so that the XOR
        # with the query runs in place over a long inner loop.
        slots = np.take(chunk.table, keys, axis=0).reshape(len(queries), -1)
        np.bitwise_xor(slots, _window(queries, chunk.start + chunk.width)[:, None], out=slots)
        near = np.flatnonzero(np.bitwise_count(slots) <= chunk.allowance)
        lookup, slot = np.divmod(near, chunk.capacity)
        train = chunk.ids[keys[lookup], slot].astype(np.int64)
        owner = lookup // lookups
        filled = train >= 0
        owner, train = owner[filled], train[filled]
        distance = np.bitwise_count(self.hashes[train] ^ queries[owner]).astype(np.int64)
        within = distance <= self.max_distance
        query_ids, train_ids, distances = [owner[within] + offset], [train[within]], [distance[within]]
        crowded = np.flatnonzero(chunk.spilled[keys])  # only lookups of buckets that overflowed
        if len(crowded):
            owners = crowded // lookups
            found = _search_runs(
                queries[owners], keys[crowded], chunk.spill_hashes, chunk.spill_starts, self.max_distance
            )
            query_ids.append(owners[found[0]] + offset)
            train_ids.append(chunk.spill[found[1]])
            distances.append(found[2])
        return np.concatenate(query_ids), np.concatenate(train_ids), np.concatenate(distances)


def _search_runs(queries, keys, bucketed, starts, max_distance: int):
    """One lookup per query: the candidates stored as runs per bucket (`starts`) within range, as (lookup index,
    position in `bucketed`, distance)."""
    lo = starts[keys]
    counts = starts[keys + 1] - lo
    ends = np.cumsum(counts)
    total = int(ends[-1]) if len(ends) else 0
    if total == 0:
        return _empty()
    positions = np.arange(total, dtype=np.int64) + np.repeat(lo - (ends - counts), counts)
    distance = np.bitwise_count(bucketed[positions] ^ np.repeat(queries, counts))
    keep = np.flatnonzero(distance <= max_distance)
    owners = np.searchsorted(ends, keep, side="right")
    return owners, positions[keep], distance[keep].astype(np.int64)


def _empty():
    empty = np.zeros(0, dtype=np.int64)
    return empty, empty, empty


def all_pairs(queries: np.ndarray, hashes: np.ndarray, max_distance: int):
    """The same answer as HashIndex.search by comparing every query with every hash (the baseline). One query at
    a time into reused buffers: measured faster than blocks of queries, whose temporaries leave the cache."""
    queries, hashes = np.asarray(queries, dtype=np.uint64), np.asarray(hashes, dtype=np.uint64)
    xor = np.empty_like(hashes)
    count = np.empty(len(hashes), dtype=np.uint8)
    out_q, out_t, out_d = [], [], []
    for at, query in enumerate(queries):
        np.bitwise_xor(hashes, query, out=xor)
        np.bitwise_count(xor, out=count)
        hits = np.flatnonzero(count <= max_distance)
        out_q.append(np.full(len(hits), at, dtype=np.int64))
        out_t.append(hits)
        out_d.append(count[hits].astype(np.int64))
    if not out_q:
        return _empty()
    return np.concatenate(out_q), np.concatenate(out_t).astype(np.int64), np.concatenate(out_d)
