"""Packed, padding-free batches give every row exactly what it gets alone, for every supported family.

Each family is a tiny random model built from its config (fp32, CPU). A step's rows (figures of 96-400 px in
both orientations, one row without a figure trained text-only) are packed into one row by `PackedCollator`; the
model with `enable_packing` must give each row the logits, labels and loss that the stock model (SDPA; eager for
PaliGemma 2, whose Gemma 2 has no SDPA) gives that row alone. The packed side runs one attention call per layer over
every row (on CPU, one SDPA call per row inside it; the varlen kernel on CUDA; ready-made masks for the Gemma
families and PaliGemma), and Qwen's vision towers one call per layer over all windows and images.
"""

import functools
import json

import pytest
import torch

from tests.sft_support import run_sft, tiny_recipe
from vital_hub.training.collator import VisionSFTCollator
from vital_hub.training.families import family_of
from vital_hub.training.family_models import BUILDERS, build_family, chat_template, write_family_folder
from vital_hub.training.family_models_recent import qwen3_5
from vital_hub.training.masking import IGNORE_INDEX
from vital_hub.training.packing import MROPE_KEY, backbone_of, enable_packing, packed_collator
from vital_hub.training.processors import has_torchvision
from vital_hub.training.synthetic import synthetic_rows, write_instructions_repo

# Variants of a builder's config whose attention differs: Gemma 4's larger models let vision tokens attend both ways
# on sliding layers; a sliding window shorter than the rows shows that packed rows keep it (Mistral's varlen path).
VARIANTS = {"gemma4-bidirectional-vision": ("gemma4", {"use_bidirectional_attention": "vision"}),
            "mistral3-sliding-window": ("mistral3", {"sliding_window": 24}),
            "paligemma2-sliding-window": ("paligemma2", {"sliding_window": 24})}  # fmt: skip
# Qwen3.5-MoE is trained as Qwen3.5 and packed the same way; its tiny model is checked here only
EXTRA_BUILDERS = {"qwen3.5-moe": functools.partial(qwen3_5, "tiny", moe=True)}
# Mistral 3's PixtralProcessor requires torchvision: it runs in `make test-torchvision`'s environment.
NEEDS_TORCHVISION = pytest.mark.skipif(not has_torchvision(), reason="PixtralProcessor needs torchvision")
FAMILIES = [
    pytest.param(f, marks=NEEDS_TORCHVISION) if f.startswith("mistral3") else f
    for f in sorted({*BUILDERS, *VARIANTS, *EXTRA_BUILDERS})
]
FIXED_TEMPLATES = {"llava-onevision": "llava_onevision_fixed"}
TOLERANCE = 1e-5
# Families whose recurrent (gated delta rule) layers compute in float32 whatever the model's dtype: float32 rounding
# could hide a small leak there, so they are also checked in float64.
RECURRENT = ["qwen3.5", "qwen3.5-moe"]


@pytest.fixture(scope="module")
def rows():
    return synthetic_rows(4, seed=3, image_sides=(96, 400), missing_every=3)


def family_parts(family):
    """(processor, config) of a builder or of one of `VARIANTS` (its text config changed)."""
    if family in EXTRA_BUILDERS:
        return EXTRA_BUILDERS[family]()
    builder, text = VARIANTS.get(family, (family, {}))
    processor, config = build_family(builder)
    for name, value in text.items():
        setattr(config.get_text_config(), name, value)
    return processor, config


def collator_for(family, processor):
    template = chat_template(FIXED_TEMPLATES[family]) if family in FIXED_TEMPLATES else None
    return VisionSFTCollator(processor, max_length=2048, max_image_side=400, missing_images="text",
                             chat_template=template)  # fmt: skip


def tiny_model(config):
    from transformers import AutoModelForImageTextToText

    torch.manual_seed(0)
    try:
        model = AutoModelForImageTextToText.from_config(config, attn_implementation="sdpa").eval()
    except ValueError:  # PaliGemma 2's Gemma 2 language model (attention logit soft-capping) has eager attention only
        torch.manual_seed(0)
        model = AutoModelForImageTextToText.from_config(config, attn_implementation="eager").eval()
    for parameter in model.parameters():  # random but not tiny weights, so rows that leak into each other show
        parameter.data.normal_(0, 0.2)
    return model


