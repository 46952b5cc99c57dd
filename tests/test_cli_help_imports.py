"""`vital <command> --help` answers without importing the heavy libraries the command needs only when it runs.

Each command's help runs in a fresh interpreter with `-X importtime`, which lists every module imported.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from vital_hub.cli import COMMANDS

REPO_ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "transformers", "pyarrow", "datasets", "aiohttp", "cv2")
# The second word of the commands that take a subcommand; checked against each group's own --help below.
SUBCOMMANDS = {
    ("sources",): ("list", "fetch", "verify"),
    ("generate",): ("candidates", "collect", "reference-answers"),
    ("judge",): ("rubric",),
    ("preferences",): ("sample", "build", "pairs", "agreement", "mix"),
    ("annotate",): ("serve", "add-annotator"),
    ("eval",): ("answer", "chat", "vqa-prepare", "vqa-score", "winrate", "report"),
}
# Still importing a heavy library for --help (its own module imports it at the top): a strict xfail, so the day
# it is fixed this list must shrink.
STILL_HEAVY: dict[tuple[str, ...], str] = {}


def every_invocation() -> list[tuple[str, ...]]:
    words = []
    for command in COMMANDS:
        words.append(command.words)
        if command.subcommands:
            words += [command.words + (sub,) for sub in SUBCOMMANDS[command.words]]
    return words


def imported_modules(words: tuple[str, ...]) -> tuple[subprocess.CompletedProcess, set[str]]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])))
    run = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "vital_hub.cli", *words, "--help"],
        capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=120,
    )  # fmt: skip
    lines = [line for line in run.stderr.splitlines() if line.startswith("import time:")]
    return run, {line.rsplit("|", 1)[-1].strip() for line in lines}


def test_every_command_with_subcommands_has_them_listed():
    grouped = {c.words for c in COMMANDS if c.subcommands}
    assert grouped == set(SUBCOMMANDS)


@pytest.mark.parametrize("words", [w for w in SUBCOMMANDS], ids=" ".join)
def test_listed_subcommands_are_the_groups_own(words):
    run, _ = imported_modules(words)
    assert run.returncode == 0, run.stderr
    assert all(sub in run.stdout + run.stderr for sub in SUBCOMMANDS[words]), run.stdout + run.stderr


@pytest.mark.parametrize(
    "words",
    [
        pytest.param(w, marks=pytest.mark.xfail(reason=STILL_HEAVY[w], strict=True)) if w in STILL_HEAVY else w
        for w in every_invocation()
    ],
    ids=" ".join,
)
def test_help_imports_no_heavy_library(words):
    run, modules = imported_modules(words)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "usage" in (run.stdout + run.stderr).lower(), run.stdout
    assert "vital_hub.cli_args" in modules  # the list is real: the entry point's own imports are in it
    heavy = sorted(m for m in modules if m in HEAVY)
    assert not heavy, f"`vital {' '.join(words)} --help` imported {heavy}"
