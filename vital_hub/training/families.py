"""The vision-language model families the recipes train, and where each keeps its vision tower and projector.

transformers names the parts differently in every family: Qwen's projector (`merger`, and Qwen3-VL's
`deepstack_merger_list`) sits inside its vision module `model.visual`; LLaVA-OneVision's `image_newline` is a
learned projector-side parameter at the model's top level; Idefics2/3 and SmolVLM call theirs `connector`, Gemma 4
`embed_vision`. A
family is recognised from `config.model_type`, and its parts from its own rules, so that a name that looks like
a vision module in one family is not frozen by mistake in another. A model of a family not listed here is an
error rather than a guess (a silent freeze of the wrong part trains the wrong thing for days).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Family:
    """How one family's parameter names map to vision tower, projector and language model.

    A parameter is the projector's when any of its dotted name components is in `projector`; otherwise the
    vision tower's when one is in `vision`; everything else is language model (embeddings and head included).
    """

    name: str
    model_types: tuple[str, ...]
    vision: tuple[str, ...]
    projector: tuple[str, ...]


FAMILIES = (
    Family("llava", ("llava",), ("vision_tower",), ("multi_modal_projector",)),
    Family(
        "llava-next", ("llava_next", "llava_onevision"), ("vision_tower",), ("multi_modal_projector", "image_newline")
    ),
    Family("qwen2-vl", ("qwen2_vl", "qwen2_5_vl"), ("visual",), ("merger",)),
    Family("qwen3-vl", ("qwen3_vl", "qwen3_vl_moe"), ("visual",), ("merger", "deepstack_merger_list")),
    Family("qwen3.5", ("qwen3_5", "qwen3_5_moe"), ("visual",), ("merger",)),
    # GLM-4.1V's `downsample` convolution maps the merged patches to the language model's width, before `merger`.
    Family("glm4v", ("glm4v",), ("visual",), ("merger", "downsample")),
    Family("gemma3", ("gemma3",), ("vision_tower",), ("multi_modal_projector",)),
    Family("gemma4", ("gemma4",), ("vision_tower",), ("embed_vision",)),
    Family("idefics3", ("idefics2", "idefics3", "smolvlm"), ("vision_model",), ("connector",)),
    Family("internvl", ("internvl",), ("vision_tower",), ("multi_modal_projector",)),
    # Mllama's language model holds the cross-attention layers that read the image: they train with it.
    Family("mllama", ("mllama",), ("vision_model",), ("multi_modal_projector",)),
    Family("mistral3", ("mistral3",), ("vision_tower",), ("multi_modal_projector",)),
    Family("paligemma", ("paligemma",), ("vision_tower",), ("multi_modal_projector",)),
)
BY_MODEL_TYPE = {model_type: family for family in FAMILIES for model_type in family.model_types}


def family_of(model_or_config) -> Family:
    """The family of a model (or its config), from `config.model_type`; unknown types are an error."""
    config = getattr(model_or_config, "config", model_or_config)
    model_type = getattr(config, "model_type", None)
    if model_type not in BY_MODEL_TYPE:
        raise ValueError(
            f"{type(model_or_config).__name__} (model_type {model_type!r}) is not a supported vision-language "
            f"family; supported model types: {sorted(BY_MODEL_TYPE)}"
        )
    return BY_MODEL_TYPE[model_type]


def part_of(parameter_name: str, family: Family) -> str:
    """ "vision", "projector" or "language" for a parameter (or module) name of a model of `family`."""
    components = parameter_name.split(".")
    if any(component in family.projector for component in components):
        return "projector"
    if any(component in family.vision for component in components):
        return "vision"
    return "language"
