"""One training batch from instruction rows: images decoded and capped, conversations tokenized with
assistant-only labels, right padding.

The processor batches the rows itself, in one call: every family pads its own image tensors (SmolVLM/Idefics3
and LLaVA-OneVision tiles of different counts, Pixtral patch grids, Qwen's flattened patches with their
`image_grid_thw`) and builds its token-aligned side inputs (Qwen's `mm_token_type_ids`, Gemma's
`token_type_ids`) from the padded ids. Labels are then aligned row by row (`masking.align_labels`), and
truncation and `pad_to_multiple_of` cut or extend every token-aligned tensor together with `input_ids`.

The work happens in the DataLoader workers (`dataloader_num_workers`), so JPEG decoding and tokenization overlap
with the GPU. Large PMC figures are decoded at reduced size (`Image.draft`, JPEG only) and capped at
`max_image_side` before the processor resizes them: the processor's own resize would give the same pixels from a
full decode that costs far more.
"""

from __future__ import annotations

import functools
import io
import logging
from dataclasses import dataclass
from typing import Any

from vital_hub.training.data import model_messages
from vital_hub.training.masking import (
    IGNORE_INDEX,
    TOKEN_TYPE_KEYS,
    MaskingError,
    RenderedConversation,
    adds_special_tokens,
    align_labels,
    check_labels,
    image_token_ids_of,
    labels_from_offsets,
    render_with_targets,
    template_name,
)
from vital_hub.training.templates import correct_template

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


class Batch(dict):
    """Model inputs plus `labels`; `token_keys` names the tensors that have one value per token."""

    token_keys: tuple[str, ...] = ()


def images_argument(images: list[list]):
    """What a processor takes for a batch: nested per row; None when no row has an image."""
    return images if any(images) else None


def token_keys_of(batch: dict, extra: tuple[str, ...] = ()) -> tuple[str, ...]:
    """The tensors with one entry per token, whatever their rank: their first two axes are (rows, tokens) of
    `input_ids` (Qwen's `mm_token_type_ids`, Gemma's `token_type_ids`, Mllama's 4-D `cross_attention_mask` of
    rows x tokens x images x tiles). Image tensors are never among them, whatever their shape."""
    shape = tuple(batch["input_ids"].shape)
    keys = [
        key for key, value in batch.items()
        if hasattr(value, "shape") and tuple(value.shape[:2]) == shape and not key.startswith(("pixel", "image"))
    ]  # fmt: skip
    return (*keys, *(key for key in extra if key not in keys))


def encode_batch(
    processor, rendered: list[RenderedConversation], images: list[list], names: list | None = None,
    chat_template: str | None = None,
) -> Batch:  # fmt: skip
    """Tokenize and process rendered conversations in one processor call, right-padded, with labels checked
    against each conversation's answers (`names` name the rows in errors; `chat_template`, the one rendered with)."""
    import torch

    tokenizer = processor.tokenizer
    add_special = adds_special_tokens(tokenizer, rendered[0].text)
    side, tokenizer.padding_side = tokenizer.padding_side, "right"
    try:
        encoded = processor(
            text=[item.text for item in rendered], images=images_argument(images), padding=True,
            padding_side="right", add_special_tokens=add_special, return_tensors="pt",
        )  # fmt: skip
    finally:
        tokenizer.padding_side = side
    batch = Batch(encoded)
    shape = tuple(batch["input_ids"].shape)
    batch.token_keys = token_keys_of(batch, ("labels",))
    labels = torch.full(shape, IGNORE_INDEX, dtype=torch.long)
    name = type(processor).__name__
    for row, item in enumerate(rendered):
        length = int(batch["attention_mask"][row].sum())
        plain = tokenizer(item.text, add_special_tokens=add_special, return_offsets_mapping=True)
        plain_labels = labels_from_offsets(plain["input_ids"], plain["offset_mapping"], item.spans)
        aligned = align_labels(plain["input_ids"], plain_labels, batch["input_ids"][row, :length].tolist(), name)
        name_of_template = functools.partial(template_name, processor, chat_template)
        check_labels(tokenizer, aligned, item, names[row] if names else row, name_of_template)
        labels[row, :length] = torch.tensor(aligned, dtype=torch.long)
    batch["labels"] = labels
    return batch


# Processors whose `token_type_ids` split a prefix (0: attended both ways) from a suffix (1: causal), as PaliGemma's
# model reads them. Their processors mark the suffix only when it is passed apart (`suffix=`); here it is every token
# from a row's first target on, so that no answer token sees the ones after it.
PREFIX_LM_PROCESSORS = ("PaliGemmaProcessor",)


def mark_suffix(processor, batch: Batch) -> None:
    """After truncation (which reads token_type_ids as image markers): each row's suffix starts at its first target."""
    if type(processor).__name__ not in PREFIX_LM_PROCESSORS:
        return
    targets = batch["labels"] != IGNORE_INDEX
    after_first = targets.int().cumsum(dim=1) > 0
    batch["token_type_ids"] = (after_first & batch["attention_mask"].bool()).to(batch["token_type_ids"].dtype)