def per_token_loss(logits, labels):
    return torch.nn.functional.cross_entropy(
        logits[:-1].float(), labels[1:], ignore_index=IGNORE_INDEX, reduction="none"
    )


def test_every_supported_family_packs():
    from vital_hub.training.families import FAMILIES as SUPPORTED
    from vital_hub.training.packing import PACKED_FAMILIES

    assert sorted(PACKED_FAMILIES) == sorted(family.name for family in SUPPORTED)


def test_a_gemma4_whose_every_token_attends_both_ways_is_refused_in_one_line():
    _, config = family_parts("gemma4")
    config.get_text_config().use_bidirectional_attention = "all"
    with pytest.raises(ValueError, match=r"^packing: true is not supported for a Gemma 4 .*packing: false$"):
        packed_collator(None, config)


def test_a_mask_path_family_with_an_attention_its_masks_do_not_fit_is_refused_in_one_line():
    _, config = family_parts("gemma4")
    model = tiny_model(config)
    model.model.language_model.config._attn_implementation = "flex_attention"
    with pytest.raises(ValueError, match=r"^packing: true for the gemma4 family takes sdpa or eager attention .*"):
        enable_packing(model)


def packed_and_alone(family, rows, dtype=torch.float32):
    """(each row alone through the stock model: (logits, labels, ids), the packed batch, the packed logits)."""
    processor, config = family_parts(family)
    if family.startswith("paligemma"):  # PaliGemma's processor refuses a prompt without an image
        rows = [row for row in rows if row["images"] and row["images"][0] is not None]
    collator = collator_for(family, processor)
    model = tiny_model(config).to(dtype)
    if dtype == torch.float64 and config.model_type.endswith("_moe"):
        model.set_experts_implementation("eager")  # grouped matrix products take no float64

    def inputs(batch):
        floating = {k for k, v in batch.items() if isinstance(v, torch.Tensor) and v.is_floating_point()}
        return {k: v.to(dtype) if k in floating else v for k, v in batch.items() if k != "labels"}

    with torch.no_grad():
        alone = []
        for row in rows:
            batch = collator([row])
            alone.append((model(**inputs(batch)).logits[0], batch["labels"][0], batch["input_ids"][0]))
        packed = packed_collator(collator, config)(rows)
        assert "attention_mask" not in packed
        enable_packing(model)
        out = model(**inputs(packed))
    return alone, packed, out.logits[0]


@pytest.mark.parametrize("family", FAMILIES)
def test_packed_rows_give_the_logits_labels_and_loss_of_each_row_alone(family, rows):
    alone, packed, logits_packed = packed_and_alone(family, rows)
    lengths = [len(ids) for _, _, ids in alone]
    assert packed["input_ids"].shape == (1, sum(lengths))
    assert packed["position_ids"].shape == (1, sum(lengths))
    if family.startswith(("qwen", "glm")):
        assert packed[MROPE_KEY].shape == (4, 1, sum(lengths))
    worst = 0.0
    starts = [0, *torch.tensor(lengths).cumsum(0).tolist()[:-1]]
    for (logits, labels, ids), start, length in zip(alone, starts, lengths, strict=True):
        piece = slice(start, start + length)
        assert torch.equal(packed["input_ids"][0, piece], ids)
        assert torch.equal(packed["labels"][0, piece], labels)  # the first token is never a target either way
        first = 1 if family.startswith("paligemma") else 0  # PaliGemma counts positions from 1
        assert torch.equal(packed["position_ids"][0, piece], torch.arange(length) + first)
        worst = max(worst, (logits_packed[piece] - logits).abs().max().item())
        alone_loss = per_token_loss(logits, labels)
        packed_loss = per_token_loss(logits_packed[piece], packed["labels"][0, piece])
        assert (labels != IGNORE_INDEX).any()
        assert torch.allclose(packed_loss, alone_loss, atol=TOLERANCE, rtol=0)
    print(f"{family}: max |packed - alone| logit difference {worst:.2e} over {len(rows)} rows")
    assert worst <= TOLERANCE, f"{family}: packed rows differ from alone by {worst:.2e}"


