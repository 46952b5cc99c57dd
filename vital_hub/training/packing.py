"""Packed, padding-free training batches for every supported vision-language family.

The rows of a step are laid end to end in one row of exactly their real tokens (no padding), and each keeps what
it would get alone:

- position ids restart at 0 for every row; the 3-D multimodal RoPE positions of Qwen-VL, Qwen3.5 and GLM-4.1V
  come from the family's own `get_rope_index`, computed per row on the CPU in the DataLoader workers (from the
  config alone, no weights);
- attention stays inside a row: the batch carries the row boundaries (`cu_seq_lens_q/k`, `max_length_q/k`)
  for `vital_hub.training.kernels` (one varlen call per layer), and, with no attention mask, transformers' mask
  builder detects the restarting position ids and makes a block-diagonal mask wherever a mask is used. Gemma 3
  keeps that mask path, since its image tokens attend to each other both ways (a causal varlen kernel cannot);
- labels are the row's own; the first token of each row is never a target (nothing precedes it), so the last
  token of one row does not learn to predict the next row;
- image tensors are the processor's own batch for all rows (one vision forward over every image of the step);
- the layers that are not causal self-attention keep rows apart too (`vital_hub.training.packed_layers`):
  Mllama's cross-attention reads only the row's own images, and Qwen3.5's linear-attention layers (a recurrent
  state and a causal convolution along the sequence, which transformers' PyTorch fallback cannot reset at a row
  start) run once per row.

`enable_packing(model)` routes the boundaries to the language model only (a forward pre-hook on the backbone
takes them, one on the language model gives them back), so vision towers that get the text kwargs never see
them, and sets the packed attention on the language model and on Qwen's vision tower (one attention call per
vision layer over all windows and images; GLM-4.1V's tower likewise). `PackedCollator` is a drop-in for
`VisionSFTCollator`.

TRL's `SFTTrainer` counts the tokens of a batch without an attention mask from `position_ids`, which here holds
exactly the real tokens (the 3-D positions travel under `mrope_position_ids` and are put back by the hook).
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass
from typing import Any

from vital_hub.training.collator import VisionSFTCollator
from vital_hub.training.families import family_of
from vital_hub.training.masking import IGNORE_INDEX
from vital_hub.training.packed_layers import (
    BOUNDARY_KEYS,
    CrossAttentionRows,
    pack_cross_attention,
    per_row_linear_attention,
)

logger = logging.getLogger(__name__)

MROPE_KEY = "mrope_position_ids"
MROPE_FAMILIES = ("qwen2-vl", "qwen3-vl", "qwen3.5", "glm4v")
MASK_ONLY_FAMILIES = ("gemma3",)  # bidirectional image spans: the block-diagonal mask path, not a causal kernel
# Families whose packed rows are tested to give each row's own logits, labels and loss (tests/test_sft_packing.py).
# The others (Gemma 4, PaliGemma's prefix mask, Mistral 3) are refused rather than trained on rows that may see
# each other.
PACKED_FAMILIES = (
    "llava", "llava-next", "qwen2-vl", "qwen3-vl", "qwen3.5", "glm4v", "gemma3", "idefics3", "internvl", "mllama",
)  # fmt: skip


def packed_family(model_or_config) -> str:
    """The family of a model that packing supports; any other family is an error saying what to do."""
    family = family_of(model_or_config).name
    if family not in PACKED_FAMILIES:
        raise ValueError(
            f"packing: true is not supported for the {family} family yet (supported: {', '.join(PACKED_FAMILIES)}); "
            "train it with packing: false"
        )
    return family


class RopeIndex:
    """A 3-D RoPE family's `get_rope_index` (Qwen-VL, Qwen3.5, GLM-4.1V) from its config alone (picklable, for
    DataLoader workers)."""

    def __init__(self, config):
        self.config = config
        self._model = None

    def __getstate__(self):
        return {"config": self.config, "_model": None}

    def _backbone(self):
        if self._model is None:
            import torch
            import transformers
            from transformers.models.auto.modeling_auto import MODEL_MAPPING_NAMES

            cls = getattr(transformers, MODEL_MAPPING_NAMES[self.config.model_type])
            model = cls.__new__(cls)  # no weights: get_rope_index reads only the config
            torch.nn.Module.__init__(model)
            model.config = self.config
            self._model = model
        return self._model

    def __call__(self, **inputs):
        """(3, batch, length) positions of a right-padded batch (padding positions are 0)."""
        rope_index = self._backbone().get_rope_index
        accepted = inspect.signature(rope_index).parameters
        return rope_index(**{key: value for key, value in inputs.items() if key in accepted})[0]


def pack_batch(batch, rope_index: RopeIndex | None = None, boundaries: bool = True) -> dict:
    """One padding-free row from a right-padded `Batch` (see the module docstring for what it holds)."""
    import torch

    keep = batch["attention_mask"].bool()
    lengths = keep.sum(dim=1)
    packed = {key: value for key, value in batch.items() if key not in batch.token_keys}
    for key in batch.token_keys:
        if key != "attention_mask":
            packed[key] = batch[key][keep][None]
    starts = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)])
    packed["labels"][0, starts[:-1]] = IGNORE_INDEX
    if "cross_attention_mask" in packed and "aspect_ratio_ids" in batch:
        pack_cross_attention(batch, keep, packed)
    positions = torch.cat([torch.arange(int(n)) for n in lengths])[None]
    packed["position_ids"] = positions
    if rope_index is not None:
        inputs = {key: batch.get(key) for key in ("input_ids", "mm_token_type_ids", "image_grid_thw")}
        mrope = rope_index(**inputs, attention_mask=batch["attention_mask"])
        packed[MROPE_KEY] = torch.cat([positions[None], mrope[:, keep][:, None]], dim=0)
    if boundaries:
        cu = starts.to(torch.int32)
        packed["cu_seq_lens_q"] = packed["cu_seq_lens_k"] = cu
        packed["max_length_q"] = packed["max_length_k"] = int(lengths.max())
    return packed


@dataclass
class PackedCollator(VisionSFTCollator):
    """`VisionSFTCollator` whose batches are one padding-free row (build it with `packed_collator`)."""

    rope_index: Any = None
    boundaries: bool = True

    def __call__(self, rows: list[dict]) -> dict:
        return pack_batch(self.encode_rows(rows), self.rope_index, self.boundaries)


def packed_collator(collator: VisionSFTCollator, config) -> PackedCollator:
    """The packed twin of `collator` for a model of `config` (padding settings no longer apply)."""
    family = packed_family(config)
    settings = {name: getattr(collator, name) for name in VisionSFTCollator.__dataclass_fields__}
    settings["pad_to_multiple_of"] = None
    settings["correct_template"] = False  # `collator` already replaced a broken template on the shared processor
    packed = PackedCollator(
        **settings,
        rope_index=RopeIndex(config) if family in MROPE_FAMILIES else None,
        boundaries=family not in MASK_ONLY_FAMILIES,
    )
    packed.template_correction = collator.template_correction
    return packed


LANGUAGE_MODEL_NAMES = ("language_model", "text_model")  # Idefics3 and SmolVLM call theirs text_model


def backbone_of(model):
    """(backbone, language model): the VLM backbone (`model.model`, under any PEFT wrapping) and its decoder."""
    import torch

    for module in model.modules():
        for name in LANGUAGE_MODEL_NAMES:
            language = getattr(module, name, None)
            vision = hasattr(module, "get_image_features") or hasattr(module, "vision_model")  # Mllama: no getter
            if isinstance(language, torch.nn.Module) and vision:
                return module, language
    raise ValueError(f"{type(model).__name__} has no vision-language backbone with a language model")


def gemma3_masks(token_type_ids, position_ids, sliding_window: int) -> dict:
    """Gemma 3's two attention masks for a packed row, built here rather than by transformers.

    Within a row a token sees the tokens before it, and image tokens see their whole image (both ways); sliding
    layers also drop keys `sliding_window` or more tokens back. transformers' builder remaps the image-block
    overlay of the sliding mask to in-row positions when it detects packing, which looks up the wrong tokens, so
    the masks are given ready-made (the model takes a `{layer type: mask}` mapping as `attention_mask`).
    """
    import torch

    index = torch.arange(position_ids.shape[-1], device=position_ids.device)
    row = (position_ids[0] == 0).cumsum(0)
    image = token_type_ids[0] == 1
    starts = image & ~torch.nn.functional.pad(image, (1, 0))[:-1]
    block = torch.where(image, starts.cumsum(0), -1)
    full = (row[:, None] == row[None, :]) & (
        (index[:, None] >= index[None, :]) | ((block[:, None] == block[None, :]) & (block[:, None] >= 0))
    )
    sliding = full & (index[None, :] > index[:, None] - sliding_window)
    return {"full_attention": full[None, None], "sliding_attention": sliding[None, None]}


def enable_packing(model) -> str:
    """Make `model` train on `PackedCollator` batches (see the module docstring); returns a summary line."""
    from vital_hub.training import kernels

    family = packed_family(model)
    backbone, language = backbone_of(model)
    name = kernels.register()
    if family not in MASK_ONLY_FAMILIES:
        language.config._attn_implementation = name
    if family in MROPE_FAMILIES:
        backbone.visual.config._attn_implementation = name
    cross_attention = CrossAttentionRows(backbone, language) if family == "mllama" else None
    per_row = []
    if cross_attention is not None:
        per_row.append(f"{len(cross_attention.layers)} cross-attention layers")
    if family == "qwen3.5":
        per_row.append(f"{per_row_linear_attention(language)} linear-attention layers")
    carried: dict = {}

    def take(module, args, kwargs):
        carried.clear()
        for key in BOUNDARY_KEYS:
            if key in kwargs:
                carried[key] = kwargs.pop(key)
        kernels.carry_boundaries(bool(carried))
        if MROPE_KEY in kwargs:
            kwargs["position_ids"] = kwargs.pop(MROPE_KEY)
        if family in MASK_ONLY_FAMILIES and kwargs.get("attention_mask") is None and "token_type_ids" in kwargs:
            window = language.config.sliding_window
            kwargs["attention_mask"] = gemma3_masks(kwargs["token_type_ids"], kwargs["position_ids"], window)
        if cross_attention is not None:
            cross_attention.take(kwargs, carried)
        return args, kwargs

    def give(module, args, kwargs):
        return args, {**kwargs, **carried}

    backbone.register_forward_pre_hook(take, with_kwargs=True)
    language.register_forward_pre_hook(give, with_kwargs=True)
    attention = "block-diagonal SDPA mask" if family in MASK_ONLY_FAMILIES else kernels.kernel_summary()
    return f"packing on for {family}: {attention}" + "".join(f"; {layers} run once per row" for layers in per_row)
