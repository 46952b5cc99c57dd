"""Offline tiny models of the families added in 2025-2026 (same recipe as `family_models`: a config, the offline
tokenizer with the family's special tokens, the Pillow image processor transformers ships, the family's chat
template as published, or vital-hub's corrected one where the published one cannot be trained on turn by turn;
`chat_templates/README.md` says which)."""

from __future__ import annotations

from vital_hub.training.family_kit import (
    QWEN_SPECIALS,
    TEXT_TINY,
    TINY_VISION,
    anyres_pinpoints,
    chat_template,
    ids_of,
    pil_class,
    qwen_image_processor,
    qwen_vision_ids,
    special_ids,
    tokenizer_with,
)
from vital_hub.training.processors import image_only


def qwen2_vl(size: str):
    from transformers import Qwen2VLConfig, Qwen2VLProcessor

    tokenizer = tokenizer_with(QWEN_SPECIALS, eos="<|im_end|>")
    text = {**TEXT_TINY, "vocab_size": len(tokenizer), **special_ids(tokenizer),
            "rope_parameters": {"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 1000000.0}}  # fmt: skip
    text.pop("head_dim")
    vision = {"depth": 2, "embed_dim": 32, "hidden_size": 64, "mlp_ratio": 2, "num_heads": 2, "patch_size": 14,
              "spatial_merge_size": 2, "temporal_patch_size": 2}  # fmt: skip
    config = Qwen2VLConfig(text_config=text, vision_config=vision, **qwen_vision_ids(tokenizer))
    processor = image_only(Qwen2VLProcessor)(
        image_processor=qwen_image_processor(14), tokenizer=tokenizer, chat_template=chat_template("qwen2_5_vl")
    )
    return processor, config


def qwen3_vl_moe(size: str):
    from transformers import Qwen3VLMoeConfig, Qwen3VLProcessor

    tokenizer = tokenizer_with(QWEN_SPECIALS, eos="<|im_end|>")
    text = {**TEXT_TINY, "vocab_size": len(tokenizer), **special_ids(tokenizer), "moe_intermediate_size": 32,
            "num_experts": 4, "num_experts_per_tok": 2, "decoder_sparse_step": 1,
            "rope_parameters": {"rope_type": "default", "mrope_section": [2, 3, 3], "mrope_interleaved": True,
                                "rope_theta": 5000000.0}}  # fmt: skip
    vision = {"depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "out_hidden_size": 64,
              "patch_size": 16, "spatial_merge_size": 2, "temporal_patch_size": 2, "num_position_embeddings": 64,
              "deepstack_visual_indexes": [0]}  # fmt: skip
    config = Qwen3VLMoeConfig(text_config=text, vision_config=vision, **qwen_vision_ids(tokenizer))
    processor = image_only(Qwen3VLProcessor)(
        image_processor=qwen_image_processor(16, 0.5), tokenizer=tokenizer, chat_template=chat_template("qwen3_vl")
    )
    return processor, config


def llava_next(size: str):
    from transformers import LlavaNextConfig, LlavaNextProcessor

    tokenizer = tokenizer_with(["<image>", "[INST]", "[/INST]"])
    image_size, patch = 32, 8
    text = {**TEXT_TINY, "vocab_size": len(tokenizer), **special_ids(tokenizer), "model_type": "mistral"}
    vision = {**TINY_VISION, "model_type": "clip_vision_model", "image_size": image_size, "patch_size": patch,
              "projection_dim": 32}  # fmt: skip
    pinpoints = anyres_pinpoints(image_size)
    config = LlavaNextConfig(
        text_config=text, vision_config=vision, image_grid_pinpoints=pinpoints, vision_feature_layer=-1,
        vision_feature_select_strategy="default", image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
    )  # fmt: skip
    image_processor = pil_class("llava_next", "LlavaNextImageProcessor")(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size},
        image_grid_pinpoints=pinpoints, do_pad=True,
    )  # fmt: skip
    processor = LlavaNextProcessor(
        image_processor=image_processor, tokenizer=tokenizer, patch_size=patch, vision_feature_select_strategy="default", num_additional_image_tokens=1,
        chat_template=chat_template("llava_next"),
    )  # fmt: skip
    return processor, config


def mllama(size: str):
    from transformers import MllamaConfig, MllamaProcessor

    specials = ["<|image|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<|finetune_right_pad_id|>"]
    tokenizer = tokenizer_with(specials, bos="<|begin_of_text|>", eos="<|eot_id|>")
    tokenizer.pad_token = "<|finetune_right_pad_id|>"
    tile, patch, tiles = 28, 14, 4
    text = {**TEXT_TINY, "vocab_size": len(tokenizer), **special_ids(tokenizer), "cross_attention_layers": [1]}
    text.pop("head_dim")
    vision = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_global_layers": 1,
              "attention_heads": 2, "intermediate_layers_indices": [0], "vision_output_dim": 64,
              "image_size": tile, "patch_size": patch, "max_num_tiles": tiles}  # fmt: skip
    config = MllamaConfig(
        text_config=text, vision_config=vision, image_token_index=tokenizer.convert_tokens_to_ids("<|image|>")
    )
    image_processor = pil_class("mllama", "MllamaImageProcessor")(
        size={"height": tile, "width": tile}, max_image_tiles=tiles
    )
    processor = MllamaProcessor(
        image_processor=image_processor, tokenizer=tokenizer, chat_template=chat_template("mllama")
    )
    return processor, config


