"""A tiny LLaVA built from config trains on a repo folder made by `vital build instructions`.

In process: the loss is logged and falls on a repeated batch; what should train moves and what is frozen does not
(full stage, projector-only stage, LoRA). As a command: `recipes/sft.py --config ...` trains, saves the model,
processor, generation config and card, resumes from its last checkpoint when re-run, and pushes to a local
Hub-compatible server.
"""

import json
import os
import secrets
import subprocess
import sys

import pytest
import torch
from datasets import Dataset

from tests.conftest import REPO_ROOT
from tests.fakes.hub_server import running_hub
from tests.sft_support import SFT_SCRIPT, build_instructions_repo, tiny_recipe
from vital_hub.training.collator import VisionSFTCollator
from vital_hub.training.data import load_mixture, mixture_of
from vital_hub.training.families import BY_MODEL_TYPE
from vital_hub.training.families import part_of as family_part_of
from vital_hub.training.freeze import set_trainable
from vital_hub.training.synthetic import build_processor, llava_config, write_model_folder


def part_of(name: str) -> str:
    return family_part_of(name, BY_MODEL_TYPE["llava"])


LORA_TARGETS = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    return build_instructions_repo(tmp_path_factory.mktemp("instructions"))


@pytest.fixture(scope="module")
def processor():
    return build_processor("llava-1.5")


@pytest.fixture(scope="module")
def four_rows(repo, tmp_path_factory):
    splits, _ = load_mixture(mixture_of(str(repo), "80k"), "skip", str(tmp_path_factory.mktemp("cache")))
    return Dataset.from_list([splits["train"][i] for i in range(4)])


def tiny_llava(processor):
    from transformers import LlavaForConditionalGeneration

    torch.manual_seed(0)
    return LlavaForConditionalGeneration(llava_config("tiny", processor))


def train(model, processor, rows, tmp_path, steps=8, peft_config=None):
    from trl import SFTConfig, SFTTrainer

    args = SFTConfig(
        output_dir=str(tmp_path / "out"),
        max_steps=steps,
        per_device_train_batch_size=4,
        learning_rate=5e-3,
        logging_steps=1,
        save_strategy="no",
        bf16=False,
        use_cpu=True,
        gradient_checkpointing=False,
        report_to="none",
        seed=0,
    )
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=rows,
        processing_class=processor,
        data_collator=VisionSFTCollator(processor, max_length=512, max_image_side=128),
        peft_config=peft_config,
    )
    trainer.train()
    return trainer


