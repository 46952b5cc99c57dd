"""Converted LLaVA-1.5 and LLaVA-Med checkpoints against the original code's input pipeline, token for token and
pixel for pixel: the reference in tests/llava_reference.py (written from the original code's documented
behaviour), pinned by the outputs it recorded in tests/data/convert_llava/reference.npz, for multi-turn prompts,
grayscale and RGBA pictures and extreme aspect ratios, both lineages and both shard formats."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from tests.conftest import REPO_ROOT
from tests.fakes.original_llava import TINY_CLIP
from tests.llava_reference import (
    DATA,
    IMAGE_INDEX,
    LINEAGE_FAMILY,
    SlowLlamaTokenizer,
    build_pinned,
    case_images,
    original_prompt,
    reference_outputs,
)
from vital_hub.cli import main as vital

pytest.importorskip("sentencepiece")
pytest.importorskip("google.protobuf")
CASES = list(case_images())
N_IMAGE = (TINY_CLIP["image_size"] // TINY_CLIP["patch_size"]) ** 2


@pytest.fixture(scope="module")
def recorded():
    return dict(np.load(DATA / "reference.npz"))


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """lineage, format -> (original, CLIP folder, converted folder); converted as a user runs the command."""
    cache = {}

    def get(lineage: str, fmt: str):
        if (lineage, fmt) not in cache:
            root = tmp_path_factory.mktemp(f"{lineage}-{fmt}")
            source, clip = build_pinned(root, lineage, fmt=fmt)
            out = root / "converted"
            assert vital(["convert", "llava-original", "--model", str(source), "--out", str(out)]) == 0
            cache[lineage, fmt] = source, clip, out
        return cache[lineage, fmt]

    return get


def messages_of(turns: list[str]) -> list[dict]:
    out = []
    for i, text in enumerate(turns):
        content = [{"type": "text", "text": text}]
        if i == 0:
            content.insert(0, {"type": "image"})
        out.append({"role": "user" if i % 2 == 0 else "assistant", "content": content})
    return out


@pytest.mark.parametrize("lineage", list(LINEAGE_FAMILY))
def test_the_reference_reproduces_its_recorded_outputs(lineage, recorded, tmp_path):
    source, clip = build_pinned(tmp_path, lineage)
    for key, value in reference_outputs(source, clip, lineage).items():
        if value.dtype == np.float32:
            np.testing.assert_allclose(value, recorded[key], atol=1e-5, rtol=0, err_msg=key)
        else:
            np.testing.assert_array_equal(value, recorded[key], err_msg=key)


@pytest.mark.parametrize("fmt", ["bin", "safetensors"])
@pytest.mark.parametrize("lineage", list(LINEAGE_FAMILY))
def test_converted_folder_gives_the_original_ids_pixels_logits_and_answers(lineage, fmt, recorded, converted):
    """Stock AutoProcessor/AutoModel on the converted folder, with the pictures prepared as `vital eval answer`
    prepares them for the lineage recorded in config.json."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from vital_hub.convert.lineage import draw_offsets, lineage_of, prepare_image

    _, _, out = converted(lineage, fmt)
    processor = AutoProcessor.from_pretrained(out)
    model = AutoModelForImageTextToText.from_pretrained(out, dtype=torch.float32).eval()
    settings = lineage_of(model)
    assert settings["lineage"] == lineage
    cases = case_images()
    offsets = draw_offsets([image.size for image, _ in cases.values()], 0, settings)
    image_id = model.config.image_token_id
    for (name, (image, turns)), offset in zip(cases.items(), offsets, strict=True):
        key = f"{lineage}/{name}"
        prompt = processor.apply_chat_template(messages_of(turns), add_generation_prompt=True, tokenize=False)
        assert prompt == original_prompt(lineage, turns)
        inputs = processor(text=prompt, images=prepare_image(image, settings, offset), return_tensors="pt")
        expected_ids = []
        for token in recorded[f"{key}/ids"].tolist():
            expected_ids += [image_id] * N_IMAGE if token == IMAGE_INDEX else [token]
        assert inputs["input_ids"][0].tolist() == expected_ids, key
        np.testing.assert_allclose(inputs["pixel_values"][0].numpy(), recorded[f"{key}/pixels"], atol=1e-6, rtol=0)
        with torch.no_grad():
            logits = model(**inputs).logits[0, -1]
            generated = model.generate(**inputs, max_new_tokens=4, do_sample=False)[0, inputs["input_ids"].shape[1] :]
        vocab = recorded[f"{key}/logits"].shape[0]
        np.testing.assert_allclose(logits[:vocab].numpy(), recorded[f"{key}/logits"], atol=1e-4, rtol=0, err_msg=key)
        assert generated.tolist()[: len(recorded[f"{key}/greedy"])] == recorded[f"{key}/greedy"].tolist(), key