@pytest.mark.parametrize("family", RECURRENT)
def test_packed_rows_of_a_recurrent_family_equal_rows_alone_in_float64(family, rows):
    alone, _, logits_packed = packed_and_alone(family, rows, torch.float64)
    starts = [0, *torch.tensor([len(ids) for _, _, ids in alone]).cumsum(0).tolist()]
    worst = max((logits_packed[a:b] - logits).abs().max().item() for (logits, _, _), a, b in
                zip(alone, starts[:-1], starts[1:], strict=True))  # fmt: skip
    print(f"{family} (float64): max |packed - alone| logit difference {worst:.2e} over {len(rows)} rows")
    assert worst <= 1e-12


@pytest.mark.slow
@pytest.mark.parametrize("family", ["mllama", "qwen3.5", "qwen3.5-moe"])
def test_a_packed_training_step_gives_the_gradients_of_the_rows_alone(family, rows):
    """Mllama's cross-attention hooks and Qwen3.5's per-row linear attention, in training mode, under autograd."""
    processor, config = EXTRA_BUILDERS[family]() if family in EXTRA_BUILDERS else build_family(family)
    collator = collator_for(family, processor)
    model = tiny_model(config).double().train()
    if config.model_type.endswith("_moe"):
        model.set_experts_implementation("eager")  # grouped matrix products take no float64

    def gradients(batch) -> dict:
        model.zero_grad()
        inputs = {k: v.double() if v.is_floating_point() else v for k, v in batch.items() if torch.is_tensor(v)}
        logits = model(**{k: v for k, v in inputs.items() if k != "labels"}, use_cache=False).logits[0]
        per_token_loss(logits, batch["labels"][0]).sum().backward()
        return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}

    alone = [gradients(collator([row])) for row in rows]
    packed_batch = packed_collator(collator, config)(rows)
    enable_packing(model)
    packed = gradients(packed_batch)
    assert set(packed) == set().union(*alone)
    worst, largest = 0.0, 0.0
    for name, gradient in packed.items():
        reference = sum(g[name] for g in alone if name in g)
        worst = max(worst, (gradient - reference).abs().max().item())
        largest = max(largest, reference.abs().max().item())
    print(f"{family} (float64, training): max |packed - sum of alone| gradient difference {worst:.2e} "
          f"(largest gradient {largest:.2e})")  # fmt: skip
    assert worst <= 1e-6 * largest  # Qwen3.5: its gated delta rule computes in float32 even in a float64 model


def jpeg(width: int, height: int, seed: int) -> dict:
    import io

    import numpy as np
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG")
    return {"bytes": buffer.getvalue(), "path": None}


def test_mllama_packed_rows_stay_exact_with_one_tile_wide_and_tall_images(rows):
    """Mllama tiles a figure by its aspect ratio: a small figure fills one of 4 tiles (the rest padding)."""
    varied = [dict(row) for row in rows]
    for row, (width, height) in zip([varied[0], varied[1], varied[3]], [(300, 40), (20, 20), (40, 200)], strict=True):
        row["images"] = [jpeg(width, height, seed=width)]
    alone, packed, logits_packed = packed_and_alone("mllama", varied)
    assert packed["aspect_ratio_ids"][0].unique().numel() == 3 and (packed["aspect_ratio_mask"] == 0).any()
    starts = [0, *torch.tensor([len(ids) for _, _, ids in alone]).cumsum(0).tolist()]
    worst = max((logits_packed[a:b] - logits).abs().max().item() for (logits, _, _), a, b in
                zip(alone, starts[:-1], starts[1:], strict=True))  # fmt: skip
    print(f"mllama (1-tile, wide and tall figures): max |packed - alone| logit difference {worst:.2e}")
    assert worst <= TOLERANCE


