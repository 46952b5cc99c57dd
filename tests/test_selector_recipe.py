"""`recipes/reward.py` with `recipes/selector/config_smoke.yaml` as a user runs it on a CPU machine: the data paths
and nothing else on the command line. A missing tokenizer folder is one error line naming it."""

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT
from tests.selector_helpers import preference_rows, write_figures

PAIR_IDS = [f"3000{i}_F{i}" for i in range(6)]


def reward(args: list[str], tmp_path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "VITAL_DEBUG"))}
    env.update(
        PYTHONPATH=str(REPO_ROOT),
        HF_HUB_OFFLINE="1",
        HF_HOME=str(tmp_path / "hf"),
        CUDA_VISIBLE_DEVICES="",
        TOKENIZERS_PARALLELISM="false",
    )
    command = [sys.executable, "recipes/reward.py", "--config", "recipes/selector/config_smoke.yaml", *args]
    return subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_the_smoke_recipe_runs_on_cpu_with_only_the_data_paths(tmp_path):
    from vital_hub.preferences.repo import write_config

    images = write_figures(tmp_path / "figures", PAIR_IDS)
    write_config(tmp_path / "prefs", "mixed", preference_rows(PAIR_IDS))
    out = tmp_path / "selector"
    done = reward(
        ["--dataset_name", str(tmp_path / "prefs"), "--images_dir", str(images), "--output_dir", str(out)], tmp_path
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "no GPU: bf16 switched off" in done.stderr
    assert (out / "model.safetensors").exists() and (out / "tokenizer.json").exists()
    training = json.loads((out / "selector_training.json").read_text())
    assert "eval_clinician_auc" in training.get("metrics", training)


@pytest.mark.slow  # a fresh interpreter importing torch and TRL
def test_a_missing_tokenizer_folder_is_one_line_naming_it(tmp_path):
    missing = tmp_path / "no-such-tokenizer"
    done = reward(["--dataset_name", str(tmp_path / "prefs"), "--tokenizer_name_or_path", str(missing)], tmp_path)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == (
        f"recipes/reward.py: error: tokenizer_name_or_path {missing}: no such folder (nor is it a Hub id ORG/NAME)"
    )
    assert "Traceback" not in done.stderr


@pytest.mark.slow
def test_a_bare_name_that_is_neither_a_folder_nor_on_the_hub_is_one_line_naming_it(tmp_path):
    done = reward(["--dataset_name", str(tmp_path / "prefs"), "--tokenizer_name_or_path", "tokenizer"], tmp_path)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("recipes/reward.py: error: tokenizer_name_or_path tokenizer: not a local folder")
