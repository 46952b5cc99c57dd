"""Search 64-bit hashes within a Hamming distance: multi-index hashing, vectorised with numpy.

The hash is cut into four 16-bit chunks. Two hashes within distance t = 4r + a (a < 4) differ, by the pigeonhole
principle, in at most r bits of one of the first a + 1 chunks or in at most r - 1 bits of one of the others, so every
candidate is found by looking up, per chunk, the buckets of the query chunk flipped in up to that many bits (137
buckets for 2 bits, 17 for 1), then checking the full distance.
Norouzi, Punjani and Fleet, "Fast Search in Hamming Space with Multi-Index Hashing", CVPR 2012.
"""

from __future__ import annotations

from itertools import combinations

import numpy as np

CHUNKS = 4
CHUNK_BITS = 16


def _flip_masks(radius: int) -> np.ndarray:
    if radius < 0:
        return np.zeros(0, dtype=np.int64)
    masks = [0]
    for flips in range(1, radius + 1):
        masks += [sum(1 << bit for bit in bits) for bits in combinations(range(CHUNK_BITS), flips)]
    return np.array(masks, dtype=np.int64)


class HashIndex:
    """All training hashes, bucketed by each 16-bit chunk; `search` returns every pair within `max_distance`.

    Each chunk's buckets are a dense table of `capacity` slots (about the mean bucket size plus one standard
    deviations), so a lookup is one row gather and the check is XOR + popcount over whole rows, with no per-bucket
    bookkeeping. Empty slots hold a sentinel whose chunk is the bucket key inverted: at least 16 - r bits from any
    query that looks that bucket up, so it can never be within the threshold (hence max_distance <= 12). The few
    entries of buckets larger than the capacity are searched through a sorted overflow list."""

    def __init__(self, hashes: np.ndarray, max_distance: int):
        if not 0 <= max_distance <= 12:
            raise ValueError(f"max_distance must be in 0..12, got {max_distance}")
        self.hashes = np.ascontiguousarray(hashes, dtype=np.uint64)
        self.max_distance = max_distance
        radius, spare = divmod(max_distance, CHUNKS)
        self.masks = [_flip_masks(radius if chunk <= spare else radius - 1) for chunk in range(CHUNKS)]
        mean = len(self.hashes) / (1 << CHUNK_BITS)
        self.capacity = max(1, int(np.ceil(mean + np.sqrt(mean))))
        self.tables, self.slot_ids, self.overflow = [], [], []
        buckets = np.arange(1 << CHUNK_BITS, dtype=np.uint64)
        for chunk in range(CHUNKS):
            keys = self._chunk(self.hashes, chunk)
            order = np.argsort(keys, kind="stable")
            counts = np.bincount(keys, minlength=1 << CHUNK_BITS)
            starts = np.concatenate([[0], np.cumsum(counts)])
            sorted_keys = keys[order]
            slot = np.arange(len(order)) - starts[sorted_keys]
            sentinel = (~buckets & np.uint64(0xFFFF)) << np.uint64(chunk * CHUNK_BITS)
            table = np.repeat(sentinel[:, None], self.capacity, axis=1)
            ids = np.full((1 << CHUNK_BITS, self.capacity), -1, dtype=np.int64)
            fits = slot < self.capacity
            table[sorted_keys[fits], slot[fits]] = self.hashes[order[fits]]
            ids[sorted_keys[fits], slot[fits]] = order[fits]
            self.tables.append(table)
            self.slot_ids.append(ids)
            spill = order[~fits]
            spill_counts = np.bincount(keys[spill], minlength=1 << CHUNK_BITS)
            spill_starts = np.concatenate([[0], np.cumsum(spill_counts)])
            self.overflow.append((spill, self.hashes[spill], spill_starts, spill_counts > 0))

    @staticmethod
    def _chunk(values: np.ndarray, chunk: int) -> np.ndarray:
        return ((values >> np.uint64(chunk * CHUNK_BITS)) & np.uint64(0xFFFF)).astype(np.int64)

    def search(self, queries: np.ndarray, block: int = 1024) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(query index, training index, distance) of every pair within max_distance, each pair once, sorted.

        Chunks are the outer loop, so that one chunk's table stays in cache while every query block uses it."""
        queries = np.asarray(queries, dtype=np.uint64)
        found = []
        for chunk, masks in enumerate(self.masks):
            for at in range(0, len(queries) if len(masks) else 0, block):
                found.append(self._search_chunk(chunk, masks, queries[at : at + block], at))
        if not found:
            return _empty()
        pairs = np.stack([np.concatenate(parts) for parts in zip(*found, strict=True)], axis=1)
        pairs = np.unique(pairs, axis=0)  # a pair close in several chunks is found once per chunk
        return pairs[:, 0], pairs[:, 1], pairs[:, 2]

    def _search_chunk(self, chunk: int, masks: np.ndarray, queries: np.ndarray, offset: int):
        keys = (self._chunk(queries, chunk)[:, None] ^ masks[None, :]).ravel()
        # One row of `capacity` slots per looked-up bucket, laid out as one long row per query, so that the XOR
        # with the query runs in place over a long inner loop.
        slots = np.take(self.tables[chunk], keys, axis=0).reshape(len(queries), -1)
        np.bitwise_xor(slots, queries[:, None], out=slots)
        distance = np.bitwise_count(slots).ravel()
        hits = np.flatnonzero(distance <= self.max_distance)
        lookup, slot = np.divmod(hits, self.capacity)
        query_ids = [lookup // len(masks) + offset]
        train_ids = [self.slot_ids[chunk][keys[lookup], slot]]
        distances = [distance[hits].astype(np.int64)]
        spill, spill_hashes, starts, spilled = self.overflow[chunk]
        crowded = np.flatnonzero(spilled[keys])  # only lookups of buckets that overflowed
        if len(crowded):
            owners = crowded // len(masks)
            found = _search_runs(queries[owners], keys[crowded], spill_hashes, starts, self.max_distance)
            query_ids.append(owners[found[0]] + offset)
            train_ids.append(spill[found[1]])
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
