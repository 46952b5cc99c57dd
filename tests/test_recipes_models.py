"""Every SFT recipe's model settings (`attn_implementation`, `dtype`) build a model of its family.

transformers refuses some attention implementations per architecture at load time (Gemma 2, PaliGemma 2's
language model, has no SDPA path), so a recipe naming one fails only when a user runs it. Each recipe is built
here at the tiny size of its family, from config, with the recipe's own settings.
"""

from pathlib import Path

import pytest
import torch
import yaml

from tests.conftest import REPO_ROOT
from vital_hub.training.families import family_of
from vital_hub.training.processors import has_torchvision

RECIPES = sorted((REPO_ROOT / "recipes").glob("*/sft/*.yaml"))
# Recipe folder -> family builder (vital_hub.training.family_models.BUILDERS) of the checkpoint it trains.
RECIPE_FAMILY = {
    "biomed-vital-13b": "llava-1.5",
    "gemma-3-4b-it": "gemma3",
    "gemma-4-12b-it": "gemma4",
    "glm-4.1v-9b": "glm4v",
    "idefics2-8b": "idefics2",
    "internvl3-8b": "internvl",
    "llama-3.2-11b-vision": "mllama",
    "llava-1.5-7b": "llava-1.5",
    "llava-interleave-qwen-0.5b": "llava-1.5",
    "llava-med": "llava-1.5",
    "llava-onevision-7b": "llava-onevision",
    "llava-v1.6-mistral-7b": "llava-next",
    "mistral-small-3.1-24b": "mistral3",
    "paligemma2-3b-448": "paligemma2",
    "qwen2-vl-7b": "qwen2-vl",
    "qwen2.5-vl-7b": "qwen2.5-vl",
    "qwen3-vl-30b-a3b": "qwen3-vl-moe",
    "qwen3-vl-8b": "qwen3-vl",
    "qwen3.5-9b": "qwen3.5",
    "smolvlm2-2.2b": "smolvlm",
}


def recipe_id(path: Path) -> str:
    return path.relative_to(REPO_ROOT / "recipes").as_posix()


def test_every_recipe_folder_names_its_family():
    assert {p.parent.parent.name for p in RECIPES} == set(RECIPE_FAMILY)


@pytest.mark.parametrize("recipe", RECIPES, ids=recipe_id)
def test_recipe_model_settings_build_its_family(recipe):
    from transformers import AutoModelForImageTextToText

    from vital_hub.training.family_models import build_family

    family = RECIPE_FAMILY[recipe.parent.parent.name]
    if family == "mistral3" and not has_torchvision():
        pytest.skip("PixtralProcessor needs torchvision")
    settings = yaml.safe_load(recipe.read_text())
    _, config = build_family(family)
    dtype = getattr(torch, settings.get("dtype") or "float32")
    model = AutoModelForImageTextToText.from_config(
        config, attn_implementation=settings.get("attn_implementation"), dtype=dtype
    )
    assert family_of(model)  # a family the recipes support
