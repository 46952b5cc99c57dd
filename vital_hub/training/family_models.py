"""Offline model folders of every supported family: config + processor with the family's chat template as published
(none for PaliGemma 2, as published; the families added in 2025-2026 are built in `family_models_recent`).

Nothing downloads. The tokenizer is the offline byte-level BPE of `synthetic.build_tokenizer` with each family's
special tokens added under the names its processor looks for; image processors are the Pillow-backed classes
transformers ships (no torchvision), and processors are their image-only variants (`processors.image_only`), so
the same folders load on a CPU machine without torchvision. Sizes: `tiny` for CPU
tests (a few hundred thousand parameters), and `full` for GPU throughput runs with random weights: the published
shape of the family's benchmarked checkpoint (Qwen2.5-VL-7B-Instruct, Qwen3-VL-8B-Instruct, gemma-3-4b-it,
InternVL3-8B-hf, SmolVLM2-2.2B-Instruct) with the image processor settings that set its image tokens, as
`family_shapes` lists them (`7b` is Qwen2.5-VL's `full` under its earlier name).

    python -m vital_hub.training.family_models --family qwen2.5-vl --size tiny --out runs/qwen-tiny
    python -m vital_hub.training.family_models --family smolvlm --size full --out runs/smolvlm2-2.2b-shapes
"""

from __future__ import annotations

import argparse
from pathlib import Path

