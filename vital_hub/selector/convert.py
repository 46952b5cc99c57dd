"""BiomedCLIP's open_clip checkpoint -> the `biomedclip` backbone (a VisionTextDualEncoder of ViT + BERT).

open_clip_torch cannot be installed beside a CPU torch without torchvision, so the weights are mapped by hand.
BiomedCLIP's open_clip layout (`open_clip_pytorch_model.bin` + `open_clip_config.json` in the Hub repo):

- `visual.trunk.*`: a timm ViT-B/16 (`cls_token`, `pos_embed`, `patch_embed.proj`, `blocks.N.{norm1, attn.qkv,
  attn.proj, norm2, mlp.fc1, mlp.fc2}`, `norm`); the fused `qkv` is split into query/key/value.
- `visual.head.proj.weight`: the linear image projection (768 -> 512).
- `text.transformer.*`: a Hugging Face BertModel (PubMedBERT), copied as is, minus its unused pooler.
- `text.proj.0.weight`, `text.proj.2.weight`: the MLP text projection (768 -> 640 -> 512, GELU between).
- `logit_scale`.

Attention head counts are not in the weights: they default to width // 64, true for ViT-B and BERT-base.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

VISION_PREFIX = "visual.trunk."
TEXT_PREFIX = "text.transformer."
# timm block module -> Hugging Face ViT module, for both ViT layouts transformers has shipped (the fused qkv maps to
# three modules). Older releases: `encoder.layer.N.attention.attention.query`; newer: `layers.N.attention.q_proj`.
VIT_LAYOUTS = {
    "legacy": {
        "prefix": "encoder.layer.{}.",
        "attn.qkv": ("attention.attention.query", "attention.attention.key", "attention.attention.value"),
        "attn.proj": "attention.output.dense",
        "norm1": "layernorm_before",
        "norm2": "layernorm_after",
        "mlp.fc1": "intermediate.dense",
        "mlp.fc2": "output.dense",
    },
    "layers": {
        "prefix": "layers.{}.",
        "attn.qkv": ("attention.q_proj", "attention.k_proj", "attention.v_proj"),
        "attn.proj": "attention.o_proj",
        "norm1": "layernorm_before",
        "norm2": "layernorm_after",
        "mlp.fc1": "mlp.fc1",
        "mlp.fc2": "mlp.fc2",
    },
}
TIMM_TOP_TO_HF = {  # the same in both layouts
    "cls_token": "embeddings.cls_token",
    "pos_embed": "embeddings.position_embeddings",
    "patch_embed.proj.weight": "embeddings.patch_embeddings.projection.weight",
    "patch_embed.proj.bias": "embeddings.patch_embeddings.projection.bias",
    "norm.weight": "layernorm.weight",
    "norm.bias": "layernorm.bias",
}
IGNORED_KEYS = re.compile(r"^text\.transformer\.(pooler\.|embeddings\.position_ids$)")


class ConversionError(ValueError):
    """An open_clip state dict that does not have BiomedCLIP's layout."""


REQUIRED_KEYS = (
    "visual.trunk.cls_token", "visual.trunk.pos_embed", "visual.trunk.patch_embed.proj.weight",
    "visual.trunk.norm.weight", "visual.trunk.norm.bias", "visual.head.proj.weight",
    "text.transformer.embeddings.word_embeddings.weight", "text.transformer.embeddings.position_embeddings.weight",
    "text.transformer.embeddings.token_type_embeddings.weight", "text.transformer.embeddings.LayerNorm.weight",
    "text.transformer.embeddings.LayerNorm.bias", "text.proj.0.weight", "text.proj.2.weight",
)  # fmt: skip
VISION_BLOCK_KEYS = tuple(
    f"{module}.{kind}"
    for module in ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2")
    for kind in ("weight", "bias")
)
TEXT_LAYER_KEYS = tuple(
    f"{module}.{kind}"
    for module in (
        "attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
        "attention.output.LayerNorm", "intermediate.dense", "output.dense", "output.LayerNorm",
    )
    for kind in ("weight", "bias")
)  # fmt: skip
# Depth of the timm ViTs open_clip configs name (`vision_cfg.timm_model_name`), for a checkpoint missing a block.
TIMM_VIT_DEPTH = {"tiny": 12, "small": 12, "base": 12, "large": 24, "huge": 32}


