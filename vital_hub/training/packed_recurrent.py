"""Qwen3.5's linear-attention (gated delta net) layers over a packed row: one pass over every row, with only what
carries state along the sequence kept apart by row.

A gated delta net layer is, in order (transformers' `Qwen3_5GatedDeltaNet.forward`): token-wise projections
(`in_proj_qkv`, `in_proj_z`, `in_proj_b`, `in_proj_a`), a short depthwise causal convolution over the sequence, the
gated delta rule (a recurrent state carried from token to token), a gated RMS norm and the output projection.
Only the convolution and the delta rule see other tokens, so `packed_gated_delta_net` runs everything else once
over the pack, as the full-attention layers do, and:

- the convolution in one call, rows laid out with `kernel - 1` zero columns before each: every row's first tokens
  see zeros before them, as alone (where the convolution pads with zeros), never the previous row's end;
- the delta rule in one call with the row boundaries where transformers dispatches it to flash-linear-attention
  (`chunk_gated_delta_rule(..., cu_seqlens=...)`, CUDA and the other devices fla runs on), else once per row with
  transformers' PyTorch function (which refuses row boundaries): the state starts afresh at every row.

Which delta-rule path a device gets is decided at its first packed layer and logged once. A layer without the
attributes this relies on (a transformers version that renamed them) runs whole once per row instead
(`packed_layers._per_row`), also logged. See
https://github.com/huggingface/transformers/blob/main/src/transformers/models/qwen3_5/modeling_qwen3_5.py and
https://github.com/fla-org/flash-linear-attention (`fla.ops.gated_delta_rule`).
"""

from __future__ import annotations

import logging
import sys

logger = logging.getLogger(__name__)

PARTS = ("in_proj_qkv", "in_proj_z", "in_proj_b", "in_proj_a", "conv1d", "A_log", "dt_bias", "norm", "out_proj")
DELTA_RULE = "torch_chunk_gated_delta_rule"  # transformers' function, dispatched to fla where fla runs
_one_call: dict[str, bool] = {}  # device type -> whether the delta rule takes row boundaries there
_positions: dict = {}  # the last pack's gapped token positions (`gapped_positions`)


def supports(layer) -> bool:
    """Whether `layer` has the parts `packed_gated_delta_net` uses."""
    modeling = sys.modules.get(type(layer).__module__)
    return all(hasattr(layer, name) for name in PARTS) and hasattr(modeling, DELTA_RULE)


def gapped_positions(edges: list[int], gap: int, device):
    """Where each packed token sits once `gap` zero columns precede every row; made once per forward (every layer
    of a step gets the same `edges` list from `packed_layers.row_edges`) and device, not once per layer."""
    import torch

    key = (gap, str(device))
    if _positions.get("edges") is not edges or _positions.get("key") != key:
        lengths = torch.tensor(edges[1:]) - torch.tensor(edges[:-1])
        rows = torch.repeat_interleave(torch.arange(len(lengths)), lengths)
        where = (torch.arange(edges[-1]) + gap * (rows + 1)).to(device)
        _positions.update(key=key, edges=edges, where=where)
    return _positions["where"]


def row_causal_conv(conv1d, hidden_states, edges: list[int], activation: str | None):
    """`conv1d` (depthwise, causal) over (1, channels, tokens) packed rows, each row starting from zeros as alone."""
    import torch.nn.functional as F
    from transformers.activations import ACT2FN

    gap = conv1d.kernel_size[0] - 1
    where = gapped_positions(edges, gap, hidden_states.device)
    gapped = hidden_states.new_zeros(*hidden_states.shape[:2], edges[-1] + gap * (len(edges) - 1))
    gapped = gapped.index_copy(2, where, hidden_states)
    weight = conv1d.weight
    out = F.conv1d(gapped.to(weight.dtype), weight, conv1d.bias, padding=0, groups=weight.shape[0])
    # output p reads the gapped inputs p .. p + gap: the token at p + gap and the `gap` before it
    out = out.index_select(2, where - gap)
    if activation is not None:
        out = ACT2FN[activation](out)
    return out.to(hidden_states.dtype)


def delta_rule(function, query, key, value, g, beta, boundaries, edges: list[int]):
    """The gated delta rule over packed rows: one call with the boundaries where it takes them, else per row."""
    import torch

    device = query.device.type
    options = {"initial_state": None, "output_final_state": False, "use_qk_l2norm_in_kernel": True}
    if _one_call.get(device, True):
        try:
            out, _ = function(query, key, value, g=g, beta=beta, cu_seqlens=boundaries, **options)
        except ValueError as error:  # transformers' PyTorch path refuses row boundaries; nothing was computed
            if "packed sequences apart" not in str(error):
                raise
            _one_call[device] = False
            logger.info("packed Qwen3.5 linear attention on %s: the gated delta rule once per row "
                        "(flash-linear-attention does not run here); the rest of each layer in one pass", device)  # fmt: skip
        else:
            if device not in _one_call:
                _one_call[device] = True
                logger.info("packed Qwen3.5 linear attention on %s: one gated delta rule call per layer with the "
                            "row boundaries (flash-linear-attention)", device)  # fmt: skip
            return out
    pieces = []
    for start, end in zip(edges[:-1], edges[1:], strict=True):
        span = slice(start, end)
        out, _ = function(query[:, span], key[:, span], value[:, span], g=g[:, span], beta=beta[:, span], **options)
        pieces.append(out)
    return torch.cat(pieces, dim=1)


def packed_gated_delta_net(layer, hidden_states, boundaries, edges: list[int], attention_mask=None):
    """`layer`'s forward over a packed (1, tokens, hidden) row whose rows end at `edges`; no cache (a packed row
    is never continued by generation)."""
    import torch.nn.functional as F

    if attention_mask is not None:  # transformers zeroes padding positions; a packed row has none, but keep it so
        hidden_states = (hidden_states * attention_mask[:, :, None]).to(hidden_states.dtype)
    batch, length, _ = hidden_states.shape
    mixed = layer.in_proj_qkv(hidden_states).transpose(1, 2)
    z = layer.in_proj_z(hidden_states).reshape(batch, length, -1, layer.head_v_dim)
    b, a = layer.in_proj_b(hidden_states), layer.in_proj_a(hidden_states)
    mixed = row_causal_conv(layer.conv1d, mixed, edges, layer.activation).transpose(1, 2)
    query, key, value = mixed.split([layer.key_dim, layer.key_dim, layer.value_dim], dim=-1)
    query = query.reshape(batch, length, -1, layer.head_k_dim)
    key = key.reshape(batch, length, -1, layer.head_k_dim)
    value = value.reshape(batch, length, -1, layer.head_v_dim)
    beta = b.sigmoid()
    g = -layer.A_log.float().exp() * F.softplus(a.float() + layer.dt_bias)
    function = getattr(sys.modules[type(layer).__module__], DELTA_RULE)
    core = delta_rule(function, query, key, value, g, beta, boundaries, edges)
    core = layer.norm(core.reshape(-1, layer.head_v_dim), z.reshape(-1, layer.head_v_dim))
    return layer.out_proj(core.reshape(batch, length, -1))
