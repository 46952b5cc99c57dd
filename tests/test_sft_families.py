"""Every supported vision-language family trains with `recipes/sft.py`, with correct labels and freezing.

Each family is a tiny random model built from its config, with its published chat template
(`vital_hub/training/chat_templates/README.md` says where each came from) and the Pillow image processor
transformers ships, so this runs where torchvision cannot be installed. Rows carry figures from about 96 to
400 px a side in both orientations, as PMC figures do, so processors that tile or patch by size (SmolVLM,
LLaVA-OneVision, Qwen) give rows of different image shapes in one batch.
"""

import json

import pytest
import torch

from tests.sft_support import run_sft, tiny_recipe
from vital_hub.training.collator import VisionSFTCollator
from vital_hub.training.families import family_of, part_of
from vital_hub.training.family_models import BUILDERS, build_family, write_family_folder
from vital_hub.training.freeze import set_trainable
from vital_hub.training.masking import IGNORE_INDEX
from vital_hub.training.processors import has_torchvision
from vital_hub.training.synthetic import synthetic_rows, write_instructions_repo

# Mistral 3's PixtralProcessor requires torchvision outright: it runs in the torchvision environment of
# `make test-torchvision` (a CUDA build of torch, which imports and runs on CPU) and is skipped elsewhere.
NEEDS_TORCHVISION = pytest.mark.skipif(not has_torchvision(), reason="PixtralProcessor needs torchvision")
FAMILIES = [pytest.param(f, marks=NEEDS_TORCHVISION) if f == "mistral3" else f for f in sorted(BUILDERS)]
# The token each family's template closes an assistant turn with (the last labelled token of every answer).
END_OF_TURN = {
    "llava-1.5": "</s>",
    "qwen2.5-vl": "<|im_end|>",
    "qwen3-vl": "<|im_end|>",
    "gemma3": "<end_of_turn>",
    "smolvlm": "<end_of_utterance>",
    "idefics3": "<end_of_utterance>",
    "internvl": "<|im_end|>",
    "llava-onevision": "<|im_end|>",
    "qwen2-vl": "<|im_end|>",
    "qwen3-vl-moe": "<|im_end|>",
    "qwen3.5": "<|im_end|>",
    "llava-next": "</s>",
    "mllama": "<|eot_id|>",
    "gemma4": "<turn|>",
    "glm4v": "<|endoftext|>",
    "idefics2": "<end_of_utterance>",
    "paligemma2": "<eos>",
    "mistral3": "</s>",
}
IMAGE_REQUIRED = {"paligemma2"}
# Families whose published template vital-hub replaces by itself (`vital_hub.training.templates`).
CORRECTED = {"llava-onevision", "llava-next", "qwen3.5", "gemma4", "glm4v", "paligemma2"}
LORA_TARGETS = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"


def varied_rows(n: int, seed: int = 0) -> list[dict]:
    """Instruction rows with figures of 96-400 px sides and every aspect ratio; one row in eight has none."""
    return synthetic_rows(n, seed=seed, image_sides=(96, 400), missing_every=8)


@pytest.fixture(scope="module")
def rows():
    return varied_rows(8)


def collator_for(family: str, processor, **overrides):
    settings = {"max_length": 2048, "max_image_side": 400, "pad_to_multiple_of": 64}
    return VisionSFTCollator(processor, **{**settings, **overrides})


def model_of(config):
    from transformers import AutoModelForImageTextToText

    torch.manual_seed(0)
    return AutoModelForImageTextToText.from_config(config)


@pytest.mark.parametrize("family", FAMILIES)
def test_labels_are_exactly_the_assistant_answers_and_their_end_token(family, rows):
    processor, _ = build_family(family)
    batch = collator_for(family, processor)(rows[:4])
    assert batch["input_ids"].shape[1] % 64 == 0
    for key in ("attention_mask", "labels", "mm_token_type_ids", "token_type_ids", "cross_attention_mask"):
        if key in batch:
            assert batch[key].shape[:2] == batch["input_ids"].shape, key
    tokenizer = processor.tokenizer
    for row_index, row in enumerate(rows[:4]):
        labels = batch["labels"][row_index]
        runs, current = [], []
        for position, label in enumerate(labels.tolist()):
            if label == IGNORE_INDEX:
                if current:
                    runs.append(current)
                current = []
            else:
                assert label == int(batch["input_ids"][row_index, position])
                current.append(label)
        answers = [m["content"][0]["text"] for m in row["messages"] if m["role"] == "assistant"]
        assert len(runs) == len(answers), (family, row_index)
        for run, answer in zip(runs, answers, strict=True):
            text = tokenizer.decode(run)
            assert text.strip() == answer + END_OF_TURN[family], (family, text)


