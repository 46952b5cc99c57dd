"""qa50 judge: reply parsing, relative scores by type/domain/overall, zero references, swaps, intervals."""

import json

import pytest

from tests.fakes.judge_replies import chat_judge_reply
from tests.fakes.openai_server import FakeOpenAIServer
from vital_hub.eval.chat import ChatJudgeConfig, parse_two_scores, run_chat_judge, summarize_chat
from vital_hub.eval.records import EvalQuestion


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ("8 7\nAssistant 1 gave more detail.", (8.0, 7.0)),  # well-formed
        ("Sure! Here are my scores.\n\n9 6\nBecause the first one ...", (9.0, 6.0)),  # extra text before
        ("8/10 7/10\nThe first is better.", (8.0, 7.0)),
        ("Scores: 8, 7.5", (8.0, 7.5)),
        ("**Assistant 1:** 6\n**Assistant 2:** 9\nreasons", (6.0, 9.0)),
        ("Assistant 1 receives a score of 8, while Assistant 2 receives 3.", (8.0, 3.0)),
        # A valid first line wins over numbered "Assistant N: 1) ..." explanations (LLaVA-Med reads the first line).
        ("8 6\nAssistant 1: 1) accurate 2) detailed\nAssistant 2: 1) vague 2) short", (8.0, 6.0)),
        ("7 9\n\nAssistant 1: 3 points are missing.\nAssistant 2: 2 details are wrong.", (7.0, 9.0)),
        ("Assistant 1 - 8\nAssistant 2 - 6", (8.0, 6.0)),
        ("8 6\nThe first loses points: -1 for vagueness, -1 for length.", (8.0, 6.0)),
    ],
)
def test_two_scores_parsed(reply, expected):
    parsed = parse_two_scores(reply)
    assert parsed.status == "ok"
    assert (parsed.first, parsed.second) == expected


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        ("Both answers are helpful and accurate.", "no scores found"),  # missing
        ("I'm sorry, but I cannot evaluate medical images.", "refusal"),
        ("", "empty reply"),
        (None, "empty reply"),
        ("8\nThe first has 3 points and 2 figures.", "no line with exactly two scores"),
        ("85 70", "scores outside 0-10"),
        ("-1 5\nThe first answer is wrong.", "negative score"),  # never read as (1, 5)
        ("Assistant 1: -1\nAssistant 2: 5", "negative score"),
    ],
)
def test_unreadable_replies_are_unparsed_with_a_reason(reply, reason):
    parsed = parse_two_scores(reply)
    assert (parsed.status, parsed.first, parsed.second, parsed.reason) == ("unparsed", None, None, reason)


def _question(qid, qtype, domain_flags):
    domain = {name: name in domain_flags for name in ("chest_xray", "mri", "ct_scan", "histology", "gross")}
    return EvalQuestion(qid, f"{qid}.jpg", f"question {qid}", "reference answer", question_type=qtype, domain=domain)


def _judgement(qid, order, reference, model, status="ok"):
    return {"question_id": qid, "order": order, "status": status, "reference_score": reference, "model_score": model}


def test_relative_score_is_the_mean_of_ratios_by_type_and_domain():
    questions = [
        _question(0, "conversation", {"histology", "gross"}),  # first true flag in LLaVA-Med order: histology
        _question(1, "conversation", {"ct_scan", "chest_xray"}),  # -> chest_xray
        _question(2, "detailed_description", {"ct_scan"}),
        _question(3, "detailed_description", {"mri"}),  # reference scored 0
        _question(4, "conversation", {"mri"}),  # judge reply unparsed
        _question(5, "conversation", {"gross"}),  # no answer
    ]
    answers = {str(i): {"question_id": i, "text": "answer", "image_status": "ok"} for i in range(5)}
    judgements = {
        "0|forward": _judgement(0, "forward", 8, 4),
        "1|forward": _judgement(1, "forward", 5, 10),
        "2|forward": _judgement(2, "forward", 10, 6),
        "3|forward": _judgement(3, "forward", 0, 7),
        "4|forward": _judgement(4, "forward", None, None, status="unparsed"),
    }
    config = ChatJudgeConfig("q", "a", "out", bootstrap=200)
    summary, rows = summarize_chat(questions, answers, judgements, config)
    overall = summary["overall"]
    assert overall["relative_score"] == pytest.approx(100 * (0.5 + 2.0 + 0.6) / 3)
    assert overall["n_scored"] == 3
    assert overall["status_counts"] == {"ok": 3, "zero_reference": 1, "unparsed": 1, "missing_answer": 1}
    assert summary["by_type"]["detailed_description"]["relative_score"] == pytest.approx(60.0)
    assert summary["by_type"]["conversation"]["relative_score"] == pytest.approx(125.0)
    assert list(summary["by_domain"]) == ["chest_xray", "mri", "histology", "gross", "ct_scan"]
    assert summary["by_domain"]["histology"]["relative_score"] == pytest.approx(50.0)
    assert summary["by_domain"]["chest_xray"]["relative_score"] == pytest.approx(200.0)
    assert summary["by_domain"]["mri"]["relative_score"] is None  # zero reference + unparsed: nothing scored
    low, high = overall["ci95"]
    assert 50.0 <= low <= overall["relative_score"] <= high <= 200.0
    assert [row["status"] for row in rows] == ["ok", "ok", "ok", "zero_reference", "unparsed", "missing_answer"]

    floored, _ = summarize_chat(questions, answers, judgements, ChatJudgeConfig("q", "a", "o", zero_reference="floor"))
    assert floored["overall"]["n_scored"] == 4
    assert floored["overall"]["relative_score"] == pytest.approx(100 * (0.5 + 2.0 + 0.6 + 7.0) / 4)


