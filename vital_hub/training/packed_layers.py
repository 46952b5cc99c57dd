"""Packed rows through the layers that are not causal self-attention: Mllama's cross-attention to the images and
Qwen3.5's linear attention (gated delta net). `vital_hub.training.packing` calls these for those two families.

**Mllama (Llama 3.2 Vision).** Text tokens read the images through cross-attention layers, steered by
`cross_attention_mask` (tokens x images x tiles: which tiles a token may read). A packed row holds the real images
of every row, in row order (`pack_cross_attention`: padding image slots dropped, each row's mask moved to its own
images' slots). Alone, a token that reads no tile yet (the text before a row's image) attends uniformly over every
tile of its row's images and its feed-forward output is zeroed; a row without an image skips the cross-attention
layers altogether. `CrossAttentionRows` rebuilds exactly that for the packed row: a token reads only its own row's
images (its own tiles where the processor says so, else all of its row's tiles, as alone), and the cross-attention
output of a row without an image is multiplied by zero (the layer's residual then passes it through unchanged, as
when the layer is skipped). The cross-attention gets this dense mask of (tokens x image tokens) instead of the row
boundaries, so its memory and work grow with the number of rows packed together: keep Mllama's token budget small
(its self-attention layers still get the varlen kernel).

**Qwen3.5.** Its linear-attention layers carry a recurrent state and a short causal convolution along the
sequence. transformers (5.25) hands them the row boundaries, but its PyTorch gated delta rule refuses them (an
error unless flash-linear-attention is installed and on the inputs' device), and the causal convolution is not given
them at all (causal-conv1d would need `seq_idx`), so one row's state would flow into the next.
`per_row_linear_attention` runs each such layer once per row of the packed batch, state and convolution starting
afresh at every row exactly as alone (the same kernels, fused or not, on each row); the full-attention layers still
see all rows in one varlen call. A packed row is never continued by generation, so these layers keep no cache.
"""

from __future__ import annotations

import functools

BOUNDARY_KEYS = ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k")
MLLAMA_IMAGE_KEYS = ("pixel_values", "aspect_ratio_ids", "aspect_ratio_mask")


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


class CrossAttentionRows:
    """Mllama's cross-attention kept inside each packed row (see the module docstring)."""

    def __init__(self, backbone, language):
        self.backbone = backbone
        self.keep = None  # (1, tokens, 1): 1 for the tokens of rows with an image, 0 for the others
        self.layers = [module for module in language.modules() if type(module).__name__.endswith("CrossAttention")]
        for layer in self.layers:
            layer.register_forward_pre_hook(self._strip_boundaries, with_kwargs=True)
            layer.register_forward_hook(self._zero_rows_without_images)

    @staticmethod
    def _strip_boundaries(module, args, kwargs):
        return args, {key: value for key, value in kwargs.items() if key not in BOUNDARY_KEYS}

    def _zero_rows_without_images(self, module, args, output):
        if self.keep is None:
            return output
        return (output[0] * self.keep.to(output[0].dtype), *output[1:])

    def take(self, kwargs: dict, carried: dict) -> None:
        """At the backbone: replace the packed `cross_attention_mask` with the language model's two masks."""
        self.keep = None
        mask = kwargs.get("cross_attention_mask")
        if mask is None or "cu_seq_lens_q" not in carried:
            return
        kwargs.pop("cross_attention_mask")
        crossed, full, self.keep = self.masks(mask, kwargs["position_ids"])
        carried["cross_attention_mask"] = crossed
        carried["full_text_row_masked_out_mask"] = full

    def masks(self, mask, position_ids):
        """(additive cross-attention mask (1, 1, tokens, image tokens), tokens that read a tile (1, 1, tokens, 1),
        tokens of rows with an image (1, tokens, 1)) for a packed row."""
        import torch

        dtype = self.backbone.dtype
        tiles = mask[0].bool()  # (tokens, images, tiles)
        token_rows = (position_ids[0] == 0).cumsum(0)
        reads = tiles.flatten(1).any(1)
        first_reader = tiles.any(2).int().argmax(0)  # the image's own token is its first reader
        own = token_rows[:, None] == token_rows[first_reader][None, :]  # (tokens, images)
        allowed = torch.where(reads[:, None, None], tiles, own[:, :, None].expand_as(tiles))
        allowed = allowed.repeat_interleave(self.backbone.vision_model.num_patches, dim=2).flatten(1)
        crossed = torch.zeros(allowed.shape, dtype=dtype, device=mask.device).masked_fill(
            ~allowed, torch.finfo(dtype).min
        )
        keep = own.any(1)[None, :, None]
        return crossed[None, None], reads.to(dtype)[None, None, :, None], keep


def per_row_linear_attention(language) -> int:
    """Make every linear-attention layer of `language` run once per packed row; returns how many layers."""
    layers = [module for module in language.modules() if type(module).__name__.endswith("GatedDeltaNet")]
    for layer in layers:
        if not getattr(layer, "_vital_per_row", False):
            layer.forward = _per_row(layer.forward)
            layer._vital_per_row = True
    return len(layers)


def _per_row(forward):
    @functools.wraps(forward)
    def run(hidden_states, *args, **kwargs):
        import torch

        boundaries = kwargs.pop("cu_seq_lens_q", None)
        for key in BOUNDARY_KEYS:
            kwargs.pop(key, None)
        if boundaries is None:
            return forward(hidden_states, *args, **kwargs)
        kwargs.pop("cache", None)  # a packed row is never continued: its recurrent state is not kept
        kwargs.pop("cache_params", None)
        mask = kwargs.pop("attention_mask", None)
        edges = boundaries.tolist()
        pieces = []
        for start, end in zip(edges[:-1], edges[1:], strict=True):
            row_mask = None if mask is None else mask[:, start:end]
            pieces.append(forward(hidden_states[:, start:end], *args, attention_mask=row_mask, **kwargs))
        return torch.cat(pieces, dim=1)

    return run