from vital_hub.training.family_kit import (
    GRID_TOKENS,
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
from vital_hub.training.family_models_recent import BUILDERS as RECENT
from vital_hub.training.family_shapes import PUBLISHED, published
from vital_hub.training.processors import image_only


def qwen2_5_vl(size: str):
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLProcessor

    tokenizer = tokenizer_with(QWEN_SPECIALS, eos="<|im_end|>")
    if size == "full":
        shape = published("qwen2.5-vl")
        text, vision, top, image = dict(shape.text), shape.vision, shape.top, shape.image
    else:
        text = {**TEXT_TINY, "vocab_size": len(tokenizer),
                "rope_parameters": {"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 1000000.0}}  # fmt: skip
        text.pop("head_dim")
        vision = {"depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "out_hidden_size": 64,
                  "fullatt_block_indexes": [1], "window_size": 56, "patch_size": 14, "spatial_merge_size": 2,
                  "temporal_patch_size": 2}  # fmt: skip
        top, image = {}, {"min_pixels": 28 * 28 * 4, "max_pixels": 28 * 28 * 64}
    config = Qwen2_5_VLConfig(
        text_config={**text, **special_ids(tokenizer)}, vision_config=vision, **top, **qwen_vision_ids(tokenizer)
    )
    image_processor = qwen_image_processor(14, min_pixels=image["min_pixels"], max_pixels=image["max_pixels"])
    processor = image_only(Qwen2_5_VLProcessor)(image_processor=image_processor, tokenizer=tokenizer,
                                    chat_template=chat_template("qwen2_5_vl"))  # fmt: skip
    return processor, config


def qwen3_vl(size: str):
    from transformers import Qwen3VLConfig, Qwen3VLProcessor

    tokenizer = tokenizer_with(QWEN_SPECIALS, eos="<|im_end|>")
    if size == "full":
        shape = published("qwen3-vl")
        text, vision, top, image = shape.text, shape.vision, shape.top, shape.image
    else:
        text = {**TEXT_TINY, "vocab_size": len(tokenizer),
                "rope_parameters": {"rope_type": "default", "mrope_section": [2, 3, 3], "mrope_interleaved": True,
                                    "rope_theta": 5000000.0}}  # fmt: skip
        vision = {"depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "out_hidden_size": 64,
                  "patch_size": 16, "spatial_merge_size": 2, "temporal_patch_size": 2, "num_position_embeddings": 64,
                  "deepstack_visual_indexes": [0]}  # fmt: skip
        top, image = {}, {"min_pixels": 32 * 32 * 4, "max_pixels": 32 * 32 * 64}
    config = Qwen3VLConfig(
        text_config={**text, **special_ids(tokenizer)}, vision_config=vision, **top, **qwen_vision_ids(tokenizer)
    )
    image_processor = qwen_image_processor(16, 0.5, min_pixels=image["min_pixels"], max_pixels=image["max_pixels"])
    processor = image_only(Qwen3VLProcessor)(image_processor=image_processor, tokenizer=tokenizer,
                                 chat_template=chat_template("qwen3_vl"))  # fmt: skip
    return processor, config


def gemma3(size: str):
    from transformers import Gemma3Config, Gemma3Processor

    Gemma3ImageProcessorPil = pil_class("gemma3", "Gemma3ImageProcessor")

    named = {"image_token": "<image_soft_token>", "boi_token": "<start_of_image>", "eoi_token": "<end_of_image>"}
    tokenizer = tokenizer_with(["<start_of_turn>", "<end_of_turn>", *named.values()], named, bos="<bos>", eos="<eos>")
    if size == "full":
        shape = published("gemma3")
        text, vision, top = shape.text, shape.vision, shape.top
        image_size, tokens = shape.image["image_size"], shape.image["tokens"]
    else:
        image_size, patch, tokens = 56, 14, 4  # 4x4 patches pooled to 2x2 image tokens
        text = {**TEXT_TINY, "vocab_size": len(tokenizer), "sliding_window": 64,
                "layer_types": ["sliding_attention", "full_attention"]}  # fmt: skip
        vision = {**TINY_VISION, "image_size": image_size, "patch_size": patch}
        top = {"mm_tokens_per_image": tokens}
    config = Gemma3Config(
        text_config={**text, **special_ids(tokenizer)}, vision_config=vision, **top,
        **ids_of(tokenizer, image_token_id=named["image_token"], boi_token_id=named["boi_token"],
               eoi_token_id=named["eoi_token"]),
    )  # fmt: skip
    image_processor = Gemma3ImageProcessorPil(size={"height": image_size, "width": image_size}, do_pan_and_scan=False)
    processor = Gemma3Processor(image_processor=image_processor, tokenizer=tokenizer, image_seq_length=tokens,
                                chat_template=chat_template("gemma3"))  # fmt: skip
    return processor, config


def smolvlm(size: str):
    from transformers import SmolVLMConfig, SmolVLMProcessor

    SmolVLMImageProcessorPil = pil_class("smolvlm", "SmolVLMImageProcessor")

    named = {"image_token": "<image>", "fake_image_token": "<fake_token_around_image>",
             "global_image_token": "<global-img>", "end_of_utterance_token": "<end_of_utterance>"}  # fmt: skip
    tokenizer = tokenizer_with(["<|im_start|>", *named.values(), *GRID_TOKENS], named, eos="<end_of_utterance>")
    if size == "full":
        shape = published("smolvlm")
        text, vision, top = shape.text, shape.vision, shape.top
        tile, longest, tokens = shape.image["tile"], shape.image["longest_edge"], shape.image["tokens"]
    else:
        tile, patch, scale = 32, 8, 2  # a 32 px tile is 4x4 patches, pixel-shuffled by 2 into 4 image tokens
        text = {**TEXT_TINY, "vocab_size": len(tokenizer)}
        vision = {**TINY_VISION, "image_size": tile, "patch_size": patch}
        top, longest, tokens = {"scale_factor": scale}, 2 * tile, (tile // patch) ** 2 // scale**2
    config = SmolVLMConfig(text_config={**text, **special_ids(tokenizer)}, vision_config=vision, **top,
                           image_token_id=tokenizer.convert_tokens_to_ids("<image>"))  # fmt: skip
    image_processor = SmolVLMImageProcessorPil(size={"longest_edge": longest}, max_image_size={"longest_edge": tile})
    processor = image_only(SmolVLMProcessor)(image_processor=image_processor, tokenizer=tokenizer,
                                 image_seq_len=tokens, chat_template=chat_template("smolvlm"))  # fmt: skip
    return processor, config


def idefics3(size: str):
    from transformers import Idefics3Config, Idefics3Processor

    Idefics3ImageProcessorPil = pil_class("idefics3", "Idefics3ImageProcessor")
    specials = ["<image>", "<fake_token_around_image>", "<global-img>", "<end_of_utterance>", *GRID_TOKENS]
    tokenizer = tokenizer_with(specials, bos="<|begin_of_text|>", eos="<end_of_utterance>")
    tile, patch, scale = 32, 8, 2
    text = {**TEXT_TINY, "vocab_size": len(tokenizer), **special_ids(tokenizer)}
    text.pop("head_dim")
    vision = {**TINY_VISION, "image_size": tile, "patch_size": patch}
    config = Idefics3Config(text_config=text, vision_config=vision, scale_factor=scale,
                            image_token_id=tokenizer.convert_tokens_to_ids("<image>"))  # fmt: skip
    image_processor = Idefics3ImageProcessorPil(size={"longest_edge": 2 * tile}, max_image_size={"longest_edge": tile})
    processor = Idefics3Processor(image_processor=image_processor, tokenizer=tokenizer,
                                  image_seq_len=(tile // patch) ** 2 // scale**2, chat_template=chat_template("idefics3"))  # fmt: skip
    return processor, config


def internvl(size: str):
    from transformers import InternVLConfig, InternVLProcessor

    GotOcr2ImageProcessorPil = pil_class("got_ocr2", "GotOcr2ImageProcessor")

    named = {"start_image_token": "<img>", "end_image_token": "</img>", "context_image_token": "<IMG_CONTEXT>",
             "video_token": "<video>"}  # fmt: skip
    tokenizer = tokenizer_with(["<|im_start|>", "<|im_end|>", *named.values()], named, eos="<|im_end|>")
    if size == "full":
        shape = published("internvl")
        text, vision, top, image = shape.text, shape.vision, shape.top, dict(shape.image)
        image_size, tokens, max_patches = image.pop("image_size"), image.pop("tokens"), image.pop("max_patches")
    else:
        image_size, patch, tokens, max_patches = 32, 8, 4, 4  # 4x4 patches, pixel-shuffled by 0.5 into 4 tokens
        text = {**TEXT_TINY, "vocab_size": len(tokenizer), "model_type": "qwen2"}
        text.pop("head_dim")
        vision = {**TINY_VISION, "image_size": [image_size, image_size], "patch_size": [patch, patch]}
        top, image = {"downsample_ratio": 0.5}, {}
    config = InternVLConfig(text_config={**text, **special_ids(tokenizer)}, vision_config=vision, **top,
                            image_token_id=tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>"))  # fmt: skip
    image_processor = GotOcr2ImageProcessorPil(size={"height": image_size, "width": image_size}, crop_to_patches=True,
                                               min_patches=1, max_patches=max_patches, **image)  # fmt: skip
    processor = image_only(InternVLProcessor)(image_processor=image_processor, tokenizer=tokenizer,
                                  image_seq_length=tokens, chat_template=chat_template("internvl"))  # fmt: skip
    return processor, config


def llava_onevision(size: str):
    from transformers import LlavaOnevisionConfig, LlavaOnevisionProcessor

    LlavaOnevisionImageProcessorPil = pil_class("llava_onevision", "LlavaOnevisionImageProcessor")

    tokenizer = tokenizer_with(["<|im_start|>", "<|im_end|>", "<image>", "<video>"], eos="<|im_end|>")
    image_size, patch = 32, 8
    text = {**TEXT_TINY, "vocab_size": len(tokenizer), **special_ids(tokenizer), "model_type": "qwen2"}
    text.pop("head_dim")
    vision = {**TINY_VISION, "model_type": "siglip_vision_model", "image_size": image_size, "patch_size": patch}
    pinpoints = anyres_pinpoints(image_size)
    config = LlavaOnevisionConfig(
        text_config=text, vision_config=vision, image_grid_pinpoints=pinpoints, vision_feature_layer=-1,
        vision_feature_select_strategy="full", vision_aspect_ratio="anyres_max_9",
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"), video_token_id=tokenizer.convert_tokens_to_ids("<video>"),
    )  # fmt: skip
    image_processor = LlavaOnevisionImageProcessorPil(
        size={"height": image_size, "width": image_size}, image_grid_pinpoints=pinpoints, image_mean=[0.5] * 3,
        image_std=[0.5] * 3, do_pad=True,
    )  # fmt: skip
    processor = image_only(LlavaOnevisionProcessor)(
        image_processor=image_processor, tokenizer=tokenizer,
        num_image_tokens=(image_size // patch) ** 2, vision_feature_select_strategy="full",
        chat_template=chat_template("llava_onevision"),
    )  # fmt: skip
    return processor, config


def llava_1_5(size: str):
    from vital_hub.training.synthetic import build_processor, llava_config

    processor = build_processor("llava-1.5")
    return processor, llava_config("tiny", processor)


BUILDERS = {
    **RECENT,
    "llava-1.5": llava_1_5,
    "qwen2.5-vl": qwen2_5_vl,
    "qwen3-vl": qwen3_vl,
    "gemma3": gemma3,
    "smolvlm": smolvlm,
    "idefics3": idefics3,
    "internvl": internvl,
    "llava-onevision": llava_onevision,
}


SIZES = ("tiny", "full", "7b")  # "7b": Qwen2.5-VL's full size under its earlier name


def build_family(family: str, size: str = "tiny"):
    """(processor, config) of a family at a size; see the module docstring."""
    if family not in BUILDERS:
        raise KeyError(f"unknown family {family!r}; known: {sorted(BUILDERS)}")
    if size == "7b" and family == "qwen2.5-vl":
        size = "full"
    if size not in ("tiny", "full") or (size == "full" and family not in PUBLISHED):
        raise ValueError(
            f"size {size!r} is not built for {family}: 'tiny' for every family, 'full' (the published shape) for "
            f"{', '.join(sorted(PUBLISHED))}, '7b' for qwen2.5-vl"
        )
    return BUILDERS[family](size)


def write_family_folder(out: Path, family: str, size: str = "tiny") -> Path:
    """config.json + processor files, no weights: `recipes/sft.py` builds it with `init_random_weights: true`."""
    processor, config = build_family(family, size)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m vital_hub.training.family_models", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--family", choices=sorted(BUILDERS), required=True)
    parser.add_argument("--size", choices=SIZES, default="tiny")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    print(write_family_folder(args.out, args.family, args.size))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
