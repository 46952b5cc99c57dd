"""One training batch from instruction rows: images decoded and capped, conversations tokenized with
assistant-only labels, right padding.

The work happens in the DataLoader workers (`dataloader_num_workers`), so JPEG decoding and tokenization overlap
with the GPU. Large PMC figures are decoded at reduced size (`Image.draft`, JPEG only) and capped at
`max_image_side` before the processor resizes them: the processor's own resize would give the same pixels from a
full decode that costs far more.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from typing import Any

from vital_hub.training.data import model_messages
from vital_hub.training.masking import IGNORE_INDEX, encode_conversation, image_token_id_of, truncate

logger = logging.getLogger(__name__)


def decode_image(image: Any, max_side: int | None):
    """A PIL RGB image from an `{bytes, path}` dict (or a PIL image), at most `max_side` on its longer side."""
    from PIL import Image

    if image is None:
        return None
    if isinstance(image, dict):
        source = io.BytesIO(image["bytes"]) if image.get("bytes") else image.get("path")
        if source is None:
            return None
        picture = Image.open(source)
    else:
        picture = image
    if max_side and picture.format == "JPEG":
        picture.draft("RGB", (max_side, max_side))
    picture = picture.convert("RGB")
    if max_side and max(picture.size) > max_side:
        picture.thumbnail((max_side, max_side))
    return picture


@dataclass
class VisionSFTCollator:
    """Collate rows with `images` ([image or None]) and `messages` (TRL format) into model inputs and labels."""

    processor: Any
    max_length: int | None = 2048
    max_image_side: int | None = 1024
    missing_images: str = "skip"  # rows still without an image here: "skip" drops them, "text" trains text-only
    chat_template: str | None = None
    pad_to_multiple_of: int | None = None

    def encode_row(self, row: dict) -> dict | None:
        image = row["images"][0] if row.get("images") else None
        try:
            picture = decode_image(image, self.max_image_side)
        except OSError as err:  # PIL raises OSError subclasses for truncated and unidentifiable files
            logger.warning("row %r: unreadable image (%s); treated as missing", row.get("id"), err)
            picture = None
        if picture is None and self.missing_images != "text":
            return None
        messages = model_messages(row["messages"], has_image=picture is not None)
        features = encode_conversation(
            self.processor, messages, [picture] if picture is not None else [], self.chat_template
        )
        return truncate(features, self.max_length, image_token_id_of(self.processor))

    def __call__(self, rows: list[dict]) -> dict:
        encoded = [features for features in map(self.encode_row, rows) if features is not None]
        if not encoded:
            raise ValueError(f"no row of this batch has a usable image (ids {[row.get('id') for row in rows]})")
        return self.pad(encoded)

    def pad(self, encoded: list[dict]) -> dict:
        import torch

        longest = max(len(features["input_ids"]) for features in encoded)
        if self.pad_to_multiple_of:
            longest = -(-longest // self.pad_to_multiple_of) * self.pad_to_multiple_of
        pad_id = self.processor.tokenizer.pad_token_id
        input_ids = torch.full((len(encoded), longest), pad_id, dtype=torch.long)
        labels = torch.full((len(encoded), longest), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(encoded), longest), dtype=torch.long)
        for row, features in enumerate(encoded):
            length = len(features["input_ids"])
            input_ids[row, :length] = features["input_ids"]
            labels[row, :length] = features["labels"]
            attention_mask[row, :length] = 1
        batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
        image_keys = {key for features in encoded for key in features} - {"input_ids", "labels"}
        for key in sorted(image_keys):
            batch[key] = torch.cat([features[key] for features in encoded if key in features])
        return batch
