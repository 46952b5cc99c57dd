"""A small random LLaVA (CLIP vision tower + Llama text model) and its processor, built offline from configs.

The tokenizer is byte-level BPE with no merges (every UTF-8 byte is a token), so it needs no vocabulary file and
encodes any text; `<image>` is an added special token. Saved with `save_pretrained`, the folder loads with
`AutoProcessor` and `AutoModelForImageTextToText` like any Hub checkpoint. The default sizes generate in
milliseconds on CPU; benchmarks pass larger `vision`/`text` overrides (LLaVA-1.5-7B shapes, for instance).
"""

from __future__ import annotations

from pathlib import Path

CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'].upper() }}: {% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<image>\n{% else %}{{ c['text'] }}{% endif %}{% endfor %} {% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)
TINY_VISION = {
    "image_size": 32,
    "patch_size": 8,
    "hidden_size": 16,
    "intermediate_size": 32,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "projection_dim": 16,
}
TINY_TEXT = {
    "hidden_size": 16,
    "intermediate_size": 32,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "max_position_embeddings": 4096,
}


def _image_processor(image_size: int):
    try:  # transformers without torchvision names the Pillow processor explicitly
        from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil as Processor
    except ImportError:
        from transformers import CLIPImageProcessor as Processor
    return Processor(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size})


def tiny_llava_parts(
    vision: dict | None = None,
    text: dict | None = None,
    seed: int = 0,
    chat_template: bool = True,
    device: str = "cpu",
    dtype=None,
):
    """(processor, model) with random weights; `vision` and `text` override the tiny config values."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import (
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
        PreTrainedTokenizerFast,
    )

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    backend = Tokenizer(models.BPE(vocab={char: i for i, char in enumerate(alphabet)}, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    vision = {**TINY_VISION, **(vision or {})}
    text = {"vocab_size": len(tokenizer), **TINY_TEXT, **(text or {})}
    processor = LlavaProcessor(
        image_processor=_image_processor(vision["image_size"]),
        tokenizer=tokenizer,
        patch_size=vision["patch_size"],
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=CHAT_TEMPLATE if chat_template else None,
    )
    special = {
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(**vision),
        text_config=LlamaConfig(**text, **special),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-1,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    with torch.device(device):
        model = LlavaForConditionalGeneration(config)
    if dtype is not None:
        model = model.to(dtype)
    return processor, model.eval()


def build_tiny_llava(folder: str | Path, seed: int = 0, chat_template: bool = True) -> Path:
    """Save a tiny random LLaVA and its processor to `folder`, loadable with the Auto classes."""
    processor, model = tiny_llava_parts(seed=seed, chat_template=chat_template)
    folder = Path(folder)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder
