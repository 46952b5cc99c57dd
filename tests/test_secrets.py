"""Credentials never leave the process: every command that talks to a model server, run as the user runs it,
against a server that quotes the rejected key back in its error body."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.conftest import REPO_ROOT
from tests.fakes.openai_server import FakeOpenAIServer
from tests.generation_support import make_demonstrations, make_figures
from tests.test_annotate_app import write_items
from vital_hub.redaction import environment_secrets, redact

API_KEY = "sk-proj-LEAKCHECK-0123456789abcdef"
HF_TOKEN = "hf_LEAKCHECKtoken0123456789"


def qa50(path: Path, count: int = 3) -> Path:
    rows = [
        {"question_id": i, "image": f"{i}.jpg", "text": f"What is shown {i}?\n<image>", "gpt4_answer": f"ref {i}",
         "type": "conversation", "fig_caption": f"caption {i}"}
        for i in range(count)
    ]  # fmt: skip
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def answers(path: Path, count: int = 3) -> Path:
    path.write_text("".join(json.dumps({"question_id": i, "text": f"answer {i}"}) + "\n" for i in range(count)))
    return path


def command_lines(tmp: Path, url: str) -> dict[str, tuple[list[str], list[Path]]]:
    """Each command's arguments and the folders/files it writes."""
    images, captions, _ = make_figures(tmp / "figs", 2)
    questions = qa50(tmp / "qa50.jsonl")
    a, b = answers(tmp / "a.jsonl"), answers(tmp / "b.jsonl")
    server = ["--base-url", url, "--max-retries", "0", "--concurrency", "1"]
    return {
        "generate candidates": (
            ["generate", "candidates", "--figures", str(images), "--captions", str(captions), "--out",
             str(tmp / "gen"), "--model", "gpt-4o", "--demos", str(make_demonstrations(tmp / "demos.json")), *server],
            [tmp / "gen"],
        ),
        "generate reference-answers": (
            ["generate", "reference-answers", "--questions", str(questions), "--out", str(tmp / "ref.jsonl"),
             "--model", "gpt-4o", *server],
            [tmp / "ref.jsonl", tmp / "ref.jsonl.cache.sqlite"],
        ),
        "judge rubric": (
            ["judge", "rubric", "--candidates", str(write_items(tmp / "items", count=3)), "--out", str(tmp / "judge"),
             "--model", "m", "--no-send-images", *server],
            [tmp / "judge"],
        ),
        "eval chat": (
            ["eval", "chat", "--questions", str(questions), "--answers", str(a), "--out-dir", str(tmp / "chat"),
             "--judge-model", "m", *server],
            [tmp / "chat"],
        ),
        "eval winrate": (
            ["eval", "winrate", "--questions", str(questions), "--answers-a", str(a), "--answers-b", str(b),
             "--out-dir", str(tmp / "win"), "--judge-model", "m", *server],
            [tmp / "win"],
        ),
        "eval answer": (
            ["eval", "answer", "--backend", "openai", "--questions", str(questions), "--out",
             str(tmp / "answers.jsonl"), "--model", "m", "--cache-path", str(tmp / "answer-cache.sqlite"), *server],
            [tmp / "answers.jsonl", tmp / "answer-cache.sqlite"],
        ),
    }  # fmt: skip


def written_text(paths: list[Path]) -> str:
    """Everything the command left on disk, parquet shards decoded so compression cannot hide a key."""
    texts = []
    for root in paths:
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for path in files:
            if path.suffix == ".parquet":
                texts.append(json.dumps(pq.read_table(path).to_pylist(), default=str))
            else:
                texts.append(path.read_bytes().decode("utf-8", "replace"))
    return "\n".join(texts)