def qwen3_5(size: str, moe: bool = False):
    """Qwen3.5 (with `moe`, Qwen3.5-MoE: the same model with mixture-of-experts feed-forward layers)."""
    from transformers import Qwen3_5Config, Qwen3_5MoeConfig, Qwen3VLProcessor

    tokenizer = tokenizer_with(QWEN_SPECIALS, eos="<|im_end|>")
    text = {**TEXT_TINY, "vocab_size": len(tokenizer), **special_ids(tokenizer), "linear_conv_kernel_dim": 2,
            "linear_key_head_dim": 16, "linear_value_head_dim": 16, "linear_num_key_heads": 2,
            "linear_num_value_heads": 4, "layer_types": ["linear_attention", "full_attention"],
            "rope_parameters": {"rope_type": "default", "mrope_section": [2, 1, 1], "mrope_interleaved": True,
                                "rope_theta": 10000000.0, "partial_rotary_factor": 0.5}}  # fmt: skip
    vision = {"depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "out_hidden_size": 64,
              "patch_size": 16, "spatial_merge_size": 2, "temporal_patch_size": 2, "num_position_embeddings": 64}  # fmt: skip
    if moe:
        text.update(moe_intermediate_size=32, shared_expert_intermediate_size=32, num_experts=4, num_experts_per_tok=2)
    config = (Qwen3_5MoeConfig if moe else Qwen3_5Config)(
        text_config=text, vision_config=vision, **qwen_vision_ids(tokenizer)
    )
    processor = image_only(Qwen3VLProcessor)(
        image_processor=qwen_image_processor(16, 0.5), tokenizer=tokenizer, chat_template=chat_template("qwen3_5")
    )
    return processor, config


def gemma4(size: str):
    from transformers import Gemma4Config, Gemma4Processor
    from transformers.models.gemma4.feature_extraction_gemma4 import Gemma4AudioFeatureExtractor

    named = {"image_token": "<|image|>", "boi_token": "<|image>", "eoi_token": "<image|>",
             "audio_token": "<|audio|>", "boa_token": "<|audio>", "eoa_token": "<audio|>"}  # fmt: skip
    specials = ["<|turn>", "<turn|>", "<|channel>", "<channel|>", *named.values()]
    tokenizer = tokenizer_with(specials, named, bos="<bos>", eos="<eos>")
    text = {**TEXT_TINY, "vocab_size": len(tokenizer), **special_ids(tokenizer), "sliding_window": 64,
            "layer_types": ["sliding_attention", "full_attention"], "vocab_size_per_layer_input": len(tokenizer),
            "hidden_size_per_layer_input": 8}  # fmt: skip
    vision = {**TINY_VISION, "num_key_value_heads": 2, "head_dim": 16, "patch_size": 16, "pooling_kernel_size": 3,
              "position_embedding_size": 256}  # fmt: skip
    config = Gemma4Config(
        text_config=text, vision_config=vision, audio_config=None,
        **ids_of(tokenizer, image_token_id=named["image_token"], boi_token_id=named["boi_token"],
                 eoi_token_id=named["eoi_token"]),
    )  # fmt: skip
    image_processor = pil_class("gemma4", "Gemma4ImageProcessor")(
        patch_size=16, max_soft_tokens=70, pooling_kernel_size=3
    )
    processor = image_only(Gemma4Processor)(
        feature_extractor=Gemma4AudioFeatureExtractor(), image_processor=image_processor, tokenizer=tokenizer,
        image_seq_length=70, chat_template=chat_template("gemma4"),
    )  # fmt: skip
    return processor, config


GLM_SPECIALS = ["[gMASK]", "<sop>", "<|system|>", "<|user|>", "<|assistant|>", "<|begin_of_image|>", "<|image|>",
                "<|end_of_image|>", "<|begin_of_video|>", "<|video|>", "<|end_of_video|>"]  # fmt: skip


