"""Synthetic data for the candidate-scoring benchmark: figures, a vocabulary, candidate files, a selector."""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np

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
