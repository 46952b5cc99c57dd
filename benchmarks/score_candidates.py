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
import math
import os
import random
import shutil
import sys
import tempfile
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


# ---------------------------------------------------------------- synthetic data


def write_jpeg(task: tuple[Path, int, int]) -> int:
    """A smooth, noisy, blob-filled picture (compresses and decodes like a real figure, unlike a flat colour)."""
    from PIL import Image

    path, seed, size = task
    rng = np.random.default_rng(seed)
    height = int(size * rng.uniform(0.75, 1.0))
    y, x = np.mgrid[0:height, 0:size].astype(np.float32)
    image = np.zeros((height, size, 3), np.float32) + rng.uniform(20, 120, 3)
    for _ in range(6):
        cy, cx, radius = rng.uniform(0, height), rng.uniform(0, size), rng.uniform(size / 20, size / 4)
        blob = np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * radius**2))[..., None]
        image += blob * rng.uniform(-80, 160, 3)
    image += rng.normal(0, 12, image.shape)
    Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(path, format="JPEG", quality=90)
    return path.stat().st_size


def vocabulary(size: int, rng: random.Random) -> list[str]:
    syllables = [
        "ra",
        "di",
        "o",
        "lo",
        "gy",
        "car",
        "ci",
        "no",
        "ma",
        "pul",
        "mo",
        "na",
        "ry",
        "he",
        "pa",
        "tic",
        "le",
        "sion",
        "cor",
        "tex",
        "neu",
        "ro",
        "ve",
        "nous",
        "my",
        "o",
        "car",
        "di",
        "al",
        "fi",
        "bro",
    ]
    words = set()
    while len(words) < size:
        words.add("".join(rng.choice(syllables) for _ in range(rng.randint(1, 4))))
    return sorted(words)


def sentence(words: list[str], n: int, rng: random.Random) -> str:
    return " ".join(rng.choice(words) for _ in range(n)) + "."


def build_workdir(workdir: Path, args) -> dict:
    """Figures, candidates (full and small) and a saved random-weight selector, reused when already built."""
    manifest_path = workdir / "manifest.json"
    wanted = {key: getattr(args, key) for key in ("candidates", "distinct_images", "image_px", "tiny", "small")}
    if manifest_path.exists() and json.loads(manifest_path.read_text()).get("params") == wanted:
        return json.loads(manifest_path.read_text())
    shutil.rmtree(workdir, ignore_errors=True)
    images = workdir / "figures"
    images.mkdir(parents=True)
    rng = random.Random(0)
    pair_ids = [f"{30000000 + i}_F{1 + i % 7}" for i in range(args.distinct_images)]
    started = time.perf_counter()
    with Pool(os.cpu_count()) as pool:
        sizes = pool.map(write_jpeg, [(images / f"{p}.jpg", i, args.image_px) for i, p in enumerate(pair_ids)])
    print(
        f"wrote {len(pair_ids)} JPEGs ({np.mean(sizes) / 1024:.0f} KiB mean) in {time.perf_counter() - started:.1f}s"
    )

    words = vocabulary(3000, rng)
    write_candidates(workdir / "candidates", pair_ids, words, args.candidates, rng)
    write_candidates(workdir / "candidates_small", pair_ids, words, min(args.small, args.candidates), rng)
    save_selector(workdir / "selector", words, args.tiny)
    manifest = {"params": wanted, "mean_jpeg_bytes": float(np.mean(sizes))}
    manifest_path.write_text(json.dumps(manifest))
    return manifest


def write_candidates(folder: Path, pair_ids: list[str], words: list[str], n: int, rng: random.Random) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = []
    for index in range(n):
        pair_id = pair_ids[index % len(pair_ids)]
        rows.append(
            {
                "candidate_id": f"{pair_id}#{index // len(pair_ids)}",
                "pair_id": pair_id,
                "sample": index // len(pair_ids),
                "image": f"{pair_id}.jpg",
                "caption": sentence(words, 60, rng),
                "mentions": [sentence(words, 40, rng)],
                "domain": {
                    "chest_xray": index % 5 == 0,
                    "mri": index % 5 == 1,
                    "ct_scan": index % 5 == 2,
                    "histology": index % 5 == 3,
                    "gross": index % 5 == 4,
                },
                "conversations": [
                    {"from": "human", "value": sentence(words, 15, rng)[:-1] + "?\n<image>"},
                    {"from": "gpt", "value": sentence(words, 55, rng)},
                ],
                "status": "ok",
            }
        )
    target = folder / "data" / "candidates"
    target.mkdir(parents=True)
    per_shard = 10000
    for shard in range(math.ceil(n / per_shard)):
        part = rows[shard * per_shard : (shard + 1) * per_shard]
        pq.write_table(pa.Table.from_pylist(part), target / f"part-{shard:05d}.parquet")