@pytest.mark.parametrize(
    "name",
    ["generate candidates", "generate reference-answers", "judge rubric", "eval chat", "eval winrate", "eval answer"],
)
@pytest.mark.parametrize("status", ["401", "400"])
def test_an_echoed_key_appears_in_no_output_and_no_file(tmp_path, name, status):
    """401 stops the run with one line; 400 fails each request, and its message lands in the rows written."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OPENAI_API_KEY": API_KEY, "HF_TOKEN": HF_TOKEN}
    env.pop("VITAL_DEBUG", None)
    with FakeOpenAIServer(faults={"chat": [status] * 200}, echo_credentials=True) as server:
        argv, outputs = command_lines(tmp_path, server.url)[name]
        done = subprocess.run(
            [sys.executable, "-m", "vital_hub.cli", *argv], env=env, cwd=REPO_ROOT, capture_output=True, text=True,
            timeout=120,
        )  # fmt: skip
        assert server.chat_log(status=int(status)), "the server was never asked"
    shown = done.stdout + done.stderr
    assert API_KEY not in shown and HF_TOKEN not in shown, shown[-2000:]
    assert "Traceback" not in shown, shown[-3000:]
    assert API_KEY not in written_text(outputs)
    if status == "401":
        assert done.returncode == 1, shown[-2000:]
        errors = [line for line in done.stderr.splitlines() if ": error: " in line]
        assert len(errors) == 1 and errors[0].startswith(f"vital {name}: error: HTTP 401"), done.stderr[-2000:]
        assert "the API key was rejected" in errors[0] and "Incorrect API key provided: <token>" in errors[0]


def test_a_key_in_a_custom_variable_is_redacted(tmp_path):
    """--api-key-env names a variable that does not look like a credential: its value is still redacted."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "MY_LLM_CREDENTIAL": API_KEY}
    env.pop("OPENAI_API_KEY", None)
    with FakeOpenAIServer(faults={"chat": ["401"]}, echo_credentials=True) as server:
        argv, _ = command_lines(tmp_path, server.url)["eval chat"]
        done = subprocess.run(
            [sys.executable, "-m", "vital_hub.cli", *argv, "--api-key-env", "MY_LLM_CREDENTIAL"], env=env,
            cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    assert done.returncode == 1 and API_KEY not in done.stderr and "<token>" in done.stderr, done.stderr[-2000:]


def test_redact_replaces_secrets_and_url_passwords(monkeypatch):
    monkeypatch.setenv("SOME_SERVICE_TOKEN", "tok-abcdefgh-123")
    monkeypatch.setenv("DEBUG_FLAG", "1")
    assert "tok-abcdefgh-123" in environment_secrets()
    assert redact("a sk-long-key and sk-long", "sk-long", "sk-long-key") == "a <token> and <token>"
    assert redact("see https://bob:pw123@host/x and http://host:8080/v1") == (
        "see https://bob:<token>@host/x and http://host:8080/v1"
    )
    assert redact("nothing here", None, "") == "nothing here"


URL_PASSWORD = "Url-Password-0123456789"


@pytest.mark.parametrize(
    "name",
    ["generate candidates", "generate reference-answers", "judge rubric", "eval chat", "eval winrate", "eval answer"],
)
@pytest.mark.parametrize("carrier", ["api key", "url password"])
def test_a_key_in_a_successful_reply_is_written_nowhere(tmp_path, name, carrier):
    """The server answers 200 and quotes the credential it got (Bearer key, or the Basic user:password that a
    `--base-url http://user:password@host/v1` sends): no parquet, JSONL, cache, run.json or output line holds it,
    and no file records the URL with its password."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OPENAI_API_KEY": API_KEY}
    env.pop("VITAL_DEBUG", None)
    with FakeOpenAIServer(echo_credentials_in_reply=True) as server:
        url = server.url if carrier == "api key" else server.url.replace("://", f"://proxyuser:{URL_PASSWORD}@")
        argv, outputs = command_lines(tmp_path, url)[name]
        done = subprocess.run(
            [sys.executable, "-m", "vital_hub.cli", *argv], env=env, cwd=REPO_ROOT, capture_output=True, text=True,
            timeout=120,
        )  # fmt: skip
        assert server.chat_log(status=200), "the server was never asked"
    shown = done.stdout + done.stderr
    assert "Traceback" not in shown, shown[-3000:]
    written = written_text(outputs)
    assert "You called me with" in written  # the replies themselves were kept ...
    for secret in (API_KEY, URL_PASSWORD):
        assert secret not in shown and secret not in written  # ... without the credential they quoted
    if carrier == "url password":
        assert "You called me with proxyuser:<token>" in written
        if name in ("generate candidates", "judge rubric"):
            recorded = json.loads((outputs[0] / "run.json").read_text())["config"]["base_url"]
            assert recorded == server.url  # the endpoint, without user:password@


def test_batch_jobs_on_an_endpoint_with_credentials_are_collected_with_them_given_again(tmp_path, monkeypatch):
    """run.json keeps `--base-url` without user:password@; collect gets the URL again, for that endpoint only."""
    from vital_hub.generation.batch import collect
    from vital_hub.generation.client import FatalAPIError

    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
    images, captions, _ = make_figures(tmp_path / "figs", 2)
    out = tmp_path / "gen"
    with FakeOpenAIServer(require_credential=f"proxyuser:{URL_PASSWORD}", echo_credentials_in_reply=True) as server:
        secret_url = server.url.replace("://", f"://proxyuser:{URL_PASSWORD}@")
        done = subprocess.run(
            [sys.executable, "-m", "vital_hub.cli", "generate", "candidates", "--figures", str(images), "--captions",
             str(captions), "--out", str(out), "--model", "gpt-4o", "--demos",
             str(make_demonstrations(tmp_path / "demos.json")), "--base-url", secret_url, "--backend", "batch"],
            env={**os.environ, "PYTHONPATH": str(REPO_ROOT)}, cwd=REPO_ROOT, capture_output=True, text=True,
            timeout=120,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-2000:]
        assert json.loads((out / "run.json").read_text())["config"]["base_url"] == server.url
        with pytest.raises(FatalAPIError, match="HTTP 401"):
            collect(out)  # the recorded endpoint alone: no credentials
        with pytest.raises(SystemExit, match="is not the endpoint these jobs were submitted to"):
            collect(out, base_url=f"http://proxyuser:{URL_PASSWORD}@127.0.0.1:1/v1")
        assert collect(out, base_url=secret_url)["candidates"]
    assert URL_PASSWORD not in written_text([out])
