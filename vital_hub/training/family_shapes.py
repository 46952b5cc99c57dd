"""The published shapes of the checkpoints vital-hub benchmarks with random weights (size "full" in
`family_models.build_family`): config values from each checkpoint's config.json, the image processor settings
that decide how many image tokens a figure becomes (the checkpoint's preprocessor_config.json, or the pixel
budget its recipe under recipes/ sets), and the parameter count the model page states, so that a built model
can be checked against it:

    python -m vital_hub.training.family_shapes      # parameters built on the meta device vs published

Nothing downloads: the values are written here, each family with its model page.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Published:
    """One checkpoint's published shape. `text`, `vision` and `top` are config keys (text_config, vision_config,
    the rest); `image` is what the family builder gives its image processor; `params` the stated count."""

    checkpoint: str
    params: float
    text: dict
    vision: dict
    top: dict = field(default_factory=dict)
    image: dict = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"https://huggingface.co/{self.checkpoint}"


PUBLISHED = {
    # https://huggingface.co/Qwen/Qwen2.5-VL-7B-Instruct (8.29B). Pixel budget of recipes/qwen2.5-vl-7b:
    # 64 to 640 visual tokens of 28x28 px (14 px patches, 2x2 merge).
    "qwen2.5-vl": Published(
        "Qwen/Qwen2.5-VL-7B-Instruct",
        8.29e9,
        text={
            "hidden_size": 3584,
            "intermediate_size": 18944,
            "num_hidden_layers": 28,
            "num_attention_heads": 28,
            "num_key_value_heads": 4,
            "max_position_embeddings": 128000,
            "vocab_size": 152064,
            "rope_parameters": {"rope_type": "default", "mrope_section": [16, 24, 24], "rope_theta": 1000000.0},
        },
        vision={
            "depth": 32,
            "hidden_size": 1280,
            "intermediate_size": 3420,
            "num_heads": 16,
            "out_hidden_size": 3584,
            "fullatt_block_indexes": [7, 15, 23, 31],
            "window_size": 112,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
        },
        top={"tie_word_embeddings": False},
        image={"patch_size": 14, "merge_size": 2, "min_pixels": 28 * 28 * 64, "max_pixels": 28 * 28 * 640},
    ),
    # https://huggingface.co/Qwen/Qwen3-VL-8B-Instruct (8.77B). Pixel budget of recipes/qwen3-vl-8b: 64 to 640
    # visual tokens of 32x32 px (16 px patches, 2x2 merge); mean and std 0.5 as its preprocessor_config.json.
    "qwen3-vl": Published(
        "Qwen/Qwen3-VL-8B-Instruct",
        8.77e9,
        text={
            "hidden_size": 4096,
            "intermediate_size": 12288,
            "num_hidden_layers": 36,
            "num_attention_heads": 32,
            "num_key_value_heads": 8,
            "head_dim": 128,
            "max_position_embeddings": 262144,
            "vocab_size": 151936,
            "rope_parameters": {
                "rope_type": "default",
                "mrope_section": [24, 20, 20],
                "mrope_interleaved": True,
                "rope_theta": 5000000.0,
            },
        },
        vision={
            "depth": 27,
            "hidden_size": 1152,
            "intermediate_size": 4304,
            "num_heads": 16,
            "out_hidden_size": 4096,
            "num_position_embeddings": 2304,
            "deepstack_visual_indexes": [8, 16, 24],
            "patch_size": 16,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
        },
        top={"tie_word_embeddings": False},
        image={"patch_size": 16, "merge_size": 2, "min_pixels": 65536, "max_pixels": 655360},
    ),
    # https://huggingface.co/google/gemma-3-4b-it (4.3B). Every figure resized to 896x896 and pooled to 256 image
    # tokens; pan-and-scan off (recipes/gemma-3-4b-it).
    "gemma3": Published(
        "google/gemma-3-4b-it",
        4.30e9,
        text={
            "hidden_size": 2560,
            "intermediate_size": 10240,
            "num_hidden_layers": 34,
            "num_attention_heads": 8,
            "num_key_value_heads": 4,
            "head_dim": 256,
            "query_pre_attn_scalar": 256,
            "sliding_window": 1024,
            "max_position_embeddings": 131072,
            "vocab_size": 262208,
            "rope_scaling": {"rope_type": "linear", "factor": 8.0},
        },
        vision={
            "hidden_size": 1152,
            "intermediate_size": 4304,
            "num_hidden_layers": 27,
            "num_attention_heads": 16,
            "image_size": 896,
            "patch_size": 14,
            "vision_use_head": False,
        },
        top={"mm_tokens_per_image": 256},
        image={"image_size": 896, "tokens": 256},
    ),
    # https://huggingface.co/OpenGVLab/InternVL3-8B-hf (7.94B): InternViT-300M-448px and Qwen2.5-7B. 448 px tiles
    # of 256 image tokens; at most 3 tiles plus the thumbnail (recipes/internvl3-8b; the checkpoint allows 12).
    "internvl": Published(
        "OpenGVLab/InternVL3-8B-hf",
        7.94e9,
        text={
            "model_type": "qwen2",
            "hidden_size": 3584,
            "intermediate_size": 18944,
            "num_hidden_layers": 28,
            "num_attention_heads": 28,
            "num_key_value_heads": 4,
            "max_position_embeddings": 32768,
            "vocab_size": 151674,
            "rope_theta": 1000000.0,
        },
        vision={
            "hidden_size": 1024,
            "intermediate_size": 4096,
            "num_hidden_layers": 24,
            "num_attention_heads": 16,
            "image_size": [448, 448],
            "patch_size": [14, 14],
            "attention_bias": True,
            "hidden_act": "gelu",
            "layer_scale_init_value": 0.1,
            "norm_type": "layer_norm",
            "use_qk_norm": False,
        },
        top={"downsample_ratio": 0.5, "projector_hidden_act": "gelu", "tie_word_embeddings": False},
        image={
            "image_size": 448,
            "tokens": 256,
            "max_patches": 3,
            "image_mean": [0.485, 0.456, 0.406],
            "image_std": [0.229, 0.224, 0.225],
        },
    ),
    # https://huggingface.co/HuggingFaceTB/SmolVLM2-2.2B-Instruct (2.25B): SigLIP so400m at 384 px and
    # SmolLM2-1.7B. 384 px tiles, pixel-shuffled by 3 into 81 image tokens each, figures resized to at most
    # 1536 px on the longer side (its preprocessor_config.json, as recipes/smolvlm2-2.2b sets).
    "smolvlm": Published(
        "HuggingFaceTB/SmolVLM2-2.2B-Instruct",
        2.25e9,
        text={
            "model_type": "llama",
            "hidden_size": 2048,
            "intermediate_size": 8192,
            "num_hidden_layers": 24,
            "num_attention_heads": 32,
            "num_key_value_heads": 32,
            "head_dim": 64,
            "max_position_embeddings": 8192,
            "vocab_size": 49280,
            "rope_theta": 130000.0,
            "rms_norm_eps": 1e-05,
        },
        vision={
            "hidden_size": 1152,
            "intermediate_size": 4304,
            "num_hidden_layers": 27,
            "num_attention_heads": 16,
            "image_size": 384,
            "patch_size": 14,
        },
        top={"scale_factor": 3, "tie_word_embeddings": False},
        image={"tile": 384, "longest_edge": 1536, "tokens": 81},
    ),
}


def published(family: str) -> Published:
    if family not in PUBLISHED:
        raise ValueError(f"no published shape for {family}; size 'full' is built for {sorted(PUBLISHED)}")
    return PUBLISHED[family]


def count_parameters(config) -> int:
    """Parameters of the model `config` describes, built on the meta device (no memory, no weights)."""
    import torch
    from transformers import AutoModelForImageTextToText

    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(config, dtype=torch.bfloat16)
    return sum(parameter.numel() for parameter in model.parameters())


def main(argv: list[str] | None = None) -> int:
    from vital_hub.training.family_models import build_family

    parser = argparse.ArgumentParser(
        prog="python -m vital_hub.training.family_shapes", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--family", nargs="*", choices=sorted(PUBLISHED), help="default: every family")
    args = parser.parse_args(argv)
    print(f"{'family':<12}{'checkpoint':<40}{'built':>10}{'published':>11}{'diff':>8}")
    for family in args.family or PUBLISHED:
        shape = PUBLISHED[family]
        built = count_parameters(build_family(family, "full")[1])
        print(f"{family:<12}{shape.checkpoint:<40}{built / 1e9:>9.3f}B{shape.params / 1e9:>10.2f}B"
              f"{100 * (built / shape.params - 1):>+7.2f}%")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
