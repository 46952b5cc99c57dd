"""Each extra installs what its commands import, and a command whose optional module is missing stops before any
paid or long work with one line naming the package and the extra.

A missing module is simulated the way a machine without it behaves: an import hook in a real subprocess makes
`import matplotlib` (or torch) fail, and the fake OpenAI server counts the requests that reached it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib

import pytest

from tests.annotate_helpers import write_items
from tests.conftest import REPO_ROOT
from tests.fakes.openai_server import FakeOpenAIServer
from vital_hub.cli import COMMANDS, NEEDS
from vital_hub.cli_args import PACKAGES

BLOCKED_RUN = """
import sys

class Missing:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {blocked!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None

sys.meta_path.insert(0, Missing())
from vital_hub.cli import main
sys.exit(main({argv!r}))
"""


def run_without(blocked: set[str], argv: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OPENAI_API_KEY": "test-key"}
    env.pop("VITAL_DEBUG", None)
    code = BLOCKED_RUN.format(blocked=blocked, argv=argv)
    return subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )


def test_judge_without_matplotlib_stops_before_any_request(tmp_path):
    items = write_items(tmp_path / "items", count=2)
    with FakeOpenAIServer() as server:
        done = run_without(
            {"matplotlib"},
            ["judge", "rubric", "--candidates", str(items), "--out", str(tmp_path / "judge"), "--model", "m",
             "--base-url", server.url, "--no-send-images"],
        )  # fmt: skip
        sent = server.chat_log(status=None)
    assert done.returncode == 1, done.stderr[-2000:]
    assert done.stderr.strip() == (
        "vital judge rubric: error: needs 'matplotlib', not installed: pip install 'vital-hub[gen]'"
    )
    assert sent == [] and not (tmp_path / "judge").exists()


def test_preferences_sample_without_matplotlib_or_torch_names_the_extra(tmp_path):
    items = write_items(tmp_path / "items", count=3)
    argv = ["preferences", "sample", "--candidates", str(items), "--out", str(tmp_path / "s.jsonl"), "--k", "2"]
    done = run_without({"matplotlib"}, [*argv, "--encoder", "hashing"])
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "needs 'matplotlib', not installed: pip install 'vital-hub[annotate]'" in done.stderr
    done = run_without({"torch"}, argv)  # the default clip encoder runs a model
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "needs 'torch', not installed: pip install 'vital-hub[train]' (the clip encoder" in done.stderr
    assert not (tmp_path / "s.jsonl").exists()


def test_eval_answer_names_the_extra_of_its_backend(tmp_path):
    questions = tmp_path / "q.jsonl"
    questions.write_text('{"question_id": 1, "image": "1.jpg", "text": "What?"}\n')
    argv = ["eval", "answer", "--questions", str(questions), "--out", str(tmp_path / "a.jsonl"), "--model", "m"]
    done = run_without({"torch"}, argv)
    assert done.returncode == 1 and "pip install 'vital-hub[train]'" in done.stderr, done.stderr[-2000:]
    done = run_without({"openai"}, [*argv, "--backend", "openai", "--base-url", "http://127.0.0.1:9/v1"])
    assert done.returncode == 1 and "needs 'openai', not installed: pip install 'vital-hub[eval]'" in done.stderr


def test_help_answers_without_the_extra():
    done = run_without({"openai", "matplotlib"}, ["judge", "rubric", "--help"])
    assert done.returncode == 0 and "--candidates" in done.stdout


def _extra_packages(pyproject: dict, extra: str) -> set[str]:
    """Distribution names an extra installs (with the core dependencies), version specifiers dropped."""
    import re

    def names(specs):
        return {re.split(r"[<>=\[ ;]", spec, maxsplit=1)[0].lower() for spec in specs}

    project = pyproject["project"]
    return names(project["dependencies"]) | names(project["optional-dependencies"][extra])


@pytest.mark.parametrize("words", sorted(NEEDS), ids=" ".join)
def test_each_extra_installs_what_its_commands_need(words):
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    command = next(c for c in COMMANDS if c.words == words[: len(c.words)])
    installed = _extra_packages(pyproject, command.extra)
    # what the distributions themselves bring (transformers brings safetensors; matplotlib brings numpy)
    installed |= {"safetensors"} if "transformers" in installed else set()
    installed |= {"numpy"} if "matplotlib" in installed else set()
    wanted = {PACKAGES.get(module, module).lower() for module in NEEDS[words]}
    assert wanted <= installed, f"vital {' '.join(words)}: [{command.extra}] lacks {sorted(wanted - installed)}"


def test_a_command_module_that_cannot_import_its_extra_names_it(tmp_path):
    """The module of `vital annotate serve` imports uvicorn itself: without it, the same one line."""
    done = run_without({"uvicorn", "fastapi"}, ["annotate", "serve", "--items", "i", "--out", str(tmp_path)])
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.strip().startswith("vital annotate serve: error: needs 'fastapi', 'uvicorn', not installed")
