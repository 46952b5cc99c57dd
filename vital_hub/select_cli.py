"""`vital select`: its options, checked before anything heavy is imported, then the steps of
`vital_hub.selector.select` (see there for what is written and how a re-run resumes).

    vital select --selector PATH_OR_REPO --candidates DIR_OR_FILES --images DIR (--top K | --top-percent P) --out DIR
    accelerate launch --num_processes 8 -m vital_hub.cli select ...      # one process per GPU
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

from vital_hub.cli_args import DefaultsOnce, non_negative_float, option_check, percent, positive_int


def parse_quotas(text: str | None) -> str | dict[str, float] | None:
    """`proportional` or `chest_xray=0.3,mri=0.2,...` (fractions, renormalised)."""
    if text is None or text == "proportional":
        return text
    quotas = {}
    for part in text.split(","):
        name, _, value = part.partition("=")
        try:
            quotas[name.strip()] = non_negative_float(value)
        except argparse.ArgumentTypeError as err:
            raise argparse.ArgumentTypeError(f"bad quota {part!r}: expected domain=fraction ({err})") from err
    if not any(quotas.values()):
        raise argparse.ArgumentTypeError(f"bad quotas {text!r}: at least one domain needs a share above 0")
    return quotas


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        formatter_class=DefaultsOnce,
        prog="vital select",
        description="Score every candidate with a trained selector and keep the top ones.",
    )
    parser.add_argument("--selector", required=True, help="selector folder or Hub model repo id")
    parser.add_argument("--revision", help="Hub revision of the selector (branch, tag or commit)")
    parser.add_argument("--candidates", nargs="+", required=True, help="candidates repo folder(s) or parquet files")
    parser.add_argument("--images", help="folder of <pair_id>.jpg figures")
    parser.add_argument("--figures", help="figures dataset folder or Hub repo (read through the figure store)")
    size = parser.add_mutually_exclusive_group(required=True)
    size.add_argument("--top", type=positive_int, help="keep this many candidates")
    size.add_argument("--top-percent", type=percent, help="keep this percentage of the scored candidates")
    parser.add_argument(
        "--domain-quotas",
        type=parse_quotas,
        help="'proportional' (each domain keeps its share of the candidates) or 'chest_xray=0.3,mri=0.2,...'; "
        "default: one global ranking, as the paper",
    )
    parser.add_argument("--out", required=True, help="output folder (re-run the same command to resume)")
    parser.add_argument("--batch-size", type=positive_int, default=256, help="candidates per forward pass")
    parser.add_argument("--shard-size", type=positive_int, default=8192, help="candidates per resumable work unit")
    parser.add_argument(
        "--chunk-size", type=positive_int, default=64, help="candidates a decoding worker prepares at once"
    )
    parser.add_argument(
        "--workers",
        type=option_check("num_workers"),
        help="decoding processes per GPU, 0: in the main process (default: CPUs / GPUs - 2)",
    )
    parser.add_argument(
        "--num-workers", dest="workers", type=option_check("num_workers"), help=argparse.SUPPRESS
    )  # old spelling
    parser.add_argument("--dtype", choices=("auto", "bf16", "fp32"), default="auto", help="backbone precision")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="show a progress bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from vital_hub.selector import select
    from vital_hub.selector.select import (
        candidates_fingerprint,
        check_run,
        load_candidates,
        load_selector,
        resolve_selector,
        score_shards,
        shard_done,
        write_selection,
    )

    rows, skipped = load_candidates(args.candidates)  # bad input fails before a model is loaded
    if not rows:
        raise SystemExit("no candidates with status 'ok' to score")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch
    from accelerate import PartialState

    from vital_hub.selector.data import FigureImages

    # Without a GPU, several processes (torchrun, accelerate launch --cpu) talk over gloo.
    state = PartialState(cpu=not torch.cuda.is_available())
    ref = resolve_selector(args.selector, args.revision)
    model, tokenizer = load_selector(ref, state.device, args.dtype)
    if model.config.uses_images and not (args.images or args.figures):
        raise SystemExit("this selector reads images: pass --images DIR or --figures PATH_OR_REPO")
    images = FigureImages(args.images, args.figures) if model.config.uses_images else None

    out = Path(args.out)
    scores_dir = out / "scores"
    n_shards = math.ceil(len(rows) / args.shard_size)
    run = {
        "version": select.SCORE_SCHEMA_VERSION,
        "selector": ref.name,
        "selector_revision": ref.revision,
        "candidates": candidates_fingerprint(rows),
        "shard_size": args.shard_size,
        "batch_size": args.batch_size,
    }
    if state.is_main_process:
        check_run(scores_dir, run)
    state.wait_for_everyone()
    check_run(scores_dir, run)

    mine = [s for s in range(n_shards) if s % state.num_processes == state.process_index]
    todo = [(s, range(s * args.shard_size, min(len(rows), (s + 1) * args.shard_size))) for s in mine]
    todo = [(s, r) for s, r in todo if not shard_done(scores_dir, s)]
    workers = args.workers
    if workers is None:
        workers = max(1, (os.cpu_count() or 2) // state.num_processes - 2)  # leave the main process a core
    started = time.perf_counter()
    scored = 0
    if todo:
        scored = score_shards(
            model,
            tokenizer,
            rows,
            todo,
            images,
            scores_dir,
            args.batch_size,
            workers,
            chunk_size=args.chunk_size,
            progress=args.progress and state.is_local_main_process,
        )
    seconds = time.perf_counter() - started
    print(
        f"[rank {state.process_index}] scored {scored} candidates in {seconds:.1f}s "
        f"({len(mine) - len(todo)} of {len(mine)} shards were already done)"
    )
    state.wait_for_everyone()
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    if not state.is_main_process:
        return 0
    unfinished = [s for s in range(n_shards) if not shard_done(scores_dir, s)]
    if unfinished:
        raise SystemExit(f"shards {unfinished[:10]} are not finished; re-run the same command to resume")
    k = args.top if args.top is not None else int(len(rows) * args.top_percent / 100)
    summary = write_selection(
        out,
        rows,
        scores_dir,
        n_shards,
        k,
        args.domain_quotas,
        ref,
        {"skipped_by_status": skipped, "candidates": len(rows), "processes": state.num_processes},
    )
    print(json.dumps({key: summary[key] for key in ("selector_revision", "scored", "kept", "unreadable_images")}))
    return 0