def test_swapped_judgements_combine_and_measure_position_bias():
    questions = [_question(0, "conversation", {"mri"}), _question(1, "conversation", {"mri"})]
    answers = {str(i): {"question_id": i, "text": "answer"} for i in range(2)}
    # The judge adds 2 points to whichever answer is shown second.
    judgements = {
        "0|forward": _judgement(0, "forward", 6, 8),
        "0|swapped": _judgement(0, "swapped", 8, 6),
        "1|forward": _judgement(1, "forward", 4, 6),
        "1|swapped": _judgement(1, "swapped", 6, 4),
    }
    summary, _ = summarize_chat(questions, answers, judgements, ChatJudgeConfig("q", "a", "o", swap=True))
    assert summary["headline_view"] == "combined"
    assert summary["overall"]["relative_score"] == pytest.approx(100.0)
    assert summary["views"]["forward"]["overall"]["relative_score"] == pytest.approx(100 * (8 / 6 + 6 / 4) / 2)
    assert summary["views"]["swapped"]["overall"]["relative_score"] == pytest.approx(100 * (6 / 8 + 4 / 6) / 2)
    assert summary["position_bias"] == {"second_slot_advantage": 2.0, "n_pairs": 2, "preference_flips": 2}


def test_judge_run_against_fake_server_is_resumable(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    questions = tmp_path / "q.jsonl"
    rows = [
        {
            "question_id": i,
            "image": f"{i}.jpg",
            "text": f"What is shown in figure {i}?\n<image>",
            "gpt4_answer": "A long and detailed reference answer describing the figure in full.",
            "fig_caption": "cap",
            "type": "conversation",
            "domain": {"mri": True},
        }
        for i in range(30)
    ]
    questions.write_text("".join(json.dumps(row) + "\n" for row in rows))
    answers = tmp_path / "a.jsonl"
    answers.write_text("".join(json.dumps({"question_id": i, "text": "short"}) + "\n" for i in range(30)))
    with FakeOpenAIServer(reply=chat_judge_reply) as server:
        config = ChatJudgeConfig(str(questions), str(answers), str(tmp_path / "out"), base_url=server.url, swap=True)
        summary = run_chat_judge(config)
        sent = len(server.chat_log())
        again = run_chat_judge(config)
        assert len(server.chat_log()) == sent == 60  # the second run judged nothing new
    judgements = [json.loads(line) for line in (tmp_path / "out" / "judgements.jsonl").read_text().splitlines()]
    unparsed = {j["question_id"] for j in judgements if j["status"] == "unparsed"}
    zero = {j["question_id"] for j in judgements if j["status"] == "ok" and j["reference_score"] == 0}
    counts = summary["overall"]["status_counts"]
    assert unparsed and zero  # the fake judge refuses some requests and scores some references 0
    assert counts["unparsed"] == len(unparsed) and counts["zero_reference"] == len(zero)
    assert counts["ok"] == 30 - len(unparsed) - len(zero) > 0
    assert summary["overall"]["relative_score"] == pytest.approx(50.0)  # 4 against 8 in both orders
    assert summary["position_bias"]["second_slot_advantage"] == 0.0
    assert again["overall"] == summary["overall"]
    assert json.loads((tmp_path / "out" / "chat_summary.json").read_text())["overall"] == summary["overall"]


def test_attached_figure_is_encoded_once_per_question_and_sent_in_both_orders(tmp_path, monkeypatch):
    from PIL import Image

    import vital_hub.eval.chat as chat
    from vital_hub.eval.answer import image_data_url
    from vital_hub.eval.records import load_image

    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    images = tmp_path / "images"
    images.mkdir()
    for i in range(2):
        Image.new("RGB", (24, 16), (40 * i, 90, 200)).save(images / f"{i}.jpg")
    # question 2 has no picture on disk
    rows = [
        {"question_id": i, "image": f"{i}.jpg", "text": f"Figure {i}?", "gpt4_answer": "ref", "fig_caption": "c"}
        for i in range(3)
    ]
    questions, answers = tmp_path / "q.jsonl", tmp_path / "a.jsonl"
    questions.write_text("".join(json.dumps(row) + "\n" for row in rows))
    answers.write_text("".join(json.dumps({"question_id": i, "text": "short"}) + "\n" for i in range(3)))
    encoded = []
    monkeypatch.setattr(chat, "image_data_url", lambda image: encoded.append(image) or image_data_url(image))
    sent = []
    with FakeOpenAIServer(reply=lambda body: sent.append(body) or chat_judge_reply(body)) as server:
        config = ChatJudgeConfig(
            str(questions),
            str(answers),
            str(tmp_path / "out"),
            base_url=server.url,
            swap=True,
            attach_image=True,
            image_folder=str(images),
        )
        run_chat_judge(config)
        run_chat_judge(config)  # resumed with every judgement done: nothing encoded or sent again
    assert len(encoded) == 2 and len(sent) == 6
    for i in range(2):
        url = image_data_url(load_image(str(images), f"{i}.jpg").image)
        with_figure = [body for body in sent if f"Figure {i}?" in json.dumps(body)]
        assert len(with_figure) == 2
        assert all(body["messages"][1]["content"][0]["image_url"]["url"] == url for body in with_figure)
    without = [body for body in sent if "Figure 2?" in json.dumps(body)]
    assert len(without) == 2 and all(isinstance(body["messages"][1]["content"], str) for body in without)


def test_reviews_file_from_llava_med_is_rescored_without_a_judge(tmp_path):
    """`--reviews`: LLaVA-Med's score file (question record + ans1, ans2, gpt_eval) gives the same summary files."""
    import subprocess
    import sys

    from tests.conftest import REPO_ROOT

    domain = {"chest_xray": False, "mri": True, "ct_scan": False, "histology": False, "gross": False}
    replies = ["8 6\nAssistant 1: 1) accurate\nAssistant 2: 1) vague", "9 9\nBoth fine.", "5 10\nok", "no scores"]
    lines = [
        {"question_id": n, "image": f"{n}.jpg", "text": f"question {n}\n<image>", "gpt4_answer": "reference",
         "type": "conversation" if n < 2 else "detailed_description", "domain": domain, "fig_caption": "c",
         "fig_label": "Fig. 1", "in_text_mention": None, "question": f"question {n}\n<image>", "ans1": "reference",
         "ans2": f"answer {n}", "gpt_eval": reply}
        for n, reply in enumerate(replies)
    ]  # fmt: skip
    reviews = tmp_path / "reviews.jsonl"
    reviews.write_text("".join(json.dumps(line) + "\n" for line in lines))
    done = subprocess.run(
        [sys.executable, "-m", "vital_hub.cli", "eval", "chat", "--reviews", str(reviews), "--out-dir",
         str(tmp_path / "out"), "--bootstrap", "0"],
        cwd=REPO_ROOT, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO_ROOT)}, capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    summary = json.loads((tmp_path / "out" / "chat_summary.json").read_text())
    assert summary["overall"]["relative_score"] == pytest.approx(100 * (6 / 8 + 9 / 9 + 10 / 5) / 3)
    assert summary["overall"]["status_counts"] == {"ok": 3, "unparsed": 1}
    assert summary["by_type"]["conversation"]["relative_score"] == pytest.approx(100 * (6 / 8 + 1) / 2)
    assert summary["by_domain"]["mri"]["n_questions"] == 4 and summary["judge"]["reviews_file"] == str(reviews)

    (tmp_path / "bad.jsonl").write_text(json.dumps({"question_id": 1, "text": "q"}) + "\n")
    bad = subprocess.run(
        [sys.executable, "-m", "vital_hub.cli", "eval", "chat", "--reviews", str(tmp_path / "bad.jsonl"),
         "--out-dir", str(tmp_path / "o2")],
        cwd=REPO_ROOT, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO_ROOT)}, capture_output=True, text=True,
    )  # fmt: skip
    assert bad.returncode != 0 and "bad.jsonl" in bad.stderr and "gpt_eval" in bad.stderr
