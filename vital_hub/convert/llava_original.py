"""Checkpoints of the original LLaVA repository (`LlavaLlamaForCausalLM`, `LlavaMistralForCausalLM`) as a
transformers `LlavaForConditionalGeneration` folder: BioMed-VITAL's released models, LLaVA-1.5 and LLaVA-Med v1.5.

The original model (https://github.com/haotian-liu/LLaVA, `llava/model/`) is a causal LM with two extra parts,
configured by fields of its config.json:

- the vision tower `mm_vision_tower` (CLIP, always loaded from that Hub id: the original built the tower lazily
  and never loaded a copy stored in the checkpoint), read at hidden layer `mm_vision_select_layer` with `mm_vision_select_feature` `patch` (CLS dropped)
  -> `vision_feature_layer`, `vision_feature_select_strategy: default`;
- the projector `mm_projector_type: mlp2x_gelu` (Linear, GELU, Linear: `model.mm_projector.0/2`) ->
  `multi_modal_projector.linear_1/linear_2`;
- `image_aspect_ratio: pad` (pad to a square, then CLIP's resize) -> the processor's `do_pad` (the mean colour,
  centred); each lineage's exact handling is recorded beside it (`vital_hub.convert.lineage`).

The image token: the original spliced image features at a placeholder id (-200) that no tokenizer knows; here
`<image>` is added to the tokenizer and the embedding and output matrices grow by rows (rounded up to a multiple
of 64) initialised with the mean of the existing rows, as transformers' own `convert_llava_weights_to_hf.py` does
(without its noise): the `<image>` embedding is replaced by image features, and a mean output row never wins
greedy decoding. Settings the transformers model cannot express are refused by name.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from vital_hub.convert.formats import DEFAULT_CHAT_FORMAT
from vital_hub.convert.tensors import SourceWeights

FAMILIES_BY_ARCHITECTURE = {"LlavaLlamaForCausalLM": "llama", "LlavaMistralForCausalLM": "mistral"}
FAMILIES_BY_MODEL_TYPE = {"llava": "llama", "llava_llama": "llama", "llava_mistral": "mistral"}
SELECT_FEATURES = {"patch": "default", "cls_patch": "full"}
# CLIP towers whose config is known without downloading them (values of their Hub config.json).
KNOWN_VISION_TOWERS = {
    "openai/clip-vit-large-patch14-336": {"image_size": 336},
    "openai/clip-vit-large-patch14": {"image_size": 224},
}
VIT_L_14 = {
    "hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24, "num_attention_heads": 16,
    "patch_size": 14, "projection_dim": 768, "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5,
}  # fmt: skip
# Buffers the original checkpoints carry that transformers recomputes.
DROPPED_SUFFIXES = ("rotary_emb.inv_freq", "embeddings.position_ids")
RENAMES = (  # (original prefix, transformers prefixes to try), first match wins; () = unknown layout
    ("model.mm_projector.0.", ("model.multi_modal_projector.linear_1.",)),
    ("model.mm_projector.2.", ("model.multi_modal_projector.linear_2.",)),
    # transformers 5 keeps CLIP's layers directly under the tower (older versions under `vision_model.`)
    ("model.vision_tower.vision_tower.vision_model.", ("model.vision_tower.", "model.vision_tower.vision_model.")),
    ("model.vision_tower.", ()),
    ("model.mm_projector.", ()),
    ("model.", ("model.language_model.",)),
    ("lm_head.", ("lm_head.",)),
)
CLIP_OTHER_PARTS = ("text_model.", "visual_projection.", "text_projection.", "logit_scale")
RESIZED = ("model.language_model.embed_tokens.weight", "lm_head.weight")
VOCAB_MULTIPLE = 64


class ConversionError(ValueError):
    """A checkpoint this converter cannot turn into an equivalent transformers model; says which key or field."""


@dataclass(frozen=True)
class OriginalSettings:
    family: str  # llama | mistral
    select_layer: int
    select_strategy: str  # default | full
    pad_to_square: bool
    vision_tower: str
    chat_format: str


def read_config(folder: Path) -> dict:
    path = folder / "config.json"
    if not path.is_file():
        raise ConversionError(f"{folder}: no config.json (not a model folder)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ConversionError(f"{path}: not JSON: {err}") from None


def original_settings(raw: dict, where: Path, chat_format: str | None = None) -> OriginalSettings:
    """The original config's multimodal fields, each checked against what `LlavaForConditionalGeneration` does."""
    where = where / "config.json"
    architectures = raw.get("architectures") or []
    family = next((FAMILIES_BY_ARCHITECTURE[a] for a in architectures if a in FAMILIES_BY_ARCHITECTURE), None)
    family = family or FAMILIES_BY_MODEL_TYPE.get(raw.get("model_type"))
    if family is None:
        raise ConversionError(
            f"{where}: architectures {architectures} / model_type {raw.get('model_type')!r} is not an original "
            f"LLaVA checkpoint (supported: {sorted(FAMILIES_BY_ARCHITECTURE)})"
        )

    def unsupported(field: str, value, supported) -> ConversionError:
        return ConversionError(f"{where}: {field} = {value!r} is not supported (supported: {supported})")

    projector = raw.get("mm_projector_type", "linear")  # the original's default when the field is absent
    if projector != "mlp2x_gelu":
        raise unsupported("mm_projector_type", projector, "'mlp2x_gelu'")
    if "mm_vision_select_layer" not in raw or not isinstance(raw["mm_vision_select_layer"], int):
        raise ConversionError(f"{where}: mm_vision_select_layer is missing or not an integer")
    feature = raw.get("mm_vision_select_feature", "patch")
    if feature not in SELECT_FEATURES:
        raise unsupported("mm_vision_select_feature", feature, sorted(SELECT_FEATURES))
    aspect = raw.get("image_aspect_ratio")
    if aspect not in (None, "square", "pad"):
        raise unsupported("image_aspect_ratio", aspect, "'pad', 'square' or absent")
    for flag in ("mm_use_im_start_end", "mm_use_im_patch_token"):
        if raw.get(flag):
            raise unsupported(flag, raw[flag], "false")
    if raw.get("mm_patch_merge_type", "flat") != "flat":
        raise unsupported("mm_patch_merge_type", raw["mm_patch_merge_type"], "'flat'")
    tower = raw.get("mm_vision_tower") or raw.get("vision_tower")
    if not tower:
        raise ConversionError(f"{where}: mm_vision_tower is missing")
    return OriginalSettings(
        family=family,
        select_layer=raw["mm_vision_select_layer"],
        select_strategy=SELECT_FEATURES[feature],
        pad_to_square=aspect == "pad",
        vision_tower=tower,
        chat_format=chat_format or DEFAULT_CHAT_FORMAT[family],
    )


