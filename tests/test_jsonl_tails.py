"""A last JSONL line without its newline, through the commands that read JSONL, run as the user runs them: a
finished record is always kept; only an unparsable last line of a log the project appends to itself is taken for
a crash's leftover; in a user's input file any bad line is an error."""

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT
from tests.fakes.judge_replies import chat_judge_reply, pairwise_judge_reply
from tests.fakes.openai_server import FakeOpenAIServer
from tests.test_annotate_app import write_items
from tests.test_preferences_judge import scripted_reply
from tests.test_preferences_pairs import judgement
from tests.test_secrets import qa50
from vital_hub.preferences.cli import judge_main
from vital_hub.preferences.repo import read_config


def vital(*argv: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "vital_hub.cli", *argv], env={**os.environ, "PYTHONPATH": str(REPO_ROOT), **env},
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def without_final_newline(path) -> None:
    data = path.read_bytes()
    assert data.endswith(b"\n")
    path.write_bytes(data[:-1])


def test_preferences_build_keeps_a_last_judgement_without_newline(tmp_path):
    annotations = tmp_path / "annotations"
    annotations.mkdir()
    log = annotations / "dr_a.jsonl"
    rows = [judgement(f"3000{i}_F1#q0", True, False) for i in range(3)]
    log.write_text("\n".join(json.dumps({k: v for k, v in r.items() if k != "annotator"}) for r in rows))
    done = vital("preferences", "build", "--annotations", str(annotations), "--out", str(tmp_path / "prefs"))
    assert done.returncode == 0, done.stderr[-2000:]
    assert len(read_config(tmp_path / "prefs", "clinician")) == 3
    assert "unfinished" not in done.stderr


def test_preferences_pairs_keeps_a_last_score_without_newline(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    items = write_items(tmp_path / "items", count=5)
    with FakeOpenAIServer(reply=scripted_reply) as server:
        judge_main(["rubric", "--candidates", str(items), "--out", str(tmp_path / "judge"), "--model", "m",
                    "--base-url", server.url, "--no-send-images", "--max-retries", "0"])  # fmt: skip
    scores = tmp_path / "judge" / "scores.jsonl"
    args = ["--n", "100", "--test-fraction", "0", "--seed", "1"]
    whole = vital("preferences", "pairs", "--scores", str(scores), "--out", str(tmp_path / "a"), *args)
    assert whole.returncode == 0, whole.stderr[-2000:]
    without_final_newline(scores)
    cut = vital("preferences", "pairs", "--scores", str(scores), "--out", str(tmp_path / "b"), *args)
    assert cut.returncode == 0, cut.stderr[-2000:]
    assert read_config(tmp_path / "b", "model") == read_config(tmp_path / "a", "model")
    assert "unfinished" not in cut.stderr


def answers_file(path, count: int = 3, final_newline: bool = False):
    text = "\n".join(json.dumps({"question_id": i, "text": f"a fairly long answer number {i}"}) for i in range(count))
    path.write_text(text + ("\n" if final_newline else ""))
    return path


@pytest.mark.parametrize("command", ["chat", "winrate"])
def test_eval_judges_read_every_answer_of_a_file_without_final_newline(tmp_path, command):
    questions = qa50(tmp_path / "qa50.jsonl")
    a = answers_file(tmp_path / "a.jsonl")
    b = answers_file(tmp_path / "b.jsonl")
    reply = chat_judge_reply if command == "chat" else pairwise_judge_reply
    with FakeOpenAIServer(reply=reply) as server:
        common = ["--questions", str(questions), "--out-dir", str(tmp_path / "out"), "--base-url", server.url,
                  "--judge-model", "m"]  # fmt: skip
        answer_args = ["--answers", str(a)] if command == "chat" else ["--answers-a", str(a), "--answers-b", str(b)]
        if command == "winrate":
            common.append("--no-both-orders")
        done = vital("eval", command, *common, *answer_args, OPENAI_API_KEY="test-key")
        assert done.returncode == 0, done.stderr[-2000:]
        assert len(server.chat_log()) == 3  # one judgement per question: none taken for missing
        a.write_text(a.read_text()[:-5])  # now the last line does not parse: the user's file is bad, not torn
        failed = vital("eval", command, *common, *answer_args, OPENAI_API_KEY="test-key")
    assert failed.returncode == 1 and "Traceback" not in failed.stderr
    (line,) = [ln for ln in failed.stderr.splitlines() if ": error: " in ln]
    assert line.startswith(f"vital eval {command}: error: {a}: line 3 is not valid JSON")


def test_eval_chat_refuses_a_missing_or_empty_answers_file_and_a_numeric_answer(tmp_path):
    questions = qa50(tmp_path / "qa50.jsonl")
    answers = tmp_path / "answers.jsonl"
    common = ["eval", "chat", "--questions", str(questions), "--answers", str(answers), "--out-dir",
              str(tmp_path / "out"), "--base-url", "http://127.0.0.1:9/v1", "--judge-model", "m"]  # fmt: skip
    for content, reason in (
        (None, "answers file does not exist"),
        ("", "no answers in the file"),
        ('{"question_id": 0, "text": 12345}\n', "'text' must be a string, got int"),
    ):
        if content is not None:
            answers.write_text(content)
        done = vital(*common, OPENAI_API_KEY="test-key")
        assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-2000:]
        assert f"vital eval chat: error: {answers}" in done.stderr and reason in done.stderr
    assert not (tmp_path / "out" / "chat_summary.json").exists()


def test_eval_answer_resumes_past_a_finished_last_line_without_newline(tmp_path):
    """The project's own answers log: the finished last answer is kept (not re-asked) and gets its newline."""
    questions = qa50(tmp_path / "qa50.jsonl")
    out = tmp_path / "answers.jsonl"
    with FakeOpenAIServer(reply=lambda body: "an answer") as server:
        args = ["eval", "answer", "--backend", "openai", "--questions", str(questions), "--out", str(out),
                "--model", "m", "--base-url", server.url, "--limit", "2"]  # fmt: skip
        assert vital(*args, OPENAI_API_KEY="test-key").returncode == 0
        without_final_newline(out)
        args[args.index("--limit") + 1] = "3"
        done = vital(*args, OPENAI_API_KEY="test-key")
        assert done.returncode == 0, done.stderr[-2000:]
        assert len(server.chat_log()) == 3
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["question_id"] for r in rows] == [0, 1, 2]
