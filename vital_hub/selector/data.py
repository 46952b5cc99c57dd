"""Images and batches for the selector: fast figure decoding, figure lookup by pair id, and the collators.

Decoding is the bottleneck of scoring (a 512 px JPEG takes longer to decode and resize than the GPU takes to
score it), so `decode_image` asks libjpeg for a reduced-size decode (PIL draft mode: the DCT scales by 1/2, 1/4
or 1/8 while staying nearly as large as the target, see DRAFT_TOLERANCE) and returns uint8 pixels; the model
normalises on its own device. Training and selection use this one function, so a selector sees the same pixels in both.
"""

from __future__ import annotations

import copy
import io
import itertools
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from vital_hub.selector.text import selector_text

logger = logging.getLogger(__name__)

# JPEG draft decoding may stop at a shorter side this much below the target, which is then upsampled a little:
# a 512x384 figure decodes at 256x192 (1/2 scale, a quarter of the work) instead of in full. Resizing from the
# smaller picture is also ~3x cheaper than from the full one, so this halves the CPU cost per figure.
DRAFT_TOLERANCE = 0.8


def decode_image(source: bytes | str | Path | Image.Image, size: int) -> torch.Tensor:
    """Encoded image (bytes, path or PIL image) -> uint8 tensor (3, size, size): shorter side resized to `size`
    (bicubic) and centre-cropped, as open_clip's preprocessing does, after a reduced-size JPEG decode."""
    return torch.from_numpy(decode_pixels(source, size).copy()).permute(2, 0, 1)


def decode_pixels(source: bytes | str | Path | Image.Image, size: int) -> np.ndarray:
    """`decode_image`'s pixels as decoded, (size, size, 3) uint8 (read-only): the layout scoring sends to the GPU."""
    image = (
        source
        if isinstance(source, Image.Image)
        else Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
    )
    if image.format == "JPEG":
        floor = math.ceil(size * DRAFT_TOLERANCE)
        image.draft("RGB", (floor, floor))
    if image.mode != "RGB":
        image = image.convert("RGB")  # (converting an RGB image would only copy it)
    width, height = image.size
    scale = size / min(width, height)
    resized = (max(size, round(width * scale)), max(size, round(height * scale)))
    if resized != image.size:
        image = image.resize(resized, Image.Resampling.BICUBIC)
    left, top = (resized[0] - size) // 2, (resized[1] - size) // 2
    image = image.crop((left, top, left + size, top + size))
    return np.asarray(image, dtype=np.uint8)


def image_bytes_of(value: Any) -> bytes | Image.Image | None:
    """An `image` cell as datasets hands it out: PIL image (decoded), {bytes, path} (undecoded) or None."""
    if value is None or isinstance(value, Image.Image | bytes):
        return value
    if isinstance(value, dict):
        if value.get("bytes"):
            return value["bytes"]
        if value.get("path") and Path(value["path"]).exists():
            return Path(value["path"]).read_bytes()
    return None


class FigureImages:
    """pair_id -> encoded image, from a folder of `<pair_id>.jpg` or a figures dataset (via the figure store).

    Picklable for DataLoader workers: the figure store is opened lazily in each process."""

    def __init__(self, images_dir: str | Path | None = None, figures: str | None = None):
        if images_dir is None and figures is None:
            raise ValueError("give a folder of <pair_id>.jpg files or a figures dataset")
        self.images_dir = Path(images_dir) if images_dir is not None else None
        self.figures = figures
        self._store = None

    def __getstate__(self):
        return {**self.__dict__, "_store": None}

    def _figure_store(self):
        if self._store is None:
            try:
                from vital_hub.figures.store import open_figures
            except ImportError as err:
                raise RuntimeError(
                    "reading a figures dataset needs vital_hub.figures.store; pass a folder of <pair_id>.jpg instead"
                ) from err
            self._store = open_figures(self.figures)
        return self._store

    def get(self, pair_id: str) -> bytes | None:
        if self.images_dir is not None:
            path = self.images_dir / f"{pair_id}.jpg"
            if path.is_file() and path.stat().st_size > 0:
                return path.read_bytes()
        if self.figures is not None:
            row = self._figure_store().get(pair_id)
            if row is not None:
                return image_bytes_of(row.get("image"))
        return None


