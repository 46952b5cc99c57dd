"""Attention for packed, padding-free batches: one variable-length call per layer, rows kept apart.

A packed batch is one row of several conversations laid end to end, with `cu_seq_lens` (the cumulative row
boundaries, as flash-attention's varlen API takes them). `packed_attention_forward` is registered with
transformers' `AttentionInterface` under `ATTENTION_NAME`; per call it picks, in this order:

- PyTorch's own varlen flash kernel (`torch.nn.attention.varlen.varlen_attn`, PyTorch >= 2.10, CUDA, bf16/fp16):
  one launch over every row, no mask in memory, no work across rows (a layer's `sliding_window` becomes the
  kernel's `window_size`);
- otherwise, on CUDA (fp32, or an older PyTorch), one `scaled_dot_product_attention` call with a block-diagonal
  mask built from the boundaries, cut to the layer's sliding window where it has one: still one launch per layer,
  but it spends the masked-out work and holds a (tokens x tokens) mask;
- off CUDA (CPU, MPS), one SDPA call per row, on the row's own queries and keys: launches are cheap there, the work
  is that of the rows alone (a pack of 8 rows does an eighth of the block-diagonal call's), no dense mask, and
  each row gets bit for bit what SDPA gives it alone (a call with all rows and a mask rounds differently);
- without boundaries (a padded batch, evaluation, generation): transformers' own SDPA path, unchanged.

The name contains "flash" on purpose: transformers' Qwen-VL vision towers then hand every window and every image
of a layer to the attention function in one call with their own `cu_seqlens`, instead of looping over windows
with one SDPA launch each (Qwen2.5-VL-7B: 32 layers x windows x images, thousands of launches a step). The
language model builds no mask for a batch that carries boundaries (`packed_mask`); one without them gets exactly
SDPA's mask. See
https://docs.pytorch.org/docs/stable/nn.attention.varlen.html and
https://huggingface.co/docs/transformers/attention_interface.
"""

from __future__ import annotations

import inspect
import logging

logger = logging.getLogger(__name__)

ATTENTION_NAME = "vital_flash_varlen"
_state: dict = {}


def varlen_kernel():
    """PyTorch's varlen flash attention, or None (logged once) where this PyTorch has none."""
    if "kernel" not in _state:
        try:
            from torch.nn.attention.varlen import varlen_attn

            _state["kernel"] = varlen_attn
            _state["parameters"] = set(inspect.signature(varlen_attn).parameters)
        except ImportError:
            import torch

            logger.info(
                "torch %s has no torch.nn.attention.varlen: packed rows use one SDPA call with a block-diagonal "
                "mask per layer instead of the varlen kernel",
                torch.__version__,
            )
            _state["kernel"] = None
    return _state["kernel"]


def block_diagonal_mask(cu_seq_lens, length: int, causal: bool, sliding_window: int | None = None):
    """(1, 1, length, length) boolean mask: True where a query may attend a key of its own row (with
    `sliding_window`, only keys fewer than that many tokens back, as transformers' sliding-window masks)."""
    import torch

    lengths = cu_seq_lens[1:] - cu_seq_lens[:-1]
    rows = torch.repeat_interleave(torch.arange(lengths.numel(), device=cu_seq_lens.device), lengths.long())
    mask = rows[:, None] == rows[None, :]
    if causal:
        mask = mask & torch.ones(length, length, dtype=torch.bool, device=mask.device).tril()
    if sliding_window is not None:
        index = torch.arange(length, device=mask.device)
        mask = mask & (index[None, :] > index[:, None] - sliding_window)
    return mask[None, None]


def _varlen(module, query, key, value, cu_seq_lens, max_length: int, scaling, causal: bool, window: int | None):
    import torch

    kernel = varlen_kernel()
    parameters = _state["parameters"]
    # (1, heads, tokens, dim) -> (tokens, heads, dim)
    q, k, v = (t[0].transpose(0, 1).contiguous() for t in (query, key, value))
    options = {}
    if "scale" in parameters:
        options["scale"] = scaling
    elif scaling is not None:  # a kernel without a scale argument uses 1/sqrt(dim)
        q = q * (scaling * q.shape[-1] ** 0.5)
    if k.shape[1] != q.shape[1]:
        if "enable_gqa" in parameters:
            options["enable_gqa"] = True
        else:
            groups = q.shape[1] // k.shape[1]
            k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    if "is_causal" in parameters:
        options["is_causal"] = causal
    elif causal:
        options["window_size"] = (-1, 0)
    if window is not None:  # keys fewer than `window` tokens back, as transformers' sliding-window masks
        options["window_size"] = (window - 1, 0 if causal else -1)
    cu = cu_seq_lens.to(torch.int32)
    out = kernel(q, k, v, cu, cu, max_length, max_length, **options)
    return out.unsqueeze(0), None  # (1, tokens, heads, dim), as transformers' attention functions return


