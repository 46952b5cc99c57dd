"""`vital convert llava-original`: original-LLaVA checkpoints (LLaVA-1.5 / BioMed-VITAL lineage and LLaVA-Med v1.5
lineage) become transformers folders whose logits equal the original code path's.

The reference forward follows https://github.com/haotian-liu/LLaVA (`llava/model/llava_arch.py`,
`multimodal_encoder/clip_encoder.py`, `mm_utils.py`, `conversation.py`) with plain torch and stock Llama/Mistral
and CLIP modules, never `LlavaForConditionalGeneration`: pad the image to a square with the mean colour, CLIP
preprocessing, hidden state `mm_vision_select_layer` of the tower without its CLS token, Linear-GELU-Linear, and the
features spliced into the token embeddings where `<image>` stands in the conversation prompt.
"""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.conftest import REPO_ROOT
from tests.fakes.original_llava import TINY_CLIP, TINY_TEXT, build_clip, build_original, tokenizer
from vital_hub.cli import main as vital

LLAVA_V1_SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)
CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073], dtype=np.float32)
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711], dtype=np.float32)


def original_prompt(family: str, question: str) -> str:
    """conversation.py's get_prompt for one user turn with the image first (model_vqa.py) and an open answer."""
    if family == "llama":  # llava_v1: SeparatorStyle.TWO, sep " ", roles USER/ASSISTANT
        return f"{LLAVA_V1_SYSTEM} USER: <image>\n{question} ASSISTANT:"
    return f"[INST] <image>\n{question} [/INST]"  # mistral_instruct: LLAMA_2 style, empty system