def truncate_batch(batch: Batch, max_length: int | None, image_token_id, ids: list) -> Batch:
    """Cut every token-aligned tensor at max_length, refusing a cut through any row's image tokens
    (`image_token_id`: one id or a collection of them)."""
    import torch

    if max_length is None or batch["input_ids"].shape[1] <= max_length:
        return batch
    image_ids = [image_token_id] if isinstance(image_token_id, int) else sorted(image_token_id or ())
    cut = batch["input_ids"][:, max_length:]
    inside = torch.isin(cut, torch.tensor(image_ids, dtype=cut.dtype))
    for key in TOKEN_TYPE_KEYS:
        if key in batch:
            inside = inside | (batch[key][:, max_length:] != 0)
    rows = inside.any(dim=1).nonzero().flatten().tolist()
    if rows:
        lengths = batch["attention_mask"].sum(dim=1)
        raise MaskingError(
            f"row {ids[rows[0]]!r}: max_length {max_length} cuts through the image tokens of a "
            f"{int(lengths[rows[0]])}-token conversation; raise max_length or lower the image resolution"
        )
    for key in batch.token_keys:
        batch[key] = batch[key][:, :max_length]
    return batch


def pad_batch(batch: Batch, multiple: int | None, pad_id: int) -> Batch:
    """Extend every token-aligned tensor to a multiple of `multiple` tokens (pad id, mask 0, label -100)."""
    import torch

    length = batch["input_ids"].shape[1]
    target = -(-length // multiple) * multiple if multiple else length
    if target == length:
        return batch
    fill = {"input_ids": pad_id, "labels": IGNORE_INDEX}
    for key in batch.token_keys:
        value = batch[key]
        extra = torch.full((value.shape[0], target - length, *value.shape[2:]), fill.get(key, 0), dtype=value.dtype)
        batch[key] = torch.cat([value, extra], dim=1)
    return batch


@dataclass
class VisionSFTCollator:
    """Collate rows with `images` ([image or None]) and `messages` (TRL format) into model inputs and labels."""

    processor: Any
    max_length: int | None = 2048
    max_image_side: int | None = 1024
    missing_images: str = "skip"  # rows still without an image here: "skip" drops them, "text" trains text-only
    chat_template: str | None = None
    pad_to_multiple_of: int | None = None
    # Without `chat_template`, a published template known not to render turn by turn is replaced on the processor
    # by vital-hub's corrected one (`templates.correct_template`); False keeps the processor's template as it is.
    correct_template: bool = True

    def __post_init__(self):
        self.template_correction = None
        if self.chat_template is None and self.correct_template:
            self.template_correction = correct_template(self.processor)

    def prepare_row(self, row: dict):
        """(rendered conversation, images) of a row, or None for a row without a usable image under "skip"."""
        image = row["images"][0] if row.get("images") else None
        try:
            picture = decode_image(image, self.max_image_side)
        except OSError as err:  # PIL raises OSError subclasses for truncated and unidentifiable files
            logger.warning("row %r: unreadable image (%s); treated as missing", row.get("id"), err)
            picture = None
        if picture is None and self.missing_images != "text":
            return None
        messages = model_messages(row["messages"], has_image=picture is not None)
        try:
            rendered = render_with_targets(self.processor, messages, self.chat_template)
        except MaskingError as err:
            raise MaskingError(f"row {row.get('id')!r}: {err}") from None
        return rendered, [picture] if picture is not None else []

    def encode_rows(self, rows: list[dict]) -> Batch:
        """The rows' model inputs and verified labels, truncated, before any padding beyond the longest row."""
        prepared = [(row.get("id"), item) for row in rows if (item := self.prepare_row(row)) is not None]
        if not prepared:
            raise ValueError(f"no row of this batch has a usable image (ids {[row.get('id') for row in rows]})")
        ids = [row_id for row_id, _ in prepared]
        rendered, images = [item[0] for _, item in prepared], [item[1] for _, item in prepared]
        batch = encode_batch(self.processor, rendered, images, ids, self.chat_template)
        batch = truncate_batch(batch, self.max_length, image_token_ids_of(self.processor), ids)
        mark_suffix(self.processor, batch)
        return batch

    def __call__(self, rows: list[dict]) -> dict:
        batch = pad_batch(self.encode_rows(rows), self.pad_to_multiple_of, self.processor.tokenizer.pad_token_id)
        return dict(batch)


def encode_conversation(processor, messages: list[dict], images: list, chat_template: str | None = None) -> dict:
    """input_ids, labels and the processor's image tensors for one conversation (tensors without a batch axis
    where the processor gives one row per conversation).

    `images` holds one decoded image per image part of `messages` (an empty list for a text-only conversation).
    """
    batch = encode_batch(processor, [render_with_targets(processor, messages, chat_template)], [images])
    mark_suffix(processor, batch)
    length = int(batch["attention_mask"][0].sum())
    return {key: value[0, :length] if key in batch.token_keys else value for key, value in batch.items()}