def save_selector(folder: Path, words: list[str], tiny: bool) -> None:
    """BiomedCLIP's shape with random weights (or a toy one), and a WordPiece tokenizer over the synthetic words."""
    import torch
    from transformers import BertConfig, BertTokenizerFast, VisionTextDualEncoderConfig, ViTConfig

    from vital_hub.selector.modeling import SelectorConfig, SelectorModel

    vocab = SPECIALS + words + list("abcdefghijklmnopqrstuvwxyz.,?") + [f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz"]
    vocab += [f"[unused{i}]" for i in range(30522 - len(vocab))]
    folder.mkdir(parents=True)
    tokenizer = BertTokenizerFast(vocab={token: index for index, token in enumerate(dict.fromkeys(vocab))})
    if tiny:
        layers = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2}
        vision = ViTConfig(image_size=224, patch_size=16, layer_norm_eps=1e-6, **layers)
        text = BertConfig(vocab_size=len(vocab), max_position_embeddings=512, **layers)
        head = [32, 32, 32]
    else:
        vision = ViTConfig(image_size=224, patch_size=16, layer_norm_eps=1e-6)  # ViT-B/16 defaults
        text = BertConfig(vocab_size=len(vocab), max_position_embeddings=512)  # BERT-base defaults
        head = [512, 512, 512]
    backbone = VisionTextDualEncoderConfig.from_vision_text_configs(
        vision, text, projection_dim=512 if not tiny else 32
    )
    torch.manual_seed(0)
    model = SelectorModel(
        SelectorConfig(
            backbone="biomedclip",
            backbone_config=backbone,
            head_hidden_sizes=head,
            text_max_length=256,
            image_size=224,
        )
    )
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


# ---------------------------------------------------------------- the three measurements


