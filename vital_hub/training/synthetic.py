"""Models, processors and data made offline, for tests, GPU smoke runs and throughput benchmarks.

Nothing here downloads: the tokenizer is a small byte-level BPE trained on a built-in word list, the processor
pairs it with a CLIP image processor and a chat template, and LLaVA configs come in three sizes (`tiny` for CPU
tests, `1b` for multi-GPU smoke runs, `7b` shaped like LLaVA-1.5-7B: CLIP ViT-L/14-336 + Llama-2-7B). Synthetic
rows follow the instruction row schema (`vital_hub.schema`) and the shape of the 80K mix: one figure, one to six
question/answer rounds, `<image>` before or after the first question.

    python -m vital_hub.training.synthetic model --size 1b --template llava-1.5 --out runs/llava-1b
    python -m vital_hub.training.synthetic data --rows 4000 --out runs/synthetic-80k-shape
"""

from __future__ import annotations

import argparse
import io
import json
import random
from pathlib import Path

from vital_hub.io import download_checksums
from vital_hub.schema import llava_to_row, row_features

WORDS = (
    "the a of and in with to is are shows image figure patient left right lesion mass tissue cells staining "
    "arrow arrows ct scan mri chest x-ray radiograph histology gross specimen biopsy tumor nodule opacity "
    "enhancement contrast axial sagittal coronal view section magnification hematoxylin eosin stain normal "
    "abnormal finding findings consistent suggestive diagnosis differential infiltrate effusion edema "
    "fracture calcification necrosis inflammation fibrosis carcinoma adenoma cyst vessel artery vein lung "
    "liver kidney brain heart bone spine pelvis abdomen thorax what where which how does can you describe "
    "explain key features visible this that these panel scale bar indicates demonstrates reveals measured "
    "size mm cm region area signal intensity hyperintense hypointense weighted sequence after before "
    "treatment follow-up months years old male female case report clinical presentation symptoms"
).split()
SPECIAL_TOKENS = ("<unk>", "<s>", "</s>", "<pad>", "<image>", "<|im_start|>", "<|im_end|>")

# The published chat templates of the recipe models (processor chat_template.json on the Hub), verbatim.
LLAVA_15_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}"
    "{% endif %}{# Render all images first #}{% for content in message['content'] | selectattr('type', 'equalto', "
    "'image') %}{{ '<image>\n' }}{% endfor %}{# Render all text next #}{% if message['role'] != 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] + ' '}}"
    "{% endfor %}{% else %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% generation %}{{ content['text'] + ' '}}{% endgeneration %}{% endfor %}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)
# The earlier llava-hf template (no generation markers), still in many copies of the model.
LLAVA_15_TEMPLATE_NO_MARKERS = (
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}"
    "{% endif %}{# Render all images first #}{% for content in message['content'] | selectattr('type', 'equalto', "
    "'image') %}{{ '<image>\n' }}{% endfor %}{# Render all text next #}{% for content in message['content'] | "
    "selectattr('type', 'equalto', 'text') %}{{ content['text'] + ' '}}{% endfor %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)
LLAVA_INTERLEAVE_QWEN_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n'}}{# Render all images first #}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>' }}{% endfor %}"
    "{# Render all text next #}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ '\n' + content['text'] }}{% endfor %}{{'<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
TEMPLATES = {
    "llava-1.5": LLAVA_15_TEMPLATE,
    "llava-1.5-no-markers": LLAVA_15_TEMPLATE_NO_MARKERS,
    "llava-interleave-qwen": LLAVA_INTERLEAVE_QWEN_TEMPLATE,
}


def get_template(name: str) -> str:
    if name not in TEMPLATES:
        raise KeyError(f"unknown chat template {name!r}; known: {sorted(TEMPLATES)}")
    return TEMPLATES[name]


def build_tokenizer(
    vocab_size: int = 2000,
    adds_bos: bool = True,
    extra_special_tokens: list[str] | None = None,
    named_tokens: dict[str, str] | None = None,
):
    """A fast byte-level BPE tokenizer with offsets; with `adds_bos` it prepends `<s>` like Llama's.

    `extra_special_tokens` are added as special tokens (a family's image and turn markers); `named_tokens` also
    exposes some of them as attributes (`tokenizer.image_token`, `tokenizer.boi_token`, ...), as processors of
    several families read them from the tokenizer.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    rng = random.Random(0)
    corpus = [" ".join(rng.choice(WORDS) for _ in range(30)) + " USER: ASSISTANT: user assistant" for _ in range(300)]
    tokenizer.train_from_iterator(corpus, trainer)
    if adds_bos:
        bos_id = tokenizer.token_to_id("<s>")
        tokenizer.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos_id)]
        )
    specials = [token for token in extra_special_tokens or [] if token not in SPECIAL_TOKENS]
    if specials:
        tokenizer.add_special_tokens(specials)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
        **({"extra_special_tokens": named_tokens} if named_tokens else {}),
    )  # fmt: skip


def build_processor(template: str = "llava-1.5", image_size: int = 32, patch_size: int = 8, adds_bos: bool = True):
    """A LLaVA processor (CLIP image processor + the offline tokenizer) with one of the recipe chat templates."""
    from transformers import CLIPImageProcessor, LlavaProcessor

    image_processor = CLIPImageProcessor(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=build_tokenizer(adds_bos=adds_bos),
        patch_size=patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=get_template(template),
    )


SIZES = {
    # vision: hidden, layers, heads, intermediate, image, patch; text: hidden, layers, heads, intermediate, vocab
    "tiny": ((32, 2, 2, 64, 32, 8), (64, 2, 4, 128, None)),
    "1b": ((768, 12, 12, 3072, 336, 14), (2048, 16, 16, 5504, 32064)),
    "7b": ((1024, 24, 16, 4096, 336, 14), (4096, 32, 32, 11008, 32064)),
}


def llava_config(size: str, processor):
    """A LlavaConfig of the given size whose image token and vocabulary match the processor's tokenizer."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    if size not in SIZES:
        raise KeyError(f"unknown model size {size!r}; known: {sorted(SIZES)}")
    (v_hidden, v_layers, v_heads, v_inter, image, patch), (hidden, layers, heads, inter, vocab) = SIZES[size]
    tokenizer = processor.tokenizer
    vision = CLIPVisionConfig(
        hidden_size=v_hidden,
        num_hidden_layers=v_layers,
        num_attention_heads=v_heads,
        intermediate_size=v_inter,
        image_size=image,
        patch_size=patch,
        projection_dim=v_hidden,
    )
    text = LlamaConfig(
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        intermediate_size=inter,
        vocab_size=vocab or len(tokenizer),
        max_position_embeddings=4096,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
    )