def text_config(raw: dict, family: str, vocab_size: int, tokenizer):
    """The language model's config: the original's Llama/Mistral fields, without the multimodal ones."""
    from transformers import LlamaConfig, MistralConfig

    cls = {"llama": LlamaConfig, "mistral": MistralConfig}[family]
    known = set(cls().to_dict()) | {"rope_theta", "rope_scaling", "sliding_window"}
    skip = {"architectures", "model_type", "transformers_version", "_name_or_path", "dtype", "vocab_size"}
    fields = {key: value for key, value in raw.items() if key in known and key not in skip}
    fields.update(
        vocab_size=vocab_size,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return cls(**fields)


def vision_config(settings: OriginalSettings, clip_folder: Path | None):
    """CLIP's vision config: from the tower's own config.json when there is a folder, else the known values."""
    from transformers import CLIPVisionConfig

    if clip_folder is not None and (clip_folder / "config.json").is_file():
        raw = read_config(clip_folder)
        raw = raw.get("vision_config", raw) if raw.get("model_type") == "clip" else raw
        fields = set(CLIPVisionConfig().to_dict()) - {"architectures", "model_type", "transformers_version", "dtype"}
        return CLIPVisionConfig(**{key: value for key, value in raw.items() if key in fields})
    if settings.vision_tower not in KNOWN_VISION_TOWERS:
        raise ConversionError(
            f"mm_vision_tower = {settings.vision_tower!r} is not a known CLIP tower "
            f"({sorted(KNOWN_VISION_TOWERS)}): pass --vision-tower with a folder holding its config.json"
        )
    return CLIPVisionConfig(**VIT_L_14, **KNOWN_VISION_TOWERS[settings.vision_tower])


def padded_vocab(original: int, tokenizer_size: int) -> int:
    return original if tokenizer_size <= original else math.ceil(tokenizer_size / VOCAB_MULTIPLE) * VOCAB_MULTIPLE


def llava_config(raw: dict, settings: OriginalSettings, tokenizer, vision, dtype: str):
    from transformers import LlavaConfig

    text = text_config(raw, settings.family, padded_vocab(raw["vocab_size"], len(tokenizer)), tokenizer)
    if raw.get("mm_hidden_size") not in (None, vision.hidden_size):
        raise ConversionError(
            f"config.json: mm_hidden_size = {raw['mm_hidden_size']} but the vision tower's hidden_size is "
            f"{vision.hidden_size}"
        )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        projector_hidden_act="gelu",
        vision_feature_layer=settings.select_layer,
        vision_feature_select_strategy=settings.select_strategy,
        multimodal_projector_bias=True,
        tie_word_embeddings=text.tie_word_embeddings,
    )
    config.dtype = dtype
    config.architectures = ["LlavaForConditionalGeneration"]
    return config


