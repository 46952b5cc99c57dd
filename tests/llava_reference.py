"""A reference for what the original LLaVA code fed its models, written from that code's documented behaviour, and
the recorded outputs that pin it.

Sources (public): haotian-liu/LLaVA (`llava/conversation.py`, `llava/mm_utils.py`, `llava/model/llava_arch.py`,
`llava/model/multimodal_encoder/clip_encoder.py`, `llava/eval/model_vqa.py`) for LLaVA-1.5, run with transformers
4.37; microsoft/LLaVA-Med (same files) for LLaVA-Med v1.5, run with transformers 4.36; transformers 4.37's slow
`LlamaTokenizer` and 4.36/4.37's `CLIPImageProcessor`. Nothing here imports vital_hub.

- Prompts: `conv_llava_v1` (SeparatorStyle.TWO: system, " ", `USER: q ASSISTANT: a</s>` ...) and
  `conv_mistral_instruct` (LLAMA_2 style: `[INST] q [/INST] a </s>` ...), the image first in the first question.
- Ids: `tokenizer_image_token`: the prompt cut at `<image>`, each piece tokenised on its own, the image at -200 and
  the beginning-of-sequence token kept on the first piece only. LLaVA-1.5 tokenised with the slow SentencePiece
  tokenizer (`use_fast=False`, `legacy` from the checkpoint), LLaVA-Med with the fast one of `tokenizer.json`.
- Pixels: `expand2square` per lineage (see `square`), then CLIP's resize (shortest edge, PIL bicubic), centre crop,
  `x * (1/255)` in float64 cast to float32, `(x - mean) / std` in float32.
- Forward: CLIP hidden state `mm_vision_select_layer` without CLS, Linear-GELU-Linear, spliced at -200; the tower
  always the one `mm_vision_tower` names (the checkpoint's copy is never loaded).

`python -m tests.llava_reference` rewrites the recorded outputs (tests/data/convert_llava/reference.npz) from tiny
checkpoints that the project's fakes build from fixed numpy seeds.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

DATA = Path(__file__).resolve().parent / "data" / "convert_llava"
SPIECE = "\u2581"
IMAGE_INDEX = -200
LLAVA_V1_SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
LINEAGE_FAMILY = {"llava-1.5": "llama", "llava-med": "mistral"}
WEIGHT_SEED, CLIP_SEED = 7, 11


# ------------------------------------------------------------------ prompts


def original_prompt(lineage: str, turns: list[str]) -> str:
    """conv.get_prompt() for questions/answers alternating (the last question open), the image in the first."""
    messages = [("<image>\n" + text if i == 0 else text) for i, text in enumerate(turns)]
    if lineage == "llava-1.5":
        seps, out = (" ", "</s>"), LLAVA_V1_SYSTEM + " "
        for i, message in enumerate(messages):
            out += ("USER" if i % 2 == 0 else "ASSISTANT") + ": " + message + seps[i % 2]
        return out + "ASSISTANT:"
    out = ""
    for i, message in enumerate(messages):
        out += f"[INST] {message} [/INST]" if i % 2 == 0 else " " + message + " </s>"
    return out


# ------------------------------------------------------------------ ids


class SlowLlamaTokenizer:
    """transformers 4.37 `LlamaTokenizer` (slow): `legacy=False` disables SentencePiece's dummy prefix, puts one `▁`
    in front of the text (dropped again before a special token) and keeps a leading `▁`/space of a piece by
    encoding `<unk>` + piece and removing the `<unk>` pieces; special tokens split the text first."""

    def __init__(self, model_file: Path, legacy: bool, specials=("<unk>", "<s>", "</s>")):
        import sentencepiece as spm
        from sentencepiece import sentencepiece_model_pb2

        proto = sentencepiece_model_pb2.ModelProto()
        proto.ParseFromString(Path(model_file).read_bytes())
        if not legacy:
            proto.normalizer_spec.add_dummy_prefix = False
        self.sp = spm.SentencePieceProcessor()
        self.sp.LoadFromSerializedProto(proto.SerializeToString())
        self.legacy, self.specials = legacy, sorted(specials, key=len, reverse=True)
        self.unk_length = len(self.sp.encode("<unk>", out_type=str))

    def _split(self, text: str) -> list[str | tuple[str]]:
        parts, start, i = [], 0, 0
        while i < len(text):
            special = next((s for s in self.specials if text.startswith(s, i)), None)
            if special is None:
                i += 1
                continue
            if i > start:
                parts.append(text[start:i])
            parts.append((special,))
            i = start = i + len(special)
        if start < len(text):
            parts.append(text[start:])
        return parts

    def _tokenize(self, text: str) -> list[str]:
        if self.legacy or not text.startswith((SPIECE, " ")):
            return self.sp.encode(text, out_type=str)
        tokens = self.sp.encode("<unk>" + text, out_type=str)
        return tokens[self.unk_length :] if len(tokens) >= self.unk_length else tokens

    def tokenize(self, text: str) -> list[str]:
        if not self.legacy and text:
            text = SPIECE + text.replace(SPIECE, " ")
        tokens = []
        for part in self._split(text):
            tokens += [part[0]] if isinstance(part, tuple) else self._tokenize(part)
        if not self.legacy and len(tokens) > 1 and tokens[0] == SPIECE and tokens[1] in self.specials:
            tokens = tokens[1:]
        return tokens

    def __call__(self, text: str) -> list[int]:
        return [self.sp.piece_to_id("<s>")] + [self.sp.piece_to_id(token) for token in self.tokenize(text)]


class FastTokenizer:
    """The fast tokenizer of a `tokenizer.json`, as transformers 4.36's `LlamaTokenizerFast` ran it: the file's
    pipeline as it is, the beginning-of-sequence token added by the class (`add_bos_token`, default true)."""

    def __init__(self, path: Path, bos_id: int):
        from tokenizers import Tokenizer

        self.tokenizer, self.bos_id = Tokenizer.from_file(str(path)), bos_id

    def __call__(self, text: str) -> list[int]:
        return [self.bos_id] + self.tokenizer.encode(text, add_special_tokens=False).ids


def image_token_ids(prompt: str, tokenize) -> list[int]:
    """`tokenizer_image_token`: BOS from the first piece only, -200 between pieces."""
    chunks = [tokenize(chunk) for chunk in prompt.split("<image>")]
    ids = [chunks[0][0]]
    for i, chunk in enumerate(chunks):
        if i:
            ids.append(IMAGE_INDEX)
        ids += chunk[1:]
    return ids


# ------------------------------------------------------------------ pixels


def square(image, lineage: str, offset: int | None):
    """`expand2square` as each lineage called it. LLaVA-1.5: on the RGB picture, mean colour, centred. LLaVA-Med:
    in the picture's own mode, gray `int(255 * sum(mean) / 3)` for `L`, the mean colour otherwise, pasted at
    `offset` (its `random.randint(d, d + 1)`)."""
    from PIL import Image

    if lineage == "llava-1.5":
        image = image.convert("RGB")
    width, height = image.size
    if width == height:
        return image
    if lineage == "llava-med" and image.mode == "L":
        colour = int(255 * sum(CLIP_MEAN) / len(CLIP_MEAN))
    else:
        colour = tuple(int(x * 255) for x in CLIP_MEAN)
    side = max(width, height)
    offset = (side - min(width, height)) // 2 if offset is None else offset
    result = Image.new(image.mode, (side, side), colour)
    result.paste(image, (0, offset) if width > height else (offset, 0))
    return result


def clip_pixels(image, size: int) -> np.ndarray:
    """CLIPImageProcessor.preprocess (4.36/4.37) of one picture: plain convert('RGB'), shortest edge to `size`
    (PIL bicubic), centre crop, rescale in float64 then float32, normalise in float32; channels first."""
    from PIL import Image

    image = image.convert("RGB")
    width, height = image.size
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = size, int(size * long / short)
    new_width, new_height = (new_short, new_long) if width <= height else (new_long, new_short)
    image = image.resize((new_width, new_height), resample=Image.BICUBIC)
    array = np.asarray(image)
    top, left = (array.shape[0] - size) // 2, (array.shape[1] - size) // 2
    array = array[top : top + size, left : left + size]
    array = (array * (1 / 255)).astype(np.float32)
    array = (array - np.array(CLIP_MEAN, dtype=np.float32)) / np.array(CLIP_STD, dtype=np.float32)
    return array.transpose(2, 0, 1).copy()


def offsets(lineage: str, sizes: list[tuple[int, int]], seed: int = 0) -> list[int | None]:
    """LLaVA-Med's paste offsets: `set_seed(0)` then one `random.randint(d, d + 1)` per non-square picture."""
    if lineage != "llava-med":
        return [None] * len(sizes)
    rng, out = random.Random(seed), []
    for width, height in sizes:
        base = abs(width - height) // 2
        out.append(None if width == height else rng.randint(base, base + 1))
    return out