def test_mllama_packed_rows_read_only_their_own_images(rows):
    processor, config = build_family("mllama")
    collator = collator_for("mllama", processor)
    batch = collator.encode_rows(rows)
    with_image = (batch["aspect_ratio_ids"] != 0).any(1).tolist()
    packed = packed_collator(collator, config)(rows)
    mask, lengths = packed["cross_attention_mask"][0], batch["attention_mask"].sum(1).tolist()
    assert mask.shape[1] == packed["pixel_values"].shape[1] == packed["aspect_ratio_ids"].shape[1] == sum(with_image)
    assert (packed["aspect_ratio_ids"] != 0).all()  # the padding image slot of the text-only row is gone
    image, start = 0, 0
    for row, length in enumerate(lengths):
        tokens = mask[start : start + length]
        if with_image[row]:
            alone = batch["cross_attention_mask"][row, :length, 0]
            assert torch.equal(tokens[:, image], alone)
            assert tokens.sum() == alone.sum() > 0  # nothing on another row's image
            image += 1
        else:
            assert tokens.sum() == 0
        start += length


@pytest.mark.parametrize("family", ["qwen2.5-vl", "qwen3-vl"])
def test_qwen_vision_tower_hands_each_layer_to_one_attention_call_and_stays_exact(family, rows, monkeypatch):
    """Stock, the tower calls SDPA once per window or image and layer. Packed, each layer's windows and images reach
    the attention function in one call with their boundaries: on CUDA that is one varlen launch (or one
    block-diagonal SDPA call, checked here by routing the CPU path to it); on CPU, one SDPA call per span, which
    gives bit for bit the stock tower's features."""
    from vital_hub.training import kernels

    processor, config = build_family(family)
    model = tiny_model(config)
    batch = packed_collator(collator_for(family, processor), config)(rows)
    images = {"pixel_values": batch["pixel_values"], "image_grid_thw": batch["image_grid_thw"]}
    assert len(batch["image_grid_thw"]) >= 2  # several images (and, for Qwen2.5-VL, several windows each)
    sdpa_calls, handed = [], []
    sdpa, per_row = torch.nn.functional.scaled_dot_product_attention, kernels.per_row_attention

    def counted(*args, **kwargs):
        sdpa_calls.append(args[0].shape)
        return sdpa(*args, **kwargs)

    def handed_over(module, query, key, value, cu_seq_lens, *args, **kwargs):
        handed.append(len(cu_seq_lens) - 1)
        return route(module, query, key, value, cu_seq_lens, *args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", counted)
    monkeypatch.setattr(kernels, "per_row_attention", handed_over)
    layers = config.vision_config.depth
    with torch.no_grad():
        stock = torch.cat(list(model.model.get_image_features(**images).pooler_output))
        stock_calls, sdpa_calls[:] = len(sdpa_calls), []
        enable_packing(model)
        route = per_row
        packed = torch.cat(list(model.model.get_image_features(**images).pooler_output))
        per_span_calls, sdpa_calls[:] = len(sdpa_calls), []
        assert len(handed) == layers and per_span_calls == stock_calls == sum(handed)
        route = kernels.block_diagonal_attention
        one_call = torch.cat(list(model.model.get_image_features(**images).pooler_output))
    assert len(sdpa_calls) == layers < stock_calls
    assert torch.equal(packed, stock)
    difference = (one_call - stock).abs().max().item()
    print(f"{family} vision tower: {stock_calls} attention calls stock, {len(sdpa_calls)} block-diagonal; "
          f"max diff {difference:.2e}")  # fmt: skip
    assert difference <= TOLERANCE


def train(family: str, repo, out, packing: bool, projector: str = "merger", steps: int = 2) -> list[dict]:
    """`recipes/sft.py` with LoRA on the language model and the projector trained, `steps` steps; the log history."""
    overrides = {"max_steps": steps, "per_device_train_batch_size": 4, "log_level": "info", "pad_to_multiple_of": 64, "max_image_side": 400,
                 "save_strategy": "no", "learning_rate": 5e-3, "max_length": 4096, "packing": packing,
                 "missing_images": "text", "use_peft": True, "lora_r": 4, "lora_alpha": 8, "lora_dropout": 0.0,
                 "lora_modules_to_save": [projector],
                 "lora_target_modules": r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"}  # fmt: skip
    model = write_family_folder(out / "model", family)
    recipe = tiny_recipe(out / "recipe.yaml", model, repo, out / "run", **overrides)
    result = run_sft(recipe, out / "hf")
    if packing:
        from transformers import AutoConfig

        assert f"packing on for {family_of(AutoConfig.from_pretrained(model)).name}" in result.stderr
    return json.loads((out / "run" / "trainer_state.json").read_text())["log_history"]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("family", "projector"),
    [("qwen2.5-vl", "merger"), ("qwen3.5", "merger"), ("glm4v", "merger"), ("mllama", "multi_modal_projector")],
)
def test_packed_recipe_trains_like_the_padded_one_and_counts_the_same_real_tokens(family, projector, tmp_path):
    rows = synthetic_rows(8, seed=5, image_sides=(96, 400), missing_every=4)  # two rows train text-only
    repo = write_instructions_repo(tmp_path / "repo", {"80k": rows})
    padded = [e for e in train(family, repo, tmp_path / "padded", False, projector) if "loss" in e]
    packed = [e for e in train(family, repo, tmp_path / "packed", True, projector) if "loss" in e]
    assert len(padded) == len(packed) == 2
    for one, two in zip(padded, packed, strict=True):  # no LoRA dropout: its random masks would differ
        assert abs(one["loss"] - two["loss"]) <= 1e-5 * max(1.0, abs(one["loss"])), (padded, packed)
        assert abs(one["grad_norm"] - two["grad_norm"]) <= 1e-3 * one["grad_norm"], (padded, packed)
        assert one["num_tokens"] == two["num_tokens"]  # real tokens: the padded run's padding is not counted


@pytest.mark.slow
def test_a_packed_paligemma_recipe_step_gives_the_padded_loss_and_tokens(tmp_path):
    """The recipe's first step (same weights either way) through PEFT, PaliGemma 2's eager attention and the
    ready-made prefix masks (Gemma 3 and 4 take the same path). Later steps are not compared: Adam's first update
    is about lr x sign(gradient) on every component, so float noise in near-zero gradients moves weights by up to
    2 lr (the packed and padded gradients of a tiny Gemma 4 differed by at most 5e-7 of each parameter's largest)."""
    rows = synthetic_rows(8, seed=5, image_sides=(96, 400))
    repo = write_instructions_repo(tmp_path / "repo", {"80k": rows})
    padded = [
        e for e in train("paligemma2", repo, tmp_path / "padded", False, "multi_modal_projector", 1) if "loss" in e
    ]
    packed = [
        e for e in train("paligemma2", repo, tmp_path / "packed", True, "multi_modal_projector", 1) if "loss" in e
    ]
    assert len(padded) == len(packed) == 1
    assert abs(padded[0]["loss"] - packed[0]["loss"]) <= 1e-5 * max(1.0, abs(padded[0]["loss"])), (padded, packed)
    assert padded[0]["num_tokens"] == packed[0]["num_tokens"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the varlen kernel runs on CUDA only")
@pytest.mark.parametrize(("causal", "window"), [(True, None), (False, None), (True, 100)])
def test_cuda_varlen_kernel_matches_the_block_diagonal_mask(causal, window):
    from types import SimpleNamespace

    from vital_hub.training import kernels

    if kernels.varlen_kernel() is None:
        pytest.skip("this PyTorch has no torch.nn.attention.varlen")
    torch.manual_seed(0)
    lengths = torch.tensor([300, 17, 1024, 5, 611])
    cu = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)]).int().cuda()
    total = int(lengths.sum())
    query = torch.randn(1, 8, total, 64, device="cuda", dtype=torch.bfloat16)
    key, value = (torch.randn(1, 2, total, 64, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    module = SimpleNamespace(is_causal=causal, num_key_value_groups=4, training=True)
    fast, _ = kernels.packed_attention_forward(module, query, key, value, None, scaling=0.125, cu_seq_lens_q=cu,
                                               cu_seq_lens_k=cu, max_length_q=1024, max_length_k=1024,
                                               sliding_window=window)  # fmt: skip
    mask = kernels.block_diagonal_mask(cu, total, causal, window)
    reference, _ = kernels.packed_attention_forward(
        module, query.double().cpu(), key.double().cpu(), value.double().cpu(), mask.cpu(), scaling=0.125,
        is_causal=False,
    )  # fmt: skip
    error = (fast.double().cpu() - reference).norm() / reference.norm()
    print(f"varlen vs float64 block-diagonal reference (causal={causal}, window={window}): relative error {error:.2e}")
    assert error < 1e-2


@pytest.mark.parametrize(("causal", "window"), [(True, None), (False, None), (True, 100), (False, 7)])
def test_cpu_per_row_and_block_diagonal_attention_keep_rows_apart(causal, window):
    """Off CUDA packed rows get one SDPA call per row; the block-diagonal call is the CUDA fallback. Both match a
    float64 reference built one row at a time (grouped keys, a window, a one-token row included)."""
    from types import SimpleNamespace

    from vital_hub.training import kernels

    torch.manual_seed(0)
    lengths = [300, 1, 17, 211, 5]
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()])
    total = sum(lengths)
    query = torch.randn(1, 8, total, 32)
    key, value = (torch.randn(1, 2, total, 32) for _ in range(2))
    module = SimpleNamespace(is_causal=causal, num_key_value_groups=4, training=False)
    expected = []
    for start, end in zip(cu[:-1].tolist(), cu[1:].tolist(), strict=True):
        grouped = (query, key.repeat_interleave(4, 1), value.repeat_interleave(4, 1))
        q, k, v = (t[0, :, start:end].double() for t in grouped)
        allowed = kernels.block_diagonal_mask(torch.tensor([0, end - start]), end - start, causal, window)[0, 0]
        weights = (q @ k.transpose(-1, -2) * 0.125).masked_fill(~allowed, float("-inf")).softmax(-1)
        expected.append((weights @ v).transpose(0, 1))
    expected = torch.cat(expected)[None]
    for path in (kernels.per_row_attention, kernels.block_diagonal_attention):
        out, _ = path(module, query, key, value, cu, causal, window, scaling=0.125)
        assert out.shape == (1, total, 8, 32)
        assert (out.double() - expected).abs().max() < 1e-5, path.__name__
    routed, _ = kernels.packed_attention_forward(module, query, key, value, None, scaling=0.125, cu_seq_lens_q=cu,
                                                 cu_seq_lens_k=cu, sliding_window=window)  # fmt: skip
    alone, _ = kernels.per_row_attention(module, query, key, value, cu, causal, window, scaling=0.125)
    assert torch.equal(routed, alone)  # CPU takes the per-row path


