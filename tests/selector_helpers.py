"""Tiny selectors, figures, preference pairs and candidates made on the spot for the selector tests."""

from __future__ import annotations

import io
import random
from pathlib import Path

import numpy as np
from PIL import Image

WORDS = (
    "the a of and in with chest ct mri scan lesion left right lung liver mass shows image figure arrow normal "
    "histology stain cells tumor what is seen answer question patient biopsy nodule"
).split()


def tiny_tokenizer(folder: Path):
    """A BERT WordPiece tokenizer over a small vocabulary (whole words, then letters as a fallback)."""
    from transformers import BertTokenizerFast

    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)] + list("0123456789.,:?!-()/'\"<>#")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS + letters + [f"##{c}" for c in letters]
    return BertTokenizerFast(vocab={token: index for index, token in enumerate(dict.fromkeys(vocab))})


def tiny_backbone_config(kind: str, vocab_size: int, image_size: int = 32):
    from transformers import BertConfig, CLIPConfig, SiglipConfig, VisionTextDualEncoderConfig, ViTConfig

    sizes = {"hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2, "num_attention_heads": 4}
    vision = {"image_size": image_size, "patch_size": 8, **sizes}
    text = {"vocab_size": vocab_size, "max_position_embeddings": 64, **sizes}
    if kind == "clip":
        return CLIPConfig(
            text_config={**text, "eos_token_id": 3, "bos_token_id": 2}, vision_config=vision, projection_dim=16
        )
    if kind == "siglip":
        return SiglipConfig(text_config=text, vision_config=vision)
    if kind in ("vtde", "biomedclip"):
        return VisionTextDualEncoderConfig.from_vision_text_configs(
            ViTConfig(**vision, layer_norm_eps=1e-6), BertConfig(**text), projection_dim=16
        )
    if kind == "text":
        return BertConfig(**text, num_labels=1)
    raise ValueError(kind)


def tiny_selector(kind: str, tokenizer, seed: int = 0):
    import torch

    from vital_hub.selector.modeling import SelectorConfig, SelectorModel

    backbone = {"clip": "dual_encoder", "siglip": "dual_encoder", "vtde": "dual_encoder"}.get(kind, kind)
    config = SelectorConfig(
        backbone=backbone,
        backbone_config=tiny_backbone_config(kind, len(tokenizer)),
        head_hidden_sizes=[16, 16, 16],
        image_size=32,
        text_max_length=48,
    )
    torch.manual_seed(seed)
    return SelectorModel(config)


def jpeg_bytes(seed: int, size: int = 48) -> bytes:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size]
    base = rng.integers(0, 255, 3)
    pixels = (base + 60 * np.sin(x[..., None] / (3 + seed % 5)) + 40 * np.cos(y[..., None] / 4)) % 255
    buffer = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def write_figures(folder: Path, pair_ids: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for index, pair_id in enumerate(pair_ids):
        (folder / f"{pair_id}.jpg").write_bytes(jpeg_bytes(index))
    return folder


def sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def preference_rows(pair_ids: list[str], n_model: int = 12, n_clinician: int = 6, seed: int = 0) -> list[dict]:
    """Rows with every column of the preferences configs: model pairs (some across two figures), clinician pairs
    (weight 1, to be overridden), train and test splits."""
    rng = random.Random(seed)
    rows = []
    for index in range(n_model + n_clinician):
        origin = "model" if index < n_model else "clinician"
        pair_id = pair_ids[index % len(pair_ids)]
        other = pair_ids[(index + 1) % len(pair_ids)] if origin == "model" and index % 2 else pair_id
        caption, question = sentence(rng, 8), sentence(rng, 5) + "?"
        rows.append(
            {
                "pair_key": f"{origin}:{index}",
                "pair_id": pair_id,
                "image": None,
                "caption": caption,
                "mention": sentence(rng, 6),
                "question": question,
                "chosen": "the lesion in the left lung shows " + sentence(rng, 4),
                "rejected": "normal " + sentence(rng, 3),
                "weight": 1.0,
                "origin": origin,
                "split": "test" if index % 3 == 2 else "train",
                "chosen_id": f"c{index}",
                "rejected_id": f"r{index}",
                "rejected_pair_id": other,
                "rejected_caption": caption if other == pair_id else sentence(rng, 8),
                "rejected_mention": "",
                "rejected_question": question if other == pair_id else sentence(rng, 5) + "?",
                "chosen_score": 8.0 if origin == "model" else None,
                "rejected_score": 3.0 if origin == "model" else None,
                "annotators": "dr_a" if origin == "clinician" else None,
            }
        )
    return rows


def candidate_rows(pair_ids: list[str], samples: int = 2, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for pair_id in pair_ids:
        for sample in range(samples):
            rows.append(
                {
                    "candidate_id": f"{pair_id}#{sample}",
                    "pair_id": pair_id,
                    "sample": sample,
                    "image": f"{pair_id}.jpg",
                    "fig_label": "Figure 1",
                    "caption": sentence(rng, 8),
                    "mentions": [sentence(rng, 5)],
                    "domain": {
                        "chest_xray": sample == 0,
                        "mri": sample == 1,
                        "ct_scan": False,
                        "histology": False,
                        "gross": False,
                    },
                    "conversations": [
                        {"from": "human", "value": sentence(rng, 5) + "?\n<image>"},
                        {"from": "gpt", "value": sentence(rng, 9)},
                    ],
                    "status": "ok",
                }
            )
    return rows


def write_candidates(folder: Path, rows: list[dict], shards: int = 2) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    target = folder / "data" / "candidates"
    target.mkdir(parents=True, exist_ok=True)
    for shard in range(shards):
        part = rows[shard::shards]
        pq.write_table(pa.Table.from_pylist(part), target / f"part-{shard:05d}.parquet")
    return folder


def save_selector(model, tokenizer, folder: Path) -> Path:
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
