import os
import subprocess
import sys
from pathlib import Path

import pytest

from vital_hub.cli import COMMANDS, find_command, load, main

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c.words))
def test_every_command_resolves_to_a_callable(command):
    assert callable(load(command))


def test_longest_prefix_wins():
    command, rest = find_command(["build", "figures", "--out", "x"])
    assert command.target == "vital_hub.figures.cli:build_main" and rest == ["--out", "x"]
    assert find_command(["nope"]) is None


def test_help_lists_every_command(capsys):
    assert main(["--help"]) == 0
    text = capsys.readouterr().out
    assert all(" ".join(c.words) in text for c in COMMANDS)


def test_unknown_command_is_an_error(capsys):
    assert main(["frobnicate"]) == 2
    assert "unknown command 'frobnicate'" in capsys.readouterr().err


@pytest.mark.parametrize(
    "words", [["build", "instructions"], ["fetch", "figures"], ["push"], ["verify"], ["export", "llava"]]
)
def test_subcommand_help_runs_in_a_fresh_process(words):
    run = subprocess.run([sys.executable, "-m", "vital_hub.cli", *words, "--help"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "usage:" in run.stdout


def test_input_errors_are_one_line_and_debug_shows_the_traceback(tmp_path, capsys, monkeypatch):
    args = ["preferences", "build", "--annotations", str(tmp_path / "none"), "--out", str(tmp_path / "prefs")]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert err.startswith("vital preferences build: error:") and str(tmp_path / "none") in err
    assert "Traceback" not in err
    monkeypatch.setenv("VITAL_DEBUG", "1")
    with pytest.raises(FileNotFoundError, match="none"):
        main(args)


def test_a_reader_that_stops_early_gets_no_error_line():
    """`vital sources list | head -1`: the closed pipe ends the command quietly, as it does other tools."""
    import os

    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader has already gone: the first write meets a closed pipe
    try:
        writer = subprocess.run([sys.executable, "-m", "vital_hub.cli", "sources", "list"], stdout=write_end,
                                stderr=subprocess.PIPE, text=True)  # fmt: skip
    finally:
        os.close(write_end)
    assert writer.stderr == ""
    assert writer.returncode == 1


@pytest.mark.parametrize(
    "argv",
    [
        ["fetch", "figures", "--help"],
        ["fetch", "figures", "--urls", "u.jsonl", "--out", "o", "--shard", "5/2"],
        ["fetch", "figures", "--concurrency", "many"],
        ["build", "figures", "--help"],
        ["build", "figures", "--index", "i", "--out", "o", "--shard-mb", "big"],
    ],
    ids=["fetch-help", "fetch-bad-shard", "fetch-bad-number", "build-help", "build-bad-number"],
)
def test_figures_help_and_flag_errors_import_neither_pyarrow_nor_aiohttp(argv, tmp_path):
    """Parsing the figures commands' options must not pay for the HTTP client (aiohttp) or the index (pyarrow)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    run = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "vital_hub.cli", *argv],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60,
    )  # fmt: skip
    assert run.returncode == (0 if argv[-1] == "--help" else 2), run.stderr[-2000:]
    imported = {line.rsplit("|", 1)[-1].strip() for line in run.stderr.splitlines() if line.startswith("import time:")}
    assert "vital_hub.figures.options" in imported  # the options were parsed in this process
    assert not {"pyarrow", "aiohttp", "vital_hub.figures.pipeline", "vital_hub.figures.dataset"} & imported
