"""End to end on the real qa50 file and its 50 images: a tiny LLaVA answers, the fake judge scores (both
orders, the paper's prompt), a small VQA set is prepared, answered, scored and compared by win rate, and the
report writes the summary, plot, card section and details dataset, pushed to a fake Hub."""

import json
import os
import subprocess
import sys
from collections import Counter

import pytest

from tests.conftest import REPO_ROOT, shared_fixture
from tests.fakes.hub_server import running_hub
from tests.fakes.judge_replies import chat_judge_reply, pairwise_judge_reply
from tests.fakes.openai_server import FakeOpenAIServer
from tests.fakes.tiny_llava import build_tiny_llava
from vital_hub.cli import main as vital

QA50 = ("llava_med", "llava_med_eval_qa50_qa.jsonl")
IMAGES = ("llava_med", "qa50_images")


def _reply(body: dict) -> str:
    """One fake judge for both tasks: pairwise requests carry a ground truth."""
    text = body["messages"][-1]["content"]
    text = text if isinstance(text, str) else "".join(p.get("text", "") for p in text)
    return pairwise_judge_reply(body) if "[Ground truth]" in text else chat_judge_reply(body)


def _lines(path):
    return [json.loads(line) for line in open(path, encoding="utf-8")]


def _make_vqa_copy(folder, image_paths):
    """A public-layout parquet VQA set made from three readable qa50 figures."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    qa = [("is there a lesion?", "yes"), ("is the image normal?", "no"), ("what organ is shown?", "eye")]
    rows = [
        {"image": {"bytes": path.read_bytes(), "path": path.name}, "question": q, "answer": a}
        for path, (q, a) in zip(image_paths, qa, strict=True)
    ]
    (folder / "data").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows), folder / "data" / "test-00000-of-00001.parquet")
    return folder


@pytest.mark.slow
def test_qa50_end_to_end(tmp_path, monkeypatch):
    qa50, images = shared_fixture(*QA50), shared_fixture(*IMAGES)
    prompt_file = shared_fixture("biomed_vital", "prompts", "chat_judge.txt")
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    model = build_tiny_llava(tmp_path / "tiny-llava")
    answers = tmp_path / "answers.jsonl"
    answer_args = [
        "eval",
        "answer",
        "--model",
        str(model),
        "--questions",
        str(qa50),
        "--image-folder",
        str(images),
        "--out",
        str(answers),
        "--max-new-tokens",
        "4",
        "--batch-size",
        "32",
        "--model-id",
        "tiny-llava",
    ]

    # ---- answer, then resume after a crash that tore the last line
    assert vital(answer_args) == 0
    rows = _lines(answers)
    assert len(rows) == 193 and all(isinstance(r["text"], str) and r["model_id"] == "tiny-llava" for r in rows)
    per_image = {r["image"]: r["image_status"] for r in rows}
    assert Counter(per_image.values()) == {"ok": 29, "empty": 19, "corrupt": 2}
    kept = answers.read_text().splitlines()[:-3]
    answers.write_text("\n".join(kept) + '\n{"question_id": 190, "te')
    assert vital(answer_args) == 0
    resumed = _lines(answers)
    assert len(resumed) == 193 and sorted(r["question_id"] for r in resumed) == list(range(193))

    # ---- judge qa50 with the paper's prompt, both orders
    with FakeOpenAIServer(reply=_reply) as server:
        chat_dir = tmp_path / "chat"
        assert (
            vital(
                [
                    "eval",
                    "chat",
                    "--questions",
                    str(qa50),
                    "--answers",
                    str(answers),
                    "--out-dir",
                    str(chat_dir),
                    "--base-url",
                    server.url,
                    "--judge-model",
                    "fake-judge",
                    "--prompt-file",
                    str(prompt_file),
                    "--swap",
                    "--bootstrap",
                    "200",
                ]
            )
            == 0
        )
        sent = server.chat_log()
        assert len(sent) == 2 * 193
        first = json.loads(json.dumps(sent[0]))
        assert first["status"] == 200

        # ---- a small VQA set: prepare, answer, score, win rate against a baseline
        readable = sorted({images / r["image"] for r in rows if r["image_status"] == "ok"})[:3]
        vqa_dir = tmp_path / "vqa"
        source = _make_vqa_copy(tmp_path / "vqa-copy", readable)
        assert (
            vital(["eval", "vqa-prepare", "--dataset", "vqa-rad", "--source", str(source), "--out-dir", str(vqa_dir)])
            == 0
        )
        questions = vqa_dir / "vqa-rad_test.json"
        vqa_answers = tmp_path / "vqa_answers.jsonl"
        assert (
            vital(
                [
                    "eval",
                    "answer",
                    "--model",
                    str(model),
                    "--questions",
                    str(questions),
                    "--image-folder",
                    str(vqa_dir / "images"),
                    "--out",
                    str(vqa_answers),
                    "--max-new-tokens",
                    "3",
                ]
            )
            == 0
        )
        score = tmp_path / "vqa-rad.json"
        assert (
            vital(
                [
                    "eval",
                    "vqa-score",
                    "--questions",
                    str(questions),
                    "--answers",
                    str(vqa_answers),
                    "--out",
                    str(score),
                    "--name",
                    "vqa-rad",
                ]
            )
            == 0
        )
        baseline = tmp_path / "baseline.jsonl"
        baseline.write_text(
            "".join(json.dumps({"question_id": r["question_id"], "text": "yes"}) + "\n" for r in _lines(vqa_answers))
        )
        win_dir = tmp_path / "winrate-vqa-rad"
        assert (
            vital(
                [
                    "eval",
                    "winrate",
                    "--questions",
                    str(questions),
                    "--answers-a",
                    str(baseline),
                    "--answers-b",
                    str(vqa_answers),
                    "--out-dir",
                    str(win_dir),
                    "--base-url",
                    server.url,
                    "--name-a",
                    "always-yes",
                    "--name-b",
                    "tiny-llava",
                ]
            )
            == 0
        )

    chat = json.loads((chat_dir / "chat_summary.json").read_text())
    judgements = _lines(chat_dir / "judgements.jsonl")
    assert len(judgements) == 386
    unparsed = {j["question_id"] for j in judgements if j["status"] == "unparsed"}
    assert unparsed and chat["overall"]["status_counts"]["unparsed"] == len(unparsed)  # counted, not defaulted
    assert chat["overall"]["relative_score"] == pytest.approx(50.0)  # 4 vs 8, whichever position
    assert chat["position_bias"]["second_slot_advantage"] == 0.0
    assert chat["image_status_counts"] == {
        "ok": sum(1 for r in rows if r["image_status"] == "ok"),
        "empty": sum(1 for r in rows if r["image_status"] == "empty"),
        "corrupt": sum(1 for r in rows if r["image_status"] == "corrupt"),
    }
    assert set(chat["by_type"]) == {"conversation", "detailed_description"}
    assert chat["by_type"]["conversation"]["n_questions"] == 143
    assert set(chat["by_domain"]) <= {"chest_xray", "mri", "histology", "gross", "ct_scan", "unknown"}
    assert sum(group["n_questions"] for group in chat["by_domain"].values()) == 193
    win = json.loads((win_dir / "winrate_summary.json").read_text())
    assert win["judgements"]["status_counts"] == {"ok": 6}

    # ---- report with a card update and a push of the details to a fake Hub
    card = tmp_path / "model" / "README.md"
    card.parent.mkdir()
    card.write_text(
        "---\nlicense: apache-2.0\n---\n\n# tiny-llava\n\nIntro.\n\n<!-- vital-eval:start -->\nold"
        "\n<!-- vital-eval:end -->\n\nMore text.\n"
    )
    report = tmp_path / "report"
    with running_hub(tmp_path / "hub") as hub:
        env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
        env.update(
            HF_ENDPOINT=hub.endpoint,
            HF_HOME=str(tmp_path / "hf"),
            HF_HUB_DISABLE_XET="1",
            HF_TOKEN="hf_fake",
            PYTHONPATH=str(REPO_ROOT),
        )
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "vital_hub.cli",
                "eval",
                "report",
                "--out",
                str(report),
                "--model-id",
                "tiny-llava",
                "--chat",
                str(chat_dir),
                "--vqa",
                str(score),
                "--winrate",
                str(win_dir),
                "--card",
                str(card),
                "--push-details",
                "org/tiny-llava-eval",
            ],
            env=env,
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        pushed = hub.list_files("org/tiny-llava-eval")
    assert {"README.md", "data/chat_qa50/test-00000-of-00001.parquet"} <= set(pushed)

    summary = json.loads((report / "summary.json").read_text())
    assert summary["open_visual_chat"]["overall"]["relative_score"] == pytest.approx(50.0)
    assert summary["medical_vqa"]["vqa-rad"]["counts"]["questions"] == 3
    assert summary["win_rate"]["winrate-vqa-rad"]["model_b"] == "tiny-llava"
    for plot in (report / "eval_scores.png", card.parent / "eval_scores.png"):
        assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot.stat().st_size > 10_000

    from huggingface_hub import ModelCard

    updated = ModelCard.load(card)
    assert updated.data.license == "apache-2.0"
    by_metric = {(r.dataset_type, r.metric_type): r.metric_value for r in updated.data.eval_results}
    assert by_metric[("org/tiny-llava-eval", "relative_score")] == pytest.approx(50.0)  # the pushed details
    assert ("flaviagiammarino/vqa-rad", "closed_accuracy") in by_metric
    text = card.read_text()
    assert text.count("<!-- vital-eval:start -->") == 1 and "\nold\n" not in text and "More text." in text
    assert "![Evaluation scores per domain](eval_scores.png)" in text
    assert "| overall | 50.0 |" in text and "http" in text  # the details link
    assert (report / "card_section.md").read_text() in text

    from datasets import load_dataset

    details = load_dataset(str(report / "details"), "chat_qa50", split="test", cache_dir=str(tmp_path / "ds"))
    assert details.num_rows == 193
    assert {"question_id", "ratio", "status", "forward_judge_raw", "swapped_model_score"} <= set(details.column_names)
    assert Counter(details["status"]) == Counter(chat["overall"]["status_counts"])
