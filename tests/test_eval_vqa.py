"""VQA loaders (public parquet and SLAKE layouts, faked locally), `vital eval vqa-score`, and the win rate."""

import hashlib
import io
import json
import os
import subprocess
import sys
import zipfile

import pytest

from tests.conftest import REPO_ROOT
from tests.fakes.hub_server import running_hub
from tests.fakes.judge_replies import pairwise_judge_reply
from tests.fakes.openai_server import FakeOpenAIServer
from vital_hub.cli import main as vital
from vital_hub.eval.records import load_questions
from vital_hub.eval.vqa import CLOSED_SUFFIX, prepare_vqa
from vital_hub.eval.winrate import WinRateConfig, outcome_for_a, parse_verdict, run_winrate
from vital_hub.schema import validate_llava


def _image_bytes(color, fmt="PNG"):
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.fixture
def fake_vqa_rad(tmp_path):
    """A folder in flaviagiammarino/vqa-rad's layout: data/test-*.parquet with image, question, answer."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    red, blue = _image_bytes("red"), _image_bytes("blue", "JPEG")
    rows = [
        {"image": {"bytes": red, "path": "a.png"}, "question": "is there a nodule?", "answer": "yes"},
        {"image": {"bytes": red, "path": "a.png"}, "question": "which lobe is affected?", "answer": "left lower lobe"},
        {"image": {"bytes": blue, "path": "b.jpg"}, "question": "is the heart enlarged?", "answer": "no"},
        {"image": {"bytes": b"not an image", "path": "c.jpg"}, "question": "what organ?", "answer": "liver"},
        {"image": {"bytes": blue, "path": "b.jpg"}, "question": "how many lesions?", "answer": "two"},
    ]
    folder = tmp_path / "vqa-rad-copy"
    (folder / "data").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows), folder / "data" / "test-00000-of-00001.parquet")
    pq.write_table(pa.Table.from_pylist(rows[:1]), folder / "data" / "train-00000-of-00001.parquet")
    return folder


def test_parquet_loader_writes_llava_med_records_and_checksums(fake_vqa_rad, tmp_path):
    out = tmp_path / "prepared"
    manifest = prepare_vqa("vqa-rad", out, source=str(fake_vqa_rad))
    parquet = fake_vqa_rad / "data" / "test-00000-of-00001.parquet"
    assert manifest["files"] == {
        "data/test-00000-of-00001.parquet": {
            "sha256": hashlib.sha256(parquet.read_bytes()).hexdigest(),
            "bytes": parquet.stat().st_size,
        }
    }
    assert manifest["counts"] == {"total": 4, "open": 2, "closed": 2, "refused_images": 1}
    assert manifest["refused"][0]["reason"].startswith("undecodable image")
    records = json.loads((out / "vqa-rad_test.json").read_text())
    for record in records:
        validate_llava(record)
    closed = [r for r in records if r["answer_type"] == "CLOSED"]
    assert closed[0]["conversations"][0]["value"] == f"is there a nodule?{CLOSED_SUFFIX}\n<image>"
    assert [r["conversations"][1]["value"] for r in records] == ["yes", "left lower lobe", "no", "two"]
    assert len({r["image"] for r in records}) == 2 == len(list((out / "images").iterdir()))  # stored once each
    assert records[2]["image"].endswith(".jpg") and records[0]["image"].endswith(".png")
    assert [q.answer_type for q in load_questions(out / "vqa-rad_test.json")] == ["CLOSED", "OPEN", "CLOSED", "OPEN"]


def test_slake_loader_keeps_english_and_refuses_escaping_paths(tmp_path):
    folder = tmp_path / "slake"
    folder.mkdir()
    records = [
        {
            "qid": 1,
            "img_name": "xmlab1/source.jpg",
            "question": "Is this an MRI?",
            "answer": "No",
            "answer_type": "CLOSED",
            "q_lang": "en",
        },
        {
            "qid": 2,
            "img_name": "xmlab1/source.jpg",
            "question": "这是什么?",
            "answer": "肝",
            "answer_type": "OPEN",
            "q_lang": "zh",
        },
        {
            "qid": 3,
            "img_name": "xmlab1/source.jpg",
            "question": "Which organ?",
            "answer": "Liver",
            "answer_type": "OPEN",
            "q_lang": "en",
        },
        {
            "qid": 4,
            "img_name": "../../etc/passwd",
            "question": "Where?",
            "answer": "x",
            "answer_type": "OPEN",
            "q_lang": "en",
        },
    ]
    (folder / "test.json").write_text(json.dumps(records))
    with zipfile.ZipFile(folder / "imgs.zip", "w") as archive:
        archive.writestr("imgs/xmlab1/source.jpg", _image_bytes("green", "JPEG"))
    manifest = prepare_vqa("slake", tmp_path / "out", source=str(folder))
    assert set(manifest["files"]) == {"test.json", "imgs.zip"}
    assert manifest["counts"] == {"total": 2, "open": 1, "closed": 1, "refused_images": 1}
    prepared = json.loads((tmp_path / "out" / "slake_test.json").read_text())
    assert [r["conversations"][1]["value"] for r in prepared] == ["No", "Liver"]
    assert not (tmp_path / "etc").exists()


def test_vqa_score_cli(fake_vqa_rad, tmp_path, capsys):
    prepare_vqa("vqa-rad", tmp_path / "p", source=str(fake_vqa_rad))
    questions = tmp_path / "p" / "vqa-rad_test.json"
    ids = [q.question_id for q in load_questions(questions)]
    texts = ["There is a nodule. Yes.", "left lobe left lobe", "No.", "3 lesions"]
    answers = tmp_path / "answers.jsonl"
    answers.write_text(
        "".join(json.dumps({"question_id": i, "text": t}) + "\n" for i, t in zip(ids, texts, strict=True))
    )
    out = tmp_path / "score.json"
    assert (
        vital(["eval", "vqa-score", "--questions", str(questions), "--answers", str(answers), "--out", str(out)]) == 0
    )
    result = json.loads(out.read_text())
    assert result["closed_accuracy"] == 100.0
    # llava-med recall of "left lower lobe" in "left lobe left lobe": 4 / (4 + 1) (repeats inflate it)
    assert result["open_recall"] == pytest.approx(100 * (4 / 5 + 0) / 2)
    assert result["counts"] == {"questions": 4, "open": 2, "closed": 2, "missing_answers": 0}
    assert result["variants"]["strict"]["open_recall"] == pytest.approx(100 * (2 / 3) / 2)
    details = [json.loads(line) for line in open(result["details_file"])]
    assert [d["score_strict"] for d in details][:2] == [1.0, pytest.approx(2 / 3)]
    assert (
        vital(
            [
                "eval",
                "vqa-score",
                "--questions",
                str(questions),
                "--answers",
                str(answers),
                "--compat",
                "strict",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert json.loads(out.read_text())["open_recall"] == pytest.approx(100 / 3)

    answers.write_text(json.dumps({"question_id": ids[0], "text": "yes"}) + "\n")
    capsys.readouterr()
    assert (
        vital(["eval", "vqa-score", "--questions", str(questions), "--answers", str(answers), "--out", str(out)]) == 1
    )
    assert "3 questions have no answer" in capsys.readouterr().err
    args = ["--questions", str(questions), "--answers", str(answers), "--out", str(out), "--allow-missing"]
    assert vital(["eval", "vqa-score", *args]) == 0
    assert json.loads(out.read_text())["counts"]["missing_answers"] == 3

    # An empty text is an answer (it scores 0), not a missing one: no --allow-missing needed.
    texts[1] = ""
    answers.write_text(
        "".join(json.dumps({"question_id": i, "text": t}) + "\n" for i, t in zip(ids, texts, strict=True))
    )
    assert (
        vital(["eval", "vqa-score", "--questions", str(questions), "--answers", str(answers), "--out", str(out)]) == 0
    )
    result = json.loads(out.read_text())
    assert result["counts"]["missing_answers"] == 0
    assert result["open_recall"] == 0.0 + 0.0  # "" and "3 lesions" recall nothing of their references


def test_totals_are_sum_over_n_times_100_as_the_original_computes_them():
    from vital_hub.eval.metrics.med_vqa.vqa_scoring import score_all

    scored = score_all(["yes", "no", "no"], ["yes", "yes", "yes"], ["CLOSED"] * 3)
    assert scored["closed_accuracy"] == 1 / 3 * 100 != 100 * 1 / 3  # bit for bit, not approximately
    assert scored["closed_accuracy"] == sum(scored["scores"]) / len(scored["scores"]) * 100


@pytest.mark.parametrize(
    ("reply", "label", "status"),
    [
        ("[[A]]\nA is closer to the ground truth.", "A", "ok"),
        ("Comparing both... my final verdict is [[B]]", "B", "ok"),
        ("[[C]] both are equally wrong", "C", "ok"),
        ("[[A]] A is right; B's claim that [[B]] would be better is wrong", "A", "ok"),  # opens with a verdict
        ("A says [[A]], others might say [[B]]", None, "unparsed"),
        ("Assistant A is better.", None, "unparsed"),
        ("", None, "unparsed"),
    ],
)
def test_verdict_parsing(reply, label, status):
    verdict = parse_verdict(reply)
    assert (verdict.label, verdict.status) == (label, status)


def test_outcome_maps_positions_back_to_models():
    assert outcome_for_a("A", "ab") == "win" and outcome_for_a("A", "ba") == "loss"
    assert outcome_for_a("B", "ba") == "win" and outcome_for_a("C", "ba") == "tie"


def test_win_rate_both_orders_against_fake_judge(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    truths = ["left lung", "liver", "yes", "no", "kidney", "heart"]
    questions = tmp_path / "q.json"
    questions.write_text(
        json.dumps(
            [
                {
                    "id": i,
                    "image": f"{i}.jpg",
                    "answer_type": "OPEN",
                    "conversations": [{"from": "human", "value": f"q{i}\n<image>"}, {"from": "gpt", "value": t}],
                }
                for i, t in enumerate(truths)
            ]
        )
    )
    # A finds the truth in 5 questions, B in 2 (both in 0 and 1): A wins 3, ties 3 (both right twice, both wrong once).
    a_texts = ["the left lung", "liver", "yes", "no", "kidney", "brain"]
    b_texts = ["left lung", "the liver", "maybe", "unsure", "spleen", "lungs"]
    for name, texts in (("a", a_texts), ("b", b_texts)):
        (tmp_path / f"{name}.jsonl").write_text(
            "".join(json.dumps({"question_id": i, "text": t}) + "\n" for i, t in enumerate(texts))
        )
    with FakeOpenAIServer(reply=pairwise_judge_reply) as server:
        config = WinRateConfig(
            str(questions),
            str(tmp_path / "a.jsonl"),
            str(tmp_path / "b.jsonl"),
            str(tmp_path / "out"),
            name_a="tuned",
            name_b="base",
            base_url=server.url,
        )
        summary = run_winrate(config)
        assert len(server.chat_log()) == 12  # every question in both orders
    q = summary["questions"]
    assert (q["wins"], q["losses"], q["ties"]) == (3, 0, 3)
    assert q["win_rate_excluding_ties"] == 100.0 and q["win_rate_over_all"] == 50.0
    assert q["position_consistency"] == 100.0
    assert summary["judgements"]["wins"] == 6 and summary["judgements"]["ties"] == 6
    details = json.loads((tmp_path / "out" / "winrate_details.json").read_text())
    assert [d["outcome_for_a"] for d in details] == ["tie", "tie", "win", "win", "win", "tie"]


def test_loader_downloads_the_documented_repo_from_a_hub(fake_vqa_rad, tmp_path):
    """`vital eval vqa-prepare --dataset vqa-rad` fetches flaviagiammarino/vqa-rad through vital_hub.hub."""
    parquet = fake_vqa_rad / "data" / "test-00000-of-00001.parquet"
    with running_hub(tmp_path / "hub") as hub:
        hub.add_files(
            "flaviagiammarino/vqa-rad",
            {"data/test-00000-of-00001.parquet": parquet.read_bytes(), "README.md": b"# copy\n"},
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
        env.update(
            HF_ENDPOINT=hub.endpoint, HF_HOME=str(tmp_path / "hf"), HF_HUB_DISABLE_XET="1", PYTHONPATH=str(REPO_ROOT)
        )
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "vital_hub.cli",
                "eval",
                "vqa-prepare",
                "--dataset",
                "vqa-rad",
                "--out-dir",
                str(tmp_path / "out"),
            ],
            env=env,
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=240,
        )
    assert done.returncode == 0, done.stderr[-2000:]
    manifest = json.loads((tmp_path / "out" / "vqa-rad_test.manifest.json").read_text())
    assert manifest["repo_id"] == "flaviagiammarino/vqa-rad"
    assert (
        manifest["files"]["data/test-00000-of-00001.parquet"]["sha256"]
        == hashlib.sha256(parquet.read_bytes()).hexdigest()
    )
    assert manifest["counts"]["total"] == 4


def test_vqa_score_reports_bad_input_in_one_line(tmp_path, capsys):
    questions = tmp_path / "q.json"
    questions.write_text(
        '[{"id": 1, "image": "a.jpg", "answer_type": "OPEN",'
        ' "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}]'
    )
    answers = tmp_path / "a.jsonl"
    answers.write_text('{"question_id": 1, "text": "a"}\n{bad\n{"question_id": 2, "text": "b"}\n')
    out = str(tmp_path / "o.json")
    assert vital(["eval", "vqa-score", "--questions", str(questions), "--answers", str(answers), "--out", out]) == 1
    err = capsys.readouterr().err
    assert err.startswith("vital eval vqa-score: error:") and "a.jsonl" in err and "line 2 is not valid JSON" in err
    missing = str(tmp_path / "nope.json")
    assert vital(["eval", "vqa-score", "--questions", missing, "--answers", str(answers), "--out", out]) == 1
    assert "nope.json" in capsys.readouterr().err
