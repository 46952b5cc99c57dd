"""Which parts of a vision-language model train.

LLaVA practice, which LLaVA-Med follows: the vision tower stays frozen; stage 1 (feature alignment) trains the
projector alone, stage 2 (instruction tuning) the projector and the language model. Parts are found by each
family's own naming (`vital_hub.training.families`): Qwen's merger lives inside its vision module and still
trains with the projector.
"""

from __future__ import annotations

import logging

from vital_hub.training.families import family_of, part_of

logger = logging.getLogger(__name__)

STAGES = ("full", "projector")
PARTS = ("vision", "projector", "language")


def trainable_parts(stage: str, freeze_vision_tower: bool) -> set[str]:
    if stage not in STAGES:
        raise ValueError(f"unknown training stage {stage!r}; known: {list(STAGES)}")
    if stage == "projector":
        return {"projector"}
    return {"projector", "language"} | (set() if freeze_vision_tower else {"vision"})


def set_trainable(model, stage: str = "full", freeze_vision_tower: bool = True) -> dict[str, dict[str, int]]:
    """Freeze every parameter outside the stage's parts; returns parameter counts per part, trainable and frozen.

    A model in which the family's vision tower or projector is not found is an error: its names do not follow
    the family's rules, and training it would freeze or train the wrong weights.
    """
    parts = trainable_parts(stage, freeze_vision_tower)
    family = family_of(model)
    counts = {part: {"trainable": 0, "frozen": 0} for part in PARTS}
    for name, parameter in model.named_parameters():
        part = part_of(name, family)
        parameter.requires_grad_(part in parts)
        counts[part]["trainable" if part in parts else "frozen"] += parameter.numel()
    absent = [part for part in PARTS if not sum(counts[part].values())]
    if absent:
        raise ValueError(
            f"{type(model).__name__} ({family.name} family): no parameter found for {absent} (looked for modules "
            f"named vision {list(family.vision)}, projector {list(family.projector)}); the model does not follow "
            "its family's layout"
        )
    for part in PARTS:
        logger.info(
            "%s %s: %d trainable, %d frozen", family.name, part, counts[part]["trainable"], counts[part]["frozen"]
        )
    return counts


def _matches_module(entry: str, name: str) -> bool:
    """PEFT's rule for a name in a list of target modules or modules to save: the whole name, or its last parts."""
    return name == entry or name.endswith(f".{entry}")


def _target_entries(peft_config, model) -> list[tuple[str, object]]:
    """(entry as written, predicate on module names) for each LoRA target, as PEFT resolves them."""
    import re

    import torch
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING

    targets = peft_config.target_modules
    if targets is None:  # PEFT's default for the model type
        targets = TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING.get(model.config.model_type)
        if targets is None:
            raise ValueError(
                f"use_peft: no lora_target_modules given and PEFT has no default for {model.config.model_type!r}; "
                "name the language model's layers (e.g. '.*language_model.*\\.(q_proj|k_proj|v_proj|o_proj)')"
            )
    if isinstance(targets, str):
        if targets == "all-linear":
            output = model.get_output_embeddings()
            return [(targets, lambda name, module: isinstance(module, torch.nn.Linear) and module is not output)]
        return [(targets, lambda name, module: re.fullmatch(targets, name) is not None)]
    return [(entry, lambda name, module, entry=entry: _matches_module(entry, name)) for entry in sorted(targets)]


def projector_modules(modules: dict, family) -> list[str]:
    """The outermost modules of the projector (a module list counts as its members, which PEFT can wrap)."""
    import torch

    found = []
    for name, module in modules.items():
        if not name or name.split(".")[-1] not in family.projector:
            continue
        if isinstance(module, torch.nn.ModuleList):
            found += [f"{name}.{index}" for index in range(len(module))]
        else:
            found.append(name)
    return [name for name in found if not any(name.startswith(f"{other}.") for other in found)]


def check_lora(model, peft_config, stage: str = "full", freeze_vision_tower: bool = True) -> dict[str, list[str]]:
    """Apply the family's rules to a LoRA run before PEFT wraps the model; returns what each part gets.

    The same rules as a full fine-tune (`set_trainable`): the family must be supported; `stage: projector` trains
    the projector alone, which LoRA cannot express, so it is an error; in the full stage the projector trains in
    full, so its modules are added to `modules_to_save` when the recipe left them out (logged); LoRA targets and
    modules to save must not touch the vision tower while it is frozen, and with `freeze_vision_tower: false` one of
    them must cover it. A target or module to save that matches no module of the model is an error, as is a
    target list that adapts nothing of the language model. `peft_config.modules_to_save` is updated in place.
    """
    family = family_of(model)
    trainable_parts(stage, freeze_vision_tower)  # unknown stage: error
    if stage == "projector":
        raise ValueError(
            "stage: projector trains the projector alone, and LoRA adapts the language model: run the projector "
            "stage without use_peft (a full update of the projector, as LLaVA's alignment stage does)"
        )
    modules = dict(model.named_modules())
    example = {}
    plan = {"lora": [], "modules_to_save": []}
    for entry, matches in _target_entries(peft_config, model):
        found = [name for name, module in modules.items() if name and matches(name, module)]
        if not found:
            hint = ""
            if isinstance(peft_config.target_modules, str):
                hint = (
                    " (one value is a regular expression over whole module names, e.g. '.*language_model.*\\.q_proj')"
                )
            raise ValueError(f"lora_target_modules {entry!r} matches no module of {type(model).__name__}{hint}")
        plan["lora"] += found
        example[entry] = found
    saved = list(peft_config.modules_to_save or [])
    for entry in saved:
        found = [name for name in modules if _matches_module(entry, name)]
        if not found:
            raise ValueError(
                f"lora_modules_to_save {entry!r} matches no module of {type(model).__name__} ({family.name} family: "
                f"projector {list(family.projector)}, vision tower {list(family.vision)})"
            )
        plan["modules_to_save"] += found
        example[entry] = found
    added = []
    for name in projector_modules(modules, family):
        covered = plan["modules_to_save"] + plan["lora"]
        if not any(name == other or name.startswith(f"{other}.") for other in covered):
            parts = name.split(".")  # the name PEFT matches by its end: merger, deepstack_merger_list.0
            added.append(".".join(parts[-2:]) if parts[-1].isdigit() else parts[-1])
            plan["modules_to_save"].append(name)
    if added:
        logger.info("LoRA: the projector trains in full (stage full): modules_to_save += %s", added)
        peft_config.modules_to_save = saved + added
    for entry, found in example.items():
        in_tower = [name for name in found if part_of(name, family) == "vision"]
        if in_tower and freeze_vision_tower:
            option = "lora_modules_to_save" if entry in saved else "lora_target_modules"
            raise ValueError(
                f"{option} {entry!r} matches modules of the frozen vision tower (e.g. {in_tower[0]}); limit it to the "
                "language model (e.g. '.*language_model.*\\.(q_proj|v_proj)') or set freeze_vision_tower: false"
            )
    if not freeze_vision_tower and not any(
        part_of(name, family) == "vision" for name in plan["lora"] + plan["modules_to_save"]
    ):
        raise ValueError(
            "freeze_vision_tower: false with use_peft: no LoRA target or module to save is in the vision tower "
            f"({list(family.vision)}), which would stay frozen; add it to lora_target_modules or lora_modules_to_save"
        )
    if not any(part_of(name, family) == "language" for name in plan["lora"]):
        raise ValueError("lora_target_modules adapts nothing of the language model, which trains in the full stage")
    return plan