# ------------------------------------------------------------------ forward


def read_state(folder: Path) -> dict:
    from safetensors.torch import load_file

    state = {}
    for path in sorted(Path(folder).iterdir()):
        if path.suffix == ".bin":
            state.update(torch.load(path, weights_only=True))
        elif path.suffix == ".safetensors":
            state.update(load_file(path))
    return state


class OriginalForward:
    """The original model's forward in float32 from the original checkpoint's tensors and the CLIP folder that
    `mm_vision_tower` names (a tower stored in the checkpoint is ignored, as the original's delayed tower load did)."""

    def __init__(self, folder: Path, clip_folder: Path):
        from transformers import (
            CLIPVisionConfig,
            CLIPVisionModel,
            LlamaConfig,
            LlamaForCausalLM,
            MistralConfig,
            MistralForCausalLM,
        )

        from tests.fakes.original_llava import TINY_CLIP, TINY_TEXT

        self.raw = json.loads((Path(folder) / "config.json").read_text())
        mistral = "Mistral" in self.raw["architectures"][0]
        config_cls, model_cls = (MistralConfig, MistralForCausalLM) if mistral else (LlamaConfig, LlamaForCausalLM)
        state = {key: value.float() for key, value in read_state(folder).items()}
        text = config_cls(**TINY_TEXT, vocab_size=self.raw["vocab_size"], rope_theta=self.raw["rope_theta"])
        self.lm = model_cls(text).eval()
        self.lm.load_state_dict(
            {
                k: v
                for k, v in state.items()
                if not k.startswith(("model.mm_", "model.vision_tower")) and "rotary" not in k
            }
        )
        self.tower = CLIPVisionModel(CLIPVisionConfig(**TINY_CLIP)).eval()
        clip_state = read_state(clip_folder)
        self.tower.load_state_dict(
            {
                k.removeprefix("vision_model."): v.float()
                for k, v in clip_state.items()
                if k.startswith("vision_model.") and "position_ids" not in k
            }  # fmt: skip
        )
        self.projector = [state[f"model.mm_projector.{i}.{p}"] for i in (0, 2) for p in ("weight", "bias")]
        self.eos = self.raw["eos_token_id"]

    def embeds(self, ids: list[int], pixels: np.ndarray) -> torch.Tensor:
        hidden = self.tower(torch.from_numpy(pixels)[None], output_hidden_states=True).hidden_states
        w0, b0, w2, b2 = self.projector
        features = F.linear(F.gelu(F.linear(hidden[self.raw["mm_vision_select_layer"]][:, 1:], w0, b0)), w2, b2)[0]
        at = ids.index(IMAGE_INDEX)
        embed = self.lm.get_input_embeddings()
        return torch.cat([embed(torch.tensor(ids[:at])), features, embed(torch.tensor(ids[at + 1 :]))])

    @torch.no_grad()
    def logits(self, ids: list[int], pixels: np.ndarray) -> torch.Tensor:
        return self.lm(inputs_embeds=self.embeds(ids, pixels)[None]).logits[0]

    @torch.no_grad()
    def greedy(self, ids: list[int], pixels: np.ndarray, steps: int) -> list[int]:
        embeds, new = self.embeds(ids, pixels), []
        for _ in range(steps):
            token = int(self.lm(inputs_embeds=embeds[None]).logits[0, -1].argmax())
            if token == self.eos:
                break
            new.append(token)
            embeds = torch.cat([embeds, self.lm.get_input_embeddings()(torch.tensor([token]))])
        return new


