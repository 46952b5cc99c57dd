"""A LoRA run follows the same family rules as a full fine-tune (`freeze.check_lora`).

Unsupported families are refused; `stage: projector` with LoRA is an error; in the full stage the projector trains
in full (added to modules_to_save where the recipe left it out, each of Qwen3-VL's mergers included); LoRA targets
and modules to save that match nothing, or match the frozen vision tower, are errors naming the option and entry;
`freeze_vision_tower: false` needs the tower among them. Then the PEFT model trains exactly those parts.
"""

import pytest
import torch
from peft import LoraConfig

from vital_hub.training.family_models import build_family
from vital_hub.training.freeze import check_lora

LANGUAGE = r".*language_model.*\.(q_proj|v_proj)"


def tiny(family="llava-1.5"):
    from transformers import AutoModelForImageTextToText

    _, config = build_family(family)
    torch.manual_seed(0)
    return AutoModelForImageTextToText.from_config(config)


@pytest.fixture(scope="module")
def llava():
    return tiny()


def lora(targets=LANGUAGE, to_save=None):
    return LoraConfig(r=4, lora_alpha=8, target_modules=targets, modules_to_save=to_save, task_type="CAUSAL_LM")


@pytest.mark.parametrize(
    ("settings", "config", "message"),
    [
        ({"stage": "projector"}, lora(), "stage: projector trains the projector alone"),
        ({"stage": "everything"}, lora(), "unknown training stage 'everything'"),
        ({}, lora(["q_proj", "v_proj"]), "lora_target_modules 'q_proj' matches modules of the frozen vision tower"),
        ({}, lora("all-linear"), "lora_target_modules 'all-linear' matches modules of the frozen vision tower"),
        ({}, lora(["qkv_proj"]), "lora_target_modules 'qkv_proj' matches no module"),
        ({}, lora(r".*nothing.*"), "matches no module"),
        ({}, lora(to_save=["vision_tower"]), "lora_modules_to_save 'vision_tower' matches modules of the frozen"),
        ({}, lora(to_save=["projector"]), "lora_modules_to_save 'projector' matches no module"),
        ({"freeze_vision_tower": False}, lora(), "no LoRA target or module to save is in the vision tower"),
        ({}, lora(r".*multi_modal_projector\.linear_1"), "adapts nothing of the language model"),
    ],
)
def test_lora_settings_that_break_the_family_rules_are_errors(llava, settings, config, message):
    with pytest.raises(ValueError, match=message):
        check_lora(llava, config, **settings)


def test_an_unsupported_family_is_refused_with_lora_too():
    model = tiny()
    model.config.model_type = "not_a_vlm_family"
    with pytest.raises(ValueError, match="not a supported vision-language family"):
        check_lora(model, lora())


def trainable_parts(peft_model, family):
    from vital_hub.training.families import family_of, part_of

    family = family_of(peft_model.get_base_model())
    parts = {"vision": 0, "projector": 0, "language": 0}
    for name, parameter in peft_model.named_parameters():
        if parameter.requires_grad:
            parts[part_of(name, family)] += parameter.numel()
    return parts


@pytest.mark.parametrize(
    ("family", "added"),
    [("llava-1.5", ["multi_modal_projector"]), ("qwen3-vl", ["merger", "deepstack_merger_list.0"])],
)
def test_the_projector_trains_in_full_and_the_frozen_tower_stays_frozen(family, added):
    from peft import get_peft_model

    model = tiny(family)
    config = lora()
    plan = check_lora(model, config)
    assert config.modules_to_save == added
    assert plan["lora"] and all("language_model" in name for name in plan["lora"])
    parts = trainable_parts(get_peft_model(model, config), family)
    assert parts["projector"] > 0 and parts["language"] > 0 and parts["vision"] == 0


def test_an_unfrozen_tower_trains_through_lora_or_modules_to_save():
    from peft import get_peft_model

    model = tiny()
    config = lora(r".*(language_model|vision_tower).*\.(q_proj|v_proj)", ["multi_modal_projector"])
    check_lora(model, config, freeze_vision_tower=False)
    assert config.modules_to_save == ["multi_modal_projector"]  # already there: nothing added
    parts = trainable_parts(get_peft_model(model, config), "llava-1.5")
    assert parts["vision"] > 0 and parts["projector"] > 0 and parts["language"] > 0