def snapshot(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def moved(before: dict, model) -> dict[str, bool]:
    return {name: not torch.equal(before[name], p.detach()) for name, p in model.named_parameters()}


def test_loss_is_logged_and_falls_and_only_trainable_parts_move(processor, four_rows, tmp_path):
    model = tiny_llava(processor)
    counts = set_trainable(model, "full", freeze_vision_tower=True)
    assert counts["vision"]["trainable"] == 0 and counts["vision"]["frozen"] > 0
    before = snapshot(model)
    trainer = train(model, processor, four_rows, tmp_path)
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 8
    assert losses[-1] < losses[0] - 1.0, losses
    assert sum(later < earlier for earlier, later in zip(losses, losses[1:], strict=False)) >= 6, losses
    changes = moved(before, model)
    assert not any(changed for name, changed in changes.items() if part_of(name) == "vision")
    assert all(changed for name, changed in changes.items() if part_of(name) == "projector")
    language = [changed for name, changed in changes.items() if part_of(name) == "language"]
    assert language and all(language)


def test_projector_stage_trains_the_projector_alone(processor, four_rows, tmp_path):
    model = tiny_llava(processor)
    set_trainable(model, "projector")
    before = snapshot(model)
    train(model, processor, four_rows, tmp_path, steps=2)
    changes = moved(before, model)
    assert all(changed == (part_of(name) == "projector") for name, changed in changes.items())


def test_lora_trains_adapters_and_projector_and_leaves_the_base(processor, four_rows, tmp_path):
    from trl import ModelConfig, get_peft_config

    model_args = ModelConfig(
        use_peft=True, lora_r=4, lora_alpha=8, lora_target_modules=LORA_TARGETS,
        lora_modules_to_save=["multi_modal_projector"],
    )  # fmt: skip
    model = tiny_llava(processor)
    before = snapshot(model)
    trainer = train(model, processor, four_rows, tmp_path, steps=2, peft_config=get_peft_config(model_args))
    peft_model = trainer.model
    trainable = {name for name, p in peft_model.named_parameters() if p.requires_grad}
    assert any("lora_A" in name and "language_model" in name for name in trainable)
    assert not any("vision_tower" in name for name in trainable)
    base = peft_model.get_base_model()
    for name, parameter in base.named_parameters():
        if "lora_" in name or "modules_to_save" in name:
            continue
        original = name.replace(".base_layer", "").replace(".original_module", "")
        assert torch.equal(parameter.detach(), before[original]), name


@pytest.fixture
def recipe_run(repo, tmp_path):
    model_dir = write_model_folder(tmp_path / "model", "tiny")
    output = tmp_path / "out"
    recipe = tiny_recipe(tmp_path / "recipe.yaml", model_dir, repo, output)
    token = f"hf_sftTest{secrets.token_hex(8)}"

    def run(*extra: str, endpoint: str | None = None) -> subprocess.CompletedProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING_FACE"))}
        env.update(HF_HOME=str(tmp_path / "hf"), HF_HUB_DISABLE_XET="1", PYTHONPATH=str(REPO_ROOT))
        env.update(HF_HUB_OFFLINE="0" if endpoint else "1", HF_TOKEN=token, CUDA_VISIBLE_DEVICES="")
        if endpoint:
            env["HF_ENDPOINT"] = endpoint
        command = [sys.executable, str(SFT_SCRIPT), "--config", str(recipe), *extra]
        result = subprocess.run(command, env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-4000:]
        return result

    return run, output, token


def test_recipe_trains_saves_a_card_resumes_and_pushes(recipe_run, tmp_path, processor):
    run, output, token = recipe_run
    run()
    for name in ("model.safetensors", "config.json", "generation_config.json", "README.md", "chat_template.jinja"):
        assert (output / name).exists(), name
    assert (output / "checkpoint-2").is_dir()
    generation = json.loads((output / "generation_config.json").read_text())
    assert generation["eos_token_id"] == processor.tokenizer.eos_token_id  # "</s>" closes LLaVA-1.5 answers
    card = (output / "README.md").read_text()
    assert "base_model:" not in card and "A local checkpoint (`" in card  # a local folder is no Hub id
    assert "| 80k | train | `sha256:" in card
    assert "| learning_rate | 0.001 |" in card and "| freeze_vision_tower | True |" in card
    rows = json.loads((output / "all_results.json").read_text())["train_samples"]
    assert f"| 1 | {rows} |" in card

    with running_hub(tmp_path / "hub", token=token) as hub:
        resumed = run("--max_steps", "3", "--push_to_hub", "true", "--hub_model_id", "vital/tiny-sft",
                      "--log_level", "info", endpoint=hub.endpoint)  # fmt: skip
        _, _, files = hub.store.files_at("model", "vital/tiny-sft", "main")
    assert "Resuming from" in resumed.stderr and "checkpoint-2" in resumed.stderr
    state = json.loads((output / "trainer_state.json").read_text())
    assert state["global_step"] == 3
    logged = [entry for entry in state["log_history"] if "loss" in entry]
    assert logged and all(entry["real_tokens_per_second"] > 0 for entry in logged), logged  # the resumed run too
    assert {"README.md", "config.json", "model.safetensors", "generation_config.json"} <= set(files)
    assert not any(path.startswith("checkpoint-") for path in files)
    assert token not in (output / "README.md").read_text()


def test_compiled_pointwise_modules_match_eager_and_share_one_graph_per_class(processor):
    import copy

    import torch._dynamo
    from torch._dynamo.utils import counters
    from transformers import LlavaForConditionalGeneration

    from vital_hub.training.model import compile_pointwise_modules

    config = llava_config("tiny", processor)
    config.text_config.num_hidden_layers = 6
    torch.manual_seed(0)
    eager = LlavaForConditionalGeneration(config)
    compiled = copy.deepcopy(eager)
    torch._dynamo.reset()
    counters.clear()
    names = compile_pointwise_modules(compiled, backend="aot_eager")  # no C compiler needed on CPU
    # every decoder layer's MLP and both norms, plus the final norm; nothing in the vision tower
    assert len(names) == 6 * 3 + 1 and not any("vision_tower" in name for name in names)
    assert "model.language_model.layers.5.mlp" in names and "model.language_model.norm" in names

    input_ids = torch.randint(10, 200, (2, 24))
    outputs = [model(input_ids=input_ids).logits for model in (eager, compiled)]
    torch.testing.assert_close(outputs[1], outputs[0])
    for output in outputs:
        output.float().pow(2).mean().backward()
    weight = "model.language_model.layers.3.mlp.gate_proj.weight"
    grads = [dict(model.named_parameters())[weight].grad for model in (eager, compiled)]
    torch.testing.assert_close(grads[1], grads[0])
    # one graph for the MLP class and one for the norm class, reused by all six layers (not one per layer, which
    # would hit dynamo's recompile limit on a 32-layer model and fall back to eager)
    assert counters["stats"]["unique_graphs"] == 2
