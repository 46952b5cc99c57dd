"""Search 64-bit hashes within a Hamming distance: multi-index hashing, vectorised with numpy.

The hash is cut into four 16-bit chunks. Two hashes within distance t differ, by the pigeonhole principle, in at
most floor(t / 4) bits of at least one chunk, so every candidate is found by looking up, per chunk, the buckets of
the query chunk flipped in up to r = floor(t / 4) bits (137 buckets for r = 2), then checking the full distance.
Norouzi, Punjani and Fleet, "Fast Search in Hamming Space with Multi-Index Hashing", CVPR 2012.
"""

from __future__ import annotations

from itertools import combinations

import numpy as np

CHUNKS = 4
CHUNK_BITS = 16


def _flip_masks(radius: int) -> np.ndarray:
    masks = [0]
    for flips in range(1, radius + 1):
        masks += [sum(1 << bit for bit in bits) for bits in combinations(range(CHUNK_BITS), flips)]
    return np.array(masks, dtype=np.int64)


class HashIndex:
    """All training hashes, bucketed by each 16-bit chunk; `search` returns every pair within `max_distance`."""

    def __init__(self, hashes: np.ndarray, max_distance: int):
        self.hashes = np.ascontiguousarray(hashes, dtype=np.uint64)
        self.max_distance = max_distance
        self.masks = _flip_masks(max_distance // CHUNKS)
        self.orders, self.starts = [], []
        for chunk in range(CHUNKS):
            keys = self._chunk(self.hashes, chunk)
            self.orders.append(np.argsort(keys, kind="stable"))
            counts = np.bincount(keys, minlength=1 << CHUNK_BITS)
            self.starts.append(np.concatenate([[0], np.cumsum(counts)]))

    @staticmethod
    def _chunk(values: np.ndarray, chunk: int) -> np.ndarray:
        return ((values >> np.uint64(chunk * CHUNK_BITS)) & np.uint64(0xFFFF)).astype(np.int64)

    def search(self, queries: np.ndarray, block: int = 512) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(query index, training index, distance) of every pair within max_distance, each pair once."""
        queries = np.asarray(queries, dtype=np.uint64)
        found = [self._search_block(queries[at : at + block], at) for at in range(0, len(queries), block)]
        if not found:
            empty = np.zeros(0, dtype=np.int64)
            return empty, empty, empty
        return tuple(np.concatenate(parts) for parts in zip(*found, strict=True))

    def _search_block(self, queries: np.ndarray, offset: int):
        query_ids, train_ids = [], []
        for chunk in range(CHUNKS):
            keys = self._chunk(queries, chunk)[:, None] ^ self.masks[None, :]
            lo, hi = self.starts[chunk][keys], self.starts[chunk][keys + 1]
            counts = (hi - lo).ravel()
            total = int(counts.sum())
            if total == 0:
                continue
            run_starts = np.repeat(lo.ravel(), counts)
            within = np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts)
            train_ids.append(self.orders[chunk][run_starts + within])
            query_ids.append(np.repeat(np.repeat(np.arange(len(queries)), len(self.masks)), counts))
        if not train_ids:
            empty = np.zeros(0, dtype=np.int64)
            return empty, empty, empty
        query_ids, train_ids = np.concatenate(query_ids), np.concatenate(train_ids)
        distance = np.bitwise_count(queries[query_ids] ^ self.hashes[train_ids]).astype(np.int64)
        keep = distance <= self.max_distance
        pairs = np.unique(np.stack([query_ids[keep], train_ids[keep], distance[keep]], axis=1), axis=0)
        return pairs[:, 0] + offset, pairs[:, 1], pairs[:, 2]


def all_pairs(queries: np.ndarray, hashes: np.ndarray, max_distance: int, block: int = 64):
    """The same answer as HashIndex.search by comparing every query with every hash (the baseline)."""
    queries, hashes = np.asarray(queries, dtype=np.uint64), np.asarray(hashes, dtype=np.uint64)
    out_q, out_t, out_d = [], [], []
    for at in range(0, len(queries), block):
        distance = np.bitwise_count(queries[at : at + block, None] ^ hashes[None, :])
        q, t = np.nonzero(distance <= max_distance)
        out_q.append(q + at)
        out_t.append(t)
        out_d.append(distance[q, t].astype(np.int64))
    if not out_q:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty
    return np.concatenate(out_q).astype(np.int64), np.concatenate(out_t).astype(np.int64), np.concatenate(out_d)