# ------------------------------------------------------------------ the pinned cases


def case_images() -> dict:
    """name -> (PIL picture, conversation turns): multi-turn, grayscale, RGBA, extreme aspect ratios."""
    from PIL import Image

    rng = np.random.default_rng(3)

    def pixels(height, width, channels):
        shape = (height, width) if channels == 1 else (height, width, channels)
        return rng.integers(0, 256, shape, dtype=np.uint8)

    return {
        "multi_turn": (Image.fromarray(pixels(24, 40, 3)), [
            "What is seen in this CT scan?", "A lesion in the chest.", "Where is it?", "In the left lung.",
            "Is it large?"]),
        "grayscale": (Image.fromarray(pixels(20, 50, 1), mode="L"), ["Describe the X-ray."]),
        "rgba": (Image.fromarray(pixels(44, 18, 4), mode="RGBA"), ["What stain is used?"]),
        "very_wide": (Image.fromarray(pixels(3, 120, 3)), ["What does the strip show?"]),
        "very_tall": (Image.fromarray(pixels(90, 2, 1), mode="L"), ["What is this?"]),
    }  # fmt: skip


def write_tokenizer(folder: Path, lineage: str) -> tuple[int, int, int]:
    """The pinned SentencePiece model as each lineage ships it: LLaVA-1.5 `tokenizer.model` with `legacy: false`;
    LLaVA-Med also a `tokenizer.json` (a fast pipeline with SentencePiece's dummy prefix on every piece)."""
    import sentencepiece as spm

    shutil.copyfile(DATA / "tokenizer.model", folder / "tokenizer.model")
    config = {"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
              "pad_token": None, "add_bos_token": True, "add_eos_token": False, "model_max_length": 2048,
              "legacy": lineage == "llava-med", "padding_side": "right"}  # fmt: skip
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    if lineage == "llava-med":
        shutil.copyfile(DATA / "mistral_tokenizer.json", folder / "tokenizer.json")
    sp = spm.SentencePieceProcessor(model_file=str(folder / "tokenizer.model"))
    return sp.get_piece_size(), sp.piece_to_id("<s>"), sp.piece_to_id("</s>")


