"""Every YAML under recipes/ parses into the dataclasses of the script that reads it, unknown keys rejected.

A recipe YAML in `recipes/<model>/<task>/` (or `recipes/<task>/`) belongs to the script of its task folder; the
dataclasses are read from that script's own `TrlParser((...))` call, so the test follows the script. Accelerate
configs parse into accelerate's ClusterConfig.
"""

import ast
import importlib.util
import re
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO_ROOT

RECIPES = REPO_ROOT / "recipes"
# Task folder -> the script that reads its YAML files.
TASK_SCRIPTS = {"sft": "sft.py", "selector": "reward.py"}
ACCELERATE_CONFIGS = RECIPES / "accelerate_configs"
RECIPE_YAMLS = sorted(p for p in RECIPES.rglob("*.yaml") if ACCELERATE_CONFIGS not in p.parents)


def script_for(path: Path) -> Path:
    task = path.parent.name
    assert task in TASK_SCRIPTS, f"{path}: no script registered for task folder {task!r} (TASK_SCRIPTS)"
    return RECIPES / TASK_SCRIPTS[task]


def parser_classes(script: Path) -> tuple:
    """The dataclasses a recipe script hands to TrlParser, resolved in the script's own namespace."""
    spec = importlib.util.spec_from_file_location(f"recipe_{script.stem}", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for node in ast.walk(ast.parse(script.read_text())):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "TrlParser":
            return tuple(getattr(module, element.id) for element in node.args[0].elts)
    raise AssertionError(f"{script} has no TrlParser((...)) call")


def parse(path: Path, *overrides: str):
    from trl import TrlParser

    # use_cpu lets the bf16 recipes validate on a machine without a GPU; nothing else is overridden.
    return TrlParser(parser_classes(script_for(path))).parse_args_and_config(
        ["--config", str(path), "--use_cpu", "true", *overrides]
    )


def test_recipes_exist_for_every_required_model():
    names = {p.relative_to(RECIPES).as_posix() for p in RECIPE_YAMLS}
    assert {
        "llava-1.5-7b/sft/config_full.yaml",
        "llava-1.5-7b/sft/config_lora.yaml",
        "llava-interleave-qwen-0.5b/sft/config_full.yaml",
        "llava-med/sft/config_stage1_projector.yaml",
        "llava-med/sft/config_stage2_instruct.yaml",
        "qwen2.5-vl-7b/sft/config_full.yaml",
        "qwen2.5-vl-7b/sft/config_lora.yaml",
        "qwen3-vl-8b/sft/config_full.yaml",
        "gemma-3-4b-it/sft/config_full.yaml",
        "smolvlm2-2.2b/sft/config_full.yaml",
        "internvl3-8b/sft/config_full.yaml",
        "llava-onevision-7b/sft/config_full.yaml",
        *(
            f"{model}/sft/config_full.yaml"
            for model in (
                "qwen2-vl-7b",
                "qwen3-vl-30b-a3b",
                "qwen3.5-9b",
                "llava-v1.6-mistral-7b",
                "llama-3.2-11b-vision",
                "gemma-4-12b-it",
                "glm-4.1v-9b",
                "idefics2-8b",
                "mistral-small-3.1-24b",
                "paligemma2-3b-448",
            )
        ),
    } <= names


@pytest.mark.parametrize("path", RECIPE_YAMLS, ids=lambda p: p.relative_to(RECIPES).as_posix())
def test_recipe_parses_into_its_dataclasses(path):
    parsed = parse(path)
    assert all(parsed), path
    keys = set(yaml.safe_load(path.read_text()))
    known = {name for obj in parsed for name in vars(obj)}
    assert keys <= known, f"{path}: keys no dataclass holds: {sorted(keys - known)}"


@pytest.mark.parametrize(
    "path", [p for p in RECIPE_YAMLS if p.parent.name == "sft"], ids=lambda p: p.relative_to(RECIPES).as_posix()
)
def test_sft_recipe_values_are_usable(path):
    from vital_hub.training.data import MISSING_IMAGE_POLICIES, mixture_of
    from vital_hub.training.freeze import trainable_parts

    script_args, training_args, model_args = parse(path)
    mixture = mixture_of(
        script_args.dataset_name, script_args.dataset_config, dataset_mixture=script_args.dataset_mixture
    )
    assert mixture.datasets and script_args.missing_images in MISSING_IMAGE_POLICIES
    assert "projector" in trainable_parts(script_args.stage, script_args.freeze_vision_tower)
    assert training_args.bf16 and training_args.max_length in (2048, 4096)  # 4096: LLaVA-OneVision's tiles
    if training_args.chat_template_path:
        assert (REPO_ROOT / training_args.chat_template_path).is_file()
    global_batch = training_args.per_device_train_batch_size * training_args.gradient_accumulation_steps
    launch = re.search(r"--num_processes (\d+)", path.read_text())
    assert global_batch * int(launch.group(1)) == 128, "LLaVA-Med's global batch (its training scripts)"
    if model_args.use_peft:
        assert_lora_fits_the_family(path, model_args)


# Recipe model folder -> the family whose tiny model stands in for it (the names of its parameters).
RECIPE_FAMILIES = {"llava-1.5-7b": "llava-1.5", "llava-med": "llava-1.5", "biomed-vital-13b": "llava-1.5",
                   "qwen2.5-vl-7b": "qwen2.5-vl", "qwen3-vl-8b": "qwen3-vl", "gemma-3-4b-it": "gemma3",
                   "smolvlm2-2.2b": "smolvlm", "internvl3-8b": "internvl", "llava-onevision-7b": "llava-onevision",
                   "llava-interleave-qwen-0.5b": "llava-1.5", "qwen2-vl-7b": "qwen2-vl",
                   "qwen3-vl-30b-a3b": "qwen3-vl-moe", "qwen3.5-9b": "qwen3.5", "llava-v1.6-mistral-7b": "llava-next",
                   "llama-3.2-11b-vision": "mllama", "gemma-4-12b-it": "gemma4", "glm-4.1v-9b": "glm4v",
                   "idefics2-8b": "idefics2", "paligemma2-3b-448": "paligemma2"}  # fmt: skip


def assert_lora_fits_the_family(path: Path, model_args):
    """LoRA targets the language model's linear layers of the recipe's family (and nothing on the vision side),
    and the modules saved in full are that family's projector."""
    from transformers import AutoModelForImageTextToText

    from vital_hub.training.families import family_of, part_of
    from vital_hub.training.family_models import build_family

    family = RECIPE_FAMILIES[path.relative_to(RECIPES).parts[0]]
    model = AutoModelForImageTextToText.from_config(build_family(family)[1])
    rules = family_of(model)
    targets = re.compile(model_args.lora_target_modules)
    linear = [name for name, module in model.named_modules() if type(module).__name__ == "Linear"]
    hit = [name for name in linear if targets.fullmatch(name)]
    assert hit and all(part_of(name, rules) == "language" for name in hit), path
    assert any(name.endswith("q_proj") for name in hit) and any(name.endswith("down_proj") for name in hit)
    for saved in model_args.lora_modules_to_save or []:
        modules = [name for name, _ in model.named_modules() if name.split(".")[-1] == saved]
        assert modules and all(part_of(name, rules) == "projector" for name in modules), (path, saved)


def test_llava_med_stages_chain():
    stage1 = parse(RECIPES / "llava-med/sft/config_stage1_projector.yaml")
    stage2 = parse(RECIPES / "llava-med/sft/config_stage2_instruct.yaml")
    assert stage1[0].stage == "projector" and stage1[1].learning_rate == 2e-3 and stage1[1].num_train_epochs == 1
    assert stage2[0].stage == "full" and stage2[1].learning_rate == 2e-5 and stage2[1].num_train_epochs == 3
    assert stage2[2].model_name_or_path == stage1[1].output_dir
    for _, training_args, _ in (stage1, stage2):
        assert training_args.lr_scheduler_type == "cosine" and training_args.warmup_steps == 0.03


def test_a_typo_in_a_recipe_is_an_error(tmp_path):
    recipe = tmp_path / "sft" / "config_typo.yaml"
    recipe.parent.mkdir()
    recipe.write_text((RECIPES / "llava-1.5-7b/sft/config_full.yaml").read_text() + "\nlearning_rte: 1.0e-5\n")
    with pytest.raises((ValueError, SystemExit)):
        parse(recipe)


@pytest.mark.parametrize("path", sorted(ACCELERATE_CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_accelerate_config_parses(path):
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(path))
    expected = {"ddp": "MULTI_GPU", "deepspeed_zero2": "DEEPSPEED", "deepspeed_zero3": "DEEPSPEED", "fsdp2": "FSDP"}
    assert str(config.distributed_type).split(".")[-1] == expected[path.stem]
    assert config.mixed_precision == "bf16"
    if path.stem == "fsdp2":
        assert config.fsdp_config["fsdp_version"] == 2
    if path.stem.startswith("deepspeed"):
        assert config.deepspeed_config["zero_stage"] == int(path.stem[-1])


def test_every_accelerate_config_is_there():
    assert {p.stem for p in ACCELERATE_CONFIGS.glob("*.yaml")} == {
        "ddp",
        "deepspeed_zero2",
        "deepspeed_zero3",
        "fsdp2",
    }


def test_an_inline_mixture_in_a_recipe_parses(tmp_path):
    from vital_hub.training.data import mixture_of

    recipe = tmp_path / "sft" / "config_mixture.yaml"
    recipe.parent.mkdir()
    base = (RECIPES / "llava-1.5-7b/sft/config_full.yaml").read_text()
    base = base.replace("dataset_name: biomed-vital/instructions\ndataset_config: 80k\n", "")
    mixture = (
        "dataset_mixture:\n  datasets:\n    - {id: org/a, config: 80k, weight: 0.5}\n    - {id: org/b}\n  seed: 7\n"
    )
    recipe.write_text(base + mixture)
    script_args, _, _ = parse(recipe)
    parsed = mixture_of(
        script_args.dataset_name, script_args.dataset_config, dataset_mixture=script_args.dataset_mixture
    )
    assert [(d.id, d.config, d.weight) for d in parsed.datasets] == [("org/a", "80k", 0.5), ("org/b", None, 1.0)]
    assert parsed.seed == 7


@pytest.mark.parametrize(
    "path",
    [p for p in RECIPE_YAMLS if p.parent.name == "sft" and "image_processor_kwargs" in p.read_text()],
    ids=lambda p: p.relative_to(RECIPES).as_posix(),
)
def test_the_pixel_budget_reaches_the_family_processor(path, tmp_path):
    """Each setting of a recipe's image_processor_kwargs is one the family's processor takes and keeps (an
    unknown key would be ignored silently and the figure processed at the checkpoint's default size)."""
    from vital_hub.training.family_models import write_family_folder
    from vital_hub.training.processors import load_processor_from

    script_args, _, _ = parse(path)
    family = RECIPE_FAMILIES[path.relative_to(RECIPES).parts[0]]
    processor = load_processor_from(
        write_family_folder(tmp_path / "model", family), **script_args.image_processor_kwargs
    )
    image_processor = processor.image_processor
    for key, value in script_args.image_processor_kwargs.items():
        kept = getattr(image_processor, key, None)
        if key in ("min_pixels", "max_pixels"):  # Qwen keeps the pixel range as its size
            kept = image_processor.size["shortest_edge" if key == "min_pixels" else "longest_edge"]
        if isinstance(value, dict):
            kept = {k: kept[k] for k in value}
        assert kept == value, (path, key, kept)