@pytest.mark.slow
@pytest.mark.parametrize("lineage", list(LINEAGE_FAMILY))
def test_vital_eval_answer_answers_as_the_original_code(lineage, recorded, converted, tmp_path):
    """The command as a user runs it: pictures as files in their own modes (PNG keeps L and RGBA), questions in
    file order (LLaVA-Med's offsets are drawn in that order), batched."""
    import os

    from transformers import AutoTokenizer

    _, _, out = converted(lineage, "safetensors")
    images = tmp_path / "images"
    images.mkdir()
    rows = []
    for i, (name, (image, turns)) in enumerate(case_images().items()):
        image.save(images / f"{name}.png")
        rows.append({"question_id": i, "image": f"{name}.png", "pair_id": name, "text": f"{turns[0]}\n<image>",
                     "gpt4_answer": "ref", "type": "conversation", "domain": {"ct_scan": True}})  # fmt: skip
    questions = tmp_path / "questions.jsonl"
    questions.write_text("".join(json.dumps(row) + "\n" for row in rows))
    answers = tmp_path / "answers.jsonl"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    command = [sys.executable, "-m", "vital_hub.cli", "eval", "answer", "--model", str(out), "--questions",
               str(questions), "--image-folder", str(images), "--out", str(answers), "--max-new-tokens", "4",
               "--batch-size", "2", "--dtype", "float32"]  # fmt: skip
    done = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    got = {row["question_id"]: row["text"] for row in map(json.loads, answers.read_text().splitlines())}
    tokenizer = AutoTokenizer.from_pretrained(out)
    for i, name in enumerate(CASES):
        if name == "multi_turn":  # answered here from its first question only: not a recorded case
            continue
        expected = tokenizer.decode(recorded[f"{lineage}/{name}/greedy"].tolist(), skip_special_tokens=True).strip()
        assert got[i] == expected, name


PROMPTS = [
    original_prompt("llava-1.5", ["What is seen?", "A lesion  in the chest.", " Where is it?", "Left.", "Size?"]),
    original_prompt("llava-med", ["What is seen?", "A lesion.", "Where is it?"]),
    "USER: <image>\nCaf\u00e9 \u2581 tabs\there ASSISTANT: x</s>USER:\n\nnext</s></s>ASSISTANT:",
    "<image> leading space after the image</s> and after eos",
]


