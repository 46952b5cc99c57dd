"""Check the recorded reference (tests/data/convert_llava/reference.npz) against the original code itself: not run
by pytest (it needs the original repository and an old transformers), run by hand when the reference changes.

    pip install --target /tmp/t437 --no-deps transformers==4.37.2 tokenizers==0.15.2 huggingface_hub==0.20.3
    git clone https://github.com/haotian-liu/LLaVA /tmp/LLaVA
    python -m tests.original_check --lineage llava-1.5 --transformers /tmp/t437 --original /tmp/LLaVA
    # LLaVA-Med pins transformers 4.36.2: https://github.com/microsoft/LLaVA-Med
    python -m tests.original_check --lineage llava-med --transformers /tmp/t436 --original /tmp/LLaVA-Med

For each shard format it builds the pinned tiny checkpoint, then, in a process that imports the old transformers
and the repository's `llava` package: the conversation template (`conv_templates`), `tokenizer_image_token`
with the tokenizer the repository's builder loads, `process_images` (Python's `random` seeded 0, as `set_seed(0)`
did) with a CLIPImageProcessor, and the repository's model class with the tower loaded from `mm_vision_tower`;
it prints whether ids and pixels equal the recorded ones, the largest float32 logit difference and the greedy
tokens beside the recorded ones.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PREPROCESSOR = {"crop_size": 32, "do_center_crop": True, "do_normalize": True, "do_resize": True, "resample": 3,
                "image_mean": [0.48145466, 0.4578275, 0.40821073], "size": 32,
                "image_std": [0.26862954, 0.26130258, 0.27577711]}  # fmt: skip


def check(lineage: str, root: Path) -> None:
    """Runs under the old transformers, with the original repository's `llava` package importable."""
    import random

    import numpy as np
    import torch
    import transformers
    from llava.conversation import conv_templates
    from llava.mm_utils import process_images, tokenizer_image_token
    from transformers import AutoTokenizer

    from tests.llava_reference import DATA, case_images

    recorded = np.load(DATA / "reference.npz")
    if lineage == "llava-1.5":
        from llava.model.language_model.llava_llama import LlavaLlamaForCausalLM as Model

        tokenizer = AutoTokenizer.from_pretrained(root, use_fast=False)  # llava/model/builder.py
        conv_mode = "llava_v1"
    else:
        from llava.model.language_model.llava_mistral import LlavaMistralForCausalLM as Model

        tokenizer = AutoTokenizer.from_pretrained(root)
        conv_mode = "mistral_instruct"
    model = Model.from_pretrained(root, torch_dtype=torch.float32).eval()
    tower = model.get_vision_tower()
    if not tower.is_loaded:
        tower.load_model()
    processor = tower.image_processor
    print(f"transformers {transformers.__version__}, {type(tokenizer).__name__}, tower {tower.vision_tower_name}")
    random.seed(0)  # model_vqa.py: set_seed(0)
    for name, (image, turns) in case_images().items():
        conv = conv_templates[conv_mode].copy()
        for i, text in enumerate(turns):
            conv.append_message(conv.roles[i % 2], "<image>\n" + text if i == 0 else text)
        conv.append_message(conv.roles[1], None)
        ids = tokenizer_image_token(conv.get_prompt(), tokenizer, -200)
        picture = image.convert("RGB") if lineage == "llava-1.5" else image  # model_vqa.py of each repository
        pixels = process_images([picture], processor, model.config)[0][None]
        key = f"{lineage}/{name}"
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids]), images=pixels).logits[0, -1].numpy()
            greedy = model.generate(torch.tensor([ids]), images=pixels, do_sample=False, max_new_tokens=4)[0].tolist()
        vocab = recorded[f"{key}/logits"].shape[0]
        print(json.dumps({
            "case": name, "ids_equal": ids == recorded[f"{key}/ids"].tolist(),
            "max_pixel_diff": float(np.abs(pixels[0].numpy() - recorded[f"{key}/pixels"]).max()),
            "max_logit_diff": float(np.abs(logits[:vocab] - recorded[f"{key}/logits"]).max()),
            "greedy": greedy[-4:], "recorded_greedy": recorded[f"{key}/greedy"].tolist(),
        }))  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lineage", choices=("llava-1.5", "llava-med"), required=True)
    parser.add_argument("--transformers", required=True, help="folder holding the old transformers (pip --target)")
    parser.add_argument("--original", required=True, help="checkout of the original repository")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return check(args.lineage, Path(args.child))
    from tests.llava_reference import build_pinned

    with tempfile.TemporaryDirectory() as tmp:
        for fmt in ("bin", "safetensors"):
            source, clip = build_pinned(Path(tmp) / fmt, args.lineage, fmt=fmt)
            (clip / "preprocessor_config.json").write_text(json.dumps(PREPROCESSOR))  # as the Hub CLIP has one
            print(f"== {args.lineage}, {fmt} shards")
            env = {**os.environ, "PYTHONPATH": os.pathsep.join([args.transformers, args.original, str(REPO)])}
            command = [sys.executable, "-m", "tests.original_check", "--lineage", args.lineage, "--transformers",
                       args.transformers, "--original", args.original, "--child", str(source)]  # fmt: skip
            subprocess.run(command, env=env, cwd=REPO, check=True)


if __name__ == "__main__":
    main()
