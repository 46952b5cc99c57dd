"""Benchmark: scoring candidates with a BiomedCLIP-sized selector, `vital select`'s pipeline vs the paper's loop.

Builds, in --workdir, synthetic JPEG figures (~512 px, a few thousand reused by many candidates, as several
candidates share one figure), a candidates dataset of ~170-word texts, and a selector with BiomedCLIP's shape
(ViT-B/16 at 224 + BERT-base at 256 tokens + the 1024-512-512-512-1 head, random weights). Then, in one run:

  (a) paper     the released filter loop: batch 100, fp32, images decoded and preprocessed in the main process,
                texts padded to the 256-token context (open_clip's tokenizer does);
  (b) ceiling   the model alone on batches already on the GPU (bf16 backbone, same batch size and texts);
  (c) select    `vital_hub.selector.select.score_shards`, what `vital select` runs: worker processes decode
                (JPEG draft mode, each figure once per chunk) and tokenise (`vital_hub.selector.chunks`), uint8
                pinned batches, bf16 backbone, fp32 head;

and the input side alone (the same DataLoader, no model), with the CPU time per candidate of one busy worker and
of the main process, and how busy (c)'s main process was: whether the workers, the main process or the GPU
bounds (c).

It prints pairs/s, the speed-up over (a) and the share of (b). On one GPU:

    python benchmarks/score_candidates.py --workdir /tmp/bench --candidates 50000
    python benchmarks/score_candidates.py --tiny        # CPU smoke run of the same code at toy size
    python benchmarks/score_candidates.py --input-only --workers 1 ...   # the input side alone, any machine
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# The pieces live in benchmarks/scoring/; their names stay reachable from this script.
from benchmarks.scoring.data import (  # noqa: E402, F401
    SPECIALS,
    build_workdir,
    save_selector,
    sentence,
    vocabulary,
    write_candidates,
    write_jpeg,
)
from benchmarks.scoring.measure import (  # noqa: E402, F401
    cpu_seconds,
    describe_input,
    input_alone,
    model_alone,
    paper_loop,
    pipeline,
    ready_batches,
)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "vital-score-bench"))
    parser.add_argument("--candidates", type=int, default=50000)
    parser.add_argument("--distinct-images", type=int, default=3000)
    parser.add_argument("--image-px", type=int, default=512)
    parser.add_argument("--baseline-candidates", type=int, default=3000)
    parser.add_argument("--small", type=int, default=8000, help="size of candidates_small (multi-GPU check)")
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 3))
    parser.add_argument("--shard-size", type=int, default=8192)
    parser.add_argument("--chunk-size", type=int, default=64)
    parser.add_argument("--ceiling-batches", type=int, default=6)
    parser.add_argument("--input-batches", type=int, default=20, help="batches timed for the input side alone")
    parser.add_argument("--tiny", action="store_true", help="toy sizes, CPU: checks the benchmark runs")
    parser.add_argument(
        "--input-only", action="store_true", help="measure the input side alone (no model runs; any machine)"
    )
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)
    if args.tiny:
        args.candidates, args.distinct_images, args.image_px = 300, 40, 256
        args.baseline_candidates, args.small, args.batch_size = 100, 120, 32
        args.shard_size, args.ceiling_batches, args.workers = 64, 2, min(args.workers, 2)
        args.input_batches = 4
        args.chunk_size = 8
    return args


def main(argv=None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = parse_args(argv)
    import torch
    from transformers import AutoModel, AutoTokenizer

    from vital_hub.selector.data import FigureImages
    from vital_hub.selector.select import SelectorRef, load_candidates, load_selector

    workdir = Path(args.workdir)
    manifest = build_workdir(workdir, args)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    card = torch.cuda.get_device_name(0) if device.type == "cuda" else "CPU"
    rows, _ = load_candidates([str(workdir / "candidates")])
    rows.sort(key=lambda r: r["candidate_id"])
    images = FigureImages(workdir / "figures")
    ref = SelectorRef(workdir / "selector", "bench", "random")

    if args.input_only:
        model, tokenizer = load_selector(ref, torch.device("cpu"))
        side = input_alone(
            model, tokenizer, rows, images, args.batch_size, args.workers, args.chunk_size, args.input_batches
        )
        print(
            f"\n{os.cpu_count()} CPU cores, {len(rows)} candidates over {args.distinct_images} figures of "
            f"{args.image_px} px, batch {args.batch_size}, chunk {args.chunk_size}"
        )
        print(describe_input(side, args.workers))
        if args.json:
            Path(args.json).write_text(json.dumps({"cpu_cores": os.cpu_count(), "workers": args.workers, **side}))
        return 0

    tokenizer = AutoTokenizer.from_pretrained(ref.path)
    baseline_rows = rows[: args.baseline_candidates]
    paper_model = AutoModel.from_pretrained(ref.path, dtype=torch.float32).to(device).eval()
    paper_loop(paper_model, tokenizer, baseline_rows[:100], workdir / "figures", device)  # warm-up
    paper_seconds, _ = paper_loop(paper_model, tokenizer, baseline_rows, workdir / "figures", device)
    del paper_model
    if device.type == "cuda":
        torch.cuda.empty_cache()

    model, tokenizer = load_selector(ref, device)
    precision_name = "bf16 + fp32 head" if model.backbone_dtype() == torch.bfloat16 else "fp32"
    batches = ready_batches(
        model, tokenizer, rows, images, args.batch_size, args.ceiling_batches, args.chunk_size, device
    )
    tokens = float(np.mean([b["attention_mask"].sum(1).float().mean().item() for b in batches]))
    ceiling_seconds = model_alone(model, batches, repeats=3)
    ceiling_pairs = sum(len(b["input_ids"]) for b in batches)
    del batches
    side = input_alone(
        model, tokenizer, rows, images, args.batch_size, args.workers, args.chunk_size, args.input_batches
    )
    pipeline_seconds, main_seconds = pipeline(
        model, tokenizer, rows, images, args.batch_size, args.workers, args.shard_size, args.chunk_size
    )

    results = {
        "card": card,
        "cpu_cores": os.cpu_count(),
        "workers": args.workers,
        "mean_text_tokens": round(tokens, 1),
        "mean_jpeg_kib": round(manifest["mean_jpeg_bytes"] / 1024, 1),
        "paper_pairs_per_s": len(baseline_rows) / paper_seconds,
        "ceiling_pairs_per_s": ceiling_pairs / ceiling_seconds,
        "input_pairs_per_s": side["pairs_per_s"],
        "input_worker_cpu_ms_per_pair": side["worker_cpu_ms_per_pair"],
        "input_main_cpu_ms_per_pair": side["main_cpu_ms_per_pair"],
        "select_main_process_busy": main_seconds / pipeline_seconds,
        "select_pairs_per_s": len(rows) / pipeline_seconds,
        "select_candidates": len(rows),
        "select_seconds": pipeline_seconds,
    }
    paper, ceiling, ours = (results[k] for k in ("paper_pairs_per_s", "ceiling_pairs_per_s", "select_pairs_per_s"))
    print(
        f"\ncard: {card}, {os.cpu_count()} CPU cores, {args.workers} decode workers, "
        f"texts {tokens:.0f} tokens on average, JPEGs {results['mean_jpeg_kib']} KiB ({args.image_px} px)"
    )
    print(
        f"{'method':<10} {'candidates':>10} {'batch':>6} {'precision':>14} {'pairs/s':>9} {'vs paper':>9} "
        f"{'of ceiling':>10}"
    )
    table = [
        ("paper", len(baseline_rows), 100, "fp32", paper),
        ("ceiling", ceiling_pairs, args.batch_size, precision_name, ceiling),
        ("select", len(rows), args.batch_size, precision_name, ours),
    ]
    for name, n, batch, precision, rate in table:
        print(
            f"{name:<10} {n:>10} {batch:>6} {precision:>14} {rate:>9.1f} {rate / paper:>8.1f}x "
            f"{100 * rate / ceiling:>9.0f}%"
        )
    print(f"{describe_input(side, args.workers)}; {100 * side['pairs_per_s'] / ceiling:.0f}% of the ceiling")
    print(f"select's main process (feeds the GPU) was busy {100 * main_seconds / pipeline_seconds:.0f}% of its run")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