def glm4v(size: str):
    from transformers import Glm4vConfig, Glm4vProcessor

    tokenizer = tokenizer_with(GLM_SPECIALS, bos="<|begin_of_text|>", eos="<|endoftext|>")
    text = {**TEXT_TINY, "vocab_size": len(tokenizer), "pad_token_id": tokenizer.pad_token_id,
            "rope_parameters": {"rope_type": "default", "mrope_section": [2, 1, 1], "rope_theta": 10000.0,
                                "partial_rotary_factor": 0.5}}  # fmt: skip
    text.pop("head_dim")
    vision = {"depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "out_hidden_size": 64,
              "image_size": 56, "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2}  # fmt: skip
    config = Glm4vConfig(
        text_config=text, vision_config=vision,
        **ids_of(tokenizer, image_token_id="<|image|>", video_token_id="<|video|>",
                 image_start_token_id="<|begin_of_image|>", image_end_token_id="<|end_of_image|>",
                 video_start_token_id="<|begin_of_video|>", video_end_token_id="<|end_of_video|>"),
    )  # fmt: skip
    image_processor = pil_class("glm4v", "Glm4vImageProcessor")(
        patch_size=14, merge_size=2, temporal_patch_size=2,
        size={"shortest_edge": 28 * 28 * 4, "longest_edge": 28 * 28 * 64},
    )  # fmt: skip
    processor = image_only(Glm4vProcessor)(
        image_processor=image_processor, tokenizer=tokenizer, chat_template=chat_template("glm4v")
    )
    return processor, config


def idefics2(size: str):
    from transformers import Idefics2Config, Idefics2Processor

    specials = ["<image>", "<fake_token_around_image>", "<end_of_utterance>"]
    tokenizer = tokenizer_with(specials, eos="<end_of_utterance>")
    latents = 4
    text = {**TEXT_TINY, "vocab_size": len(tokenizer), **special_ids(tokenizer), "model_type": "mistral"}
    vision = {**TINY_VISION, "image_size": 64, "patch_size": 8}
    perceiver = {"hidden_size": 64, "resampler_n_latents": latents, "resampler_depth": 1, "resampler_n_heads": 2,
                 "resampler_head_dim": 16, "num_key_value_heads": 1}  # fmt: skip
    config = Idefics2Config(
        text_config=text, vision_config=vision, perceiver_config=perceiver,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
    )  # fmt: skip
    image_processor = pil_class("idefics2", "Idefics2ImageProcessor")(
        size={"shortest_edge": 32, "longest_edge": 64}, do_image_splitting=False
    )
    processor = Idefics2Processor(
        image_processor=image_processor, tokenizer=tokenizer, image_seq_len=latents,
        chat_template=chat_template("idefics2"),
    )  # fmt: skip
    return processor, config


def paligemma2(size: str):
    from transformers import PaliGemmaConfig, PaliGemmaProcessor

    tokenizer = tokenizer_with(["<image>"], bos="<bos>", eos="<eos>")
    image_size, patch = 32, 8
    image_processor = pil_class("siglip", "SiglipImageProcessor")(size={"height": image_size, "width": image_size})
    image_processor.image_seq_length = (image_size // patch) ** 2
    # As published: no chat template (the recipe path applies chat_templates/paligemma.jinja). The processor adds
    # PaliGemma's <loc>/<seg> tokens to the tokenizer.
    processor = PaliGemmaProcessor(image_processor=image_processor, tokenizer=tokenizer)
    text = {**TEXT_TINY, "vocab_size": len(tokenizer), **special_ids(tokenizer), "model_type": "gemma2",
            "sliding_window": 64}  # fmt: skip
    vision = {**TINY_VISION, "model_type": "siglip_vision_model", "image_size": image_size, "patch_size": patch}
    config = PaliGemmaConfig(
        text_config=text, vision_config=vision, projection_dim=64,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
    )  # fmt: skip
    return processor, config


def mistral3(size: str):
    """Mistral 3 (Pixtral vision encoder). transformers' PixtralProcessor requires torchvision (ImportError without)."""
    from transformers import Mistral3Config
    from transformers.models.pixtral.processing_pixtral import PixtralProcessor

    tokenizer = tokenizer_with(["[INST]", "[/INST]", "[IMG]", "[IMG_BREAK]", "[IMG_END]", "[SYSTEM_PROMPT]",
                                "[/SYSTEM_PROMPT]"])  # fmt: skip
    patch, merge = 8, 2
    text = {**TEXT_TINY, "vocab_size": len(tokenizer), **special_ids(tokenizer), "model_type": "mistral"}
    vision = {**TINY_VISION, "head_dim": 16, "image_size": 64, "patch_size": patch, "model_type": "pixtral"}
    config = Mistral3Config(
        text_config=text, vision_config=vision, spatial_merge_size=merge,
        image_token_index=tokenizer.convert_tokens_to_ids("[IMG]"),
    )  # fmt: skip
    image_processor = pil_class("pixtral", "PixtralImageProcessor")(size={"longest_edge": 64}, patch_size=patch)
    processor = PixtralProcessor(
        image_processor=image_processor, tokenizer=tokenizer, patch_size=patch, spatial_merge_size=merge,
        chat_template=chat_template("mistral3"),
    )  # fmt: skip
    return processor, config


BUILDERS = {
    "qwen2-vl": qwen2_vl,
    "qwen3-vl-moe": qwen3_vl_moe,
    "llava-next": llava_next,
    "mllama": mllama,
    "gemma4": gemma4,
    "qwen3.5": qwen3_5,
    "glm4v": glm4v,
    "idefics2": idefics2,
    "paligemma2": paligemma2,
    "mistral3": mistral3,
}
