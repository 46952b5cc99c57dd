"""LoRA layers under autocast skip PEFT's fp32 round trip of their input (`skip_redundant_adapter_casts`): the
same losses and gradients bit for bit, half the cast traffic, and PEFT's cast kept where it is needed."""

import copy

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from vital_hub.training.model import skip_redundant_adapter_casts

TARGETS = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"


class Casts(TorchDispatchMode):
    """Counts the elements that `_to_copy` moves (every dtype cast)."""

    def __init__(self):
        super().__init__()
        self.elements = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._to_copy.default:
            self.elements += args[0].numel()
        return func(*args, **(kwargs or {}))


@pytest.fixture(scope="module")
def lora_model_and_batch():
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText

    from vital_hub.training.collator import VisionSFTCollator
    from vital_hub.training.family_models import build_family
    from vital_hub.training.synthetic import synthetic_rows

    processor, config = build_family("qwen2.5-vl", "tiny")
    torch.manual_seed(0)
    model = AutoModelForImageTextToText.from_config(config, dtype=torch.bfloat16, attn_implementation="sdpa")
    lora = LoraConfig(r=8, lora_alpha=16, target_modules=TARGETS, modules_to_save=["merger"], init_lora_weights=False)
    model = get_peft_model(model, lora)
    collator = VisionSFTCollator(processor, max_length=1024, max_image_side=200)
    return model, collator(synthetic_rows(3, seed=2, image_sides=(96, 200)))


def train_step(model, batch):
    model.zero_grad()
    casts = Casts()
    with casts, torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(**batch).loss
    with casts:
        loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), grads, casts.elements


def test_adapters_take_the_autocast_input_as_is_with_identical_gradients(lora_model_and_batch):
    model, batch = lora_model_and_batch
    stock = copy.deepcopy(model)
    assert next(p for n, p in model.named_parameters() if "lora_A" in n).dtype == torch.float32  # PEFT's fp32
    loss, grads, stock_casts = train_step(stock, batch)
    layers = skip_redundant_adapter_casts(model)
    assert layers == 2 * 7  # the tiny model's 2 decoder layers x q/k/v/o/gate/up/down
    assert skip_redundant_adapter_casts(model) == layers  # idempotent: wrapped once
    ours_loss, ours_grads, ours_casts = train_step(model, batch)
    assert torch.equal(ours_loss, loss)
    assert grads.keys() == ours_grads.keys() and any("lora_A" in name for name in grads)
    for name, grad in grads.items():
        assert torch.equal(ours_grads[name], grad), name
    print(f"cast elements per step: {stock_casts:,} stock PEFT, {ours_casts:,} skipped")
    assert ours_casts < 0.7 * stock_casts


def test_outside_autocast_peft_still_casts_the_input_to_the_adapters(lora_model_and_batch):
    model, batch = lora_model_and_batch
    skip_redundant_adapter_casts(model)
    with torch.no_grad():  # bf16 base weights, fp32 adapters, no autocast: the input must be cast to reach them
        logits = model(**batch).logits
    assert torch.isfinite(logits.float()).all()
