"""Bad input to `recipes/sft.py` is one line `sft.py: error: ...` naming the file or option and the reason, exit 1.

The table runs the recipe's own entry (`parse` + `main` under `vital_hub.cli.run_reporting_errors`, as its
`__main__` does) in process; one case runs the command itself, with and without VITAL_DEBUG=1.
"""

import importlib.util
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT
from tests.sft_support import SFT_SCRIPT, tiny_recipe
from vital_hub.cli import run_reporting_errors
from vital_hub.training.synthetic import synthetic_rows, write_instructions_repo, write_model_folder


@pytest.fixture(scope="module")
def sft():
    spec = importlib.util.spec_from_file_location("recipe_sft_errors", SFT_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("sft-errors")
    repo = write_instructions_repo(root / "repo", {"80k": synthetic_rows(4, image_sides=(64, 96))})
    model = write_model_folder(root / "model", "tiny")
    good = tiny_recipe(root / "good.yaml", model, repo, root / "out", dataset_cache_dir=str(root / "cache"))
    (root / "broken.yaml").write_text("learning_rate: [1e-3\nseed: 0\n")
    (root / "list.yaml").write_text("- learning_rate\n- seed\n")
    (root / "typo.yaml").write_text(good.read_text() + "learning_rat: 0.1\n")
    (root / "template.txt").write_text("{{ messages }}")
    return root, good


CASES = [
    # (id, arguments after the good recipe (or a whole argv), what the error line must say)
    ("config file missing", ["--config", "{root}/absent.yaml"], ["--config {root}/absent.yaml", "no such file"]),
    ("config not YAML", ["--config", "{root}/broken.yaml"], ["--config {root}/broken.yaml", "flow sequence"]),
    ("config not a mapping", ["--config", "{root}/list.yaml"], ["must contain a YAML mapping"]),
    ("unknown YAML key", ["--config", "{root}/typo.yaml"], ["--config {root}/typo.yaml", "learning_rat"]),
    ("unknown option", ["--no_such_option", "1"], ["--no_such_option"]),
    (
        "value of the wrong type",
        ["--learning_rate", "fast"],
        ["sft.py: error: argument --learning_rate", "invalid float value: 'fast'"],
    ),
    ("not a boolean", ["--freeze_vision_tower", "perhaps"], ["--freeze_vision_tower", "perhaps"]),
    ("unknown stage", ["--stage", "both"], ["stage: 'both'", "['full', 'projector']"]),
    ("unknown missing_images", ["--missing_images", "maybe"], ["missing_images: 'maybe'"]),
    ("learning rate NaN", ["--learning_rate", "nan"], ["learning_rate: nan must be a finite number above 0"]),
    ("negative learning rate", ["--learning_rate=-1e-4"], ["learning_rate: -0.0001"]),
    ("batch size 0", ["--per_device_train_batch_size", "0"], ["per_device_train_batch_size: 0 must be at least 1"]),
    ("max_length 0", ["--max_length", "0"], ["max_length: 0 must be at least 1"]),
    ("max_image_side 0", ["--max_image_side", "0"], ["max_image_side: 0", "positive"]),
    ("model folder missing", ["--model_name_or_path", "{root}/absent-model"], ["{root}/absent-model: no such folder"]),
    ("model path is a file", ["--model_name_or_path", "{root}/template.txt"], ["template.txt: not a folder"]),
    ("chat template missing", ["--chat_template_path", "{root}/absent.jinja"], ["{root}/absent.jinja: no such file"]),
    (
        "dataset folder missing",
        ["--dataset_name", "{root}/absent-repo"],
        ["dataset {root}/absent-repo", "no such folder"],
    ),
    ("unknown dataset config", ["--dataset_config", "90k"], ["(config 90k)", "'90k' not found"]),
    (
        "mixture file missing",
        ["--dataset_name", "", "--dataset_mixture", "{root}/absent-mix.yaml"],
        ["dataset_mixture {root}/absent-mix.yaml: no such file"],
    ),
    ("mixture not a mapping", ["--dataset_name", "", "--dataset_mixture", "{root}/list.yaml"], ["must be a mapping"]),
    ("eval results missing", ["--eval_results_file", "{root}/absent.json"], ["eval_results_file {root}/absent.json"]),
    ("push without repo", ["--push_to_hub", "true"], ["push_to_hub: true needs hub_model_id"]),
    ("merge without LoRA", ["--merged_output_dir", "{root}/merged"], ["merged_output_dir", "use_peft"]),
    ("LoRA in the projector stage", ["--use_peft", "true", "--stage", "projector"], ["stage: projector", "LoRA"]),
    (
        "LoRA on the frozen tower",
        ["--use_peft", "true", "--lora_target_modules", "q_proj", "v_proj"],
        ["frozen vision"],
    ),
    (
        "LoRA target matching nothing",
        ["--use_peft", "true", "--lora_target_modules", "q_proj"],
        ["regular expression"],
    ),
]


@pytest.mark.parametrize(("case", "arguments", "expected"), CASES, ids=[case for case, _, _ in CASES])
def test_bad_input_is_one_error_line_and_exit_1(sft, folders, case, arguments, expected, capsys, monkeypatch):
    root, good = folders
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("VITAL_DEBUG", raising=False)
    argv = [a.format(root=root) for a in arguments]
    if argv[0] != "--config":
        argv = ["--config", str(good), *argv]
    status = run_reporting_errors("sft.py", lambda: sft.main(*sft.parse(argv)))
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("sft.py: error: ")]
    assert status == 1
    assert len(errors) == 1, errors
    for fragment in expected:
        assert fragment.format(root=root) in errors[0], errors[0]
    assert not (root / "out" / "trainer_state.json").exists()  # nothing trained


@pytest.mark.slow
def test_the_command_prints_one_line_and_a_traceback_only_with_vital_debug(folders):
    root, good = folders
    env = {k: v for k, v in os.environ.items() if k != "VITAL_DEBUG" and not k.startswith("HF_")}
    env.update(HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO_ROOT), CUDA_VISIBLE_DEVICES="")
    argv = [sys.executable, str(SFT_SCRIPT), "--config", str(good), "--stage", "both"]
    quiet = subprocess.run(argv, env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert quiet.returncode == 1
    assert "Traceback" not in quiet.stderr
    assert [line for line in quiet.stderr.splitlines() if "error" in line.lower()] == [
        "sft.py: error: stage: 'both' is not one of ['full', 'projector']"
    ]
    loud = subprocess.run(argv, env={**env, "VITAL_DEBUG": "1"}, cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert loud.returncode != 0 and "Traceback" in loud.stderr
