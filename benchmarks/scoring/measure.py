"""The three measurements of the candidate-scoring benchmark: the paper's loop, the model alone, the input
alone, and the pipeline."""

from __future__ import annotations

import math
import tempfile
import time
from pathlib import Path

import numpy as np


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