@pytest.mark.parametrize("legacy", [False, True, None])
def test_converted_tokenizer_gives_the_slow_tokenizers_ids(legacy, tmp_path):
    """The checkpoint's `legacy` setting carried (absent = True, as transformers 4.37 defaulted): before, a
    tokenizer.model alone was converted with legacy=True whatever the checkpoint said, which put `▁` after `</s>`."""
    from transformers import AutoTokenizer

    from vital_hub.convert.tokenizer import keep_pipeline, original_tokenizer

    source = tmp_path / "source"
    source.mkdir()
    (source / "tokenizer.model").write_bytes((DATA / "tokenizer.model").read_bytes())
    config = {"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
    if legacy is not None:
        config["legacy"] = legacy
    (source / "tokenizer_config.json").write_text(json.dumps(config))
    tokenizer, _ = original_tokenizer(source, "llama")
    tokenizer.save_pretrained(tmp_path / "saved")
    keep_pipeline(tmp_path / "saved")
    loaded = AutoTokenizer.from_pretrained(tmp_path / "saved")
    slow = SlowLlamaTokenizer(source / "tokenizer.model", legacy=legacy is not False)
    image_id = loaded.convert_tokens_to_ids("<image>")
    for prompt in PROMPTS:
        chunks = [slow(chunk) for chunk in prompt.split("<image>")]
        expected = chunks[0] + [i for chunk in chunks[1:] for i in [image_id] * 3 + chunk[1:]]
        assert loaded(prompt.replace("<image>", "<image>" * 3)).input_ids == expected, prompt


def test_tower_at_its_original_precision_and_the_generation_settings(tmp_path):
    """LLaVA-1.5 in float16: the tower named by mm_vision_tower stays float32 in the folder (the checkpoint's own
    copy is not used), `vital eval answer` runs it in float32; the source's generation settings are carried."""
    from safetensors import safe_open
    from transformers import AutoModelForImageTextToText

    from vital_hub.convert.lineage import lineage_of, run_tower_as_original

    source, clip = build_pinned(tmp_path, "llava-1.5", dtype="float16")
    out = tmp_path / "converted"
    assert vital(["convert", "llava-original", "--model", str(source), "--out", str(out)]) == 0
    stored = {}
    for path in out.glob("*.safetensors"):
        with safe_open(str(path), framework="pt") as handle:
            stored |= {key: handle.get_tensor(key) for key in handle.keys()}
    with safe_open(str(clip / "model.safetensors"), framework="pt") as handle:
        hub_tower = {key: handle.get_tensor(key) for key in handle.keys() if key.startswith("vision_model.")}
    towers = {key: value for key, value in stored.items() if key.startswith("model.vision_tower.")}
    assert towers and all(value.dtype == torch.float32 for value in towers.values())
    assert all(value.dtype == torch.float16 for key, value in stored.items() if key not in towers)
    for key, value in towers.items():  # the Hub tower's values, not the checkpoint's copy
        torch.testing.assert_close(value, hub_tower["vision_model." + key.removeprefix("model.vision_tower.")])

    generation = json.loads((out / "generation_config.json").read_text())
    assert (generation["max_length"], generation["temperature"], generation["top_p"]) == (4096, 0.9, 0.6)
    card = (out / "README.md").read_text()
    assert f"`{clip}`" in card and "stored in float32" in card and "legacy: false" in card

    model = AutoModelForImageTextToText.from_pretrained(out).eval()  # dtype auto: one dtype for all, float16
    assert model.dtype == torch.float16 and lineage_of(model)["vision_dtype"] == "float32"
    assert run_tower_as_original(model, str(out), lineage_of(model)) is None
    for key, value in model.model.vision_tower.state_dict().items():
        assert torch.equal(value, towers["model.vision_tower." + key]), key
    pixels = torch.randn(1, 3, TINY_CLIP["image_size"], TINY_CLIP["image_size"])
    ids = torch.tensor([[1, 5] + [model.config.image_token_id] * N_IMAGE + [7, 8]])
    with torch.no_grad():
        logits = model(input_ids=ids, pixel_values=pixels).logits
    assert logits.dtype == torch.float16 and torch.isfinite(logits).all()


def test_the_stored_tower_is_used_only_when_asked_and_the_card_says_so(tmp_path):
    from safetensors import safe_open

    source, clip = build_pinned(tmp_path, "llava-med")
    out = tmp_path / "converted"
    argv = ["convert", "llava-original", "--model", str(source), "--out", str(out), "--tower-from-checkpoint"]
    assert vital(argv) == 0
    card = (out / "README.md").read_text()
    assert "--tower-from-checkpoint" in card and "the original code ignored it" in card
    from tests.llava_reference import read_state

    original = read_state(source)
    with safe_open(str(next(out.glob("*.safetensors"))), framework="pt") as handle:
        key = next(k for k in handle.keys() if k.startswith("model.vision_tower.") and k.endswith("q_proj.weight"))
        stored = handle.get_tensor(key)
    name = "model.vision_tower.vision_tower.vision_model." + key.removeprefix("model.vision_tower.")
    torch.testing.assert_close(stored, original[name])


@pytest.mark.slow
@pytest.mark.parametrize("lineage", list(LINEAGE_FAMILY))
def test_real_qa50_figures_reach_the_model_as_in_the_original(lineage):
    """Every readable qa50 figure (six are grayscale) at the real tower size: the converted processor on the picture
    prepared for the lineage gives the reference's pixels, offsets drawn in question order."""
    from PIL import Image

    from tests.conftest import shared_fixture
    from tests.llava_reference import clip_pixels, offsets, square
    from vital_hub.convert.formats import image_processor
    from vital_hub.convert.lineage import draw_offsets, lineage_settings, prepare_image

    folder = shared_fixture("llava_med", "qa50_images")
    pictures = []
    for path in sorted(folder.iterdir()):
        try:
            with Image.open(path) as opened:
                opened.load()
                pictures.append(opened.copy())
        except OSError:  # empty and cut-off downloads
            continue
    assert sum(picture.mode == "L" for picture in pictures) >= 1
    settings = lineage_settings(LINEAGE_FAMILY[lineage], pad_to_square=True)
    sizes = [picture.size for picture in pictures]
    ours, theirs = draw_offsets(sizes, 0, settings), offsets(lineage, sizes)  # theirs: None = centred
    processor = image_processor(336, pad_to_square=True)
    for picture, offset, expected in zip(pictures, ours, theirs, strict=True):
        got = processor(prepare_image(picture, settings, offset), return_tensors="np")["pixel_values"][0]
        np.testing.assert_allclose(got, clip_pixels(square(picture, lineage, expected), 336), atol=1e-6, rtol=0)


def test_tower_options_fail_in_one_line_naming_the_problem(tmp_path, capsys):
    from tests.fakes.original_llava import build_clip, build_original

    no_tower = build_original(tmp_path / "no-tower", "llama", vision=False)
    argv = [
        "convert",
        "llava-original",
        "--model",
        str(no_tower),
        "--out",
        str(tmp_path / "a"),
        "--tower-from-checkpoint",
    ]
    assert vital(argv) == 1
    err = capsys.readouterr().err.strip()
    assert "--tower-from-checkpoint" in err and "no vision tower weights" in err and len(err.splitlines()) == 1
    config_only = build_clip(tmp_path / "clip-config", weights=False)
    stored = build_original(tmp_path / "stored", "mistral", vision=True, tower=str(config_only))
    assert vital(["convert", "llava-original", "--model", str(stored), "--out", str(tmp_path / "b")]) == 1
    err = capsys.readouterr().err.strip()
    assert "vision tower" in err and "--tower-from-checkpoint" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