def check_open_clip_layout(state_dict: dict, open_clip_config: dict | None = None) -> None:
    """Raise ConversionError naming the first open_clip key that BiomedCLIP's layout needs and this checkpoint
    lacks (before any transformers key is involved), and a block count that contradicts the config."""
    keys = set(state_dict)
    if keys and all(key.startswith("module.") for key in keys):
        raise ConversionError(
            "every key starts with 'module.' (a checkpoint saved from DataParallel/DistributedDataParallel): strip "
            "the prefix first, e.g. {k.removeprefix('module.'): v for k, v in state_dict.items()}"
        )
    for key in REQUIRED_KEYS:
        if key not in keys:
            raise ConversionError(f"missing open_clip key {key!r}: BiomedCLIP's layout has it ({_layout_hint(key)})")
    _check_numbered(keys, "visual.trunk.blocks.", VISION_BLOCK_KEYS, qkv_bias_optional=True)
    _check_numbered(keys, "text.transformer.encoder.layer.", TEXT_LAYER_KEYS)
    vision_cfg = ((open_clip_config or {}).get("model_cfg") or {}).get("vision_cfg") or {}
    expected = vision_cfg.get("layers")
    match = re.match(r"vit_(tiny|small|base|large|huge)_patch", str(vision_cfg.get("timm_model_name", "")))
    if expected is None and match:
        expected = TIMM_VIT_DEPTH[match.group(1)]
    found = _count_layers(state_dict, r"visual\.trunk\.blocks\.(\d+)\.")
    if isinstance(expected, int) and found != expected:
        raise ConversionError(
            f"the checkpoint has {found} vision blocks (visual.trunk.blocks.0-{found - 1}.*) but open_clip_config.json "
            f"describes {expected}: visual.trunk.blocks.{found}.* and on are missing"
        )


def _layout_hint(key: str) -> str:
    if key.startswith("visual.trunk."):
        return "the timm ViT trunk"
    if key.startswith("visual.head."):
        return "the image projection, 768 -> 512 in BiomedCLIP"
    if key.startswith("text.proj."):
        return "the MLP text projection, 768 -> 640 -> 512"
    return "the PubMedBERT text tower"


def _check_numbered(keys: set[str], prefix: str, suffixes: tuple[str, ...], qkv_bias_optional: bool = False) -> None:
    """Every numbered layer 0..max under `prefix` holds every expected tensor."""
    numbers = {int(m.group(1)) for key in keys if (m := re.match(re.escape(prefix) + r"(\d+)\.", key))}
    if not numbers:
        raise ConversionError(f"missing open_clip keys {prefix}0.*: no layers found")
    with_bias = f"{prefix}0.attn.qkv.bias" in keys or not qkv_bias_optional
    for number in range(max(numbers) + 1):
        for suffix in suffixes:
            if suffix == "attn.qkv.bias" and not with_bias:
                continue
            key = f"{prefix}{number}.{suffix}"
            if key not in keys:
                raise ConversionError(f"missing open_clip key {key!r} (layer {number} of 0-{max(numbers)})")


def _vision_targets(name: str, layout: dict) -> list[tuple[str, int | None]]:
    """timm key (without prefix) -> [(HF ViT key, third of the fused qkv or None)]."""
    if name in TIMM_TOP_TO_HF:
        return [(TIMM_TOP_TO_HF[name], None)]
    match = re.fullmatch(r"blocks\.(\d+)\.(.+)\.(weight|bias)", name)
    if not match or match.group(2) not in layout:
        raise ConversionError(f"unexpected timm ViT key {VISION_PREFIX}{name}")
    layer, module, kind = match.groups()
    base = layout["prefix"].format(layer)
    if module == "attn.qkv":
        return [(f"{base}{part}.{kind}", third) for third, part in enumerate(layout[module])]
    return [(f"{base}{layout[module]}.{kind}", None)]


def installed_vit_layout() -> str:
    """Which ViT key layout the installed transformers uses, read off a one-layer model."""
    from transformers import ViTConfig, ViTModel

    tiny = ViTModel(
        ViTConfig(
            hidden_size=8, num_hidden_layers=1, num_attention_heads=1, intermediate_size=8, image_size=4, patch_size=2
        ),
        add_pooling_layer=False,
    )
    return "layers" if any(key.startswith("layers.") for key in tiny.state_dict()) else "legacy"


def convert_open_clip_state_dict(state_dict: dict, target_keys: set[str] | None = None) -> dict:
    """Map every tensor of a BiomedCLIP open_clip state dict onto the `biomedclip` backbone's keys.

    `target_keys` (the backbone's own state-dict keys) picks the ViT layout and checks that every tensor lands on
    a real parameter; without it, the installed transformers' layout is used."""
    check_open_clip_layout(state_dict)
    if target_keys is None:
        layout_name = installed_vit_layout()
    else:
        layout_name = "layers" if any(k.startswith("vision_model.layers.") for k in target_keys) else "legacy"
    layout = VIT_LAYOUTS[layout_name]
    converted = {}
    for key, tensor in state_dict.items():
        if IGNORED_KEYS.match(key):
            continue
        if key.startswith(VISION_PREFIX):
            for target, third in _vision_targets(key[len(VISION_PREFIX) :], layout):
                if third is not None:
                    width = tensor.shape[0] // 3
                    tensor_part = tensor[third * width : (third + 1) * width].clone()
                converted[f"vision_model.{target}"] = tensor if third is None else tensor_part
        elif key.startswith(TEXT_PREFIX):
            converted[f"text_model.{key[len(TEXT_PREFIX) :]}"] = tensor
        elif key == "visual.head.proj.weight":
            converted["visual_projection.weight"] = tensor
        elif key in ("text.proj.0.weight", "text.proj.2.weight"):
            converted[f"text_projection.{key.split('.')[2]}.weight"] = tensor
        elif key == "logit_scale":
            converted["logit_scale"] = tensor.reshape(())
        else:
            raise ConversionError(f"unexpected key {key!r}: not BiomedCLIP's open_clip layout")
    if "visual_projection.weight" not in converted or "text_projection.2.weight" not in converted:
        raise ConversionError("no image/text projection found (visual.head.proj / text.proj.[0,2])")
    if target_keys is not None:
        unknown = sorted(set(converted) - set(target_keys))
        if unknown:
            raise ConversionError(f"converted keys with no place in the backbone: {unknown[:5]}")
    return converted


