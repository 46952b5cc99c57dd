"""Option values that make no sense are refused where they are parsed, with argparse's one-line error (exit 2):
counts of 0 or far beyond any real run, negative sizes, NaN or infinite numbers, fractions outside [0, 1), ports
above 65535, in a flag or in a `--config` YAML file alike. Old flag spellings still parse, hidden from --help;
every --help (commands and groups) answers without importing torch.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT
from vital_hub.cli import main as vital

GEN = ["generate", "candidates", "--figures", "f", "--out", "o", "--model", "m"]
JUDGE = ["judge", "rubric", "--candidates", "c", "--out", "o", "--model", "m"]
SELECT = ["select", "--selector", "s", "--candidates", "c", "--out", "o"]
SERVE = ["annotate", "serve", "--items", "i", "--out", "o"]
FETCH = ["fetch", "figures", "--urls", "u", "--out", "o"]
ANSWER = ["eval", "answer", "--questions", "q", "--out", "o", "--model", "m"]
CHAT = ["eval", "chat", "--questions", "q", "--answers", "a", "--out", "o", "--judge-model", "m"]

BAD_VALUES = [
    (GEN, "--concurrency", "0"),
    (GEN, "--samples", "-1"),
    (GEN, "--timeout-s", "nan"),
    (GEN, "--max-retries", "-1"),
    (GEN, "--top-p", "1.5"),
    (GEN, "--temperature", "inf"),
    (GEN, "--max-image-side", "0"),
    (GEN, "--shard-rows", "0"),
    (GEN, "--mode", "chat"),
    (GEN, "--samples", str(10**20)),  # tried: the run grew past 20 GB building its work list
    (GEN, "--concurrency", str(10**9)),
    (JUDGE, "--chunk-size", "0"),
    (JUDGE, "--limit", "0"),
    (JUDGE, "--max-image-side", "-5"),
    (["preferences", "mix", "--repo", "r"], "--clinician-weight", "nan"),
    (["preferences", "mix", "--repo", "r"], "--clinician-weight", "inf"),
    (["preferences", "mix", "--repo", "r"], "--clinician-weight", "0"),
    (["preferences", "pairs", "--scores", "s", "--out", "o"], "--n", "0"),
    (["preferences", "pairs", "--scores", "s", "--out", "o"], "--test-fraction", "1.0"),
    (["preferences", "build", "--annotations", "a", "--out", "o"], "--test-fraction", "-0.1"),
    (["preferences", "sample", "--candidates", "c", "--out", "o"], "--k", "0"),
    (["preferences", "sample", "--candidates", "c", "--out", "o"], "--image-weight", "nan"),
    ([*SELECT, "--top", "5"], "--shard-size", "0"),
    ([*SELECT, "--top", "5"], "--batch-size", "0"),
    ([*SELECT, "--top", "5"], "--workers", "-1"),
    ([*SELECT, "--top", "5"], "--domain-quotas", "mri=nan"),
    (SELECT, "--top", "0"),
    (SELECT, "--top-percent", "101"),
    (SERVE, "--port", "70000"),
    (SERVE, "--port", "-1"),
    (SERVE, "--session-hours", "0"),
    (FETCH, "--concurrency", "0"),
    (FETCH, "--timeout-s", "0"),
    (FETCH, "--max-image-mb", "nan"),
    (FETCH, "--rate-limit", "-1"),
    (["build", "figures", "--index", "i", "--out", "o"], "--workers", "0"),
    (["build", "figures", "--index", "i", "--out", "o"], "--shard-mb", "0"),
    (["build", "instructions", "--sources", "s", "--out", "o"], "--workers", "0"),
    (["build", "instructions", "--sources", "s", "--out", "o"], "--shard-rows", "-3"),
    (["audit", "contamination", "--train", "t", "--eval", "e=q", "--out", "o"], "--workers", "0"),
    (["audit", "contamination", "--train", "t", "--eval", "e=q", "--out", "o"], "--max-distance", "-1"),
    (ANSWER, "--batch-size", "0"),
    (ANSWER, "--max-new-tokens", "0"),
    (ANSWER, "--backend", "vllm"),
    (CHAT, "--bootstrap", "-1"),
    (CHAT, "--requests-per-minute", "0"),
    (
        [
            "eval",
            "winrate",
            "--questions",
            "q",
            "--answers-a",
            "a",
            "--answers-b",
            "b",
            "--out",
            "o",
            "--judge-model",
            "m",
        ],
        "--max-tokens",
        "0",
    ),  # fmt: skip
    (["eval", "vqa-prepare", "--dataset", "vqa-rad", "--out", "o"], "--limit", "0"),
    (["generate", "collect", "--out", "o"], "--interval", "0"),
    (["generate", "collect", "--out", "o"], "--interval", "1e308"),
    (SERVE, "--session-hours", "1e308"),
    (CHAT, "--bootstrap", str(10**12)),
    (["build", "figures", "--index", "i", "--out", "o"], "--workers", "100000"),
    (["generate", "reference-answers", "--questions", "q", "--out", "o", "--model", "m"], "--max-tokens", "0"),
    (["convert", "llava-original", "--model", "m", "--out", "o"], "--max-shard-gb", "0"),
]


def _run(argv: list[str], capsys) -> tuple[int, str]:
    capsys.readouterr()
    try:
        code = vital(argv)
    except SystemExit as stop:
        code = stop.code
    return code, capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "flag", "value"), BAD_VALUES, ids=lambda x: " ".join(x) if isinstance(x, list) else x
)
def test_a_value_that_makes_no_sense_is_refused_where_parsed(argv, flag, value, capsys, monkeypatch):
    monkeypatch.delenv("VITAL_DEBUG", raising=False)
    code, err = _run([*argv, flag, value], capsys)
    errors = [line for line in err.splitlines() if "error:" in line]
    assert code == 2 and "Traceback" not in err, err[-1500:]
    assert len(errors) == 1 and f"argument {flag}: " in errors[0] and value in errors[0], err[-1500:]


@pytest.mark.parametrize(
    ("argv", "yaml", "said"),
    [
        (["build", "figures", "--index", "i", "--out", "o"], "workers: two\n", "option workers: expected a whole number"),
        (GEN, "concurrency: .nan\n", "option concurrency: expected a whole number"),
        (GEN, "timeout_s: .inf\n", "option timeout_s: expected a finite number"),
        (GEN, "send_seed: maybe\n", "option send_seed: expected true or false"),
        (GEN, "mode: [conversation]\n", "option mode: expected a single value"),
        (["preferences", "mix", "--repo", "r"], "clinician-weight: -1\n", "option clinician_weight: must be a number above 0"),
        (ANSWER, "image_folder: x\nimages: y\n", "'images' repeats an option given above under another spelling"),
        (["build", "figures", "--index", "i", "--out", "o"], "[" * 200_000 + "\n", "nested too deeply"),
    ],
)  # fmt: skip
def test_a_yaml_option_file_is_checked_as_flags_are(argv, yaml, said, tmp_path, capsys):
    path = tmp_path / "options.yaml"
    path.write_text(yaml)
    code, err = _run([*argv, "--config", str(path)], capsys)
    errors = [line for line in err.splitlines() if "error:" in line]
    assert code == 2 and "Traceback" not in err and len(errors) == 1, err[-1500:]
    assert str(path) in errors[0] and said in errors[0], errors[0]


def test_old_spellings_parse_hidden_from_help(capsys):
    from vital_hub.config import parse_config
    from vital_hub.eval.answer import AnswerConfig
    from vital_hub.eval.chat import ChatJudgeConfig
    from vital_hub.hub import parse_push_args

    old = parse_config(
        AnswerConfig,
        ["--questions", "q", "--out", "o", "--model", "m", "--image-folder", "imgs", "--image-detail", "low",
         "--cache-path", "c.sqlite"],
        "vital eval answer", "",
    )  # fmt: skip
    new = parse_config(
        AnswerConfig,
        ["--questions", "q", "--out", "o", "--model", "m", "--images", "imgs", "--detail", "low", "--cache", "c.sqlite"],
        "vital eval answer", "",
    )  # fmt: skip
    assert old == new and new.image_folder == "imgs" and new.image_detail == "low" and new.cache_path == "c.sqlite"
    chat = parse_config(ChatJudgeConfig, ["--reviews", "r.jsonl", "--out-dir", "runs"], "vital eval chat", "")
    assert chat.out_dir == "runs"
    assert parse_push_args(["--repo", "folder", "--to", "me/x"]).repo == "folder"
    assert parse_push_args(["folder", "--to", "me/x"]).repo == "folder"
    for argv, old_flags, new_flags in [
        (
            ["eval", "answer"],
            ["--image-folder", "--image-detail", "--cache-path"],
            ["--images", "--detail", "--cache"],
        ),
        (["eval", "chat"], ["--out-dir", "--image-folder", "--cache-path"], ["--out ", "--images", "--cache"]),
        (["judge", "rubric"], ["--image-max-side"], ["--max-image-side"]),
        (["fetch", "figures"], ["--timeout "], ["--timeout-s"]),
        (["audit", "contamination"], ["--hash-cache"], ["--cache"]),
        (["build", "instructions"], ["--rows-per-shard"], ["--shard-rows"]),
        (["select"], ["--num-workers"], ["--workers"]),
        (["push"], ["--repo "], ["FOLDER", "--to"]),
    ]:
        with pytest.raises(SystemExit):
            vital([*argv, "--help"])
        page = capsys.readouterr().out
        assert all(flag in page for flag in new_flags), (argv, page)
        assert not any(flag in page for flag in old_flags), (argv, page)


def test_choices_are_listed_and_defaults_said_once(capsys):
    with pytest.raises(SystemExit):
        vital(["generate", "candidates", "--help"])
    page = capsys.readouterr().out
    assert "--mode {conversation,dual-answer}" in page and "--backend {online,batch}" in page
    assert "(default: None)" not in page and page.count("(default: conversation)") == 1


HELP_RUN = """
import sys
from vital_hub.cli import COMMANDS, main

