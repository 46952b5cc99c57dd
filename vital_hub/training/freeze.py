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
