"""Which parts of a vision-language model train.

LLaVA practice, which LLaVA-Med follows: the vision tower stays frozen; stage 1 (feature alignment) trains the
projector alone, stage 2 (instruction tuning) the projector and the language model. Parts are recognised by the
module names transformers uses across LLaVA-style models.
"""

from __future__ import annotations

PART_MARKERS = {
    "vision": ("vision_tower", "vision_model", "visual", "image_encoder"),
    "projector": ("multi_modal_projector", "mm_projector", "connector", "merger"),
}
STAGES = ("full", "projector")


def part_of(parameter_name: str) -> str:
    """ "vision", "projector" or "language" for a parameter name."""
    components = parameter_name.split(".")
    for part, markers in PART_MARKERS.items():
        if any(marker in components for marker in markers):
            return part
    return "language"


def trainable_parts(stage: str, freeze_vision_tower: bool) -> set[str]:
    if stage not in STAGES:
        raise ValueError(f"unknown training stage {stage!r}; known: {list(STAGES)}")
    if stage == "projector":
        return {"projector"}
    return {"projector", "language"} | (set() if freeze_vision_tower else {"vision"})


def set_trainable(model, stage: str = "full", freeze_vision_tower: bool = True) -> dict[str, dict[str, int]]:
    """Freeze every parameter outside the stage's parts; returns parameter counts per part, trainable and frozen."""
    parts = trainable_parts(stage, freeze_vision_tower)
    counts: dict[str, dict[str, int]] = {}
    for name, parameter in model.named_parameters():
        part = part_of(name)
        parameter.requires_grad_(part in parts)
        bucket = counts.setdefault(part, {"trainable": 0, "frozen": 0})
        bucket["trainable" if part in parts else "frozen"] += parameter.numel()
    if not any(bucket["trainable"] for bucket in counts.values()):
        raise ValueError(
            f"stage {stage!r} leaves nothing to train in {type(model).__name__} (parts: {sorted(counts)})"
        )
    return counts
