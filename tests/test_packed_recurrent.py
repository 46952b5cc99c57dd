"""Qwen3.5's linear-attention layers over packed rows: only the convolution and the delta rule are split by row.

The packed-vs-alone logits, float64 and gradient checks for Qwen3.5 are in `test_sft_packing.py`; these tests pin
how the work is done, so a change cannot silently fall back to running whole layers once per row.
"""

import sys

import pytest
import torch

from tests.test_sft_packing import family_parts, packed_and_alone
from vital_hub.training import packed_recurrent
from vital_hub.training.synthetic import synthetic_rows

pytest.importorskip("transformers.models.qwen3_5")


@pytest.fixture(scope="module")
def rows():
    return synthetic_rows(4, seed=3, image_sides=(96, 400), missing_every=3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_row_causal_conv_starts_every_row_from_zeros(dtype):
    from transformers.models.qwen3_5.modeling_qwen3_5 import causal_conv1d_fn

    torch.manual_seed(0)
    conv = torch.nn.Conv1d(48, 48, 4, groups=48, bias=False, padding=3).to(dtype)
    edges = [0, 37, 38, 40, 340, 404]  # rows of 1 and 2 tokens: shorter than the kernel
    x = torch.randn(1, 48, edges[-1], dtype=dtype)
    packed = packed_recurrent.row_causal_conv(conv, x, edges, "silu")
    alone = [causal_conv1d_fn(x[:, :, a:b], conv.weight.squeeze(1), None, activation="silu")
             for a, b in zip(edges[:-1], edges[1:], strict=True)]  # fmt: skip
    difference = (packed - torch.cat(alone, dim=2)).abs().max().item()
    assert difference <= (1e-6 if dtype == torch.float32 else 1e-12)
    leaked = packed_recurrent.row_causal_conv(conv, x + 100 * (torch.arange(edges[-1]) < 37), edges, "silu")
    assert torch.equal(leaked[:, :, 37:], packed[:, :, 37:])  # the first row's values reach no later row


def linear_layers() -> int:
    return family_parts("qwen3.5")[1].get_text_config().layer_types.count("linear_attention")


def count_calls(monkeypatch, modeling, accepts_boundaries: bool):
    """Count the delta-rule calls and the in-projection calls of every linear-attention layer; with
    `accepts_boundaries` the delta rule behaves as flash-linear-attention's (rows kept apart by `cu_seqlens`)."""
    calls = {"delta": [], "projection": 0}
    original = modeling.torch_chunk_gated_delta_rule

    def delta(query, key, value, g, beta, cu_seqlens=None, **kwargs):
        calls["delta"].append(None if cu_seqlens is None else len(cu_seqlens) - 1)
        if cu_seqlens is None:
            return original(query, key, value, g=g, beta=beta, **kwargs)
        if not accepts_boundaries:
            return original(query, key, value, g=g, beta=beta, cu_seqlens=cu_seqlens, **kwargs)
        edges = cu_seqlens.tolist()
        outs = [original(query[:, a:b], key[:, a:b], value[:, a:b], g=g[:, a:b], beta=beta[:, a:b], **kwargs)[0]
                for a, b in zip(edges[:-1], edges[1:], strict=True)]  # fmt: skip
        return torch.cat(outs, dim=1), None

    monkeypatch.setattr(modeling, "torch_chunk_gated_delta_rule", delta)
    monkeypatch.setattr(packed_recurrent, "_one_call", {})
    linear = torch.nn.Linear.forward

    def counted(module, x):
        if getattr(module, "_vital_name", None) == "in_proj_qkv":
            calls["projection"] += 1
        return linear(module, x)

    monkeypatch.setattr(torch.nn.Linear, "forward", counted)
    return calls


@pytest.mark.parametrize("fla", [False, True], ids=["pytorch-delta-rule", "fla-like-delta-rule"])
def test_projections_run_once_per_pack_and_the_delta_rule_per_row_or_once(fla, rows, monkeypatch):
    modeling = sys.modules["transformers.models.qwen3_5.modeling_qwen3_5"]
    calls = count_calls(monkeypatch, modeling, accepts_boundaries=fla)
    original = packed_recurrent.packed_gated_delta_net

    def tagged(layer, *args, **kwargs):
        layer.in_proj_qkv._vital_name = "in_proj_qkv"
        return original(layer, *args, **kwargs)

    monkeypatch.setattr(packed_recurrent, "packed_gated_delta_net", tagged)
    alone, packed, logits = packed_and_alone("qwen3.5", rows)
    layers = linear_layers()
    # the rows alone: stock layers, one delta-rule call each per layer; the pack: see below
    alone_calls = calls["delta"][: layers * len(rows)]
    packed_calls = calls["delta"][layers * len(rows) :]
    assert alone_calls == [None] * (layers * len(rows))
    assert calls["projection"] == layers  # the tagged layers' projection: once per layer over the whole pack
    if fla:
        assert packed_calls == [len(rows)] * layers  # one call per layer with every row's boundaries
    else:  # a refused call with the boundaries, then the PyTorch path once per row, state afresh each time
        assert packed_calls == [len(rows)] + [None] * (len(rows) * layers)
    starts = [0, *torch.tensor([len(ids) for _, _, ids in alone]).cumsum(0).tolist()]
    worst = max((logits[a:b] - row_logits).abs().max().item()
                for (row_logits, _, _), a, b in zip(alone, starts[:-1], starts[1:], strict=True))  # fmt: skip
    assert worst <= 1e-5


def test_a_layer_without_the_expected_parts_runs_whole_once_per_row(rows, monkeypatch, caplog):
    modeling = sys.modules["transformers.models.qwen3_5.modeling_qwen3_5"]
    monkeypatch.setattr(packed_recurrent, "PARTS", (*packed_recurrent.PARTS, "a_part_no_layer_has"))
    calls = count_calls(monkeypatch, modeling, accepts_boundaries=False)
    with caplog.at_level("INFO", logger="vital_hub.training.packed_layers"):
        alone, packed, logits = packed_and_alone("qwen3.5", rows)
    assert "lacks the parts of a gated delta net" in caplog.text
    layers = linear_layers()
    assert calls["delta"] == [None] * (2 * layers * len(rows))  # alone, then the whole layer per row