def build_pinned(root: Path, lineage: str, fmt: str = "safetensors", shards: int = 2, dtype: str = "float32"):
    """(original checkpoint, CLIP folder): the checkpoint carries a tower copy different from the Hub tower."""
    from tests.fakes.original_llava import build_clip, build_original

    clip = build_clip(root / "clip", numpy_seed=CLIP_SEED)
    source = build_original(
        root / "original", LINEAGE_FAMILY[lineage], vision=True, shards=shards, fmt=fmt, tower=str(clip),
        numpy_seed=WEIGHT_SEED, tokenizer_writer=lambda folder: write_tokenizer(folder, lineage), dtype=dtype,
    )  # fmt: skip
    (source / "generation_config.json").write_text(
        json.dumps({"bos_token_id": 1, "eos_token_id": 2, "max_length": 4096, "temperature": 0.9, "top_p": 0.6})
    )
    return source, clip


def reference_outputs(source: Path, clip: Path, lineage: str) -> dict:
    """ids, pixels, last-position logits and a 4-token greedy answer for every case, in case order (the order
    LLaVA-Med's offsets are drawn in)."""
    from tests.fakes.original_llava import TINY_CLIP

    cases = case_images()
    tokenize = (
        SlowLlamaTokenizer(source / "tokenizer.model", legacy=False)
        if lineage == "llava-1.5"
        else FastTokenizer(source / "tokenizer.json", bos_id=1)
    )
    forward = OriginalForward(source, clip)
    drawn = offsets(lineage, [image.size for image, _ in cases.values()])
    out = {}
    for (name, (image, turns)), offset in zip(cases.items(), drawn, strict=True):
        ids = image_token_ids(original_prompt(lineage, turns), tokenize)
        pixels = clip_pixels(square(image, lineage, offset), TINY_CLIP["image_size"])
        logits = forward.logits(ids, pixels)
        out[f"{lineage}/{name}/ids"] = np.array(ids, dtype=np.int64)
        out[f"{lineage}/{name}/pixels"] = pixels
        out[f"{lineage}/{name}/logits"] = logits[-1].numpy().astype(np.float32)
        out[f"{lineage}/{name}/greedy"] = np.array(forward.greedy(ids, pixels, 4), dtype=np.int64)
    return out


