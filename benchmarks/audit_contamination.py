"""Contamination audit at real scale: the multi-index search vs all pairs over realistic figure hashes, the cost of
the evaluation side's variants and of verification, and figure hashing, in the same run.

    python benchmarks/audit_contamination.py [--train 500000] [--eval 10000] [--base 1500] [--eval-base 100]

Realistic hashes, not uniform random bits: `--base` figures are generated (vital_hub.audit.planted: charts drawn
from 60 templates, microscopy-like, radiograph-like, photos, compound figures) and hashed for real, region by
region, as `vital build instructions` stores them; the `--train` training figures are these figures' hash sets,
each hash with 10-24 random bits flipped (other figures that share the structure of one: templates, modalities),
which keeps the real clustering. `--eval-base` evaluation figures get their real query variants (framings in 8
orientations, crops, panels); the `--eval` figures are those variant sets with 10-24 bits flipped per hash, and one
training figure per evaluation figure is a near copy (its base's regions, 0-4 bits flipped) that must be found.
The baseline is `all_pairs` (numpy XOR + popcount of one query against every hash into reused buffers, the fastest
all-pairs loop found) over `--subset` queries, scaled to all of them. The index's answer on the subset must equal it.

Also measured: CPU time of one evaluation figure's variants, of one verification (align + compare) of a candidate
pair as the audit verifies it, and the verification of all candidate pairs projected from it; figure hashing
(regions) on 2 processes against imagehash's pHash of the fully decoded figure. `--train 0` skips the search.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.audit_support import generated_figure  # noqa: E402
from vital_hub.audit.audit import DEFAULT_MAX_DISTANCE  # noqa: E402
from vital_hub.audit.hashing import (  # noqa: E402
    HashCache,
    Hasher,
    _grey,
    figure_hashes,
    grey_of,
    query_variants,
    stored_regions,
)
from vital_hub.audit.index import HashIndex, all_pairs  # noqa: E402
from vital_hub.audit.planted import KINDS, chart, figure, jpeg  # noqa: E402


def _flip(values: np.ndarray, rng, low: int, high: int) -> np.ndarray:
    """Each hash with a random number (low..high) of distinct random bits flipped."""
    counts = rng.integers(low, high + 1, size=len(values))
    noise = np.zeros(len(values), dtype=np.uint64)
    for bit_rank in range(high):
        bits = rng.integers(0, 64, size=len(values)).astype(np.uint64)
        chosen = (np.uint64(1) << bits) & ~noise
        noise |= np.where(bit_rank < counts, chosen, np.uint64(0))
    return values ^ noise


def _base_figure(k: int):
    if k % 3 == 0:
        return chart(k % 60, k)  # 60 templates, other data
    return figure(KINDS[1 + k % 4], k)


def realistic_hashes(args, rng):
    """(training hashes, their figure, queries, their evaluation figure, planted copy per evaluation figure)."""
    base = [[v for _, v in stored_regions(np.asarray(_grey(jpeg(_base_figure(k)))))] for k in range(args.base)]
    start = time.process_time()
    eval_grey = [np.asarray(_grey(jpeg(figure(KINDS[k % 5], 900_000 + k)))) for k in range(args.eval_base)]
    variants = [[v for v, _, _ in query_variants(g)] for g in eval_grey]
    variant_cpu = (time.process_time() - start) / args.eval_base
    eval_regions = [[v for _, v in stored_regions(g)] for g in eval_grey]
    owner = np.repeat(np.arange(args.train), [len(base[i % args.base]) for i in range(args.train)])
    train = np.concatenate([np.array(base[i % args.base], dtype=np.uint64) for i in range(args.train)])
    train = _flip(train, rng, 10, 24)
    starts = np.searchsorted(owner, np.arange(args.train + 1))  # owner is sorted: figure i's hashes
    for e in range(args.eval_base):  # training figure e is a near copy of evaluation figure e
        copy = _flip(np.array(eval_regions[e], dtype=np.uint64), rng, 0, 4)
        rows = np.arange(starts[e], starts[e + 1])
        train[rows[: len(copy)]] = copy[: len(rows)]
    query_owner = np.repeat(np.arange(args.eval), [len(variants[e % args.eval_base]) for e in range(args.eval)])
    queries = np.concatenate([np.array(variants[e % args.eval_base], dtype=np.uint64) for e in range(args.eval)])
    originals = np.isin(query_owner, np.arange(args.eval_base))
    queries[~originals] = _flip(queries[~originals], rng, 10, 24)  # other evaluation figures
    first = np.searchsorted(query_owner, np.arange(args.eval_base, args.eval))
    later = np.arange(args.eval_base, args.eval)  # the other evaluation figures' copies: their first variant, near
    train[starts[later]] = _flip(queries[first], rng, 0, 4)
    return train, owner, queries, query_owner, variant_cpu


def clustering(values: np.ndarray) -> dict:
    buckets = np.bincount((values >> np.uint64(47)).astype(np.int64), minlength=1 << 17)
    return {"largest_17bit_bucket": int(buckets.max()), "mean_17bit_bucket": round(float(buckets.mean()), 2)}


def search_benchmark(args) -> dict:
    rng = np.random.default_rng(0)
    train, owner, queries, query_owner, variant_cpu = realistic_hashes(args, rng)
    start = time.perf_counter()
    index = HashIndex(train, DEFAULT_MAX_DISTANCE)
    built = time.perf_counter() - start
    subset = rng.choice(len(queries), size=min(args.subset, len(queries)), replace=False)
    searched, brute = [], []
    for _ in range(args.repeat):  # the machine is shared: alternate, keep each side's fastest
        start = time.perf_counter()
        q, t, _ = index.search(queries)
        searched.append(time.perf_counter() - start)
        start = time.perf_counter()
        pairs_q, pairs_t, _ = all_pairs(queries[subset], train, DEFAULT_MAX_DISTANCE)
        brute.append((time.perf_counter() - start) * len(queries) / len(subset))
    searched, brute = min(searched), min(brute)
    sub_q, sub_t, _ = index.search(queries[subset])
    assert sorted(zip(sub_q.tolist(), sub_t.tolist(), strict=True)) == sorted(
        zip(pairs_q.tolist(), pairs_t.tolist(), strict=True)
    )
    candidates = {(int(a), int(b)) for a, b in zip(query_owner[q], owner[t], strict=True)}
    found = sum((e, e) in candidates for e in range(args.eval))
    return {
        "train_figures": args.train,
        "train_region_hashes": len(train),
        "eval_figures": args.eval,
        "query_hashes": len(queries),
        "training_hash_clustering": clustering(train),
        "max_distance": DEFAULT_MAX_DISTANCE,
        "index_build_s": round(built, 2),
        "index_search_s": round(searched, 2),
        "all_pairs_s_scaled": round(brute, 1),
        "speedup_search": round(brute / searched, 1),
        "speedup_build_plus_search": round(brute / (built + searched), 1),
        "candidate_pairs": len(candidates),
        "candidate_pairs_per_eval_figure": round(len(candidates) / args.eval, 2),
        "planted_found": f"{found}/{args.eval}",
        "eval_variants_cpu_s_per_figure": round(variant_cpu, 3),
    }


def verification_benchmark(args, candidate_pairs: int | None = None) -> dict:
    """CPU time of verifying one candidate pair as the audit does (`vital_hub.audit.verification`: the training
    figure decoded, the evaluation figure's view made, aligned and compared), over copies (confirmed) and
    look-alikes (rejected): a template chart with other data, another figure of the same modality, an unrelated
    figure. The evaluation side's cache is emptied before each pair: at 10K evaluation figures the pairs of one
    evaluation figure are far apart in the training set, so nothing is reused (the worst case)."""
    from vital_hub.audit import verification

    pairs = []
    for k in range(args.verify):
        kind = KINDS[k % 5]
        original = figure(kind, 800_000 + k)
        copy = original.resize((original.width // 2, original.height // 2))
        pairs.append((jpeg(original), jpeg(copy), True))
        pairs.append((jpeg(chart(k, 1)), jpeg(chart(k, 2)), False))
        pairs.append((jpeg(original), jpeg(figure(kind, 810_000 + k)), False))
        pairs.append((jpeg(original), jpeg(figure(KINDS[(k + 2) % 5], 820_000 + k)), False))
    right, cpu = 0, 0.0
    for n, (eval_data, train_data, same) in enumerate(pairs):
        verification._EVAL_GREYS.clear()
        verification._EVAL_VIEWS.clear()
        shape = grey_of(eval_data).shape
        whole = (0, 0, shape[1], shape[0])
        [(_, verdict)], seconds = verification._verify_row(
            (train_data, [(n, n, eval_data, shape, [(0, 0, 0, whole)])])
        )
        right += (verdict is not None and verdict["confirmed"]) == same
        cpu += seconds
    out = {"pairs": len(pairs), "verdicts_right": right, "cpu_s_per_pair": round(cpu / len(pairs), 4)}
    if candidate_pairs:
        total = candidate_pairs * cpu / len(pairs)
        out["projected_verification"] = (
            f"{candidate_pairs:,} pairs: {total:,.0f} CPU-s, {total / 2 / 60:.1f} min on 2 cores"
        )
    return out


def pmc_sized_figure(seed: int) -> bytes:
    """A 1,000 x 800 px figure with film-grain texture, so that the JPEG is PMC-sized (~150-250 KB), not a
    smooth drawing that compresses to a few KB and decodes too fast."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    base = np.asarray(generated_figure(seed, (1000, 800)), dtype=np.int16)
    grain = rng.normal(0, 6, size=base.shape[:2])[..., None]
    return jpeg(Image.fromarray(np.clip(base + grain, 0, 255).astype(np.uint8)), 90)


def hashing_benchmark(args) -> dict:
    figures = [pmc_sized_figure(k) for k in range(args.figures)]
    with tempfile.TemporaryDirectory() as folder:
        hasher = Hasher(HashCache(Path(folder) / "cache.jsonl"), workers=2)
        hasher.hash_batch(figures[:8])  # start the workers (their first pHash imports scipy)
        elapsed = []
        for _ in range(args.repeat):
            hasher.cache.hashes.clear()
            start = time.perf_counter()
            hasher.hash_batch(figures[8:])
            elapsed.append(time.perf_counter() - start)
        elapsed = min(elapsed)
        hasher.close()
    import io

    import imagehash
    from PIL import Image

    imagehash.phash(Image.open(io.BytesIO(figures[0])))  # warm up, as the workers were
    start = time.perf_counter()
    for data in figures[8:58]:
        imagehash.phash(Image.open(io.BytesIO(data)))
    plain = (time.perf_counter() - start) / 50
    start = time.process_time()
    sample = figures[8:108]
    for data in sample:
        figure_hashes(data)
    cpu = (time.process_time() - start) / len(sample)
    return {
        "figures": len(figures) - 8,
        "cpu_ms_per_figure_draft": round(cpu * 1000, 2),
        "figures_per_s_2_cores_from_cpu_time": round(2 / cpu, 1),
        "mean_jpeg_kb": round(sum(map(len, figures)) / len(figures) / 1024, 1),
        "figures_per_s_2_processes": round((len(figures) - 8) / elapsed, 1),
        "baseline_full_decode_1_process_figures_per_s": round(1 / plain, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--train", type=int, default=500_000)
    parser.add_argument("--eval", type=int, default=10_000)
    parser.add_argument("--base", type=int, default=1500)
    parser.add_argument("--eval-base", type=int, default=100)
    parser.add_argument("--subset", type=int, default=2000)
    parser.add_argument("--figures", type=int, default=400)
    parser.add_argument("--verify", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--candidate-pairs", type=int, help="with --train 0: project verification over this many")
    args = parser.parse_args()
    search = search_benchmark(args) if args.train else {}
    print({"search": search}, flush=True)
    pairs = search.get("candidate_pairs", args.candidate_pairs)
    print({"verification": verification_benchmark(args, pairs)}, flush=True)
    print({"hashing": hashing_benchmark(args)})


if __name__ == "__main__":
    main()