def original_pixels(image, size: int) -> torch.Tensor:
    """mm_utils.expand2square with the mean colour, then CLIPImageProcessor (shortest edge, bicubic, centre crop)."""
    from PIL import Image

    width, height = image.size
    side = max(width, height)
    square = Image.new(image.mode, (side, side), tuple(int(x * 255) for x in CLIP_MEAN))
    square.paste(image, ((side - width) // 2, (side - height) // 2))
    square = square.resize((size, size), Image.BICUBIC)
    array = (np.asarray(square, dtype=np.float32) / 255.0 - CLIP_MEAN) / CLIP_STD
    return torch.from_numpy(array.transpose(2, 0, 1).copy())[None]


def read_state(folder) -> dict:
    from safetensors.torch import load_file

    state = {}
    for path in sorted(folder.iterdir()):
        if path.suffix == ".bin":
            state.update(torch.load(path, weights_only=True))
        elif path.suffix == ".safetensors":
            state.update(load_file(path))
    return state


class OriginalLlava:
    """The original model's forward, from the original checkpoint's tensors."""

    def __init__(self, folder, clip_folder=None):
        from transformers import (
            CLIPVisionConfig,
            CLIPVisionModel,
            LlamaConfig,
            LlamaForCausalLM,
            MistralConfig,
            MistralForCausalLM,
        )

        self.raw = json.loads((folder / "config.json").read_text())
        self.family = "mistral" if "Mistral" in self.raw["architectures"][0] else "llama"
        state = read_state(folder)
        config_cls, model_cls = (MistralConfig, MistralForCausalLM) if self.family == "mistral" else (
            LlamaConfig, LlamaForCausalLM)  # fmt: skip
        text = config_cls(**TINY_TEXT, vocab_size=self.raw["vocab_size"], rope_theta=self.raw["rope_theta"])
        self.lm = model_cls(text).eval()
        self.lm.load_state_dict(
            {
                k: v
                for k, v in state.items()
                if not k.startswith("model.mm_") and "vision_tower" not in k and "rotary_emb" not in k
            }  # fmt: skip
        )
        tower_state = {k.removeprefix("model.vision_tower.vision_tower."): v for k, v in state.items()
                       if k.startswith("model.vision_tower.")}  # fmt: skip
        if not tower_state:
            tower_state = read_state(clip_folder)
        self.tower = CLIPVisionModel(CLIPVisionConfig(**TINY_CLIP)).eval()
        self.tower.load_state_dict(
            {
                k.removeprefix("vision_model."): v
                for k, v in tower_state.items()
                if k.startswith("vision_model.") and "position_ids" not in k
            }  # fmt: skip
        )
        self.projector = [state[f"model.mm_projector.{i}.{p}"] for i in (0, 2) for p in ("weight", "bias")]
        self.tokenizer = tokenizer()

    def embeds(self, image, prompt: str) -> torch.Tensor:
        pixels = original_pixels(image, TINY_CLIP["image_size"])
        hidden = self.tower(pixels, output_hidden_states=True).hidden_states[self.raw["mm_vision_select_layer"]]
        w0, b0, w2, b2 = self.projector
        features = F.linear(F.gelu(F.linear(hidden[:, 1:], w0, b0)), w2, b2)[0]  # select_feature patch
        before, after = prompt.split("<image>")  # tokenizer_image_token: BOS on the first chunk only
        ids_before = torch.tensor(self.tokenizer(before).input_ids)
        ids_after = torch.tensor(self.tokenizer(after, add_special_tokens=False).input_ids)
        embed = self.lm.get_input_embeddings()
        return torch.cat([embed(ids_before), features, embed(ids_after)])

    @torch.no_grad()
    def logits(self, image, prompt: str) -> torch.Tensor:
        return self.lm(inputs_embeds=self.embeds(image, prompt)[None]).logits[0]

    @torch.no_grad()
    def greedy(self, image, prompt: str, steps: int) -> str:
        embeds, new = self.embeds(image, prompt), []
        for _ in range(steps):
            token = int(self.lm(inputs_embeds=embeds[None]).logits[0, -1].argmax())
            if token == self.tokenizer.eos_token_id:
                break
            new.append(token)
            embeds = torch.cat([embeds, self.lm.get_input_embeddings()(torch.tensor([token]))])
        return self.tokenizer.decode(new, skip_special_tokens=True).strip()


def picture(width=40, height=24, seed=0):
    from PIL import Image

    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def run_vital(*args: str, timeout: int = 240) -> subprocess.CompletedProcess:
    env_cmd = [sys.executable, "-m", "vital_hub.cli", *args]
    return subprocess.run(env_cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def llava15(tmp_path_factory):
    """LLaVA-1.5 / BioMed-VITAL shape: Llama, no tower weights (taken from a CLIP folder), two .bin shards;
    converted with the command as a user runs it."""
    root = tmp_path_factory.mktemp("llava15")
    source = build_original(root / "original", "llama", vision=False, shards=2, fmt="bin")
    clip = build_clip(root / "clip")
    out = root / "converted"
    done = run_vital(
        "convert", "llava-original", "--model", str(source), "--out", str(out), "--vision-tower", str(clip)
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return source, clip, out, json.loads(done.stdout)


@pytest.fixture(scope="module")
def llava_med(tmp_path_factory):
    """LLaVA-Med v1.5 shape: Mistral, tower weights in the checkpoint (used with --tower-from-checkpoint), three
    safetensors shards."""
    root = tmp_path_factory.mktemp("llava_med")
    tower_config = build_clip(root / "clip-config", weights=False)
    source = build_original(root / "original", "mistral", vision=True, shards=3, fmt="safetensors",
                            tower=str(tower_config))  # fmt: skip
    out = root / "converted"
    assert (
        vital(
            [
                "convert",
                "llava-original",
                "--model",
                str(source),
                "--out",
                str(out),
                "--max-shard-gb",
                "0.0001",
                "--tower-from-checkpoint",
            ]
        )
        == 0
    )
    return source, None, out


def stock_load(folder):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    return AutoProcessor.from_pretrained(folder), AutoModelForImageTextToText.from_pretrained(folder).eval()


@pytest.mark.parametrize("lineage", ["llava15", "llava_med"])
def test_converted_logits_equal_the_original_code_path(lineage, request):
    source, clip, out = request.getfixturevalue(lineage)[:3]
    reference = OriginalLlava(source, clip)
    processor, model = stock_load(out)
    question = "What abnormality is seen in this CT scan?"
    messages = [{"role": "user", "content": [{"type": "text", "text": question}, {"type": "image"}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert prompt == original_prompt(reference.family, question)
    image = picture()
    inputs = processor(text=prompt, images=image, return_tensors="pt")
    torch.testing.assert_close(
        inputs["pixel_values"], original_pixels(image, TINY_CLIP["image_size"]), atol=1e-5, rtol=0
    )
    with torch.no_grad():
        logits = model(**inputs).logits[0]
    expected = reference.logits(image, prompt)
    assert logits.shape[0] == expected.shape[0]  # 16 image tokens where <image> stood
    torch.testing.assert_close(logits[:, : expected.shape[1]], expected, atol=1e-4, rtol=1e-4)
    assert logits.shape[1] % 64 == 0 and model.config.image_token_id == reference.raw["vocab_size"]


def test_folder_contents_card_and_generation_config(llava15, llava_med):
    source, _, out, result = llava15
    assert result["chat_format"] == "llava_v1" and result["pad_to_square"] is True
    assert sorted(p.name for p in out.glob("*.safetensors")) == result["files"] and len(result["files"]) == 3
    config = json.loads((out / "config.json").read_text())
    assert (config["vision_feature_layer"], config["vision_feature_select_strategy"]) == (-2, "default")
    assert config["architectures"] == ["LlavaForConditionalGeneration"]
    generation = json.loads((out / "generation_config.json").read_text())
    tok = tokenizer()
    assert generation["eos_token_id"] == tok.eos_token_id  # </s> closes every answer in both formats
    card = (out / "README.md").read_text()
    assert str(source) in card and "pytorch_model-00001-of-00002.bin" in card and "llava_v1" in card
    assert not (out.parent / "converted.partial").exists()
    med_out = llava_med[2]
    assert len(list(med_out.glob("model-*-of-*.safetensors"))) > 3  # the shard size limit splits the output
    assert "mistral_instruct" in (med_out / "README.md").read_text()


def test_a_converted_model_answers_qa50_questions_in_its_original_format(llava15, tmp_path):
    source, clip, out, _ = llava15
    images = tmp_path / "images"
    images.mkdir()
    rows = []
    for i in range(3):
        picture(30 + 10 * i, 24, seed=i).save(images / f"{i}_F1.png")
        rows.append({"question_id": i, "image": f"{i}_F1.png", "pair_id": f"{i}_F1", "text": f"Describe figure {i}.\n<image>",
                     "gpt4_answer": "ref", "type": "conversation", "domain": {"ct_scan": True}})  # fmt: skip
    questions = tmp_path / "qa50.jsonl"
    questions.write_text("".join(json.dumps(row) + "\n" for row in rows))
    answers = tmp_path / "answers.jsonl"
    done = run_vital("eval", "answer", "--model", str(out), "--questions", str(questions), "--image-folder",
                     str(images), "--out", str(answers), "--max-new-tokens", "6", "--batch-size", "1")  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    got = {row["question_id"]: row for row in map(json.loads, answers.read_text().splitlines())}
    reference = OriginalLlava(source, clip)
    from PIL import Image

    for i in range(3):
        assert got[i]["status"] == "ok" and got[i]["image_status"] == "ok"
        prompt = original_prompt("llama", f"Describe figure {i}.")
        assert got[i]["text"] == reference.greedy(Image.open(images / f"{i}_F1.png").convert("RGB"), prompt, 6)


def rewrite(folder, edit) -> None:
    path = folder / "pytorch_model.bin"
    state = torch.load(path, weights_only=True)
    edit(state)
    torch.save(state, path)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda s: s.pop("model.layers.1.mlp.down_proj.weight"), "missing key 'model.layers.1.mlp.down_proj.weight'"),
        (
            lambda s: s.update({"model.layers.0.mlp.extra_proj.weight": torch.zeros(2)}),
            "unexpected key 'model.layers.0.mlp.extra_proj.weight'",
        ),
        (
            lambda s: s.update({"model.mm_projector.1.weight": s.pop("model.mm_projector.2.weight")}),
            "unknown key 'model.mm_projector.1.weight'",
        ),
        (lambda s: s.update({"vision_head.weight": torch.zeros(2)}), "unknown key 'vision_head.weight'"),
        (lambda s: s.update({"model.norm.weight": torch.zeros(7)}), "'model.norm.weight' has shape [7]"),
    ],
    ids=["missing", "extra", "renamed", "unknown", "shape"],
)
def test_bad_keys_fail_naming_the_key(tmp_path, capsys, edit, message):
    source = build_original(
        tmp_path / "original", "llama", vision=True, tower=str(build_clip(tmp_path / "c", weights=False))
    )
    rewrite(source, edit)
    out = tmp_path / "out"
    assert (
        vital(["convert", "llava-original", "--model", str(source), "--out", str(out), "--tower-from-checkpoint"]) == 1
    )
    err = capsys.readouterr().err.strip()
    assert err.startswith("vital convert llava-original: error: ") and message in err and len(err.splitlines()) == 1
    assert not out.exists() and not (tmp_path / "out.partial").exists()  # the shape error stops mid-write


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("mm_projector_type", "linear"),
        ("mm_vision_select_feature", "cls"),
        ("image_aspect_ratio", "anyres"),
        ("mm_use_im_start_end", True),
        ("architectures", ["LlavaMptForCausalLM"]),
    ],
)
def test_unsupported_settings_fail_naming_the_field(tmp_path, capsys, field, value):
    overrides = {field: value, **({"model_type": "llava_mpt"} if field == "architectures" else {})}
    source = build_original(tmp_path / "original", "llama", vision=False, **overrides)
    assert vital(["convert", "llava-original", "--model", str(source), "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert field in err and "config.json" in err and "Traceback" not in err


def test_missing_tower_weights_and_known_vision_config(tmp_path, capsys):
    from vital_hub.convert.llava_original import original_settings, vision_config

    raw = json.loads((build_original(tmp_path / "o", "llama", vision=False) / "config.json").read_text())
    vision = vision_config(original_settings(raw, tmp_path), None)  # openai/clip-vit-large-patch14-336
    assert (vision.image_size, vision.patch_size, vision.hidden_size, vision.num_hidden_layers) == (336, 14, 1024, 24)
    assert vision.hidden_act == "quick_gelu"
    source = build_original(tmp_path / "x", "llama", vision=False, tower="example-org/not-clip")
    assert vital(["convert", "llava-original", "--model", str(source), "--out", str(tmp_path / "out")]) == 1
    assert "example-org/not-clip" in capsys.readouterr().err


def test_an_existing_model_folder_is_not_overwritten(llava15, capsys):
    source, clip, out, _ = llava15
    assert (
        vital(["convert", "llava-original", "--model", str(source), "--out", str(out), "--vision-tower", str(clip)])
        == 1
    )
    assert "already holds a model" in capsys.readouterr().err


@pytest.mark.slow
def test_a_converted_model_trains_two_steps_with_the_recipe(llava15, tmp_path):
    """recipes/sft.py with LoRA (as recipes/biomed-vital-13b/sft/config_lora.yaml) on the converted weights."""
    import os

    from tests.sft_support import SFT_SCRIPT, build_instructions_repo, tiny_recipe

    out = llava15[2]
    repo = build_instructions_repo(tmp_path / "instructions")
    recipe = tiny_recipe(
        tmp_path / "recipe.yaml", out, repo, tmp_path / "run", init_random_weights=False, use_peft=True, lora_r=4,
        lora_alpha=8, lora_target_modules=r".*language_model.*\.(q_proj|v_proj)",
        lora_modules_to_save=["multi_modal_projector"], save_strategy="no",
    )  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run([sys.executable, str(SFT_SCRIPT), "--config", str(recipe)], env=env, cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    state = json.loads((tmp_path / "run" / "trainer_state.json").read_text())
    losses = [row["loss"] for row in state["log_history"] if "loss" in row]
    assert state["global_step"] == 2 and len(losses) == 2 and all(np.isfinite(losses))


@pytest.mark.slow
def test_converts_from_the_hub_and_pushes_the_result(tmp_path):
    """A Hub repo holding the original model in a subfolder (as a repo of several models would), downloaded through
    vital_hub.hub; the card names the commit converted; --push-to uploads the folder."""
    import os
    import re
    import secrets

    from tests.fakes.hub_server import running_hub

    token = f"hf_convertTest{secrets.token_hex(8)}"
    upload = tmp_path / "upload"
    build_original(upload / "biomed-vital-13b", "llama", vision=False, shards=2, fmt="safetensors")
    clip = build_clip(tmp_path / "clip")
    with running_hub(tmp_path / "store", token=token) as hub:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING_FACE"))}
        env.update(HF_ENDPOINT=hub.endpoint, HF_HOME=str(tmp_path / "hf"), HF_HUB_DISABLE_XET="1", HF_TOKEN=token,
                   PYTHONPATH=str(REPO_ROOT))  # fmt: skip

        def vital_cli(*args):
            done = subprocess.run([sys.executable, "-m", "vital_hub.cli", *args], env=env, cwd=REPO_ROOT,
                                  capture_output=True, text=True, timeout=240)  # fmt: skip
            assert done.returncode == 0, done.stderr[-3000:]
            assert token not in done.stdout + done.stderr
            return done

        vital_cli("push", "--repo", str(upload), "--to", "org/originals", "--repo-type", "model")
        out = tmp_path / "converted"
        vital_cli("convert", "llava-original", "--model", "org/originals", "--subfolder", "biomed-vital-13b",
                  "--out", str(out), "--vision-tower", str(clip), "--push-to", "org/converted")  # fmt: skip
        card = (out / "README.md").read_text()
        assert "`org/originals (biomed-vital-13b)`" in card and 'base_model: "org/originals"' in card
        assert re.search(r"revision `[0-9a-f]{40}`", card) and token not in card
        again = vital_cli("convert", "llava-original", "--model", "org/originals", "--subfolder", "biomed-vital-13b",
                          "--out", str(out), "--vision-tower", str(clip), "--push-to", "org/converted")  # fmt: skip
        assert json.loads(again.stdout)["pushed"]  # a re-run after the conversion only (re-)pushes: the resume
        stored = json.loads((tmp_path / "store" / "repos" / "models" / "org" / "converted.json").read_text())
        files = stored["commits"][stored["refs"]["main"]]["files"]
        assert {"config.json", "README.md", "chat_template.jinja", "model.safetensors.index.json"} <= set(files)


def test_sentencepiece_prompt_ids_match_the_original_chunked_tokenisation(tmp_path):
    """With LLaMA's SentencePiece tokenizer the original tokenised the text before and after `<image>` separately
    (`tokenizer_image_token`), so the text after the image starts with `▁`; the converted processor gives the same
    ids, with the image tokens where the original spliced the features."""
    spm = pytest.importorskip("sentencepiece")
    pytest.importorskip("google.protobuf")
    from transformers import AutoProcessor

    from tests.fakes.original_llava import write_sentencepiece_tokenizer

    source = build_original(tmp_path / "original", "llama", vision=False)
    write_sentencepiece_tokenizer(source)
    raw = json.loads((source / "config.json").read_text())
    raw["vocab_size"] = 300
    (source / "config.json").write_text(json.dumps(raw))
    state = torch.load(source / "pytorch_model.bin", weights_only=True)
    for key in ("model.embed_tokens.weight", "lm_head.weight"):
        state[key] = torch.randn(300, TINY_TEXT["hidden_size"])
    torch.save(state, source / "pytorch_model.bin")
    out = tmp_path / "converted"
    argv = ["convert", "llava-original", "--model", str(source), "--out", str(out)]
    assert vital([*argv, "--vision-tower", str(build_clip(tmp_path / "clip"))]) == 0

    processor = AutoProcessor.from_pretrained(out)
    question = "What is seen in this CT scan?"
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    ids = processor(text=prompt, images=picture(), return_tensors="pt")["input_ids"][0].tolist()
    sp = spm.SentencePieceProcessor(model_file=str(source / "tokenizer.model"))
    before, after = original_prompt("llama", question).split("<image>")
    image_id = processor.tokenizer.convert_tokens_to_ids("<image>")
    n_image = (TINY_CLIP["image_size"] // TINY_CLIP["patch_size"]) ** 2
    assert ids == [1, *sp.encode(before), *[image_id] * n_image, *sp.encode(after)]
