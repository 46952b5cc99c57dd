"""Diverse sampling of annotation items: k-means over image + text embeddings, the item nearest each centre.

Clinician time is the scarce resource, so the items they see should cover the candidates' variety rather than
repeat the commonest modality. As in the paper, every item is embedded as [image features, text features]
(each part L2-normalised), clustered with k-means, and items closest to the cluster centres are kept.

Encoders are pluggable (`get_encoder(name)`):
- `clip` (default): any CLIP-family checkpoint loaded by model id through transformers;
- `tiny-clip`: a tiny randomly initialised CLIP built from a config, for tests and offline dry runs;
- `hashing`: hashed bag of words + pixel statistics, no model at all (fast, deterministic, crude).

Given the same items, encoder and seed the chosen set is identical, whatever order the items came in.
"""

from __future__ import annotations

import hashlib
import io
import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from vital_hub.preferences.items import ImageResolver, Item

DEFAULT_CLIP = "openai/clip-vit-base-patch32"
EMBED_CHUNK = 256


def item_text(item: Item) -> str:
    """What the text embedding sees: the figure's words and the question with both answers."""
    return "\n".join([item.caption, *item.mentions, item.question, item.answer_a, item.answer_b])


def l2_normalise(matrix: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return matrix / np.where(norms == 0, 1.0, norms)


def decode_rgb(data: bytes | None):
    if data is None:
        return None
    from PIL import Image

    with Image.open(io.BytesIO(data)) as picture:
        return picture.convert("RGB")


# ---------------------------------------------------------------- encoders


class HashingEncoder:
    """No model: words hashed into buckets, and an image's 8x8 grey thumbnail plus colour histograms."""

    name = "hashing"

    def __init__(self, text_dim: int = 512):
        self.text_dim = text_dim

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        matrix = np.zeros((len(texts), self.text_dim), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in re.findall(r"[a-z0-9]+", text.lower()):
                bucket = int.from_bytes(hashlib.blake2b(word.encode(), digest_size=8).digest(), "little")
                matrix[row, bucket % self.text_dim] += 1.0
        return np.log1p(matrix)

    def encode_images(self, images: list[bytes | None]) -> np.ndarray:
        features = np.zeros((len(images), 64 + 24), dtype=np.float32)
        for row, data in enumerate(images):
            picture = decode_rgb(data)
            if picture is None:
                continue
            grey = np.asarray(picture.convert("L").resize((8, 8)), dtype=np.float32).ravel() / 255.0
            pixels = np.asarray(picture.resize((64, 64)), dtype=np.float32)
            histograms = [
                np.histogram(pixels[..., c], bins=8, range=(0, 256))[0] / pixels[..., c].size for c in range(3)
            ]
            features[row] = np.concatenate([grey, *histograms])
        return features


class ClipEncoder:
    """A CLIP-family model (image and text towers) loaded by id; a missing picture embeds as zeros."""

    name = "clip"

    def __init__(self, model_id: str = DEFAULT_CLIP, batch_size: int = 32, device: str = "cpu"):
        from transformers import AutoModel, AutoProcessor

        self.model = AutoModel.from_pretrained(model_id).to(device).eval()
        self.processor = AutoProcessor.from_pretrained(model_id)
        self.batch_size, self.device = batch_size, device
        # Long captions are cut at the text tower's length, whatever the tokenizer's own limit says.
        self.max_text_tokens = self.model.config.text_config.max_position_embeddings

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        import torch

        chunks = []
        for start in range(0, len(texts), self.batch_size):
            batch = self.processor(
                text=texts[start : start + self.batch_size],
                return_tensors="pt",
                padding=True,
                truncation=True,
                max_length=self.max_text_tokens,
            )
            with torch.no_grad():
                chunks.append(as_array(self.model.get_text_features(**batch.to(self.device))))
        return np.concatenate(chunks)

    def encode_images(self, images: list[bytes | None]) -> np.ndarray:
        import torch

        present = [i for i, data in enumerate(images) if data is not None]
        features = []
        for start in range(0, len(present), self.batch_size):
            rows = present[start : start + self.batch_size]
            batch = self.processor(images=[decode_rgb(images[i]) for i in rows], return_tensors="pt")
            with torch.no_grad():
                features.append(as_array(self.model.get_image_features(**batch.to(self.device))))
        # The width comes from the model's output, so checkpoints without `projection_dim` (SigLIP) work too.
        width = features[0].shape[1] if features else self.encode_texts([""]).shape[1]
        result = np.zeros((len(images), width), dtype=np.float32)
        if features:
            result[present] = np.concatenate(features)
        return result


def as_array(features) -> np.ndarray:
    """transformers 5 may return a model output instead of a tensor from get_*_features."""
    if hasattr(features, "pooler_output"):
        features = features.pooler_output
    return features.float().cpu().numpy()


class TinyClipEncoder:
    """A tiny random CLIP from a config: real CLIP code paths with no download; words hashed to token ids."""

    name = "tiny-clip"

    def __init__(self, seed: int = 0, image_size: int = 32, vocab_size: int = 1000, max_tokens: int = 32):
        import torch
        from transformers import CLIPConfig, CLIPModel

        torch.manual_seed(seed)
        config = CLIPConfig(
            text_config={
                "vocab_size": vocab_size,
                "hidden_size": 32,
                "intermediate_size": 64,
                "num_hidden_layers": 2,
                "num_attention_heads": 2,
                "max_position_embeddings": max_tokens,
                "bos_token_id": 0,
                "eos_token_id": vocab_size - 1,
                "pad_token_id": 0,
            },
            vision_config={
                "image_size": image_size,
                "patch_size": 8,
                "hidden_size": 32,
                "intermediate_size": 64,
                "num_hidden_layers": 2,
                "num_attention_heads": 2,
            },
            projection_dim=16,
        )
        self.model = CLIPModel(config).eval()
        self.image_size, self.vocab_size, self.max_tokens = image_size, vocab_size, max_tokens

    def token_ids(self, text: str) -> list[int]:
        words = re.findall(r"[a-z0-9]+", text.lower())[: self.max_tokens - 2]
        ids = [
            1 + int.from_bytes(hashlib.blake2b(w.encode(), digest_size=4).digest(), "little") % (self.vocab_size - 2)
            for w in words
        ]
        return [0, *ids, self.vocab_size - 1]  # CLIP pools at the end token (eos_token_id in the config)

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        import torch

        ids = [self.token_ids(text) for text in texts]
        width = max(len(row) for row in ids)
        input_ids = torch.zeros((len(ids), width), dtype=torch.long)
        mask = torch.zeros_like(input_ids)
        for row, tokens in enumerate(ids):
            input_ids[row, : len(tokens)] = torch.tensor(tokens)
            mask[row, : len(tokens)] = 1
        with torch.no_grad():
            return as_array(self.model.get_text_features(input_ids=input_ids, attention_mask=mask))

    def encode_images(self, images: list[bytes | None]) -> np.ndarray:
        import torch

        result = np.zeros((len(images), self.model.config.projection_dim), dtype=np.float32)
        present = [i for i, data in enumerate(images) if data is not None]
        if not present:
            return result
        pixels = np.stack(
            [
                np.asarray(decode_rgb(images[i]).resize((self.image_size, self.image_size)), dtype=np.float32) / 127.5
                - 1
                for i in present
            ]
        ).transpose(0, 3, 1, 2)
        with torch.no_grad():
            result[present] = as_array(self.model.get_image_features(pixel_values=torch.from_numpy(pixels)))
        return result


ENCODERS: dict[str, Callable[..., object]] = {
    "clip": ClipEncoder,
    "tiny-clip": TinyClipEncoder,
    "hashing": HashingEncoder,
}


def get_encoder(name: str, **options):
    if name not in ENCODERS:
        raise ValueError(f"unknown encoder {name!r}; known: {sorted(ENCODERS)}")
    return ENCODERS[name](**options)


# ---------------------------------------------------------------- sampling


@dataclass
class Sample:
    chosen: list[Item]
    cluster_of: dict[str, int]  # item id -> cluster
    embeddings: np.ndarray  # rows in `order`
    order: list[str]  # item ids, sorted
    summary: dict


def embed(
    items: list[Item], encoder, resolver: ImageResolver, image_weight: float = 1.0, chunk: int = EMBED_CHUNK
) -> np.ndarray:
    """[image part, text part], each L2-normalised, the image part scaled by image_weight.

    Pictures are read a chunk at a time, so memory holds one chunk of images, not the whole candidate set.
    """
    from tqdm.auto import tqdm

    parts = []
    for start in tqdm(range(0, len(items), chunk), desc="embedding items", unit="chunk", disable=len(items) <= chunk):
        batch = items[start : start + chunk]
        images = encoder.encode_images([resolver.bytes_for(item) for item in batch])
        texts = encoder.encode_texts([item_text(item) for item in batch])
        image_part = l2_normalise(np.asarray(images, dtype=np.float64))
        text_part = l2_normalise(np.asarray(texts, dtype=np.float64))
        parts.append(np.concatenate([image_part * image_weight, text_part], axis=1))
    return np.concatenate(parts)


def diverse_sample(
    items: list[Item],
    k: int,
    seed: int,
    encoder,
    resolver: ImageResolver,
    clusters: int | None = None,
    image_weight: float = 1.0,
) -> Sample:
    """k items: k-means into `clusters` (default k) groups, then round-robin over clusters, nearest first."""
    if k <= 0:
        raise ValueError(f"k must be positive, got {k}")
    from sklearn.cluster import KMeans

    ordered = sorted(items, key=lambda item: item.item_id)
    k = min(k, len(ordered))
    n_clusters = min(clusters or k, len(ordered))
    vectors = embed(ordered, encoder, resolver, image_weight)
    model = KMeans(n_clusters=n_clusters, random_state=seed, n_init=10).fit(vectors)
    distances = np.linalg.norm(vectors - model.cluster_centers_[model.labels_], axis=1)
    queues = {
        c: sorted(
            np.flatnonzero(model.labels_ == c), key=lambda i: (round(float(distances[i]), 9), ordered[i].item_id)
        )
        for c in range(n_clusters)
    }
    picked: list[int] = []
    while len(picked) < k:
        for c in sorted(queues, key=lambda c: (-len(queues[c]), c)):
            if queues[c] and len(picked) < k:
                picked.append(int(queues[c].pop(0)))
    cluster_of = {ordered[i].item_id: int(model.labels_[i]) for i in range(len(ordered))}
    sizes = np.bincount(model.labels_, minlength=n_clusters)
    summary = {
        "encoder": getattr(encoder, "name", type(encoder).__name__),
        "seed": seed,
        "k": k,
        "clusters": n_clusters,
        "items": len(ordered),
        "cluster_sizes": sizes.tolist(),
        "chosen": [ordered[i].item_id for i in picked],
    }
    return Sample([ordered[i] for i in picked], cluster_of, vectors, [i.item_id for i in ordered], summary)


def plot_sample(sample: Sample, path: str) -> None:
    """A 2-D PCA view of all items coloured by cluster, the chosen ones ringed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    centred = sample.embeddings - sample.embeddings.mean(axis=0)
    _, _, components = np.linalg.svd(centred, full_matrices=False)
    points = centred @ components[:2].T
    colours = [sample.cluster_of[item_id] for item_id in sample.order]
    chosen = {item.item_id for item in sample.chosen}
    mask = np.array([item_id in chosen for item_id in sample.order])
    figure, axes = plt.subplots(figsize=(6, 5))
    axes.scatter(points[:, 0], points[:, 1], c=colours, cmap="tab20", s=12, alpha=0.6)
    axes.scatter(
        points[mask, 0],
        points[mask, 1],
        facecolors="none",
        edgecolors="black",
        s=60,
        linewidths=1.2,
        label=f"chosen ({mask.sum()})",
    )
    axes.set_title(f"{len(sample.order)} items, {sample.summary['clusters']} clusters ({sample.summary['encoder']})")
    axes.set_xlabel("PC 1")
    axes.set_ylabel("PC 2")
    axes.legend(loc="best")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