def counted(forward, calls, *args, **kwargs):
    calls.append(1)
    return forward(*args, **kwargs)


@pytest.mark.parametrize("family", ["qwen2.5-vl", "gemma3", "mllama", "qwen3.5", "paligemma2"])
def test_packed_rows_train_alike_with_gradient_checkpointing(family, rows):
    """The recipes keep gradient checkpointing where memory needs it: recomputed layers must see the same rows."""
    processor, config = family_parts(family)
    if family.startswith("paligemma"):  # PaliGemma's processor refuses a prompt without an image
        rows = [row for row in rows if row["images"] and row["images"][0] is not None]
    packed = packed_collator(collator_for(family, processor), config)(rows)
    results = []
    for checkpointing in (False, True):
        model = tiny_model(config).train()
        enable_packing(model)
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        calls, mlp = [], backbone_of(model)[1].layers[0].mlp
        mlp.forward = functools.partial(counted, mlp.forward, calls)
        loss = model(**packed).loss
        loss.backward()
        assert len(calls) == (2 if checkpointing else 1)  # the layer is recomputed in backward when checkpointing
        grads = {name: p.grad for name, p in model.named_parameters() if p.grad is not None}
        results.append((loss.item(), grads))
    (loss, grads), (loss_checkpointed, grads_checkpointed) = results
    assert grads and grads.keys() == grads_checkpointed.keys()
    assert abs(loss - loss_checkpointed) <= 1e-6
    worst = max((grads[name] - grads_checkpointed[name]).abs().max().item() for name in grads)
    print(f"{family}: gradient checkpointing changes packed gradients by at most {worst:.2e}")
    assert worst <= 1e-5