def write_model_folder(out: Path, size: str, template: str = "llava-1.5") -> Path:
    """config.json + processor files, no weights: `recipes/sft.py` builds it with `init_random_weights: true`."""
    processor = build_processor(template, image_size=SIZES[size][0][4], patch_size=SIZES[size][0][5])
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    llava_config(size, processor).save_pretrained(out)
    processor.save_pretrained(out)
    return out


def sentence(rng: random.Random, low: int, high: int) -> str:
    words = [rng.choice(WORDS) for _ in range(rng.randint(low, high))]
    return " ".join(words).capitalize() + "."


def synthetic_image(rng: random.Random, low: int = 256, high: int = 1024) -> bytes:
    """A smooth random JPEG of a PMC-figure-like size (smooth, so it stays small on disk)."""
    from PIL import Image

    width, height = rng.randint(low, high), rng.randint(low, high)
    seed_pixels = bytes(rng.randrange(256) for _ in range(8 * 8 * 3))
    picture = Image.frombytes("RGB", (8, 8), seed_pixels).resize((width, height), Image.BILINEAR)
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG", quality=80)
    return buffer.getvalue()


def synthetic_record(rng: random.Random, index: int, rounds: tuple[int, int] = (1, 6)) -> dict:
    """A LLaVA record shaped like the 80K mix: questions of 8-25 words, answers of 15-70 words."""
    turns = []
    for round_index in range(rng.randint(*rounds)):
        question = sentence(rng, 8, 25).rstrip(".") + "?"
        if round_index == 0:
            question = f"{question}\n<image>" if rng.random() < 0.5 else f"<image>\n{question}"
        turns += [{"from": "human", "value": question}, {"from": "gpt", "value": sentence(rng, 15, 70)}]
    return {"id": f"{30000000 + index}_F{index % 7 + 1}", "image": f"{30000000 + index}_F{index % 7 + 1}.jpg",
            "conversations": turns}  # fmt: skip


def synthetic_rows(n: int, seed: int = 0, image_sides: tuple[int, int] = (256, 1024), missing_every: int = 0):
    """Instruction rows (the Hub schema); with `missing_every` k, every k-th row has no image (null)."""
    rng = random.Random(seed)
    rows = []
    for index in range(n):
        missing = missing_every and index % missing_every == missing_every - 1
        image = None if missing else {"bytes": synthetic_image(rng, *image_sides), "path": None}
        rows.append(llava_to_row(synthetic_record(rng, index), source="synthetic", image=image))
    return rows


def write_instructions_repo(out: Path, configs: dict[str, list[dict]]) -> Path:
    """A dataset repo folder (README `configs:` + parquet shards) that `load_dataset(out, name)` reads.

    The per-shard checksums in `dataset_info` make the datasets cache key depend on the content
    (https://huggingface.co/docs/datasets/cache).
    """
    import yaml
    from datasets import Dataset

    out = Path(out)
    yaml_configs, infos = [], []
    for name, rows in configs.items():
        shard = out / "data" / name / "train-00000-of-00001.parquet"
        shard.parent.mkdir(parents=True, exist_ok=True)
        Dataset.from_list(rows, features=row_features()).to_parquet(str(shard))
        relative = shard.relative_to(out).as_posix()
        yaml_configs.append({"config_name": name, "data_files": [{"split": "train", "path": relative}]})
        infos.append({"config_name": name, "download_checksums": download_checksums(out, [shard])})
    header = yaml.safe_dump({"configs": yaml_configs, "dataset_info": infos}, sort_keys=False)
    (out / "README.md").write_text(f"---\n{header}---\n\n# Synthetic instructions\n", encoding="utf-8")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vital_hub.training.synthetic", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    model = sub.add_parser("model", help="write a LLaVA config + processor folder (no weights)")
    model.add_argument("--size", choices=sorted(SIZES), default="tiny")
    model.add_argument("--template", choices=sorted(TEMPLATES), default="llava-1.5")
    model.add_argument("--out", type=Path, required=True)
    data = sub.add_parser("data", help="write a synthetic instructions repo folder (config '80k')")
    data.add_argument("--rows", type=int, default=2000)
    data.add_argument("--seed", type=int, default=0)
    data.add_argument("--config", default="80k")
    data.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.what == "model":
        print(write_model_folder(args.out, args.size, args.template))
    else:
        path = write_instructions_repo(args.out, {args.config: synthetic_rows(args.rows, args.seed)})
        print(json.dumps({"out": str(path), "rows": args.rows, "config": args.config}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