def _count_layers(state_dict: dict, pattern: str) -> int:
    numbers = {int(m.group(1)) for key in state_dict if (m := re.match(pattern, key))}
    if not numbers:
        raise ConversionError(f"no layers match {pattern!r}")
    return max(numbers) + 1


def biomedclip_backbone_config(state_dict: dict, head_dim: int = 64):
    """The VisionTextDualEncoderConfig (ViT + BERT) that a BiomedCLIP state dict's shapes imply."""
    from transformers import BertConfig, VisionTextDualEncoderConfig, ViTConfig

    check_open_clip_layout(state_dict)
    patch = state_dict[VISION_PREFIX + "patch_embed.proj.weight"]
    width, channels, patch_size = patch.shape[0], patch.shape[1], patch.shape[-1]
    grid = int(round((state_dict[VISION_PREFIX + "pos_embed"].shape[1] - 1) ** 0.5))
    vision = ViTConfig(
        hidden_size=width,
        num_hidden_layers=_count_layers(state_dict, r"visual\.trunk\.blocks\.(\d+)\."),
        num_attention_heads=width // head_dim,
        intermediate_size=state_dict[VISION_PREFIX + "blocks.0.mlp.fc1.weight"].shape[0],
        image_size=grid * patch_size,
        patch_size=patch_size,
        num_channels=channels,
        qkv_bias=VISION_PREFIX + "blocks.0.attn.qkv.bias" in state_dict,
        layer_norm_eps=1e-6,  # timm's ViT
        hidden_act="gelu",
    )
    words = state_dict[TEXT_PREFIX + "embeddings.word_embeddings.weight"]
    text_width = words.shape[1]
    text = BertConfig(
        vocab_size=words.shape[0],
        hidden_size=text_width,
        num_hidden_layers=_count_layers(state_dict, r"text\.transformer\.encoder\.layer\.(\d+)\."),
        num_attention_heads=text_width // head_dim,
        intermediate_size=state_dict[TEXT_PREFIX + "encoder.layer.0.intermediate.dense.weight"].shape[0],
        max_position_embeddings=state_dict[TEXT_PREFIX + "embeddings.position_embeddings.weight"].shape[0],
        type_vocab_size=state_dict[TEXT_PREFIX + "embeddings.token_type_embeddings.weight"].shape[0],
    )
    projection_dim = state_dict["visual.head.proj.weight"].shape[0]
    return VisionTextDualEncoderConfig.from_vision_text_configs(vision, text, projection_dim=projection_dim)


def read_open_clip_checkpoint(folder: str | Path) -> tuple[dict, dict]:
    """(state dict, open_clip config) from a downloaded open_clip repo folder; weights load as tensors only."""
    import torch

    folder = Path(folder)
    config_path = folder / "open_clip_config.json"
    config = json.loads(config_path.read_text()) if config_path.exists() else {}
    safetensors_path = folder / "open_clip_model.safetensors"
    if safetensors_path.exists():
        from safetensors.torch import load_file

        return load_file(str(safetensors_path)), config
    bin_path = folder / "open_clip_pytorch_model.bin"
    if not bin_path.exists():
        raise FileNotFoundError(f"{folder}: neither open_clip_model.safetensors nor open_clip_pytorch_model.bin")
    return torch.load(bin_path, map_location="cpu", weights_only=True), config


def selector_from_open_clip(folder: str | Path, **selector_kwargs):
    """A SelectorModel whose backbone carries the converted BiomedCLIP weights (the head stays freshly made)."""
    from vital_hub.selector.modeling import SelectorConfig, SelectorModel

    state_dict, open_clip_config = read_open_clip_checkpoint(folder)
    check_open_clip_layout(state_dict, open_clip_config)
    backbone_config = biomedclip_backbone_config(state_dict)
    preprocess = open_clip_config.get("preprocess_cfg", {})
    text_cfg = open_clip_config.get("model_cfg", {}).get("text_cfg", {})
    selector_kwargs.setdefault("image_size", backbone_config.vision_config.image_size)
    if "mean" in preprocess:
        selector_kwargs.setdefault("image_mean", preprocess["mean"])
        selector_kwargs.setdefault("image_std", preprocess["std"])
    if "context_length" in text_cfg:
        selector_kwargs.setdefault("text_max_length", text_cfg["context_length"])
    config = SelectorConfig(backbone="biomedclip", backbone_config=backbone_config, **selector_kwargs)
    model = SelectorModel(config)
    target_keys = set(model.backbone.state_dict())
    model.backbone.load_state_dict(convert_open_clip_state_dict(state_dict, target_keys), strict=True)
    return model, open_clip_config
