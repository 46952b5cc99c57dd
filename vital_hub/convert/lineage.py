"""What reached the original models besides the weights: each lineage's image handling and tower precision.

The converted folder records them under `llava_original` in its config.json; `vital eval answer` reads that entry
and prepares pictures and runs the tower as the original evaluation scripts did. A stock `AutoProcessor` pads with
the mean colour after converting to RGB, which is exact for LLaVA-1.5's RGB and grayscale pictures only.

- `llava-1.5` (haotian-liu/LLaVA `llava/eval/model_vqa.py` and `llava/mm_utils.py`; LLaVA-1.5, BioMed-VITAL):
  `Image.open(path).convert('RGB')` (alpha dropped, not composited), then `expand2square` with the CLIP mean
  colour `tuple(int(x * 255) for x in image_mean)` = (122, 116, 104), the picture centred (offset `(long - short) //
  2`). The builder leaves the CLIP tower in float32 (it is loaded from `mm_vision_tower` and only cast when a device
  map other than `auto` is given); pixels reach it rounded to the model's float16 and its features go back to
  float16 before the projector.
- `llava-med` (microsoft/LLaVA-Med v1.5, same files): `Image.open(path)` in the file's own mode; `expand2square`
  builds the square in that mode, filled with gray `int(255 * sum(image_mean) / 3)` = 114 for `L` pictures and the
  mean colour for the others (opaque for RGBA), and pastes the picture at a random offset drawn by
  `random.randint(d, d + 1)` with `d = (long - short) // 2` from Python's `random`, which `model_vqa.py` seeds with
  `set_seed(0)` once: one draw per non-square picture, in question order. CLIP's processor (transformers 4.36)
  then converts to RGB with a plain `convert('RGB')`. The builder casts the tower to float16.
"""

from __future__ import annotations

import random
from collections.abc import Iterable

from vital_hub.convert.formats import CLIP_MEAN

CONFIG_KEY = "llava_original"
LINEAGES = {
    "llama": {"lineage": "llava-1.5", "image_mode": "rgb", "gray_pad": False, "random_offset": False,
              "vision_dtype": "float32"},
    "mistral": {"lineage": "llava-med", "image_mode": "as-opened", "gray_pad": True, "random_offset": True,
                "vision_dtype": "model"},  # the language model's dtype
}  # fmt: skip


def lineage_settings(family: str, pad_to_square: bool) -> dict:
    return {**LINEAGES[family], "pad_to_square": pad_to_square}


def mean_colour() -> tuple[int, ...]:
    return tuple(int(x * 255) for x in CLIP_MEAN)


def gray_colour() -> int:
    return int(255 * sum(CLIP_MEAN) / len(CLIP_MEAN))


def draw_offsets(sizes: Iterable[tuple[int, int] | None], seed: int, settings: dict) -> list[int | None]:
    """The paste offset of each picture (None where there is no picture or nothing to pad), drawn in order from a
    generator seeded as the original seeded Python's `random`."""
    rng = random.Random(seed)
    offsets: list[int | None] = []
    for size in sizes:
        if size is None or size[0] == size[1] or not settings.get("pad_to_square"):
            offsets.append(None)
            continue
        base = abs(size[0] - size[1]) // 2
        offsets.append(rng.randint(base, base + 1) if settings.get("random_offset") else base)
    return offsets


def prepare_image(image, settings: dict, offset: int | None = None):
    """The picture as the lineage's original code handed it to CLIP's resize: RGB, squared where the model pads.
    `image` is the picture as opened (its own mode); `offset` the paste offset (centred when None)."""
    from PIL import Image

    if settings.get("image_mode") == "rgb":
        image = image.convert("RGB")
    width, height = image.size
    if settings.get("pad_to_square") and width != height:
        side = max(width, height)
        colour = gray_colour() if settings.get("gray_pad") and image.mode == "L" else mean_colour()
        offset = abs(width - height) // 2 if offset is None else offset
        try:
            square = Image.new(image.mode, (side, side), colour)
        except (TypeError, ValueError):  # a mode the colour does not fit (the original failed here): pad in RGB
            image, square = image.convert("RGB"), Image.new("RGB", (side, side), mean_colour())
        square.paste(image, (0, offset) if width > height else (offset, 0))
        image = square
    return image.convert("RGB")


def lineage_of(model) -> dict | None:
    """The `llava_original` entry of a converted model's config, or None for any other model."""
    settings = getattr(model.config, CONFIG_KEY, None)
    return settings if isinstance(settings, dict) and settings.get("lineage") in ("llava-1.5", "llava-med") else None


def tower_state(folder, dtype) -> dict:
    """The tower's tensors as stored in a local converted folder (transformers loads every tensor at one dtype)."""
    import json
    from pathlib import Path

    from safetensors import safe_open

    folder = Path(folder)
    index = folder / "model.safetensors.index.json"
    files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.is_file() else []
    files = files or (["model.safetensors"] if (folder / "model.safetensors").is_file() else [])
    state = {}
    for name in files:
        with safe_open(str(folder / name), framework="pt") as handle:
            for key in handle.keys():
                if key.startswith("model.vision_tower."):
                    state[key.removeprefix("model.vision_tower.")] = handle.get_tensor(key).to(dtype)
    return state


def run_tower_as_original(model, folder, settings: dict) -> str | None:
    """Run the tower at the precision the original did when the model runs lower: the stored weights, pixels
    rounded to the model's dtype on the way in (the original passed `images.half()`), features back in the model's
    dtype before the projector. Returns a warning when the stored weights cannot be read (a Hub id), else None."""
    import torch

    vision = getattr(torch, settings.get("vision_dtype", "float16"))
    tower, projector = model.model.vision_tower, model.model.multi_modal_projector
    low = model.dtype
    if tower.dtype == vision or vision.itemsize <= low.itemsize:
        return None
    state = tower_state(folder, vision) if folder is not None else {}
    tower.to(vision)
    warning = None
    if state:
        tower.load_state_dict(state, strict=True)
    else:
        warning = f"the {settings['vision_dtype']} tower weights are read from a local folder only: running the tower"
        warning += f" in {settings['vision_dtype']} from {str(low).removeprefix('torch.')} weights"

    def pixels_in(module, args, kwargs):
        if args:
            return (args[0].to(low).to(vision), *args[1:]), kwargs
        kwargs["pixel_values"] = kwargs["pixel_values"].to(low).to(vision)
        return args, kwargs

    tower.register_forward_pre_hook(pixels_in, with_kwargs=True)
    projector.register_forward_pre_hook(lambda module, args: (args[0].to(low), *args[1:]))
    return warning
