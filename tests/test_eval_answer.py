"""Answering: question shapes, resumable JSONL, image checks, the server backend and multi-process sharding."""

import json
import os
import re
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT
from tests.fakes.openai_server import FakeOpenAIServer
from tests.fakes.tiny_llava import build_tiny_llava
from vital_hub.eval.answer import AnswerConfig, answer
from vital_hub.eval.records import JsonlAppender, load_image, load_questions, read_answer_log, read_answers
from vital_hub.schema import RecordError


def _png(path, color="red"):
    from PIL import Image

    Image.new("RGB", (40, 30), color).save(path)
    return path.name


@pytest.fixture
def eval_set(tmp_path):
    """Four qa50-shaped questions: a good image, an empty file, a cut-off JPEG and an absent file."""
    images = tmp_path / "images"
    images.mkdir()
    _png(images / "good.png")
    (images / "empty.jpg").write_bytes(b"")
    from PIL import Image

    Image.new("RGB", (64, 64), "blue").save(images / "full.jpg", quality=95)
    (images / "cut.jpg").write_bytes((images / "full.jpg").read_bytes()[:400])
    names = ["good.png", "empty.jpg", "cut.jpg", "absent.jpg"]
    questions = tmp_path / "questions.jsonl"
    questions.write_text(
        "".join(
            json.dumps(
                {
                    "question_id": i,
                    "image": name,
                    "text": f"What is in picture {i}?\n<image>",
                    "gpt4_answer": "ref",
                    "type": "conversation",
                }
            )
            + "\n"
            for i, name in enumerate(names)
        )
    )
    return questions, images


def test_question_shapes_and_errors(tmp_path):
    vqa = tmp_path / "vqa.json"
    vqa.write_text(
        json.dumps(
            [
                {
                    "id": "a",
                    "image": "a.jpg",
                    "answer_type": "closed",
                    "conversatons": [
                        {"from": "human", "value": "<image>\nIs it? Please choose"},
                        {"from": "gpt", "value": "yes"},
                    ],
                }
            ]
        )
    )
    (question,) = load_questions(vqa)
    assert (question.prompt, question.reference, question.answer_type) == ("Is it? Please choose", "yes", "CLOSED")
    vqa.write_text(json.dumps([{"id": 1, "image": "x", "conversations": [{"from": "human", "value": "q"}]}]))
    with pytest.raises(RecordError, match=r"vqa.json, record 0, id 1: a VQA record needs"):
        load_questions(vqa)
    dup = tmp_path / "dup.jsonl"
    dup.write_text('{"question_id": 3, "text": "a"}\n{"question_id": 3, "text": "b"}\n')
    with pytest.raises(RecordError, match=r"record 1, id 3: duplicate question id"):
        load_questions(dup)


def test_image_checks(eval_set):
    _, images = eval_set
    assert load_image(images, "good.png").status == "ok"
    assert load_image(images, "empty.jpg").status == "empty"
    cut = load_image(images, "cut.jpg")
    assert cut.status == "corrupt" and cut.image is None and "cut.jpg" in cut.detail
    assert load_image(images, "absent.jpg").status == "absent"
    assert load_image(images, None).status == "no_image"


def test_an_eval_image_over_the_pixel_limit_is_refused_from_its_header(tmp_path):
    """PIL only warns (and decodes) between one and two times `MAX_IMAGE_PIXELS`; the eval loader refuses it."""
    from tests.fakes.pmc_server import grey_png

    (tmp_path / "huge.png").write_bytes(grey_png(10_000))
    huge = load_image(tmp_path, "huge.png")
    assert huge.status == "corrupt" and huge.image is None
    assert "huge.png" in huge.detail and "image too large to decode: 10000x10000 px" in huge.detail