@pytest.mark.parametrize("family", FAMILIES)
def test_loss_falls_on_a_repeated_batch_and_only_projector_and_language_train(family, rows):
    processor, config = build_family(family)
    model = model_of(config)
    counts = set_trainable(model, "full", freeze_vision_tower=True)
    assert counts["vision"]["trainable"] == 0 and counts["projector"]["trainable"] > 0
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    batch = collator_for(family, processor, pad_to_multiple_of=64)(rows[:4])
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    losses = []
    for _ in range(6):
        loss = model(**batch).loss
        assert torch.isfinite(loss)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.5, (family, losses)
    parts = {name: part_of(name, family_of(model)) for name, _ in model.named_parameters()}
    moved = {name: not torch.equal(before[name], p.detach()) for name, p in model.named_parameters()}
    assert not any(moved[name] for name, part in parts.items() if part == "vision"), family
    projector = [moved[name] for name, part in parts.items() if part == "projector"]
    assert projector and any(projector), family


@pytest.mark.parametrize("family", FAMILIES)
def test_projector_stage_trains_the_projector_alone(family):
    _, config = build_family(family)
    model = model_of(config)
    counts = set_trainable(model, "projector")
    assert counts["projector"]["trainable"] > 0
    assert counts["vision"]["trainable"] == 0 and counts["language"]["trainable"] == 0


def test_a_model_of_an_unknown_family_is_an_error_not_a_silent_freeze():
    from transformers import LlamaConfig, LlamaForCausalLM

    model = LlamaForCausalLM(LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, vocab_size=64))  # fmt: skip
    with pytest.raises(ValueError, match="not a supported vision-language family"):
        set_trainable(model, "full")


def test_published_onevision_template_is_refused_when_correction_is_off(rows):
    processor, _ = build_family("llava-onevision")
    collator = VisionSFTCollator(processor, max_image_side=400, correct_template=False)
    with pytest.raises(ValueError, match=r"LlavaOnevisionProcessor.*assistant \\n.*--chat_template_path"):
        collator(rows[:2])


def test_truncation_cuts_every_token_aligned_tensor_and_never_the_image(rows):
    processor, _ = build_family("qwen2.5-vl")
    full = collator_for("qwen2.5-vl", processor, pad_to_multiple_of=None)(rows[:2])
    length = int(full["attention_mask"].sum(dim=1).min())
    cut = collator_for("qwen2.5-vl", processor, pad_to_multiple_of=None, max_length=length - 2)(rows[:2])
    assert cut["input_ids"].shape[1] == length - 2
    assert cut["mm_token_type_ids"].shape == cut["input_ids"].shape
    assert torch.equal(cut["mm_token_type_ids"], full["mm_token_type_ids"][:, : length - 2])
    with pytest.raises(ValueError, match="cuts through the image tokens"):
        collator_for("qwen2.5-vl", processor, max_length=8)(rows[:2])


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    return write_instructions_repo(tmp_path_factory.mktemp("varied") / "repo", {"80k": varied_rows(14, seed=1)})


def run_recipe(family: str, repo, tmp_path, lora: bool = False):
    model_dir = write_family_folder(tmp_path / "model", family)
    output = tmp_path / "out"
    overrides = {"max_steps": 3, "per_device_train_batch_size": 4, "pad_to_multiple_of": 64, "max_image_side": 400,
                 "save_strategy": "no", "learning_rate": 5e-3, "max_length": 4096}  # fmt: skip
    if lora:
        overrides.update(use_peft=True, lora_r=4, lora_alpha=8, lora_target_modules=LORA_TARGETS)
    recipe = tiny_recipe(tmp_path / "recipe.yaml", model_dir, repo, output, **overrides)
    result = run_sft(recipe, tmp_path / "hf")
    return output, result.stderr


def qa50_questions(folder, missing: bool = True):
    """qa50-shaped questions: figures of different sizes, and (`missing`) one whose file is absent."""
    from PIL import Image

    images = folder / "images"
    images.mkdir()
    for index, size in enumerate([(96, 300), (400, 120), (250, 250), (300, 180)][: 3 if missing else 4]):
        Image.new("RGB", size, (40 * index, 90, 160)).save(images / f"q{index}.jpg")
    questions = folder / "qa50.jsonl"
    lines = [{"question_id": i, "image": f"q{i}.jpg", "pair_id": f"q{i}", "text": f"What is in figure {i}?\n<image>",
              "gpt4_answer": "ref", "type": "conversation"} for i in range(4)]  # fmt: skip
    questions.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return questions, images


def answer_qa50(output, tmp_path, missing: bool = True):
    """`vital eval answer` (transformers backend, batched) with the tuned folder, loaded as a user would."""
    from vital_hub.eval.answer import AnswerConfig, answer

    questions, images = qa50_questions(tmp_path, missing)
    answers = tmp_path / "answers.jsonl"
    config = AnswerConfig(str(questions), str(answers), str(output), image_folder=str(images), max_new_tokens=4,
                          batch_size=3, dtype="float32")  # fmt: skip
    assert answer(config)["answered"] == 4
    rows = [json.loads(line) for line in answers.read_text().splitlines()]
    assert [row["status"] for row in rows] == ["ok"] * 4
    assert [row["image_status"] for row in rows].count("ok") == (3 if missing else 4)


