"""Small random checkpoints in the original LLaVA repository's format (haotian-liu/LLaVA, microsoft/LLaVA-Med).

Key names and config fields are the real ones: `model.embed_tokens.weight`, `model.layers.N...`, `lm_head.weight`,
`model.mm_projector.0/2.*`, `model.vision_tower.vision_tower.vision_model...` (when the checkpoint carries its
tower), the `rotary_emb.inv_freq` buffers old checkpoints hold; `architectures: [LlavaLlamaForCausalLM]` or
`[LlavaMistralForCausalLM]`, `mm_vision_tower`, `mm_projector_type`, `mm_vision_select_layer`,
`mm_vision_select_feature`, `image_aspect_ratio`, `mm_use_im_start_end`. The tokenizer is byte-level with
`<s>`, `</s>`, `<unk>` and no `<image>` token (the original spliced images at id -200). A separate CLIP folder
plays `openai/clip-vit-large-patch14-336` for checkpoints without the tower.
"""

from __future__ import annotations

import json
from pathlib import Path

TINY_CLIP = {
    "image_size": 32, "patch_size": 8, "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 3,
    "num_attention_heads": 2, "projection_dim": 16, "hidden_act": "quick_gelu",
}  # fmt: skip
TINY_TEXT = {
    "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2, "num_attention_heads": 4,
    "num_key_value_heads": 2, "max_position_embeddings": 512, "rms_norm_eps": 1e-5,
}  # fmt: skip
ARCHITECTURES = {
    "llama": ("LlavaLlamaForCausalLM", "llava_llama"),
    "mistral": ("LlavaMistralForCausalLM", "llava_mistral"),
}


def tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    backend = Tokenizer(models.BPE(vocab={char: i for i, char in enumerate(alphabet)}, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    from tokenizers.processors import TemplateProcessing

    tok._tokenizer.post_processor = TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tok.bos_token_id)]
    )
    return tok


def numpy_filled(state: dict, seed: int) -> dict:
    """Every floating tensor refilled from numpy's PCG64 generator, in name order: the same values on every torch
    and transformers version (norm weights near 1, the rest small), for recorded reference outputs."""
    import numpy as np
    import torch

    rng = np.random.default_rng(seed)
    filled = {}
    for key in sorted(state):
        tensor = state[key]
        if not tensor.is_floating_point() or key.endswith("inv_freq"):
            filled[key] = tensor
            continue
        values = rng.standard_normal(tuple(tensor.shape)).astype(np.float32)
        is_norm = "norm" in key and key.endswith("weight")
        values = 1.0 + 0.1 * values if is_norm else values * (0.02 if key.endswith("bias") else 0.2)
        filled[key] = torch.from_numpy(values).to(tensor.dtype)
    return {key: filled[key] for key in state}


def build_clip(folder: Path, seed: int = 1, weights: bool = True, numpy_seed: int | None = None) -> Path:
    """A tiny CLIP saved the way `openai/clip-vit-large-patch14-336` is: a CLIPConfig with `vision_config`, and
    `vision_model.*` weights beside text-model ones that conversion must leave out."""
    import torch
    from safetensors.torch import save_file
    from transformers import CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(seed)
    vision = CLIPVisionConfig(**TINY_CLIP)
    folder.mkdir(parents=True, exist_ok=True)
    config = {"architectures": ["CLIPModel"], "model_type": "clip", "projection_dim": 16, "text_config": {},
              "vision_config": {key: value for key, value in vision.to_dict().items() if key in TINY_CLIP}}  # fmt: skip
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    if weights:
        state = {f"vision_model.{key}": value for key, value in CLIPVisionModel(vision).state_dict().items()}
        if numpy_seed is not None:
            state = numpy_filled(state, numpy_seed)
        state["text_model.embeddings.token_embedding.weight"] = torch.randn(10, 16)
        state["visual_projection.weight"] = torch.randn(16, 16)
        state["logit_scale"] = torch.tensor(2.6592)
        save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    return folder


