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

    Per chunk, the hashes are also stored in bucket order, so that checking a bucket's candidates reads one
    contiguous run instead of gathering through the permutation."""

    def __init__(self, hashes: np.ndarray, max_distance: int):
        self.hashes = np.ascontiguousarray(hashes, dtype=np.uint64)
        self.max_distance = max_distance
        radius, spare = divmod(max_distance, CHUNKS)
        self.masks = [_flip_masks(radius if chunk <= spare else radius - 1) for chunk in range(CHUNKS)]
        self.orders, self.starts, self.bucketed = [], [], []
        for chunk in range(CHUNKS):
            keys = self._chunk(self.hashes, chunk)
            order = np.argsort(keys, kind="stable")
            self.orders.append(order)
            self.bucketed.append(self.hashes[order])
            counts = np.bincount(keys, minlength=1 << CHUNK_BITS)
            self.starts.append(np.concatenate([[0], np.cumsum(counts)]))

    @staticmethod
    def _chunk(values: np.ndarray, chunk: int) -> np.ndarray:
        return ((values >> np.uint64(chunk * CHUNK_BITS)) & np.uint64(0xFFFF)).astype(np.int64)

    def search(self, queries: np.ndarray, block: int = 2048) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(query index, training index, distance) of every pair within max_distance, each pair once, sorted."""
        queries = np.asarray(queries, dtype=np.uint64)
        found = [self._search_block(queries[at : at + block], at) for at in range(0, len(queries), block)]
        if not found:
            return _empty()
        return tuple(np.concatenate(parts) for parts in zip(*found, strict=True))

    def _search_block(self, queries: np.ndarray, offset: int):
        query_ids, train_ids, distances = [], [], []
        for chunk, masks in enumerate(self.masks):
            if not len(masks):
                continue
            per_key = np.repeat(queries, len(masks))  # the query hash of every looked-up bucket
            keys = (self._chunk(queries, chunk)[:, None] ^ masks[None, :]).ravel()
            starts = self.starts[chunk]
            lo = starts[keys]
            counts = starts[keys + 1] - lo
            ends = np.cumsum(counts)
            total = int(ends[-1]) if len(ends) else 0
            if total == 0:
                continue
            positions = np.arange(total, dtype=np.int64)
            positions += np.repeat(lo - (ends - counts), counts)
            distance = np.bitwise_count(self.bucketed[chunk][positions] ^ np.repeat(per_key, counts))
            keep = np.flatnonzero(distance <= self.max_distance)
            # The bucket a kept candidate came from, hence its query: only for the few kept ones.
            query_ids.append(np.searchsorted(ends, keep, side="right") // len(masks))
            train_ids.append(self.orders[chunk][positions[keep]])
            distances.append(distance[keep].astype(np.int64))
        if not query_ids:
            return _empty()
        pairs = np.stack([np.concatenate(query_ids), np.concatenate(train_ids), np.concatenate(distances)], axis=1)
        pairs = np.unique(pairs, axis=0)  # a pair close in several chunks is found once per chunk
        return pairs[:, 0] + offset, pairs[:, 1], pairs[:, 2]


def _empty():
    empty = np.zeros(0, dtype=np.int64)
    return empty, empty, empty


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
        return _empty()
    return np.concatenate(out_q).astype(np.int64), np.concatenate(out_t).astype(np.int64), np.concatenate(out_d)
