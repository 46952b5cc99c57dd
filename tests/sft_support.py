"""Shared set-up for the SFT tests: an instructions repo made by `vital build instructions`, tiny models, YAML."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

from tests.conftest import REPO_ROOT

SFT_SCRIPT = REPO_ROOT / "recipes" / "sft.py"


def build_instructions_repo(root: Path, configs: tuple[str, ...] = ("80k",)) -> Path:
    """The lead's sample sources built into a repo folder with the real `vital build instructions` command."""
    from vital_hub.cli import main
    from vital_hub.demo import write_sample_sources

    sample = write_sample_sources(root / "sample")
    repo = root / "repo"
    argv = ["build", "instructions", "--sources", str(sample["sources"]), "--images", str(sample["images"])]
    argv += ["--out", str(repo), "--allow-unverified", "--configs", *configs]
    assert main(argv) == 0
    return repo


def tiny_recipe(path: Path, model_dir: Path, repo: Path, output_dir: Path, **overrides) -> Path:
    """A CPU-sized recipe YAML in the same shape as the ones under recipes/."""
    recipe = {
        "model_name_or_path": str(model_dir),
        "init_random_weights": True,
        "dtype": "float32",
        "dataset_name": str(repo),
        "dataset_config": "80k",
        "missing_images": "skip",
        "max_image_side": 256,
        "bf16": False,
        "use_cpu": True,
        "gradient_checkpointing": False,
        "train_sampling_strategy": "group_by_length",
        "remove_unused_columns": False,
        "learning_rate": 1.0e-3,
        "per_device_train_batch_size": 4,
        "max_steps": 2,
        "logging_steps": 1,
        "save_steps": 1,
        "max_length": 512,
        "report_to": "none",
        "seed": 0,
        "output_dir": str(output_dir),
        **overrides,
    }
    path.write_text(yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")
    return path


def offline_env(hf_home: Path) -> dict:
    """The environment `recipes/sft.py` runs in for the tests: this checkout, CPU, offline, under its own HF_HOME,
    with none of the caller's HF_* settings or tokens."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING_FACE"))}
    env.update(HF_HOME=str(hf_home), HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO_ROOT), CUDA_VISIBLE_DEVICES="")
    return env


def run_sft(recipe: Path, hf_home: Path):
    """`recipes/sft.py --config recipe` in `offline_env`; it must succeed. Returns the finished process."""
    command = [sys.executable, str(SFT_SCRIPT), "--config", str(recipe)]
    result = subprocess.run(command, env=offline_env(hf_home), cwd=REPO_ROOT, capture_output=True, text=True,
                            timeout=400)  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    return result