def test_torn_last_line_is_dropped_and_cut_before_appending(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text('{"question_id": 1, "text": "x"}\n{"question_id": 2, "te')
    assert list(read_answer_log(path)) == ["1"]
    with JsonlAppender(path) as writer:
        writer.write({"question_id": 2, "text": "y"})
    assert path.read_text() == '{"question_id": 1, "text": "x"}\n{"question_id": 2, "text": "y"}\n'
    path.write_text('{"question_id": 1\n{"question_id": 2, "text": "y"}\n')
    with pytest.raises(RecordError, match="line 1 is not valid JSON"):
        read_answer_log(path)


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (None, "answers file does not exist"),
        ("", "no answers in the file"),
        ('{"question_id": 1, "text": "x"}\n{"question_id": 2, "te', "line 2 is not valid JSON"),
        ('{"question_id": 1, "text": 12345}\n', "line 1 (question 1): 'text' must be a string, got int"),
        ('{"question_id": 1, "text": "a"}\n{"question_id": 1, "text": "b"}\n', "1 questions answered more than once"),
        ('{"text": "a"}\n', "line 1 has no 'question_id'"),
    ],
)
def test_a_users_answers_file_is_read_whole_and_strictly(tmp_path, content, reason):
    path = tmp_path / "answers.jsonl"
    if content is not None:
        path.write_text(content)
    with pytest.raises((RecordError, FileNotFoundError), match=re.escape(reason)) as err:
        read_answers(path)
    assert str(path) in str(err.value)
    path.write_text('{"question_id": 1, "text": "x"}\n{"question_id": 2, "text": null}')  # no final newline
    assert list(read_answers(path)) == ["1", "2"]


def test_server_backend_sends_images_and_skips_unreadable_ones(eval_set, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    questions, images = eval_set
    out = tmp_path / "answers.jsonl"
    with FakeOpenAIServer(reply=lambda body: "an answer") as server:
        config = AnswerConfig(
            str(questions),
            str(out),
            "served-model",
            backend="openai",
            image_folder=str(images),
            base_url=server.url,
            missing_image="skip",
            max_new_tokens=16,
        )
        counts = answer(config)
        assert counts == {"answered": 1, "skipped": 3, "already_done": 0, "failed": 0, "failures": []}
        assert answer(config)["already_done"] == 4 and len(server.chat_log()) == 1
        (request,) = server.chat_log()
    rows = {r["question_id"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert rows[0]["text"] == "an answer" and rows[0]["image_status"] == "ok"
    assert {i: rows[i]["status"] for i in (1, 2, 3)} == {1: "skipped", 2: "skipped", 3: "skipped"}
    assert [rows[i]["image_status"] for i in (1, 2, 3)] == ["empty", "corrupt", "absent"]
    assert request["status"] == 200


def test_transformers_backend_text_only_fallback_and_template(eval_set, tmp_path):
    questions, images = eval_set
    model = build_tiny_llava(tmp_path / "model", chat_template=False)
    out = tmp_path / "answers.jsonl"
    config = AnswerConfig(
        str(questions), str(out), str(model), image_folder=str(images), max_new_tokens=3, batch_size=3
    )
    assert answer(config)["answered"] == 4
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["question_id"] for r in rows] == [0, 1, 2, 3]  # with image first, then text-only, input order kept
    assert all(r["status"] == "ok" and isinstance(r["text"], str) for r in rows)
    again = answer(config)
    assert (again["answered"], again["already_done"]) == (0, 4)


@pytest.mark.slow
def test_two_processes_split_the_questions(tmp_path):
    """torchrun with two CPU processes: each answers its share, the main process merges them once."""
    questions = tmp_path / "q.jsonl"
    questions.write_text("".join(json.dumps({"question_id": i, "text": f"q{i}"}) + "\n" for i in range(9)))
    model = build_tiny_llava(tmp_path / "model")
    out = tmp_path / "answers.jsonl"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "-m",
        "vital_hub.cli",
        "eval",
        "answer",
        "--model",
        str(model),
        "--questions",
        str(questions),
        "--out",
        str(out),
        "--max-new-tokens",
        "2",
    ]
    done = subprocess.run(command, env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    ids = [json.loads(line)["question_id"] for line in out.read_text().splitlines()]
    assert sorted(ids) == list(range(9))
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("answers")) == ["answers.jsonl"]