def packed_attention_forward(
    module,
    query,
    key,
    value,
    attention_mask,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    cu_seq_lens_q=None,
    cu_seq_lens_k=None,
    max_length_q: int | None = None,
    max_length_k: int | None = None,
    sliding_window: int | None = None,
    **kwargs,
):
    """transformers attention function: varlen over `cu_seq_lens_q` where given, else SDPA (see module doc)."""
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if cu_seq_lens_q is None or query.shape[0] != 1:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, is_causal=is_causal, **kwargs
        )
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    fast = query.is_cuda and query.dtype in (torch.bfloat16, torch.float16) and varlen_kernel() is not None
    if fast and (sliding_window is None or "window_size" in _state["parameters"]):
        if max_length_q is None:
            max_length_q = int((cu_seq_lens_q[1:] - cu_seq_lens_q[:-1]).max())
        return _varlen(module, query, key, value, cu_seq_lens_q, int(max_length_q), scaling, causal, sliding_window)
    if not query.is_cuda:
        return per_row_attention(module, query, key, value, cu_seq_lens_q, causal, sliding_window,
                                 dropout=dropout, scaling=scaling, **kwargs)  # fmt: skip
    if not _state.get("warned"):
        _state["warned"] = True
        logger.warning(
            "packed attention got %s inputs on CUDA: one SDPA call with a block-diagonal mask per layer instead of "
            "the varlen kernel (train in bf16 or fp16 for it)",
            query.dtype,
        )
    return block_diagonal_attention(module, query, key, value, cu_seq_lens_q, causal, sliding_window,
                                    dropout=dropout, scaling=scaling, **kwargs)  # fmt: skip


def block_diagonal_attention(module, query, key, value, cu_seq_lens, causal: bool, window: int | None, **kwargs):
    """One SDPA call over every row of a packed (1, heads, tokens, dim) batch, rows kept apart by a mask."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    mask = block_diagonal_mask(cu_seq_lens, query.shape[2], causal, window)
    return sdpa_attention_forward(module, query, key, value, mask, is_causal=False, **kwargs)


def per_row_attention(module, query, key, value, cu_seq_lens, causal: bool, window: int | None, **kwargs):
    """One SDPA call per row of a packed (1, heads, tokens, dim) batch, each on its own span; the outputs laid
    end to end as one call's would be, (1, tokens, heads, dim)."""
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    edges = cu_seq_lens.tolist()
    outputs = []
    for start, end in zip(edges[:-1], edges[1:], strict=True):
        span = slice(start, end)
        mask = None
        if window is not None and end - start > 1:
            mask = block_diagonal_mask(cu_seq_lens.new_tensor([0, end - start]), end - start, causal, window)
        out, _ = sdpa_attention_forward(
            module, query[:, :, span], key[:, :, span], value[:, :, span], mask,
            is_causal=causal and mask is None, **kwargs,
        )  # fmt: skip
        outputs.append(out)
    return torch.cat(outputs, dim=1), None


def carry_boundaries(carried: bool) -> None:
    """Say whether the forward now starting carries row boundaries (then the language model builds no mask)."""
    _state["carried"] = carried


def packed_mask(*args, **kwargs):
    """transformers mask function for `ATTENTION_NAME`: none while boundaries are carried (the varlen kernel needs
    none, and the fallback builds its block-diagonal mask from the boundaries), else exactly SDPA's mask. A dense
    mask of a 16K-token packed row would be 256 MB, rebuilt every forward."""
    from transformers.masking_utils import sdpa_mask

    return None if _state.get("carried") else sdpa_mask(*args, **kwargs)


def register() -> str:
    """Register `packed_attention_forward` and `packed_mask` under `ATTENTION_NAME`; returns the name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(ATTENTION_NAME, packed_attention_forward)
    AttentionMaskInterface.register(ATTENTION_NAME, packed_mask)
    return ATTENTION_NAME


def kernel_summary() -> str:
    """One line saying which attention kernel packed rows get on this machine."""
    import torch

    if torch.cuda.is_available() and varlen_kernel() is not None:
        return "packed attention: torch.nn.attention.varlen (flash, one launch per layer)"
    if torch.cuda.is_available():
        return "packed attention: SDPA with a block-diagonal mask (this torch has no CUDA varlen kernel)"
    return "packed attention: one SDPA call per row (no CUDA here)"
