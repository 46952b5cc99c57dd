"""A killed `recipes/sft.py` run, re-run with the same command, ends where an uninterrupted one does.

The command is killed with SIGKILL as soon as its first checkpoint is complete, then run again: the per-step
losses in trainer_state.json and the final weights (full model or LoRA adapter) equal an uninterrupted run's with
the same seed. In process: a checkpoint that does not fill the model exactly is an error naming the keys; a
checkpoint written with the published names (before checkpoints kept the model's own) still resumes; a
half-written checkpoint is not resumed from.
"""

import json
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.conftest import REPO_ROOT
from tests.sft_support import SFT_SCRIPT, offline_env, tiny_recipe
from vital_hub.training.family_models import build_family, write_family_folder
from vital_hub.training.resume import CheckpointError, last_complete_checkpoint, load_weights_strictly
from vital_hub.training.synthetic import synthetic_rows, write_instructions_repo

LORA = {"use_peft": True, "lora_r": 4, "lora_alpha": 8, "lora_dropout": 0.1,  # dropout: the RNG must resume too
        "lora_target_modules": r".*language_model.*\.(q_proj|v_proj)"}  # fmt: skip


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    rows = synthetic_rows(24, seed=3, image_sides=(96, 300), missing_every=8)
    return write_instructions_repo(tmp_path_factory.mktemp("resume") / "repo", {"80k": rows})


def command(tmp_path, family, repo, name, **overrides):
    model = tmp_path / "model"
    if not model.exists():
        write_family_folder(model, family)
    recipe = tiny_recipe(tmp_path / f"{name}.yaml", model, repo, tmp_path / name, max_steps=4, save_steps=2,
                         learning_rate=5e-3, **overrides)  # fmt: skip
    env = offline_env(tmp_path / "hf")
    return [sys.executable, str(SFT_SCRIPT), "--config", str(recipe), "--log_level", "info"], env


def run(argv, env):
    result = subprocess.run(argv, env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, result.stderr[-4000:]
    return result


def kill_after_first_checkpoint(argv, env, output):
    process = subprocess.Popen(argv, env=env, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 400
    while not (output / "checkpoint-2" / "trainer_state.json").exists():
        assert process.poll() is None, "the run ended before its first checkpoint"
        assert time.monotonic() < deadline
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (output / "trainer_state.json").exists()  # killed before the end


def losses(output):
    state = json.loads((output / "trainer_state.json").read_text())
    return [entry["loss"] for entry in state["log_history"] if "loss" in entry]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("family", "lora"),
    [("llava-1.5", False), ("qwen2.5-vl", False), ("qwen2.5-vl", True)],
    ids=["llava-full", "qwen-full", "qwen-lora"],
)
def test_a_killed_run_resumes_to_the_same_losses_and_weights(family, lora, repo, tmp_path):
    overrides = LORA if lora else {}
    whole = tmp_path / "whole"
    run(*command(tmp_path, family, repo, "whole", **overrides))
    argv, env = command(tmp_path, family, repo, "killed", **overrides)
    killed = tmp_path / "killed"
    kill_after_first_checkpoint(argv, env, killed)
    resumed = run(argv, env)
    assert "Resuming from" in resumed.stderr and "checkpoint-" in resumed.stderr
    assert "all" in resumed.stderr or "adapter" in resumed.stderr  # loaded strictly, said so
    assert len(losses(whole)) == 4
    assert losses(killed) == pytest.approx(losses(whole), rel=1e-5, abs=1e-6)
    weights = "adapter_model.safetensors" if lora else "model.safetensors"
    expected, got = load_file(str(whole / weights)), load_file(str(killed / weights))
    assert expected.keys() == got.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-5, atol=1e-6, msg=name)
    # the final folder keeps the published names stock loaders read; checkpoints the model's own
    if not lora:  # LLaVA publishes language_model.model.*, Qwen2.5-VL model.layers.*; in memory model.language_model.*
        assert not any(name.startswith("model.language_model.") for name in got)
        checkpoint = load_file(str(killed / "checkpoint-4" / "model.safetensors"))
        assert any(name.startswith("model.language_model.") for name in checkpoint)


def tiny_model(family="llava-1.5"):
    from transformers import AutoModelForImageTextToText

    _, config = build_family(family)
    torch.manual_seed(0)
    return AutoModelForImageTextToText.from_config(config)


def test_a_checkpoint_that_does_not_fill_the_model_is_an_error_naming_the_keys(tmp_path):
    model = tiny_model()
    model.save_pretrained(tmp_path / "ckpt", save_original_format=False)
    weights = load_file(str(tmp_path / "ckpt" / "model.safetensors"))
    dropped = "model.multi_modal_projector.linear_1.weight"
    weights.pop(dropped)
    weights["model.extra.weight"] = torch.zeros(2)
    save_file(weights, str(tmp_path / "ckpt" / "model.safetensors"))
    with pytest.raises(
        CheckpointError, match=r"missing from the checkpoint \(1\): " + dropped.replace(".", r"\.")
    ) as err:
        load_weights_strictly(tiny_model(), tmp_path / "ckpt")
    assert "not in the model (1): model.extra.weight" in str(err.value)


def test_a_checkpoint_in_the_published_names_still_resumes(tmp_path):
    trained = tiny_model()
    with torch.no_grad():
        for parameter in trained.parameters():
            parameter.add_(0.5)
    trained.save_pretrained(tmp_path / "ckpt")  # published names: language_model.model.layers...
    assert "language_model.lm_head.weight" in load_file(str(tmp_path / "ckpt" / "model.safetensors"))
    fresh = tiny_model()
    load_weights_strictly(fresh, tmp_path / "ckpt")
    for (name, expected), (_, got) in zip(trained.state_dict().items(), fresh.state_dict().items(), strict=True):
        assert torch.equal(got, expected), name


def test_a_half_written_checkpoint_is_not_resumed_from(tmp_path):
    for step in (2, 4, 6):
        (tmp_path / f"checkpoint-{step}").mkdir()
    (tmp_path / "checkpoint-2" / "trainer_state.json").write_text(json.dumps({"global_step": 2}))
    (tmp_path / "checkpoint-4" / "trainer_state.json").write_text(json.dumps({"global_step": 4}))
    (tmp_path / "checkpoint-6" / "trainer_state.json").write_text('{"global_st')  # killed mid-write
    assert last_complete_checkpoint(tmp_path) == tmp_path / "checkpoint-4"
    (tmp_path / "checkpoint-4" / "trainer_state.json").unlink()
    assert last_complete_checkpoint(tmp_path) == tmp_path / "checkpoint-2"
    assert last_complete_checkpoint(tmp_path / "absent") is None