words = []
for command in COMMANDS:
    words.append(list(command.words))
words += [["build"], ["fetch"], ["audit"], ["convert"], ["export"], ["eval", "chat"], ["eval", "report"],
          ["preferences", "sample"], ["annotate", "serve"], ["generate", "candidates"], ["judge", "rubric"]]
for argv in words:
    try:
        code = main([*argv, "--help"])
    except SystemExit as stop:
        code = stop.code
    assert code in (0, None), (argv, code)
heavy = sorted(name for name in ("torch", "transformers", "accelerate", "matplotlib", "sklearn") if name in sys.modules)
print("heavy:", heavy)
"""


def test_every_help_answers_without_importing_torch():
    """What made `vital select --help` take 10-45 s: torch imported before the options were parsed."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", HELP_RUN], env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "heavy: []"
    assert "usage: vital build COMMAND" in done.stdout and "build figures" in done.stdout


def test_hand_written_help_pages_state_each_default_once(capsys):
    for argv, said in [
        (["select"], "candidates per forward pass (default: 256)"),
        (["eval", "vqa-score"], "headline rules (default: llava-med)"),
        (["annotate", "serve"], "(default: 7860)"),
        (["sources", "fetch"], "folder for the files (default: sources)"),
    ]:
        with pytest.raises(SystemExit):
            vital([*argv, "--help"])
        page = " ".join(capsys.readouterr().out.split())
        assert said in page and "(default: None)" not in page and "default: sources) (default" not in page
