"""Packed, padding-free training batches for every supported vision-language family.

The rows of a step are laid end to end in one row of exactly their real tokens (no padding), and each keeps what
it would get alone:

- position ids restart for every row (at 0; at 1 for PaliGemma, which counts from 1); the 3-D multimodal RoPE
  positions of Qwen-VL, Qwen3.5 and GLM-4.1V come from the family's own `get_rope_index`, computed per row on the
  CPU in the DataLoader workers (from the config alone, no weights);
- attention stays inside a row: the batch carries the row boundaries (`cu_seq_lens_q/k`, `max_length_q/k`)
  for `vital_hub.training.kernels` (one varlen call per layer, sliding windows kept), and, with no attention
  mask, transformers' mask builder detects the restarting position ids and makes a block-diagonal mask wherever
  a mask is used. The families in `MASK_RULES` (Gemma 3, Gemma 4, PaliGemma) get ready-made masks instead
  (`row_masks`), since some of their tokens attend both ways (images; PaliGemma's prefix), which a causal varlen
  kernel cannot do;
- labels are the row's own; the first token of each row is never a target (nothing precedes it), so the last
  token of one row does not learn to predict the next row;
- image tensors are the processor's own batch for all rows (one vision forward over every image of the step);
- the layers that are not causal self-attention keep rows apart too (`vital_hub.training.packed_layers`):
  Mllama's cross-attention reads only the row's own images, and Qwen3.5's linear-attention layers (a recurrent
  state and a causal convolution along the sequence, which transformers' PyTorch fallback cannot reset at a row
  start) start both afresh at every row (`vital_hub.training.packed_recurrent`).

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
    pack_linear_attention,
)

logger = logging.getLogger(__name__)

MROPE_KEY = "mrope_position_ids"
MROPE_FAMILIES = ("qwen2-vl", "qwen3-vl", "qwen3.5", "glm4v")
# Families whose packed rows are tested to give each row's own logits, labels and loss (tests/test_sft_packing.py).
PACKED_FAMILIES = ("llava", "llava-next", "qwen2-vl", "qwen3-vl", "qwen3.5", "glm4v", "gemma3", "gemma4", "idefics3",
                   "internvl", "mistral3", "mllama", "paligemma")  # fmt: skip


def packed_family(model_or_config) -> str:
    """The family of a model that packing supports; any other family is an error saying what to do."""
    family = family_of(model_or_config).name
    if family not in PACKED_FAMILIES:
        raise ValueError(
            f"packing: true is not supported for the {family} family yet (supported: {', '.join(PACKED_FAMILIES)}); "
            "train it with packing: false"
        )
    text = getattr(model_or_config, "config", model_or_config)
    text = text.get_text_config() if hasattr(text, "get_text_config") else text
    if getattr(text, "use_bidirectional_attention", None) == "all" and family == "gemma4":
        raise ValueError(
            "packing: true is not supported for a Gemma 4 whose every token attends both ways "
            "(use_bidirectional_attention: all); train it with packing: false"
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


def pack_batch(batch, rope_index: RopeIndex | None = None, boundaries: bool = True, first_position: int = 0) -> dict:
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
    positions = torch.cat([torch.arange(int(n)) + first_position for n in lengths])[None]
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
    first_position: int = 0

    def __call__(self, rows: list[dict]) -> dict:
        return pack_batch(self.encode_rows(rows), self.rope_index, self.boundaries, self.first_position)


def packed_collator(collator: VisionSFTCollator, config) -> PackedCollator:
    """The packed twin of `collator` for a model of `config` (padding settings no longer apply)."""
    family = packed_family(config)
    settings = {name: getattr(collator, name) for name in VisionSFTCollator.__dataclass_fields__}
    settings["pad_to_multiple_of"] = None
    settings["correct_template"] = False  # `collator` already replaced a broken template on the shared processor
    packed = PackedCollator(
        **settings,
        rope_index=RopeIndex(config) if family in MROPE_FAMILIES else None,
        boundaries=family not in MASK_RULES,
        first_position=FIRST_POSITION.get(family, 0),
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


@dataclass(frozen=True)
class MaskRule:
    """How the rows of a mask-path family attend: each token sees the tokens before it in its own row, plus the
    tokens of its own bidirectional block (`block_key`'s values in `block_values`: each run of them one block, or,
    with `per_row`, all of a row's such tokens one block). `full_blocks`: whether full-attention layers get the
    blocks; `window_over_blocks`: whether sliding layers' window also bounds the blocks (else a block is seen whole).
    """

    block_key: str | None
    block_values: tuple[int, ...] = ()
    per_row: bool = False
    full_blocks: bool = True
    window_over_blocks: bool = True


# Gemma 3: each image's tokens see each other on every layer (transformers' `create_masks_for_vision_model` in
# models/gemma3). PaliGemma: a row's prefix (image and prompt, token type 0) is one block, which sliding layers see
# whole (`block_sequence_ids` ORed after the window, models/paligemma); positions count from 1. Gemma 4: vision
# tokens see each other on sliding layers only, and only where `use_bidirectional_attention` is "vision"
# (models/gemma4); otherwise every layer is causal.
MASK_RULES = {
    "gemma3": MaskRule("token_type_ids", (1,)),
    "paligemma": MaskRule("token_type_ids", (0,), per_row=True, window_over_blocks=False),
    "gemma4": MaskRule("mm_token_type_ids", (1, 2), full_blocks=False),
}
FIRST_POSITION = {"paligemma": 1}  # PaliGemma counts positions from 1 (its forward adds 1 when given none)


def mask_rule(config) -> MaskRule:
    """The family's `MaskRule` for this config (Gemma 4 without bidirectional vision spans has no blocks)."""
    family = family_of(config).name
    text = config.get_text_config()
    if family == "gemma4" and getattr(text, "use_bidirectional_attention", None) != "vision":
        return MaskRule(None)
    return MASK_RULES[family]


def row_masks(rule: MaskRule, position_ids, token_types, sliding_window: int | None) -> dict:
    """The `{layer type: mask}` of a packed row under `rule`, built here rather than by transformers.

    A row starts wherever the positions do not go up by one. transformers' builders remap some overlays to in-row
    positions when they detect packing, which looks up the wrong tokens (Gemma 3's sliding layers), and
    PaliGemma's model does not accept a `{layer type: mask}` mapping, so `enable_packing` hands these masks to the
    language model itself (every family's language model accepts the mapping as `attention_mask`).
    """
    import torch

    positions = position_ids[0]
    index = torch.arange(positions.shape[-1], device=positions.device)
    row = (torch.diff(positions, prepend=positions[:1] - 1) != 1).cumsum(0)
    same_row = row[:, None] == row[None, :]
    causal = same_row & (index[:, None] >= index[None, :])
    block = torch.zeros_like(causal)
    if rule.block_key is not None:
        marked = torch.isin(token_types[0], torch.tensor(rule.block_values, device=positions.device))
        starts = marked & ~torch.nn.functional.pad(marked, (1, 0))[:-1]
        group = torch.where(marked, row if rule.per_row else starts.cumsum(0), -1)
        block = same_row & (group[:, None] == group[None, :]) & (group[:, None] >= 0)
    masks = {"full_attention": causal | block if rule.full_blocks else causal}
    if sliding_window is not None:
        window = index[None, :] > index[:, None] - sliding_window
        masks["sliding_attention"] = (
            ((causal | block) & window) if rule.window_over_blocks else (causal & window) | block
        )
    return {name: mask[None, None] for name, mask in masks.items()}


def enable_packing(model) -> str:
    """Make `model` train on `PackedCollator` batches (see the module docstring); returns a summary line."""
    import torch

    from vital_hub.training import kernels

    family = packed_family(model)
    backbone, language = backbone_of(model)
    name = kernels.register()
    if family not in MASK_RULES:
        language.config._attn_implementation = name
    if family in MROPE_FAMILIES:
        backbone.visual.config._attn_implementation = name
    rule = mask_rule(model.config) if family in MASK_RULES else None
    if rule is not None and language.config._attn_implementation not in ("sdpa", "eager"):
        raise ValueError(
            f"packing: true for the {family} family takes sdpa or eager attention (its masks are made for them), not "
            f"{language.config._attn_implementation}; set attn_implementation: sdpa or train with packing: false"
        )
    cross_attention = CrossAttentionRows(backbone, language) if family == "mllama" else None
    layer_notes = []
    if cross_attention is not None:
        layer_notes.append(f"{len(cross_attention.layers)} cross-attention layers run once per row")
    if family == "qwen3.5":
        layer_notes.append(f"{pack_linear_attention(language)} linear-attention layers keep rows apart in their "
                       "convolution and recurrence")  # fmt: skip
    carried: dict = {}

    def take(module, args, kwargs):
        carried.clear()
        for key in BOUNDARY_KEYS:
            if key in kwargs:
                carried[key] = kwargs.pop(key)
        kernels.carry_boundaries(bool(carried))
        if MROPE_KEY in kwargs:
            kwargs["position_ids"] = kwargs.pop(MROPE_KEY)
        if rule is not None and kwargs.get("attention_mask") is None and kwargs.get("position_ids") is not None:
            token_types = kwargs.get(rule.block_key) if rule.block_key else None
            masks = row_masks(rule if token_types is not None else MaskRule(None), kwargs["position_ids"],
                              token_types, getattr(language.config, "sliding_window", None))  # fmt: skip
            if language.config._attn_implementation == "eager":  # additive masks, as transformers' eager_mask
                dtype = next(language.parameters()).dtype
                masks = {
                    layer: torch.where(mask, 0.0, torch.finfo(dtype).min).to(dtype) for layer, mask in masks.items()
                }
            # the backbone takes the full mask as given (a 4-D mask is used as it is); the language model, all
            carried["attention_mask"] = masks
            kwargs["attention_mask"] = masks["full_attention"]
        if cross_attention is not None:
            cross_attention.take(kwargs, carried)
        return args, kwargs

    def give(module, args, kwargs):
        return args, {**kwargs, **carried}

    backbone.register_forward_pre_hook(take, with_kwargs=True)
    language.register_forward_pre_hook(give, with_kwargs=True)
    attention = f"block-diagonal {language.config._attn_implementation} masks" if rule else kernels.kernel_summary()
    return f"packing on for {family}: {attention}" + "".join(f"; {layers}" for layers in layer_notes)
