"""BiomedCLIP's open_clip layout -> the `biomedclip` selector backbone, checked on a tiny synthetic checkpoint."""

import json
import math
import re

import pytest
import torch
import torch.nn.functional as F

from vital_hub.selector.convert import (
    ConversionError,
    biomedclip_backbone_config,
    convert_open_clip_state_dict,
    selector_from_open_clip,
)

WIDTH, LAYERS, PATCH, IMAGE, EMBED, VOCAB, POSITIONS = 128, 2, 8, 32, 48, 50, 40


def open_clip_state_dict(seed: int = 0) -> dict:
    """BiomedCLIP's real key names (timm ViT + HF BERT + projections), at a tiny size, with random values."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=g) * 0.2

    sd = {
        "logit_scale": torch.tensor(4.6052),
        "visual.trunk.cls_token": rand(1, 1, WIDTH),
        "visual.trunk.pos_embed": rand(1, (IMAGE // PATCH) ** 2 + 1, WIDTH),
        "visual.trunk.patch_embed.proj.weight": rand(WIDTH, 3, PATCH, PATCH),
        "visual.trunk.patch_embed.proj.bias": rand(WIDTH),
        "visual.trunk.norm.weight": 1 + rand(WIDTH),
        "visual.trunk.norm.bias": rand(WIDTH),
        "visual.head.proj.weight": rand(EMBED, WIDTH),
        "text.transformer.embeddings.word_embeddings.weight": rand(VOCAB, WIDTH),
        "text.transformer.embeddings.position_embeddings.weight": rand(POSITIONS, WIDTH),
        "text.transformer.embeddings.token_type_embeddings.weight": rand(2, WIDTH),
        "text.transformer.embeddings.LayerNorm.weight": 1 + rand(WIDTH),
        "text.transformer.embeddings.LayerNorm.bias": rand(WIDTH),
        "text.transformer.pooler.dense.weight": rand(WIDTH, WIDTH),
        "text.transformer.pooler.dense.bias": rand(WIDTH),
        "text.proj.0.weight": rand((WIDTH + EMBED) // 2, WIDTH),
        "text.proj.2.weight": rand(EMBED, (WIDTH + EMBED) // 2),
    }
    for i in range(LAYERS):
        block = f"visual.trunk.blocks.{i}."
        for name, shape in {
            "norm1.weight": (WIDTH,),
            "norm1.bias": (WIDTH,),
            "attn.qkv.weight": (3 * WIDTH, WIDTH),
            "attn.qkv.bias": (3 * WIDTH,),
            "attn.proj.weight": (WIDTH, WIDTH),
            "attn.proj.bias": (WIDTH,),
            "norm2.weight": (WIDTH,),
            "norm2.bias": (WIDTH,),
            "mlp.fc1.weight": (4 * WIDTH, WIDTH),
            "mlp.fc1.bias": (4 * WIDTH,),
            "mlp.fc2.weight": (WIDTH, 4 * WIDTH),
            "mlp.fc2.bias": (WIDTH,),
        }.items():
            sd[block + name] = rand(*shape) + (1 if name.startswith("norm") and name.endswith("weight") else 0)
        layer = f"text.transformer.encoder.layer.{i}."
        for name in ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense"):
            sd[layer + name + ".weight"], sd[layer + name + ".bias"] = rand(WIDTH, WIDTH), rand(WIDTH)
        sd[layer + "intermediate.dense.weight"], sd[layer + "intermediate.dense.bias"] = (
            rand(4 * WIDTH, WIDTH),
            rand(4 * WIDTH),
        )
        sd[layer + "output.dense.weight"], sd[layer + "output.dense.bias"] = rand(WIDTH, 4 * WIDTH), rand(WIDTH)
        for norm in ("attention.output.LayerNorm", "output.LayerNorm"):
            sd[layer + norm + ".weight"], sd[layer + norm + ".bias"] = 1 + rand(WIDTH), rand(WIDTH)
    return sd


def timm_vit_image_features(sd: dict, pixels: torch.Tensor) -> torch.Tensor:
    """What open_clip computes for the image: timm ViT (pre-norm blocks, eps 1e-6), CLS token, linear head."""
    p = "visual.trunk."
    x = F.conv2d(pixels, sd[p + "patch_embed.proj.weight"], sd[p + "patch_embed.proj.bias"], stride=PATCH)
    x = x.flatten(2).transpose(1, 2)
    x = torch.cat([sd[p + "cls_token"].expand(x.shape[0], -1, -1), x], dim=1) + sd[p + "pos_embed"]
    heads = WIDTH // 64
    for i in range(LAYERS):
        b = f"{p}blocks.{i}."
        h = F.layer_norm(x, (WIDTH,), sd[b + "norm1.weight"], sd[b + "norm1.bias"], eps=1e-6)
        q, k, v = F.linear(h, sd[b + "attn.qkv.weight"], sd[b + "attn.qkv.bias"]).chunk(3, dim=-1)
        split = lambda t: t.view(t.shape[0], t.shape[1], heads, -1).transpose(1, 2)  # noqa: E731
        attn = torch.softmax(split(q) @ split(k).transpose(-1, -2) / math.sqrt(WIDTH // heads), dim=-1)
        out = (attn @ split(v)).transpose(1, 2).reshape(x.shape)
        x = x + F.linear(out, sd[b + "attn.proj.weight"], sd[b + "attn.proj.bias"])
        h = F.layer_norm(x, (WIDTH,), sd[b + "norm2.weight"], sd[b + "norm2.bias"], eps=1e-6)
        x = x + F.linear(
            F.gelu(F.linear(h, sd[b + "mlp.fc1.weight"], sd[b + "mlp.fc1.bias"])),
            sd[b + "mlp.fc2.weight"],
            sd[b + "mlp.fc2.bias"],
        )
    x = F.layer_norm(x, (WIDTH,), sd[p + "norm.weight"], sd[p + "norm.bias"], eps=1e-6)
    return F.linear(x[:, 0], sd["visual.head.proj.weight"])


def test_config_follows_the_checkpoint_shapes():
    config = biomedclip_backbone_config(open_clip_state_dict())
    assert (config.vision_config.hidden_size, config.vision_config.num_hidden_layers) == (WIDTH, LAYERS)
    assert (config.vision_config.image_size, config.vision_config.patch_size) == (IMAGE, PATCH)
    assert config.vision_config.layer_norm_eps == 1e-6
    assert (config.text_config.vocab_size, config.text_config.max_position_embeddings) == (VOCAB, POSITIONS)
    assert config.projection_dim == EMBED


def test_converted_weights_load_strictly_and_reproduce_open_clip_features(tmp_path):
    sd = open_clip_state_dict()
    torch.save(sd, tmp_path / "open_clip_pytorch_model.bin")
    (tmp_path / "open_clip_config.json").write_text(
        '{"model_cfg": {"embed_dim": 48, "text_cfg": {"context_length": 40}},'
        ' "preprocess_cfg": {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}}'
    )
    model, _ = selector_from_open_clip(tmp_path)  # load_state_dict(strict=True) inside
    model.eval()
    assert model.config.image_mean == [0.5, 0.5, 0.5] and model.config.text_max_length == 40

    converted = convert_open_clip_state_dict(sd)
    qkv = sd["visual.trunk.blocks.1.attn.qkv.weight"]
    assert torch.equal(
        converted[next(k for k in converted if ".1." in k and ("k_proj.weight" in k or "attention.key.weight" in k))],
        qkv[WIDTH : 2 * WIDTH],
    )
    assert not any(key.startswith("text_model.pooler") for key in converted)

    pixels = torch.randn(2, 3, IMAGE, IMAGE)
    with torch.no_grad():
        ours = model.image_features(pixels)
        text_ids = torch.randint(0, VOCAB, (2, 7))
        text = model.text_features(text_ids, torch.ones_like(text_ids))
    torch.testing.assert_close(ours, timm_vit_image_features(sd, pixels), atol=1e-4, rtol=1e-4)
    assert text.shape == (2, EMBED)


def test_unknown_keys_are_refused():
    sd = open_clip_state_dict()
    sd["visual.trunk.blocks.0.ls1.gamma"] = torch.zeros(WIDTH)
    with pytest.raises(ConversionError, match="ls1.gamma"):
        convert_open_clip_state_dict(sd)


def _without(sd: dict, prefix: str) -> dict:
    return {key: value for key, value in sd.items() if not key.startswith(prefix)}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda sd: _without(sd, "visual.head.proj.weight"), "missing open_clip key 'visual.head.proj.weight'"),
        (
            lambda sd: _without(sd, "visual.trunk.patch_embed.proj.weight"),
            "missing open_clip key 'visual.trunk.patch_embed.proj.weight'",
        ),
        (lambda sd: {f"module.{k}": v for k, v in sd.items()}, "strip the prefix"),
        (
            lambda sd: _without(sd, "visual.trunk.blocks.0.mlp.fc2.bias"),
            "missing open_clip key 'visual.trunk.blocks.0.mlp.fc2.bias'",
        ),
        (
            lambda sd: _without(sd, "text.transformer.encoder.layer.1.output.LayerNorm"),
            "missing open_clip key 'text.transformer.encoder.layer.1.output.LayerNorm.weight'",
        ),
        (lambda sd: _without(sd, "visual.trunk.blocks.0."), "missing open_clip key 'visual.trunk.blocks.0.norm1"),
    ],
)
def test_a_checkpoint_missing_open_clip_keys_names_them(change, message):
    """Not a bare KeyError nor a torch error naming transformers keys: the open_clip key and what was expected."""
    sd = change(open_clip_state_dict())
    for convert in (biomedclip_backbone_config, convert_open_clip_state_dict):
        with pytest.raises(ConversionError, match=re.escape(message)):
            convert(sd)


def test_a_checkpoint_missing_its_last_block_is_refused_against_the_config(tmp_path):
    """All of the last block's tensors gone: the layer count alone looks fine; the open_clip config says more."""
    sd = _without(open_clip_state_dict(), f"visual.trunk.blocks.{LAYERS - 1}.")
    torch.save(sd, tmp_path / "open_clip_pytorch_model.bin")
    config = {"model_cfg": {"vision_cfg": {"timm_model_name": "vit_base_patch16_224", "layers": LAYERS}}}
    (tmp_path / "open_clip_config.json").write_text(json.dumps(config))
    with pytest.raises(ConversionError, match=rf"visual\.trunk\.blocks\.{LAYERS - 1}\.\* and on are missing"):
        selector_from_open_clip(tmp_path)
    config["model_cfg"]["vision_cfg"].pop("layers")  # BiomedCLIP's own config names the timm model only
    (tmp_path / "open_clip_config.json").write_text(json.dumps(config))
    with pytest.raises(ConversionError, match="describes 12"):
        selector_from_open_clip(tmp_path)
