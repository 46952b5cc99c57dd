"""Every config `vital demo` builds trains with stock TRL, as a user without vital-hub would train it.

The training runs in a fresh interpreter that never imports vital_hub: `datasets.load_dataset` on the repo folder
(plain and streaming), a tiny LLaVA loaded with the Auto classes, and `trl.SFTTrainer` with its own collator. The
demo's configs mix rows with and without a figure (missing, empty and cut-off downloads), so batches hold both kinds.
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from tests.conftest import REPO_ROOT
from tests.fakes.tiny_llava import build_tiny_llava

CONFIGS = ("60k", "80k", "150k", "210k")

TRAIN = textwrap.dedent(
    """
    import json, math, sys, time
    from datasets import load_dataset
    from transformers import AutoModelForImageTextToText, AutoProcessor
    from trl import SFTConfig, SFTTrainer

    repo, model_dir, out, jobs = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
    processor = AutoProcessor.from_pretrained(model_dir)
    for job in jobs:
        started = time.perf_counter()
        rows = load_dataset(repo, job["config"], split="train")
        if job["figure_less"]:  # a subset whose every batch is text-only
            rows = rows.filter(lambda images: not images, input_columns="images")
            dataset = rows.to_iterable_dataset() if job["streaming"] else rows
        else:
            dataset = load_dataset(repo, job["config"], split="train", streaming=True) if job["streaming"] else rows
        batch = 16
        steps = math.ceil(len(rows) / batch)  # one full epoch
        args = SFTConfig(
            output_dir=out, per_device_train_batch_size=batch, max_steps=steps if job["streaming"] else -1,
            num_train_epochs=1, learning_rate=1e-3, logging_steps=1, save_strategy="no", report_to="none",
            use_cpu=True, bf16=False, max_length=None, dataloader_num_workers=0, seed=0, disable_tqdm=True,
        )
        trainer = SFTTrainer(
            model=AutoModelForImageTextToText.from_pretrained(model_dir),
            args=args, train_dataset=dataset, processing_class=processor,
        )
        trainer.train()
        losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
        print("RESULT " + json.dumps({
            **job, "steps": trainer.state.global_step, "expected_steps": steps, "losses": losses, "rows": len(rows),
            "no_figure": sum(1 for images in rows.with_format("arrow")["images"].to_pylist() if not images),
            "seconds": round(time.perf_counter() - started, 1),
        }))
    print("IMPORTED " + json.dumps(sorted({name.split(".")[0] for name in sys.modules})))
    """
)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("stock_trl")
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "HF_HOME": str(root / "hf")}
    done = subprocess.run(
        [sys.executable, "-m", "vital_hub.cli", "demo", "--out", str(root / "demo")],
        env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return {"repo": root / "demo" / "repo", "model": build_tiny_llava(root / "tiny_llava"), "root": root}


@pytest.fixture(scope="module")
def trained(demo):
    """Train every job in one stock interpreter (imports dominate a tiny run); the results by job."""
    jobs = [
        {"config": c, "streaming": streaming, "figure_less": False} for c in CONFIGS for streaming in (False, True)
    ]
    jobs += [{"config": "80k", "streaming": streaming, "figure_less": True} for streaming in (False, True)]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # stock tools only: no vital_hub on the path
    env.update(HF_HOME=str(demo["root"] / "hf_train"), HF_HUB_OFFLINE="1", CUDA_VISIBLE_DEVICES="")
    argv = [str(demo["repo"]), str(demo["model"]), str(demo["root"] / "out"), json.dumps(jobs)]
    done = subprocess.run(
        [sys.executable, "-c", TRAIN, *argv], env=env, cwd=demo["root"], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    results = [json.loads(line[len("RESULT ") :]) for line in lines if line.startswith("RESULT ")]
    imported = json.loads(next(line for line in lines if line.startswith("IMPORTED "))[len("IMPORTED ") :])
    return {(r["config"], r["streaming"], r["figure_less"]): r for r in results}, imported


def test_the_training_interpreter_never_imports_vital_hub(trained):
    assert "vital_hub" not in trained[1] and "trl" in trained[1]


@pytest.mark.parametrize("streaming", [False, True], ids=["plain", "streaming"])
def test_stock_sft_trainer_trains_a_full_epoch_of_every_demo_config(trained, streaming):
    for config in CONFIGS:
        result = trained[0][(config, streaming, False)]
        assert result["steps"] == result["expected_steps"] > 0, config
        assert 0 < result["no_figure"] < result["rows"], f"{config}: the demo's configs mix rows with and without"
        assert len(result["losses"]) == result["steps"] and all(loss > 0 for loss in result["losses"])


@pytest.mark.parametrize("streaming", [False, True], ids=["plain", "streaming"])
def test_stock_sft_trainer_trains_batches_of_only_figure_less_rows(demo, trained, streaming):
    result = trained[0][("80k", streaming, True)]
    manifest = json.loads((demo["repo"] / "manifest.json").read_text())
    assert (
        result["rows"] == result["no_figure"] == 80 - manifest["components"]["biomed-vital-80k"]["images"]["present"]
    )
    assert result["steps"] == result["expected_steps"] > 0
