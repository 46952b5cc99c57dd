"""Packed rows through the layers that are not causal self-attention: Mllama's cross-attention to the images and
Qwen3.5's linear attention (gated delta net). `vital_hub.training.packing` calls these for those two families.

**Mllama (Llama 3.2 Vision).** Text tokens read the images through cross-attention layers, steered by
`cross_attention_mask` (tokens x images x tiles: which tiles a token may read). A packed row holds the real images
of every row, in row order (`pack_cross_attention`: padding image slots dropped, each row's mask moved to its own
images' slots). Alone, a token that reads no tile yet (the text before a row's image) has its mask lifted: it
attends over every tile of its row's images, and its feed-forward output is zeroed; a row without an image skips
the cross-attention layers altogether. `CrossAttentionRows` gives each row exactly that: the cross-attention runs
once per row, on the row's own tokens and its own images' states with the mask transformers builds for the row
alone, and a row without an image gets zeros (the layer's residual then passes it through unchanged, as when the
layer is skipped). Memory and work are those of the rows alone, not of (all tokens x all images) of the pack; the
self-attention layers still get the varlen call over all rows.

**Qwen3.5.** Its linear-attention layers carry a recurrent state and a short causal convolution along the
sequence. transformers (5.25) hands them the row boundaries, but its PyTorch gated delta rule refuses them (an
error unless flash-linear-attention is installed and on the inputs' device), and the causal convolution is not given
them at all (causal-conv1d would need `seq_idx`), so one row's state would flow into the next.
`pack_linear_attention` gives each such layer `packed_recurrent.packed_gated_delta_net`: its projections, norm
and gating once over the pack, the convolution in one call with each row starting from zeros, and the delta rule
in one fla call with the boundaries where fla runs, else once per row, state starting afresh at every row exactly
as alone; the full-attention layers still see all rows in one varlen call. A packed row is never continued by
generation, so these layers keep no cache.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from typing import Any

BOUNDARY_KEYS = ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k")
MLLAMA_IMAGE_KEYS = ("pixel_values", "aspect_ratio_ids", "aspect_ratio_mask")
logger = logging.getLogger(__name__)


def pack_cross_attention(batch, keep, packed: dict) -> None:
    """Mllama's image inputs of a right-padded batch, in `packed` for one padding-free row of `keep`'s tokens.

    Image slots whose `aspect_ratio_ids` is 0 are padding (transformers' convention) and are dropped; the packed
    `cross_attention_mask` is (1, tokens, real images, tiles), each row's tokens marked only on its own images.
    """
    import torch

    real = batch["aspect_ratio_ids"] != 0
    if not bool(real.any()):
        for key in (*MLLAMA_IMAGE_KEYS, "cross_attention_mask"):
            packed.pop(key, None)
        return
    for key in MLLAMA_IMAGE_KEYS:
        packed[key] = batch[key][real][None]
    image_rows, image_slots = real.nonzero(as_tuple=True)
    own = torch.arange(real.shape[0])[:, None] == image_rows[None, :]  # (rows, images)
    mask = batch["cross_attention_mask"][:, :, image_slots] * own[:, None, :, None].to(batch["cross_attention_mask"])
    packed["cross_attention_mask"] = mask[keep][None]


@dataclass
class RowCrossMasks:
    """A packed row's cross-attention, row by row: each row's token span, the span of its images' tokens in the
    packed image states, and the additive mask it gets alone (None for a row without an image)."""

    rows: list[tuple[int, int, int, int, Any]]


class CrossAttentionRows:
    """Mllama's cross-attention kept inside each packed row (see the module docstring)."""

    def __init__(self, backbone, language):
        self.backbone = backbone
        self.layers = wrap_forward_once(language, "CrossAttention", _per_row_cross_attention)

    def take(self, kwargs: dict, carried: dict) -> None:
        """At the backbone: replace the packed `cross_attention_mask` with the language model's two masks."""
        mask = kwargs.get("cross_attention_mask")
        if mask is None or "cu_seq_lens_q" not in carried:
            return
        kwargs.pop("cross_attention_mask")
        carried["cross_attention_mask"], carried["full_text_row_masked_out_mask"] = self.masks(
            mask, carried["cu_seq_lens_q"]
        )

    def masks(self, mask, boundaries):
        """(`RowCrossMasks`, the tokens that read a tile (1, 1, tokens, 1)) of a packed row: each row's mask is
        the one transformers builds for the row alone (lifted for a token that reads no tile, whose feed-forward
        output is then zeroed)."""
        import torch

        dtype = self.backbone.dtype
        image_tokens = self.backbone.vision_model.num_patches * mask.shape[-1]
        tiles = mask[0].bool()  # (tokens, images, tiles)
        reads = tiles.flatten(1).any(1)
        edges = row_edges(boundaries)
        readers = tiles.any(2).int().argmax(0)  # an image's first reader is its own token, inside its row
        image_rows = torch.bucketize(readers, torch.tensor(edges[1:], device=readers.device), right=True).tolist()
        rows = []
        for row, (start, end) in enumerate(zip(edges[:-1], edges[1:], strict=True)):
            images = [index for index, owner in enumerate(image_rows) if owner == row]  # contiguous: row order
            if not images:
                rows.append((start, end, 0, 0, None))
                continue
            first, last = images[0], images[-1] + 1
            allowed = tiles[start:end, first:last].repeat_interleave(self.backbone.vision_model.num_patches, dim=2)
            allowed = allowed.flatten(1) | ~reads[start:end, None]
            additive = torch.zeros(allowed.shape, dtype=dtype, device=mask.device)
            rows.append((start, end, first * image_tokens, last * image_tokens,
                         additive.masked_fill(~allowed, torch.finfo(dtype).min)[None, None]))  # fmt: skip
        return RowCrossMasks(rows), reads.to(dtype)[None, None, :, None]


def _per_row_cross_attention(forward):
    """A cross-attention forward that, given `RowCrossMasks`, runs once per row on the row's own image states; a
    row without an image gets zeros (the layer's residual passes it through, as when transformers skips it)."""

    @functools.wraps(forward)
    def run(hidden_states, cross_attention_states=None, *args, attention_mask=None, **kwargs):
        import torch

        take_boundaries(kwargs)  # the cross-attention reads images, not the packed rows' boundaries
        if not isinstance(attention_mask, RowCrossMasks):
            return forward(hidden_states, cross_attention_states, *args, attention_mask=attention_mask, **kwargs)
        kwargs.pop("cache", None)  # a packed row is never continued by generation
        kwargs.pop("past_key_values", None)
        # transformers hands over (images x tiles, patches, width): the image tokens in image, tile, patch order
        cross_attention_states = cross_attention_states.reshape(1, -1, cross_attention_states.shape[-1])
        pieces = []
        for start, end, first, last, mask in attention_mask.rows:
            if mask is None:
                pieces.append(hidden_states.new_zeros(hidden_states.shape[0], end - start, hidden_states.shape[2]))
                continue
            states = cross_attention_states[:, first:last]
            pieces.append(forward(hidden_states[:, start:end], states, *args, attention_mask=mask, **kwargs)[0])
        return torch.cat(pieces, dim=1), None

    return run


_last_edges: dict = {}


def row_edges(boundaries) -> list[int]:
    """`cu_seq_lens` as Python ints, read from the device once per forward (every layer gets the same tensor)."""
    if _last_edges.get("boundaries") is not boundaries:
        _last_edges.update(boundaries=boundaries, edges=boundaries.tolist())
    return _last_edges["edges"]


def pack_linear_attention(language) -> int:
    """Keep packed rows apart in every linear-attention layer of `language`: the layer's own token-wise parts over
    the whole pack and only its convolution and recurrence by row (`packed_recurrent`), or, for a layer without
    the parts that relies on, the whole layer once per row. Returns how many layers."""
    return len(wrap_forward_once(language, "GatedDeltaNet", _packed_recurrent))


def _packed_recurrent(forward):
    from vital_hub.training import packed_recurrent

    layer = getattr(forward, "__self__", None)
    if layer is None or not packed_recurrent.supports(layer):
        logger.info("%s lacks the parts of a gated delta net that packing splits by row: it runs once per row",
                    type(layer).__name__)  # fmt: skip
        return _per_row(forward)

    @functools.wraps(forward)
    def run(hidden_states, *args, **kwargs):
        boundaries = take_boundaries(kwargs)
        if boundaries is None:
            return forward(hidden_states, *args, **kwargs)
        mask = kwargs.pop("attention_mask", None)
        edges = row_edges(boundaries)
        return packed_recurrent.packed_gated_delta_net(layer, hidden_states, boundaries, edges, mask)

    return run


def take_boundaries(kwargs: dict):
    """Remove the row-boundary keyword arguments from `kwargs`; returns `cu_seq_lens_q` (None: not a packed batch)."""
    boundaries = kwargs.pop("cu_seq_lens_q", None)
    for key in BOUNDARY_KEYS:
        kwargs.pop(key, None)
    return boundaries


def wrap_forward_once(language, class_suffix: str, wrapper) -> list:
    """The modules of `language` whose class name ends with `class_suffix`, each `forward` wrapped by `wrapper`
    once (enabling packing twice on one model leaves them wrapped once)."""
    layers = [module for module in language.modules() if type(module).__name__.endswith(class_suffix)]
    for layer in layers:
        if not getattr(layer, "_vital_per_row", False):
            layer.forward = wrapper(layer.forward)
            layer._vital_per_row = True
    return layers


def _per_row(forward):
    @functools.wraps(forward)
    def run(hidden_states, *args, **kwargs):
        import torch

        boundaries = take_boundaries(kwargs)
        if boundaries is None:
            return forward(hidden_states, *args, **kwargs)
        kwargs.pop("cache", None)  # a packed row is never continued: its recurrent state is not kept
        kwargs.pop("cache_params", None)
        mask = kwargs.pop("attention_mask", None)
        edges = row_edges(boundaries)
        pieces = []
        for start, end in zip(edges[:-1], edges[1:], strict=True):
            row_mask = None if mask is None else mask[:, start:end]
            pieces.append(forward(hidden_states[:, start:end], *args, attention_mask=row_mask, **kwargs))
        return torch.cat(pieces, dim=1)

    return run
