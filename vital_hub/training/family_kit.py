"""Pieces every offline family model is built from: tiny text shapes, the families' chat templates, Pillow image
processor classes, and an offline tokenizer with a family's special tokens (see `family_models`)."""

from __future__ import annotations

from importlib import resources

from vital_hub.training.synthetic import build_tokenizer

TEXT_TINY = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
             "num_key_value_heads": 2, "max_position_embeddings": 4096, "head_dim": 16}  # fmt: skip
QWEN_SPECIALS = ["<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
TINY_VISION = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2}
# The tile-position tokens of Idefics3 and SmolVLM (an image split into up to 6x6 tiles).
GRID_TOKENS = [f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)]


def chat_template(name: str) -> str:
    """A published chat template shipped with vital-hub (see chat_templates/README.md for where each is from)."""
    return resources.files("vital_hub.training").joinpath("chat_templates", f"{name}.jinja").read_text("utf-8")


def pil_class(model: str, name: str):
    """A family's Pillow-backed image processor class (transformers 5.2x), or its default class where the
    installed transformers has no Pillow variant (it then has torchvision, which the default class needs)."""
    import importlib

    try:
        module = importlib.import_module(f"transformers.models.{model}.image_processing_pil_{model}")
        return getattr(module, f"{name}Pil")
    except (ImportError, AttributeError):
        import transformers

        return getattr(transformers, name)


def tokenizer_with(specials: list[str], extra: dict[str, str] | None = None, bos: str = "<s>", eos: str = "</s>"):
    tokenizer = build_tokenizer(adds_bos=False, extra_special_tokens=[bos, eos, *specials], named_tokens=extra)
    tokenizer.bos_token, tokenizer.eos_token = bos, eos
    return tokenizer


def ids_of(tokenizer, **tokens: str) -> dict[str, int]:
    return {key: tokenizer.convert_tokens_to_ids(token) for key, token in tokens.items()}


def special_ids(tokenizer) -> dict[str, int]:
    return {"pad_token_id": tokenizer.pad_token_id, "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id}  # fmt: skip


def qwen_vision_ids(tokenizer) -> dict[str, int]:
    """The ids of the vision special tokens both Qwen-VL generations' configs take."""
    return ids_of(tokenizer, image_token_id="<|image_pad|>", video_token_id="<|video_pad|>",
                vision_start_token_id="<|vision_start|>", vision_end_token_id="<|vision_end|>")  # fmt: skip


def anyres_pinpoints(image_size: int) -> list[list[int]]:
    """LLaVA-NeXT / OneVision "anyres" grid: one or two tiles of `image_size` each way."""
    return [[image_size * i, image_size * j] for i in range(1, 3) for j in range(1, 3)]


def qwen_image_processor(patch: int, mean_std: float | None = None, min_pixels: int = 0, max_pixels: int = 0):
    """Qwen's Pillow image processor; by default a CPU-sized pixel budget (4 to 64 visual tokens)."""
    side = patch * 2
    extra = {"image_mean": [mean_std] * 3, "image_std": [mean_std] * 3} if mean_std else {}
    return pil_class("qwen2_vl", "Qwen2VLImageProcessor")(
        patch_size=patch, merge_size=2, temporal_patch_size=2,
        size={"shortest_edge": min_pixels or side * side * 4, "longest_edge": max_pixels or side * side * 64}, **extra,
    )  # fmt: skip