# TRL's SFTTrainer sets output_router_logits on MoE configs; the recipe saves it off (vital_hub.training.resume), so
# Qwen3-VL-MoE's folder answers batched generate like every other family's.
@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_recipe_trains_saves_and_the_folder_reloads_and_generates(family, repo, tmp_path):
    output, log = run_recipe(family, repo, tmp_path)
    corrections = [line for line in log.splitlines() if "vital-hub's corrected template" in line]
    assert len(corrections) == (1 if family in CORRECTED else 0), corrections
    state = json.loads((output / "trainer_state.json").read_text())
    losses = [entry["loss"] for entry in state["log_history"] if "loss" in entry]
    assert len(losses) == 3 and all(loss == loss and loss < 1e4 for loss in losses), losses
    from vital_hub.training.processors import load_processor_from

    processor = load_processor_from(output)
    saved = output / "processor_config.json"
    if saved.exists():  # the stock class name, so that AutoProcessor loads it where torchvision is installed
        assert json.loads(saved.read_text())["processor_class"] == type(processor).__name__
    if not getattr(processor, "image_only", False):
        from transformers import AutoProcessor

        assert type(AutoProcessor.from_pretrained(output)).__name__ == type(processor).__name__
    if family in CORRECTED:  # saved with the template it was trained with, so inference prompts alike
        from vital_hub.training.templates import template_problem

        assert template_problem(processor) is None
    # PaliGemma's processor refuses a prompt without an image, so its questions all have their figure.
    answer_qa50(output, tmp_path, missing=family not in IMAGE_REQUIRED)
    generation = json.loads((output / "generation_config.json").read_text())
    eos = generation["eos_token_id"]
    eos = eos if isinstance(eos, list) else [eos]
    assert processor.tokenizer.convert_tokens_to_ids(END_OF_TURN[family]) in eos


def test_lora_recipe_trains_qwen_with_the_merger_saved(repo, tmp_path):
    output, _ = run_recipe("qwen2.5-vl", repo, tmp_path, lora=True)
    assert (output / "adapter_config.json").exists()


def test_paligemma_answers_are_causal_suffix_tokens(rows):
    """PaliGemma attends both ways within the prefix (token_type_ids 0): every answer token must be marked as
    suffix, or the model sees the tokens it is trained to predict."""
    processor, config = build_family("paligemma2")
    batch = collator_for("paligemma2", processor)(rows[:2])
    targets = (batch["labels"] != IGNORE_INDEX).nonzero()
    first = {int(row): int(position) for row, position in reversed(targets.tolist())}
    for row, start in first.items():
        length = int(batch["attention_mask"][row].sum())
        assert batch["token_type_ids"][row, :start].sum() == 0
        assert bool((batch["token_type_ids"][row, start:length] == 1).all())
    model = model_of(config).eval()
    inputs = {key: value for key, value in batch.items() if key != "labels"}
    changed = dict(inputs, input_ids=inputs["input_ids"].clone())
    changed["input_ids"][0, first[0] + 3] += 1
    with torch.no_grad():
        before, after = model(**inputs).logits, model(**changed).logits
    assert torch.equal(before[0, first[0] : first[0] + 3], after[0, first[0] : first[0] + 3])
    cut = collator_for("paligemma2", processor, max_length=first[0] + 5, pad_to_multiple_of=None)(rows[:1])
    assert cut["token_type_ids"][0, first[0] :].tolist() == [1] * 5  # a cut in the answer is no cut in an image


def test_mistral3_freezes_per_stage_where_its_processor_cannot_be_built():
    """Mistral 3's PixtralProcessor needs torchvision (not in the CPU test environment): its freezing rules are
    checked on the model built from a config."""
    from transformers import Mistral3Config

    text = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
            "num_key_value_heads": 2, "head_dim": 16, "vocab_size": 512, "model_type": "mistral"}  # fmt: skip
    vision = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
              "head_dim": 16, "image_size": 64, "patch_size": 8, "model_type": "pixtral"}  # fmt: skip
    config = Mistral3Config(text_config=text, vision_config=vision, image_token_index=10, spatial_merge_size=2)
    full = set_trainable(model_of(config), "full")
    assert full["vision"]["trainable"] == 0 and full["projector"]["trainable"] > 0
    assert full["language"]["trainable"] > 0
    projector = set_trainable(model_of(config), "projector")
    assert projector["projector"]["trainable"] > 0
    assert projector["vision"]["trainable"] == 0 and projector["language"]["trainable"] == 0
