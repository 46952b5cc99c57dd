"""What `recipes/sft.py` writes opens with stock tools: full model, LoRA adapter and merged model, each loaded by
`AutoModelForImageTextToText` + `AutoProcessor` in a fresh interpreter where vital_hub cannot be imported, and each
answers a padded batch of figure questions. The card names the repo the model is pushed to, or the folder.

A processor loaded without torchvision (image-only) writes back the video settings of the folder it came from, so
the saved folder is the one the original processor would save. A Qwen3-VL-MoE model trained by the recipe is saved
with `output_router_logits: false`, and its batched `generate` runs.
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from tests.conftest import REPO_ROOT
from tests.fakes.hub_server import running_hub
from tests.sft_support import SFT_SCRIPT, offline_env, tiny_recipe
from vital_hub.training.family_models import build_family, write_family_folder
from vital_hub.training.processors import has_video_config, load_processor_from
from vital_hub.training.synthetic import synthetic_rows, write_instructions_repo, write_model_folder

# A Qwen2.5-VL video processor's settings as transformers 5 saves them inside processor_config.json.
QWEN_VIDEO = {"video_processor_type": "Qwen2VLVideoProcessor", "do_resize": True, "do_sample_frames": False,
              "fps": 2.0, "merge_size": 2, "patch_size": 14, "temporal_patch_size": 2,
              "size": {"longest_edge": 12845056, "shortest_edge": 3136}}  # fmt: skip

# Run in a fresh interpreter: vital_hub made unimportable, only transformers' own loaders.
STOCK = textwrap.dedent(
    """
    import json, sys
    sys.modules["vital_hub"] = None  # any import of it fails
    import torch
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor

    folder = sys.argv[1]
    model = AutoModelForImageTextToText.from_pretrained(folder, dtype=torch.float32)
    processor = AutoProcessor.from_pretrained(folder)
    processor.tokenizer.padding_side = "left"
    questions = ["What is shown?", "Which stain is used in this section of the liver?"]
    conversations = [[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q}]}]
                     for q in questions]
    prompts = [processor.apply_chat_template(c, add_generation_prompt=True) for c in conversations]
    images = [Image.new("RGB", (120, 300), (200, 30, 30)), Image.new("RGB", (400, 90), (20, 90, 200))]
    batch = processor(text=prompts, images=images, padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(**batch).logits[:, -1]
        out = model.generate(**batch, max_new_tokens=3, do_sample=False)
    print(json.dumps({"class": type(model).__name__, "shape": list(out.shape), "last": logits.tolist()}))
    """
)


def stock_load(folder) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",) and not k.startswith("HF_")}
    env.update(HF_HUB_OFFLINE="1", CUDA_VISIBLE_DEVICES="")
    result = subprocess.run([sys.executable, "-c", STOCK, str(folder)], env=env, cwd=folder, capture_output=True,
                            text=True, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("layout", ["inside processor_config.json", "video_preprocessor_config.json"])
def test_a_processor_loaded_without_its_video_part_saves_the_folder_it_came_from(layout, tmp_path):
    source = write_family_folder(tmp_path / "source", "qwen2.5-vl")
    config_file = source / "processor_config.json"
    config = json.loads(config_file.read_text())
    if layout.startswith("inside"):
        config["video_processor"] = QWEN_VIDEO
        config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    else:
        (source / "video_preprocessor_config.json").write_text(json.dumps(QWEN_VIDEO))
    assert has_video_config(source)
    processor = load_processor_from(source)
    processor.save_pretrained(tmp_path / "saved")
    saved = json.loads((tmp_path / "saved" / "processor_config.json").read_text())
    assert saved == {**config, "video_processor": QWEN_VIDEO}
    assert saved["processor_class"] == "Qwen2_5_VLProcessor"
    # a folder without video settings stays without them
    bare = write_family_folder(tmp_path / "bare", "qwen2.5-vl")
    assert not has_video_config(bare)
    load_processor_from(bare).save_pretrained(tmp_path / "bare-saved")
    assert "video_processor" not in json.loads((tmp_path / "bare-saved" / "processor_config.json").read_text())


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    rows = synthetic_rows(12, seed=5, image_sides=(96, 300))
    return write_instructions_repo(tmp_path_factory.mktemp("outputs") / "repo", {"80k": rows})


@pytest.fixture(scope="module")
def base_model(tmp_path_factory):
    """A tiny LLaVA with weights on disk, as a Hub checkpoint is (a LoRA adapter names it as its base)."""
    import torch
    from transformers import LlavaForConditionalGeneration, LlavaProcessor

    folder = write_model_folder(tmp_path_factory.mktemp("base") / "llava", "tiny")
    torch.manual_seed(0)
    from transformers import AutoConfig

    LlavaForConditionalGeneration(AutoConfig.from_pretrained(folder)).save_pretrained(folder)
    assert LlavaProcessor.from_pretrained(folder).chat_template
    return folder


def run_recipe(tmp_path, base, repo, *extra, endpoint=None, **overrides):
    output = tmp_path / "out"
    recipe = tiny_recipe(tmp_path / "recipe.yaml", base, repo, output, init_random_weights=False, max_steps=2,
                         save_strategy="no", learning_rate=5e-3, **overrides)  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING_FACE"))}
    env.update(HF_HOME=str(tmp_path / "hf"), HF_HUB_OFFLINE="0" if endpoint else "1", PYTHONPATH=str(REPO_ROOT),
               CUDA_VISIBLE_DEVICES="", HF_HUB_DISABLE_XET="1", HF_TOKEN="hf_outputsTest0123456789")  # fmt: skip
    if endpoint:
        env["HF_ENDPOINT"] = endpoint
    command = [sys.executable, str(SFT_SCRIPT), "--config", str(recipe), *extra]
    result = subprocess.run(command, env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, result.stderr[-4000:]
    return output


@pytest.mark.slow
def test_a_full_fine_tune_opens_with_stock_tools_and_its_card_names_the_folder(base_model, repo, tmp_path):
    # hub_model_id in the recipe, but not pushed: the card must not send readers to that repo
    output = run_recipe(tmp_path, base_model, repo, hub_model_id="biomed-vital/not-pushed")
    answer = stock_load(output)
    assert answer["class"] == "LlavaForConditionalGeneration" and answer["shape"][0] == 2
    card = (output / "README.md").read_text()
    assert f"\n# {output}\n" in card and f'from_pretrained("{output}")' in card
    assert "biomed-vital/not-pushed" not in card


@pytest.mark.slow
def test_lora_adapter_and_merged_model_open_with_stock_tools_and_agree(base_model, repo, tmp_path):
    merged = tmp_path / "merged"
    lora = {
        "use_peft": True,
        "lora_r": 4,
        "lora_alpha": 8,
        "lora_target_modules": r".*language_model.*\.(q_proj|v_proj)",
    }
    with running_hub(tmp_path / "hub", token="hf_outputsTest0123456789") as hub:
        output = run_recipe(tmp_path, base_model, repo, "--push_to_hub", "true", "--hub_model_id", "me/x",
                            endpoint=hub.endpoint, merged_output_dir=str(merged), **lora)  # fmt: skip
        _, _, files = hub.store.files_at("model", "me/x", "main")
    assert (output / "adapter_config.json").exists() and not (output / "model.safetensors").exists()
    assert (merged / "model.safetensors").exists() and not (merged / "adapter_config.json").exists()
    adapter, whole = stock_load(output), stock_load(merged)
    assert adapter["class"] == whole["class"] == "LlavaForConditionalGeneration"
    import torch

    torch.testing.assert_close(torch.tensor(whole["last"]), torch.tensor(adapter["last"]), rtol=1e-4, atol=1e-4)
    card = (output / "README.md").read_text()
    assert "\n# me/x\n" in card and 'from_pretrained("me/x")' in card
    assert "adapter_model.safetensors" in files and "README.md" in files
    # the projector trains in full in a LoRA run (stage full), added to modules_to_save by the family rules
    assert json.loads((output / "adapter_config.json").read_text())["modules_to_save"] == ["multi_modal_projector"]


def qwen3_vl_moe_folder(folder):
    """A tiny Qwen3-VL-MoE (4 experts, 2 per token, with its load-balancing loss coefficient), Qwen3-VL's processor."""
    from transformers import Qwen3VLMoeConfig

    processor, dense = build_family("qwen3-vl")
    text = {k: v for k, v in dense.text_config.to_dict().items() if k not in ("model_type", "architectures")}
    text.update(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, decoder_sparse_step=1,
                router_aux_loss_coef=0.01)  # fmt: skip
    ids = {k: getattr(dense, k) for k in ("image_token_id", "video_token_id", "vision_start_token_id",
                                           "vision_end_token_id")}  # fmt: skip
    Qwen3VLMoeConfig(text_config=text, vision_config=dense.vision_config.to_dict(), **ids).save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


MOE_STOCK = textwrap.dedent(
    """
    import sys
    sys.modules["vital_hub"] = None
    from transformers import AutoModelForImageTextToText, AutoTokenizer

    model = AutoModelForImageTextToText.from_pretrained(sys.argv[1])
    tokenizer = AutoTokenizer.from_pretrained(sys.argv[1])
    tokenizer.padding_side = "left"
    batch = tokenizer(["Which organ is shown in the figure?", "Why?"], return_tensors="pt", padding=True)
    print(tuple(model.generate(**batch, max_new_tokens=3, do_sample=False).shape))
    """
)


@pytest.mark.slow
def test_a_trained_moe_model_is_saved_with_router_logits_off_and_generates_batched(repo, tmp_path):
    base = qwen3_vl_moe_folder(tmp_path / "moe")
    output = tmp_path / "out"
    recipe = tiny_recipe(tmp_path / "recipe.yaml", base, repo, output, max_steps=2, save_strategy="no")
    env = offline_env(tmp_path / "hf")
    result = subprocess.run([sys.executable, str(SFT_SCRIPT), "--config", str(recipe)], env=env, cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=400)  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    config = json.loads((output / "config.json").read_text())
    assert config["text_config"]["output_router_logits"] is False
    env.pop("PYTHONPATH")
    stock = subprocess.run([sys.executable, "-c", MOE_STOCK, str(output)], env=env, cwd=tmp_path,
                           capture_output=True, text=True, timeout=300)  # fmt: skip
    assert stock.returncode == 0, stock.stderr[-4000:]
    assert stock.stdout.strip().splitlines()[-1].startswith("(2, ")