def try_decode(source, size: int, decode=None) -> torch.Tensor | np.ndarray | None:
    """Decoded pixels (`decode_image`, or `decode` given), or None for a missing, empty, truncated or otherwise
    unreadable image."""
    if source is None:
        return None
    try:
        return (decode or decode_image)(source, size)
    except (OSError, ValueError, Image.DecompressionBombError):
        return None


def text_length_limit(config) -> int:
    """The configured text length, capped by what the text tower can take (CLIP: 77, SigLIP: 64)."""
    backbone = config.backbone_config
    text_config = getattr(backbone, "text_config", backbone)
    positions = getattr(text_config, "max_position_embeddings", None)
    return min(config.text_max_length, positions) if positions else config.text_max_length


def tokenize(tokenizer, texts: list[str], config) -> dict[str, torch.Tensor]:
    tokenizer.truncation_side = config.truncation_side
    encoded = tokenizer(
        texts, padding="longest", truncation=True, max_length=text_length_limit(config), return_tensors="pt"
    )
    return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}


class TextEncoder:
    """Token ids exactly as `tokenize` gives them, at a fraction of its cost, for scoring many texts: one call of
    the fast tokenizer's Rust backend per list of texts (`encode_batch_fast`: no character offsets), no padding,
    no Python lists turned into tensors. `encode` returns the ids of all texts end to end and each text's length;
    `pad` lays out any number of such pieces as one padded batch, on the tokenizer's padding side with its pad id,
    equal to `tokenize` over all their texts at once.

    The first texts a process encodes also go through `tokenize`; should the two ever differ (a tokenizer that
    changes texts in Python before its backend sees them, a slow tokenizer), `tokenize` does the work from then on.
    Picklable (DataLoader workers)."""

    def __init__(self, tokenizer, config):
        self.tokenizer, self.config = tokenizer, config
        self.pad_id = tokenizer.pad_token_id
        self.padding_side = tokenizer.padding_side
        self._backend = None
        self._checked = False

    def _fast_backend(self):
        backend = getattr(self.tokenizer, "backend_tokenizer", None) if self.tokenizer.is_fast else None
        if backend is None or not hasattr(backend, "encode_batch_fast"):
            return None
        backend = copy.deepcopy(backend)  # the tokenizer's own settings are left as they are
        backend.enable_truncation(
            text_length_limit(self.config), stride=0, strategy="longest_first", direction=self.config.truncation_side
        )
        backend.no_padding()
        backend.encode_special_tokens = bool(getattr(self.tokenizer, "split_special_tokens", False))
        return backend

    def _encode_fast(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        ids = [encoding.ids for encoding in self._backend.encode_batch_fast(texts)]
        lengths = np.fromiter(map(len, ids), np.int32, len(ids))
        flat = np.fromiter(itertools.chain.from_iterable(ids), np.int32, int(lengths.sum()))
        return flat, lengths

    def _encode_slow(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        batch = tokenize(self.tokenizer, texts, self.config)
        mask = batch["attention_mask"].numpy().astype(bool)
        return batch["input_ids"].numpy()[mask].astype(np.int32), mask.sum(1).astype(np.int32)

    def encode(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(ids of all texts end to end, int32; each text's length, int32)."""
        if not self._checked:
            self._checked = True
            slow = self._encode_slow(texts)  # also raises what `tokenize` raises (no pad token, ...)
            self._backend = self._fast_backend()
            if self._backend is not None:
                fast = self._encode_fast(texts)
                if not all(np.array_equal(a, b) for a, b in zip(fast, slow, strict=True)):
                    logger.warning("the tokenizer's backend alone gives other token ids; tokenising the slow way")
                    self._backend = None
            return slow
        return self._encode_fast(texts) if self._backend is not None else self._encode_slow(texts)

    def pad(self, pieces: list[tuple[np.ndarray, np.ndarray]], pin_memory: bool = False) -> dict[str, torch.Tensor]:
        """`input_ids` and `attention_mask` (int64) of the texts of all `pieces` (`encode`'s outputs), in order."""
        lengths = np.concatenate([piece[1] for piece in pieces])
        longest = int(lengths.max())
        columns = np.arange(longest)
        if self.padding_side == "left":
            mask = columns >= (longest - lengths)[:, None]
        else:
            mask = columns < lengths[:, None]
        input_ids = torch.empty((len(lengths), longest), dtype=torch.long, pin_memory=pin_memory)
        attention_mask = torch.empty((len(lengths), longest), dtype=torch.long, pin_memory=pin_memory)
        ids = input_ids.numpy()
        ids.fill(self.pad_id)
        ids[mask] = np.concatenate([piece[0] for piece in pieces])  # row by row, each row's tokens in order
        attention_mask.numpy()[:] = mask
        return {"input_ids": input_ids, "attention_mask": attention_mask}


@dataclass
class PreferenceCollator:
    """Rows of the `preferences` configs -> a batch of 2B texts (chosen block, then rejected block) and images.

    A model pair may compare answers about two different figures, with the rejected side's own context in the
    `rejected_*` columns; when every pair of the batch shares one figure, each image is encoded once."""

    tokenizer: Any
    config: Any
    images: FigureImages | None = None

    def _image(self, row: dict, pair_id: str, embedded: Any) -> torch.Tensor:
        source = image_bytes_of(embedded)
        if source is None and self.images is not None:
            source = self.images.get(pair_id)
        pixels = try_decode(source, self.config.image_size)
        if pixels is None:
            raise ValueError(f"pair {row.get('pair_key')!r}: no readable image for figure {pair_id!r}")
        return pixels

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        chosen_texts, rejected_texts = [], []
        for row in rows:
            chosen_texts.append(selector_text(row["caption"], row["mention"], row["question"], row["chosen"]))
            rejected_texts.append(
                selector_text(
                    row.get("rejected_caption", row["caption"]),
                    row.get("rejected_mention", row["mention"]),
                    row.get("rejected_question") or row["question"],
                    row["rejected"],
                )
            )
        batch = tokenize(self.tokenizer, chosen_texts + rejected_texts, self.config)
        batch["weight"] = torch.tensor([float(row.get("weight", 1.0)) for row in rows])
        batch["is_clinician"] = torch.tensor([row.get("origin") == "clinician" for row in rows], dtype=torch.long)
        if self.config.uses_images:
            chosen = [self._image(row, row["pair_id"], row.get("image")) for row in rows]
            rejected_ids = [row.get("rejected_pair_id") or row["pair_id"] for row in rows]
            if all(rid == row["pair_id"] for rid, row in zip(rejected_ids, rows, strict=True)):
                batch["pixel_values"] = torch.stack(chosen)
            else:
                rejected = [
                    self._image(row, rid, row.get("image") if rid == row["pair_id"] else None)
                    for rid, row in zip(rejected_ids, rows, strict=True)
                ]
                batch["pixel_values"] = torch.stack(chosen + rejected)
        return batch


def has_image(row: dict, images: FigureImages | None, size: int) -> bool:
    """Whether both figures of a pair can be read (used to drop unusable pairs before training, with a count)."""
    ids = {row["pair_id"], row.get("rejected_pair_id") or row["pair_id"]}
    for pair_id in ids:
        source = image_bytes_of(row.get("image")) if pair_id == row["pair_id"] else None
        if source is None and images is not None:
            source = images.get(pair_id)
        if try_decode(source, size) is None:
            return False
    return True