def target_shapes(config) -> dict[str, tuple[int, ...]]:
    """Every tensor name and shape the transformers model has, from a model built on the meta device."""
    import torch
    from transformers import LlavaForConditionalGeneration

    with torch.device("meta"):
        model = LlavaForConditionalGeneration(config)
    return {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}


def rename(key: str, targets: dict | None = None) -> str | None:
    """The transformers name of an original key (the first candidate the model has); None for buffers that are not
    weights."""
    if key.endswith(DROPPED_SUFFIXES):
        return None
    for prefix, candidates in RENAMES:
        if key.startswith(prefix):
            names = [candidate + key[len(prefix) :] for candidate in candidates]
            if not names:
                break
            return next((name for name in names if targets is None or name in targets), names[0])
    raise ConversionError(f"unknown key {key!r}: not a key of an original LLaVA checkpoint")


def rename_clip(key: str, targets: dict) -> str | None:
    """A key of a CLIP checkpoint (CLIPModel, or CLIPVisionModel with or without `vision_model.`) as a tower key;
    None for its text half and for buffers."""
    if key.startswith(CLIP_OTHER_PARTS) or key.endswith(DROPPED_SUFFIXES):
        return None
    rest = key.removeprefix("vision_model.")
    names = ["model.vision_tower." + rest, "model.vision_tower.vision_model." + rest]
    return next((name for name in names if name in targets), None)


def plan_keys(
    source: SourceWeights, targets: dict, clip: SourceWeights | None, where: Path, drop_tower: bool = False
) -> dict[str, str]:
    """Original key -> transformers key for every source tensor, checked before anything is written: an unknown,
    unexpected or missing key fails naming the key and the file. `drop_tower` leaves out a tower stored in the
    checkpoint (the original code never loaded it)."""
    mapping: dict[str, str] = {}
    for path in source.files:
        for key in source.keys[path]:
            if drop_tower and key.startswith("model.vision_tower."):
                continue
            try:
                target = rename(key, targets)
            except ConversionError as err:
                raise ConversionError(f"{path}: {err}") from None
            if target is None:
                continue
            if target not in targets:
                raise ConversionError(f"{path}: unexpected key {key!r} (would be {target!r}, which the model lacks)")
            mapping[key] = target
    has_vision = any(target.startswith("model.vision_tower.") for target in mapping.values())
    if clip is not None and not has_vision:
        for key in clip.all_keys:
            target = rename_clip(key, targets)
            if target is not None:
                mapping[f"clip:{key}"] = target
    missing = sorted(set(targets) - set(mapping.values()))
    if missing:
        vision_missing = [name for name in missing if name.startswith("model.vision_tower.")]
        if vision_missing and not has_vision and clip is None:
            raise ConversionError(
                f"{where}: the checkpoint has no vision tower weights: pass --vision-tower (a CLIP folder or Hub id)"
            )
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise ConversionError(f"{where}: missing key {original_name(missing[0])!r}{more}")
    return mapping


def original_name(target: str) -> str:
    """The original checkpoint's name for a transformers key, for error messages."""
    for prefix, candidates in RENAMES:
        for renamed in candidates:
            if target.startswith(renamed):
                return prefix + target[len(renamed) :]
    return target
