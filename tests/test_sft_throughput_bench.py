"""`benchmarks/sft_throughput.py` on CPU at its smoke size (`--size tiny`): the worker a GPU run launches per case,
run here in-process for 2 steps, for every model the benchmark covers beyond LLaVA-1.5 and Qwen2.5-VL and for the
one-GPU full fine-tune cases, so that a GPU run cannot fail on what a CPU run catches (a LoRA target or projector
module that matches nothing, TRL's collator on a family, a packed batch that counts tokens differently).

Each case must train (finite losses), measure positive tokens/s, give the tuned stock case the same trainable
parameters as ours, and count the same real tokens padded and packed over the same rows.
"""

import importlib.util
import json
import math
import sys

import pytest

from tests.conftest import REPO_ROOT

SCRIPT = REPO_ROOT / "benchmarks" / "sft_throughput.py"


@pytest.fixture(scope="module")
def bench():
    """The benchmark script as a module (benchmarks/ is a folder of scripts, not a package)."""
    spec = importlib.util.spec_from_file_location("sft_throughput_bench", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def run_case(bench, tmp_path, model: str, case: str) -> dict:
    result = tmp_path / f"{model}-{case}.json"
    argv = ["--worker", case, "--result", str(result), "--model", model, "--size", "tiny", "--steps", "2"]
    assert bench.main([*argv, "--warmup", "1", "--batch-size", "2", "--workers", "0"]) == 0
    return json.loads(result.read_text())


def check_measured(result: dict, model: str, case: str) -> None:
    assert "error" not in result, result.get("error")
    assert (result["model"], result["case"], result["steps_timed"]) == (model, case, 1)
    assert len(result["losses"]) == 2 and all(math.isfinite(loss) for loss in result["losses"])
    assert result["tokens_per_s"] > 0 and result["tokens"] > 0
    assert 0 < result["trainable"] < result["params"]


@pytest.mark.slow
@pytest.mark.parametrize("model", ["qwen3-vl", "gemma3", "internvl3", "smolvlm2"])
def test_lora_cases_run_for_every_new_model(bench, tmp_path, model):
    results = {case: run_case(bench, tmp_path, model, case) for case in ("lora-tuned-1gpu", "lora-ours-1gpu",
                                                                         "lora-packed-1gpu")}  # fmt: skip
    for case, result in results.items():
        check_measured(result, model, case)
    tuned, ours, packed = results.values()
    assert tuned["trainable"] == ours["trainable"] == packed["trainable"]  # same LoRA targets and projector
    # ours and packed read the same rows in the same order: the same real tokens, padded or packed
    assert packed["tokens"] == ours["tokens"]
    assert packed["tokens_per_sample"] == ours["tokens_per_sample"]


@pytest.mark.slow
def test_one_gpu_full_fine_tune_cases(bench, tmp_path):
    results = {case: run_case(bench, tmp_path, "smolvlm2", case) for case in ("full-tuned-1gpu", "full-ours-1gpu",
                                                                              "full-packed-1gpu")}  # fmt: skip
    for case, result in results.items():
        check_measured(result, "smolvlm2", case)
    tuned, ours, packed = results.values()
    assert tuned["trainable"] == ours["trainable"] == packed["trainable"]  # everything but the vision tower
    assert packed["tokens"] == ours["tokens"]


def test_models_table_names_the_projector_each_family_trains(bench):
    """The projector entries expand to what PEFT saves (each of Qwen3-VL's deepstack mergers by itself)."""
    import torch
    from transformers import AutoModelForImageTextToText

    from vital_hub.training.families import family_of
    from vital_hub.training.family_models import build_family

    for name, spec in bench.MODELS.items():
        config = build_family(spec.family, "tiny")[1]
        assert set(spec.projector) <= set(family_of(config).projector), name
        with torch.device("meta"):
            model = AutoModelForImageTextToText.from_config(config)
        config_lora = bench.lora_config(model, spec)  # raises where the table misses a part or a target
        assert config_lora.modules_to_save, name
    qwen3 = bench.MODELS["qwen3-vl"]
    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(build_family("qwen3-vl", "tiny")[1])
    assert bench.projector_to_save(model, qwen3.projector) == ["merger", "deepstack_merger_list.0"]


def test_one_gpu_full_cases_run_by_default_only_where_they_fit(bench):
    full_one = bench.CASES["full-packed-1gpu"]
    assert bench.default_case(full_one, "smolvlm2")
    assert not bench.default_case(full_one, "qwen2.5-vl")
    assert bench.default_case(bench.CASES["lora-packed-1gpu"], "qwen2.5-vl")
    # fp32 masters (mixed) leave room for 4 rows on one GPU, bf16 for the requested 8; both sides alike
    for case in ("full-tuned-1gpu", "full-packed-1gpu"):
        assert bench.CASES[case].default_batch("mixed", 8) == 4
        assert bench.CASES[case].default_batch("bf16", 8) == 8


def test_a_collator_that_cannot_batch_a_family_is_reported(bench):
    class Refusing:
        train_dataset = [{"images": []}, {"images": []}]

        @staticmethod
        def data_collator(rows):
            raise ValueError("Image features and image tokens do not match\nmore detail")

    error = bench.stock_collator_error(Refusing(), "gemma3")
    assert error == "TRL's collator cannot batch gemma3 rows: ValueError: Image features and image tokens do not match"


def test_fsdp_wraps_each_model_by_its_own_layer_classes(bench):
    """accelerate refuses a layer class the model lacks, so FSDP cases of any model name the model's own layers."""
    import argparse

    expected = {
        "llava-1.5": ["CLIPEncoderLayer", "LlamaDecoderLayer"],
        "qwen2.5-vl": ["Qwen2_5_VLDecoderLayer", "Qwen2_5_VLVisionBlock"],
        "qwen3-vl": ["Qwen3VLTextDecoderLayer", "Qwen3VLVisionBlock", "Qwen3VLVisionPatchMerger"],
        "gemma3": ["Gemma3DecoderLayer", "SiglipEncoderLayer"],
        "internvl3": ["InternVLVisionLayer", "Qwen2DecoderLayer"],
        "smolvlm2": ["LlamaDecoderLayer", "SmolVLMEncoderLayer"],
    }
    assert set(expected) == set(bench.MODELS)
    for model, classes in expected.items():
        assert bench.layer_classes(argparse.Namespace(model=model, size="tiny")) == classes, model


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the report where Liger cannot run")
@pytest.mark.parametrize("case", ["lora-liger-1gpu", "full-liger-1gpu"])
def test_the_liger_baseline_says_why_it_cannot_run_without_cuda(bench, tmp_path, case):
    result = run_case(bench, tmp_path, "qwen2.5-vl", case)
    assert result == {"case": case, "model": "qwen2.5-vl", "error": "Liger's kernels need CUDA"}
    assert bench.CASES[case].default_batch("bf16", 8) == bench.CASES[case.replace("liger", "tuned")].default_batch(
        "bf16", 8
    )