def paper_loop(model, tokenizer, rows, images: Path, device, batch_size: int = 100) -> tuple[float, list[float]]:
    """The released filter: main-process PIL decoding, full-size decode, fp32, fixed 256-token padding."""
    import torch
    from PIL import Image

    from vital_hub.selector.text import candidate_text

    mean = np.array(model.config.image_mean, np.float32)
    std = np.array(model.config.image_std, np.float32)
    size = model.config.image_size

    def preprocess(path):
        image = Image.open(path).convert("RGB")
        scale = size / min(image.size)
        image = image.resize(
            (max(size, round(image.width * scale)), max(size, round(image.height * scale))), Image.Resampling.BICUBIC
        )
        left, top = (image.width - size) // 2, (image.height - size) // 2
        array = (np.asarray(image.crop((left, top, left + size, top + size)), np.float32) / 255.0 - mean) / std
        return torch.from_numpy(array.transpose(2, 0, 1))

    scores = []
    torch.cuda.synchronize() if device.type == "cuda" else None
    started = time.perf_counter()
    with torch.inference_mode():
        for start in range(0, len(rows), batch_size):
            batch = rows[start : start + batch_size]
            pixels = torch.stack([preprocess(images / f"{r['pair_id']}.jpg") for r in batch]).to(device)
            tokens = tokenizer(
                [candidate_text(r) for r in batch],
                padding="max_length",
                truncation=True,
                max_length=256,
                return_tensors="pt",
            ).to(device)
            out = model(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"], pixel_values=pixels)
            scores += out.logits.squeeze(-1).tolist()
    return time.perf_counter() - started, scores


def model_alone(model, batches, repeats: int) -> float:
    """Seconds per pass over batches already on the device."""
    import torch

    def run():
        with torch.inference_mode():
            for batch in batches:
                model(**batch)

    run()  # warm-up
    if batches[0]["input_ids"].is_cuda:
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(repeats):
        run()
    if batches[0]["input_ids"].is_cuda:
        torch.cuda.synchronize()
    return (time.perf_counter() - started) / repeats


def ready_batches(model, tokenizer, rows, images, batch_size: int, count: int, chunk_size: int, device) -> list:
    """The pipeline's own batches (same chunks, same padding), prepared once and moved to the device."""
    from vital_hub.selector.chunks import assemble, chunk_loader, model_inputs

    shards = [(0, range(min(len(rows), batch_size * count)))]
    loader, dataset = chunk_loader(rows, shards, images, tokenizer, model.config, batch_size, chunk_size, 0)
    batches, parts = [], []
    for part in loader:
        parts.append(part)
        if dataset.chunks[part.index].ends_batch:
            batches.append(model_inputs(assemble(parts, dataset.encoder), device))
            parts = []
    return batches


def cpu_seconds(who) -> float:
    import resource

    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def input_alone(model, tokenizer, rows, images, batch_size: int, workers: int, chunk_size: int, count: int) -> dict:
    """The input side alone: `vital select`'s DataLoader (decode, tokenise, hand over), no model. With the model-alone
    ceiling it says which side bounds `select`. Besides pairs/s it gives the CPU time each side spends per pair:
    the workers' (counted once the loader has joined them) says what one busy worker delivers, whatever else runs
    on the machine; the main process's says what receiving and assembling the chunks costs the process that also drives the GPU."""
    import resource

    import torch

    from vital_hub.selector.chunks import assemble, chunk_loader

    shards = [(0, range(min(len(rows), batch_size * count)))]
    children, main = cpu_seconds(resource.RUSAGE_CHILDREN), cpu_seconds(resource.RUSAGE_SELF)
    started = time.perf_counter()
    loader, dataset = chunk_loader(rows, shards, images, tokenizer, model.config, batch_size, chunk_size, workers)
    pairs, parts = 0, []
    for part in loader:  # exhausting the loader joins its workers
        pairs += len(part.lengths)
        parts.append(part)
        if dataset.chunks[part.index].ends_batch:  # the main process's own work per batch, up to the GPU copy
            assemble(parts, dataset.encoder, pin_memory=torch.cuda.is_available())
            parts = []
    seconds = time.perf_counter() - started
    main = cpu_seconds(resource.RUSAGE_SELF) - main
    worker = cpu_seconds(resource.RUSAGE_CHILDREN) - children if workers else main
    return {
        "pairs_per_s": pairs / seconds,
        "worker_cpu_ms_per_pair": 1e3 * worker / pairs,
        "main_cpu_ms_per_pair": 1e3 * main / pairs,
        "pairs": pairs,
    }


def describe_input(side: dict, workers: int) -> str:
    per_worker = 1e3 / side["worker_cpu_ms_per_pair"]
    return (
        f"input side alone (decode + tokenise in {workers} workers, no model, {side['pairs']} pairs): "
        f"{side['pairs_per_s']:.1f} pairs/s; worker CPU {side['worker_cpu_ms_per_pair']:.3f} ms/pair "
        f"({per_worker:.0f} pairs/s per busy worker, x{workers} = {per_worker * workers:.0f}); "
        f"main process CPU {side['main_cpu_ms_per_pair']:.3f} ms/pair"
    )


def pipeline(model, tokenizer, rows, images, batch_size: int, workers: int, shard_size: int, chunk: int):
    """Seconds `score_shards` takes over all rows, and the main process's CPU seconds meanwhile (near the wall time,
    the process that feeds the GPU is itself the bound)."""
    import resource

    from vital_hub.selector.select import score_shards

    shards = [
        (s, range(s * shard_size, min(len(rows), (s + 1) * shard_size)))
        for s in range(math.ceil(len(rows) / shard_size))
    ]
    with tempfile.TemporaryDirectory() as scratch:
        main = cpu_seconds(resource.RUSAGE_SELF)
        started = time.perf_counter()
        scored = score_shards(
            model, tokenizer, rows, shards, images, Path(scratch), batch_size, workers, chunk, progress=False
        )
        seconds = time.perf_counter() - started
        main = cpu_seconds(resource.RUSAGE_SELF) - main
    assert scored == len(rows)
    return seconds, main


# ---------------------------------------------------------------- main


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