def build_original(
    folder: Path,
    family: str = "llama",
    vision: bool = True,
    shards: int = 1,
    fmt: str = "bin",
    tower: str = "openai/clip-vit-large-patch14-336",
    seed: int = 0,
    numpy_seed: int | None = None,
    tokenizer_writer=None,
    dtype: str = "float32",
    **config_overrides,
) -> Path:
    """Write a checkpoint folder in the original format; `vision=False` leaves the tower out, as LLaVA-1.5 does.
    `numpy_seed` fills the weights with version-independent values; `tokenizer_writer(folder)` writes another
    tokenizer (returning its vocabulary size and the ids of `<s>` and `</s>`) instead of the byte-level one."""
    import torch
    from transformers import (
        CLIPVisionConfig,
        CLIPVisionModel,
        LlamaConfig,
        LlamaForCausalLM,
        MistralConfig,
        MistralForCausalLM,
    )

    tok = tokenizer()
    special = {"bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id, "vocab_size": len(tok)}
    if tokenizer_writer is not None:
        folder.mkdir(parents=True, exist_ok=True)
        vocab_size, bos, eos = tokenizer_writer(folder)
        special = {"bos_token_id": bos, "eos_token_id": eos, "vocab_size": vocab_size}
    config_cls, model_cls = {"llama": (LlamaConfig, LlamaForCausalLM), "mistral": (MistralConfig, MistralForCausalLM)}[
        family
    ]
    torch.manual_seed(seed)
    text = config_cls(**TINY_TEXT, **special)
    language = model_cls(text)
    state = {key: value.clone() for key, value in language.state_dict().items()}
    for layer in range(text.num_hidden_layers):  # the buffer transformers 4.31 saved with every layer
        state[f"model.layers.{layer}.self_attn.rotary_emb.inv_freq"] = 1.0 / (
            10000 ** (torch.arange(0, 8, 2).float() / 8)
        )
    state["model.mm_projector.0.weight"] = torch.randn(text.hidden_size, TINY_CLIP["hidden_size"]) * 0.2
    state["model.mm_projector.0.bias"] = torch.randn(text.hidden_size) * 0.1
    state["model.mm_projector.2.weight"] = torch.randn(text.hidden_size, text.hidden_size) * 0.2
    state["model.mm_projector.2.bias"] = torch.randn(text.hidden_size) * 0.1
    if vision:
        torch.manual_seed(seed + 1)
        clip = CLIPVisionModel(CLIPVisionConfig(**TINY_CLIP))
        for key, value in clip.state_dict().items():
            state[f"model.vision_tower.vision_tower.vision_model.{key}"] = value.clone()
        state["model.vision_tower.vision_tower.vision_model.embeddings.position_ids"] = torch.arange(17)[None]
    if numpy_seed is not None:
        state = numpy_filled(state, numpy_seed)
    state = {
        key: value.to(getattr(torch, dtype)) if value.is_floating_point() else value for key, value in state.items()
    }

    architecture, model_type = ARCHITECTURES[family]
    raw = {
        **{key: value for key, value in text.to_dict().items() if key in TINY_TEXT or key in special},
        "architectures": [architecture], "model_type": model_type, "hidden_act": "silu", "torch_dtype": dtype,
        "rope_theta": text.rope_parameters["rope_theta"], "tie_word_embeddings": False, "use_cache": True,
        "mm_vision_tower": tower, "mm_hidden_size": TINY_CLIP["hidden_size"], "mm_projector_type": "mlp2x_gelu",
        "mm_vision_select_layer": -2, "mm_vision_select_feature": "patch", "image_aspect_ratio": "pad",
        "mm_use_im_start_end": False, "mm_use_im_patch_token": False, "mm_patch_merge_type": "flat",
        "tune_mm_mlp_adapter": False, "freeze_mm_mlp_adapter": False, "tokenizer_padding_side": "right",
        **({"sliding_window": None} if family == "mistral" else {}),
    }  # fmt: skip
    raw.update(config_overrides)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(raw, indent=2))
    if tokenizer_writer is None:
        tok.save_pretrained(folder)
    write_state(folder, state, shards, fmt)
    return folder


def write_state(folder: Path, state: dict, shards: int, fmt: str) -> None:
    import torch
    from safetensors.torch import save_file

    keys = list(state)
    stem, ext = ("pytorch_model", "bin") if fmt == "bin" else ("model", "safetensors")
    if shards == 1:
        names = [f"{stem}.{ext}"]
    else:
        names = [f"{stem}-{i:05d}-of-{shards:05d}.{ext}" for i in range(1, shards + 1)]
    size = -(-len(keys) // shards)
    weight_map = {}
    for index, name in enumerate(names):
        part = {key: state[key].contiguous() for key in keys[index * size : (index + 1) * size]}
        if fmt == "bin":
            torch.save(part, folder / name)
        else:
            save_file(part, folder / name, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, name))
    if shards > 1:
        index = {"metadata": {"total_size": 0}, "weight_map": weight_map}
        (folder / f"{stem}.{ext}.index.json").write_text(json.dumps(index, indent=2))


def write_sentencepiece_tokenizer(folder: Path) -> None:
    """Replace the folder's tokenizer with a SentencePiece `tokenizer.model` and a LlamaTokenizer config, as
    LLaVA-1.5 checkpoints ship it (normaliser as LLaMA's: dummy prefix, whitespace kept, byte fallback)."""
    import sentencepiece as spm

    corpus = folder / "corpus.txt"
    lines = ["A chat between a curious human and an artificial intelligence assistant.", "USER: ASSISTANT:",
             "What abnormality is seen in this CT scan of the chest? The image shows a lesion."]  # fmt: skip
    corpus.write_text("\n".join(lines * 20))
    spm.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(folder / "tokenizer"), vocab_size=300, model_type="bpe",
        byte_fallback=True, bos_id=1, eos_id=2, unk_id=0, pad_id=-1, remove_extra_whitespaces=False,
        add_dummy_prefix=True, normalization_rule_name="identity", minloglevel=2,
    )  # fmt: skip
    corpus.unlink()
    (folder / "tokenizer.vocab").unlink()
    (folder / "tokenizer.json").unlink()
    config = {"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
              "pad_token": "<unk>", "add_bos_token": True, "add_eos_token": False, "legacy": False,
              "model_max_length": 4096, "padding_side": "right"}  # fmt: skip
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
