"""Shared set-up for the SFT tests: an instructions repo made by `vital build instructions`, tiny models, YAML."""

from __future__ import annotations

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