def record() -> Path:
    """Write the pinned tokenizer (first run only) and the reference outputs of both lineages."""
    import tempfile

    DATA.mkdir(parents=True, exist_ok=True)
    if not (DATA / "tokenizer.model").is_file():
        make_tokenizer(DATA)
    if not (DATA / "mistral_tokenizer.json").is_file():
        make_fast_tokenizer(DATA)
    outputs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for lineage in LINEAGE_FAMILY:
            source, clip = build_pinned(Path(tmp) / lineage, lineage)
            outputs |= reference_outputs(source, clip, lineage)
    np.savez_compressed(DATA / "reference.npz", **outputs)
    return DATA / "reference.npz"


def make_tokenizer(folder: Path) -> None:
    """A small BPE SentencePiece model set as LLaMA's (byte fallback, dummy prefix, whitespace kept, identity
    normalisation)."""
    import sentencepiece as spm

    corpus = folder / "corpus.txt"
    lines = [
        LLAVA_V1_SYSTEM, "USER: ASSISTANT: [INST] [/INST]", "What is seen in this CT scan of the chest?",
        "The image shows a lesion in the left lung.", "Describe the X-ray. What stain is used? Where is it?",
        "The histology slide is stained with hematoxylin and eosin.", "Is it large? It is small and round.",
    ]  # fmt: skip
    corpus.write_text("\n".join(lines * 30))
    spm.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(folder / "tokenizer"), vocab_size=384, model_type="bpe",
        byte_fallback=True, bos_id=1, eos_id=2, unk_id=0, pad_id=-1, remove_extra_whitespaces=False,
        add_dummy_prefix=True, normalization_rule_name="identity", minloglevel=2,
    )  # fmt: skip
    corpus.unlink()
    (folder / "tokenizer.vocab").unlink()


def make_fast_tokenizer(folder: Path) -> None:
    """The fast `tokenizer.json` LLaVA-Med-style checkpoints ship beside `tokenizer.model`: SentencePiece's dummy
    prefix on every piece, spaces as `▁`, `<s>` in front."""
    import tempfile

    from tokenizers import normalizers, processors
    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        shutil.copyfile(folder / "tokenizer.model", Path(tmp) / "tokenizer.model")
        fast = AutoTokenizer.from_pretrained(tmp, legacy=True)
    backend = fast.backend_tokenizer
    backend.normalizer = normalizers.Sequence([normalizers.Prepend(SPIECE), normalizers.Replace(" ", SPIECE)])
    backend.pre_tokenizer = None
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", fast.convert_tokens_to_ids("<s>"))]
    )
    # in the layout the tokenizers of transformers 4.36 read (merges as "a b" strings), as the real file is
    data = json.loads(backend.to_str())
    data["model"]["merges"] = [" ".join(pair) if isinstance(pair, list) else pair for pair in data["model"]["merges"]]
    data["model"].pop("ignore_merges", None)
    (folder / "mistral_tokenizer.json").write_text(json.dumps(data, ensure_ascii=False, indent=2))


if __name__ == "__main__":
    print(record())
