"""The rubric judge: score parsing, a run against a real local OpenAI-compatible server, resume, then pairs,
agreement with clinicians and the mixed config through the CLI."""

import json
import re

import pytest

from tests.fakes.openai_server import FakeOpenAIServer
from tests.test_annotate_app import write_items
from tests.test_preferences_sample import write_candidates
from vital_hub.preferences.cli import judge_main
from vital_hub.preferences.cli import main as preferences_main
from vital_hub.preferences.judge import JudgeConfig, run_judge
from vital_hub.preferences.judge_scores import read_scores
from vital_hub.preferences.judge_units import load_units
from vital_hub.preferences.repo import read_config
from vital_hub.preferences.rubric import parse_rubric_score
from vital_hub.preferences.store import JudgementStore
from vital_hub.schema import RecordError


@pytest.mark.parametrize(
    "reply, score",
    [
        ("Score: 7/10", 7.0),
        ("7 8", 7.0),
        ("7.5", 7.5),
        ("", None),
        ("   \n  ", None),
        (None, None),
        ("I'm sorry, but I can't help with assessing this image.", None),
        ("I cannot score 2 images at once.", None),
        ("8\nThe answer is accurate but misses the second lesion.", 8.0),
        ("**Score:** 9\nClear.", 9.0),
        ("Here is my assessment.\nScore: 6\nReasons...", 6.0),
        ("10/10", 10.0),
        ("0", 0.0),
        ("11", None),
        ("-2", None),
        ("Overall: good\nfinal score 3 of ten", None),
    ],
)
def test_parse_rubric_score(reply, score):
    assert parse_rubric_score(reply) == score


REPLIES = {
    "A0": "Score: 7/10\nSolid.",
    "A1": "7 8",
    "A2": "7.5",
    "A3": "",
    "B0": "2\nWrong organ.",
    "B1": "I'm sorry, I can't help with that.",
    "B2": "Score: 3",
    "B3": "4",
}


def scripted_reply(body: dict) -> str:
    """Replies keyed by the answer's label (A0..B3) in the user text."""
    user = body["messages"][1]["content"][0]["text"]
    label = re.search(r"Answer:\nAnswer ([AB]\d)", user).group(1)
    return REPLIES[label]


def test_judge_run_records_scores_failures_and_resumes(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    items = write_items(tmp_path / "items", count=5)
    prompt = tmp_path / "rubric.txt"
    prompt.write_text("Score the pair from 0 to 10.")
    out = tmp_path / "judge"
    with FakeOpenAIServer(reply=scripted_reply, faults={"chat": ["500", "400"]}) as server:
        config = JudgeConfig(
            candidates=str(items),
            out=str(out),
            model="judge-model",
            base_url=server.url,
            prompt_file=str(prompt),
            concurrency=1,
            max_retries=2,
        )
        summary = run_judge(config)
        rows = {row["score_id"]: row for row in read_scores(out)}
        assert len(rows) == 10
        # item 4 has no figure: recorded as an error, never sent
        assert rows["30004_F1#q0#a"]["status"] == "error" and "figure" in rows["30004_F1#q0#a"]["error"]
        errors = [r for r in rows.values() if r["status"] == "error" and "figure" not in r["error"]]
        assert len(errors) == 1 and "400" in errors[0]["error"]
        assert summary["errors"] == 3 and summary["units"] == 10
        first_chat = server.chat_log(status=None)
        sent = server.chat_log()
        assert len(first_chat) == 9 and len(sent) == 7  # a 500 retried, a 400 not
        assert first_chat[0]["status"] == 500

        summary = run_judge(config)
        rows = {row["score_id"]: row for row in read_scores(out)}
        assert len(server.chat_log()) == 8  # only the request that got the 400 was sent again
        assert summary["errors"] == 2 and summary["scored"] + summary["unparsed"] == 8
    expected = {
        "30000_F1#q0#a": 7.0,
        "30001_F1#q0#a": 7.0,
        "30002_F1#q0#a": 7.5,
        "30003_F1#q0#a": None,
        "30000_F1#q0#b": 2.0,
        "30001_F1#q0#b": None,
        "30002_F1#q0#b": 3.0,
        "30003_F1#q0#b": 4.0,
    }
    assert {k: rows[k]["score"] for k in expected} == expected
    assert rows["30003_F1#q0#a"]["status"] == "unparsed" and rows["30003_F1#q0#a"]["raw_text"] == ""
    assert rows["30001_F1#q0#b"]["status"] == "unparsed"
    assert rows["30000_F1#q0#a"]["item_id"] == "30000_F1#q0" and rows["30000_F1#q0#a"]["side"] == "a"
    assert json.loads((out / "run.json").read_text())["prompt_version"].startswith("file:")
    assert (out / "score_histogram.png").exists()
    assert "test-key" not in (out / "run.json").read_text()

    with pytest.raises(SystemExit, match="model 'judge-model'"):
        run_judge(JudgeConfig(candidates=str(items), out=str(out), model="other", base_url="http://127.0.0.1:9"))


def test_judge_request_carries_rubric_context_and_image(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    items = write_items(tmp_path / "items", count=2)
    seen = []

    def reply(body):
        seen.append(body)
        return "6"

    with FakeOpenAIServer(reply=reply) as server:
        assert (
            judge_main(
                [
                    "rubric",
                    "--candidates",
                    str(items),
                    "--out",
                    str(tmp_path / "j"),
                    "--model",
                    "m",
                    "--base-url",
                    server.url,
                    "--max-tokens",
                    "64",
                    "--temperature",
                    "0",
                ]
            )
            == 0
        )
    # the two requests run concurrently: pick answer A's, whichever came first
    body = next(b for b in seen if "Answer A0" in b["messages"][1]["content"][0]["text"])
    assert body["model"] == "m" and body["max_tokens"] == 64 and body["temperature"] == 0
    system, user = body["messages"]
    assert system["role"] == "system" and "0 (unusable) to 10 (excellent)" in system["content"]
    text = user["content"][0]["text"]
    assert text.startswith("Figure Caption:\nFigure 0: axial CT") and "Figure Context:\n\t- As shown" in text
    assert "Question:\nQuestion number 0" in text and "Answer:\nAnswer A0" in text
    assert user["content"][1]["image_url"]["url"].startswith("data:image/png;base64,")


def test_units_from_candidates_cover_dual_and_single_answer_rows(tmp_path):
    cands = write_candidates(tmp_path / "cands")
    units = load_units(str(cands), rounds="all")
    assert len(units) == 9 * 2 * 2 + 2
    single = [u for u in units if u.candidate_id == "single_F1#0"]
    assert [(u.score_id, u.question, u.answer) for u in single] == [
        ("single_F1#0#r0", "What is shown?", "A CT."),
        ("single_F1#0#r1", "Any lesion?", "Yes."),
    ]
    assert len(load_units(str(cands), rounds="first")) == 9 * 2 * 2 + 1


def test_pairs_agreement_and_mixed_from_the_command_line(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    items = write_items(tmp_path / "items", count=5)
    with FakeOpenAIServer(reply=scripted_reply) as server:
        judge_main(
            [
                "rubric",
                "--candidates",
                str(items),
                "--out",
                str(tmp_path / "judge"),
                "--model",
                "m",
                "--base-url",
                server.url,
                "--no-send-images",
                "--limit",
                "8",
            ]
        )
    assert len(read_scores(tmp_path / "judge")) == 8

    annotations = tmp_path / "annotations"
    store = JudgementStore(annotations, "dr_a")
    verdicts = [(True, False), (True, False), (False, True), (True, True)]
    for i, (good_a, good_b) in enumerate(verdicts):
        item = json.loads((items).read_text().splitlines()[i])
        store.append(
            {
                **{
                    k: item[k]
                    for k in ("item_id", "pair_id", "question", "answer_a", "answer_b", "caption", "mentions")
                },
                "acceptable_a": good_a,
                "acceptable_b": good_b,
                "better": None,
                "comment": "",
            }
        )
    JudgementStore(annotations, "dr_b").append({**store.latest["30000_F1#q0"], "acceptable_b": True})

    repo = tmp_path / "prefs"
    assert preferences_main(["build", "--annotations", str(annotations), "--out", str(repo)]) == 0
    clinician = read_config(repo, "clinician")
    assert sorted(p["pair_key"] for p in clinician) == ["clinician:30001_F1#q0", "clinician:30002_F1#q0"]
    stats = json.loads((repo / "stats" / "annotators.json").read_text())
    assert stats["annotator_pairs"][0]["overlap"] == 1 and stats["mean_item_agreement"] == 0.0
    outcomes = [json.loads(line) for line in (repo / "stats" / "clinician_outcomes.jsonl").read_text().splitlines()]
    assert {o["item_id"]: o["outcome"] for o in outcomes}["30000_F1#q0"] == "disagreement"
    assert {o["item_id"]: o["outcome"] for o in outcomes}["30003_F1#q0"] == "tie"
    assert not (repo / "data" / "mixed").exists()

    assert (
        preferences_main(
            [
                "pairs",
                "--scores",
                str(tmp_path / "judge"),
                "--n",
                "6",
                "--seed",
                "1",
                "--test-fraction",
                "0",
                "--out",
                str(repo),
                "--clinician-weight",
                "10",
            ]
        )
        == 0
    )
    model = read_config(repo, "model")
    assert 0 < len(model) <= 6 and all(p["chosen_score"] > p["rejected_score"] for p in model)
    mixed = read_config(repo, "mixed")
    assert len(mixed) == len(model) + 2
    assert {(p["origin"], p["weight"]) for p in mixed} == {("clinician", 10.0), ("model", 1.0)}

    assert preferences_main(["agreement", "--scores", str(tmp_path / "judge"), "--repo", str(repo)]) == 0
    agreement = json.loads((repo / "stats" / "judge_agreement.json").read_text())
    # item 1: A (7) over B (unparsed) -> missing; item 2: chosen B (3) vs A (7.5) -> judge disagrees
    assert agreement == {
        "pairs": 2,
        "agree": 0,
        "disagree": 1,
        "tie": 0,
        "missing": 1,
        "not_judged": 0,  # judged, but the reply gave no score
        "agreement": 0.0,
        "agreement_without_ties": 0.0,
        "missing_pairs": [],
    }

    assert preferences_main(["mix", "--repo", str(repo), "--clinician-weight", "300"]) == 0
    assert {p["weight"] for p in read_config(repo, "mixed") if p["origin"] == "clinician"} == {300.0}
    card = (repo / "README.md").read_text()
    assert "config_name: mixed" in card and "download_checksums" in card


def test_paper_prompt_file_is_accepted(tmp_path, monkeypatch):
    from tests.conftest import shared_fixture

    rubric = shared_fixture("biomed_vital", "prompts", "rubric_scoring.txt")
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    items = write_items(tmp_path / "items", count=2)
    seen = []
    with FakeOpenAIServer(reply=lambda body: seen.append(body) or "8 7") as server:
        run_judge(
            JudgeConfig(
                candidates=str(items), out=str(tmp_path / "j"), model="m", base_url=server.url, prompt_file=str(rubric)
            )
        )
    assert seen[0]["messages"][0]["content"] == rubric.read_text().strip()
    assert [r["score"] for r in read_scores(tmp_path / "j")] == [8.0, 8.0, None, None]


def test_batch_backend_submits_then_collects_on_the_next_run(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    items = write_items(tmp_path / "items", count=3)
    out = tmp_path / "judge"
    with FakeOpenAIServer(reply=scripted_reply, batch_ready_after=1) as server:
        config = JudgeConfig(candidates=str(items), out=str(out), model="m", base_url=server.url, backend="batch")
        first = run_judge(config)
        assert first["waiting_in_batch_jobs"] == 4 and first["scored"] == 0 and first["errors"] == 2
        assert server.chat_log(status=None) == []
        still = run_judge(config)  # the job is still in progress: nothing submitted twice
        assert still["waiting_in_batch_jobs"] == 4
        assert len([e for e in server.log if e["route"] == "batches"]) == 1
        done = run_judge(config)
    assert done["waiting_in_batch_jobs"] == 0 and done["scored"] == 3 and done["unparsed"] == 1
    scores = {r["score_id"]: r["score"] for r in read_scores(out) if r["status"] != "error"}
    assert scores == {"30000_F1#q0#a": 7.0, "30001_F1#q0#a": 7.0, "30000_F1#q0#b": 2.0, "30001_F1#q0#b": None}


def test_whole_stage_on_generated_dual_answer_candidates(tmp_path, monkeypatch):
    """generate (dual-answer) -> sample -> judge -> pairs, each through its command, against the fake server."""
    from tests.generation_support import make_demonstrations, make_figures
    from vital_hub.generation.cli import main as generate_main
    from vital_hub.preferences.items import load_items

    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    images, captions, pair_ids = make_figures(tmp_path, 6, missing=(5,))
    cands = tmp_path / "cands"
    with FakeOpenAIServer() as server:
        assert (
            generate_main(
                [
                    "candidates",
                    "--figures",
                    str(images),
                    "--captions",
                    str(captions),
                    "--out",
                    str(cands),
                    "--model",
                    "gpt-4o",
                    "--base-url",
                    server.url,
                    "--mode",
                    "dual-answer",
                    "--demos",
                    str(make_demonstrations(tmp_path / "demos.json")),
                ]
            )
            == 0
        )
    items = tmp_path / "items.jsonl"
    assert (
        preferences_main(
            [
                "sample",
                "--candidates",
                str(cands),
                "--images",
                str(images),
                "--k",
                "4",
                "--encoder",
                "hashing",
                "--out",
                str(items),
            ]
        )
        == 0
    )
    chosen = load_items(items)
    assert len(chosen) == 4 and {i.pair_id for i in chosen} <= set(pair_ids[:5])
    assert all(i.image and i.question and i.answer_b for i in chosen)

    def varied(body):
        answer = body["messages"][1]["content"][0]["text"].rsplit("Answer:\n", 1)[1]
        return f"Score: {len(answer) % 11}/10"

    with FakeOpenAIServer(reply=varied) as server:
        assert (
            judge_main(
                [
                    "rubric",
                    "--candidates",
                    str(cands),
                    "--images",
                    str(images),
                    "--out",
                    str(tmp_path / "judge"),
                    "--model",
                    "judge",
                    "--base-url",
                    server.url,
                ]
            )
            == 0
        )
    scores = read_scores(tmp_path / "judge")
    assert len(scores) == 5 * 4 * 2 and all(s["status"] == "ok" for s in scores)
    assert (
        preferences_main(["pairs", "--scores", str(tmp_path / "judge"), "--n", "20", "--out", str(tmp_path / "prefs")])
        == 0
    )
    model = read_config(tmp_path / "prefs", "model")
    assert 0 < len(model) <= 20 and all(p["chosen_score"] > p["rejected_score"] for p in model)


def test_judge_cuts_a_line_torn_by_a_kill_and_resumes(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    items = write_items(tmp_path / "items", count=3)
    out = tmp_path / "judge"
    scores = out / "scores.jsonl"
    with FakeOpenAIServer(reply=scripted_reply) as server:
        config = JudgeConfig(
            candidates=str(items), out=str(out), model="m", base_url=server.url, concurrency=1, chunk_size=1, limit=4
        )
        run_judge(config)
        lines = scores.read_bytes().splitlines(keepends=True)
        torn = json.loads(lines[-1])["score_id"]
        assert torn == "30001_F1#q0#b" and json.loads(lines[-1])["status"] == "unparsed"
        scores.write_bytes(b"".join(lines[:-1]) + lines[-1][:30])  # killed while writing the last line
        assert {r["score_id"] for r in read_scores(out)} == {json.loads(line)["score_id"] for line in lines[:-1]}
        assert "unfinished last line" in caplog.text
        summary = run_judge(config)
    assert summary["units"] == 4 and summary["scored"] + summary["unparsed"] == 4
    # the fragment was cut, not left in the middle of the file: the re-run wrote the torn unit on a line of its own
    rewritten = scores.read_bytes().splitlines(keepends=True)
    assert rewritten[:-1] == lines[:-1] and json.loads(rewritten[-1])["score_id"] == torn
    assert {r["score_id"]: r["status"] for r in read_scores(out)}[torn] == "unparsed"


def test_judge_scores_with_a_bad_line_before_the_last_are_an_error(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    items = write_items(tmp_path / "items", count=2)
    out = tmp_path / "judge"
    with FakeOpenAIServer(reply=scripted_reply) as server:
        config = JudgeConfig(candidates=str(items), out=str(out), model="m", base_url=server.url)
        run_judge(config)
        scores = out / "scores.jsonl"
        lines = scores.read_text().splitlines(keepends=True)
        scores.write_text(lines[0] + '{"score_id": "30000_F1#q0#b", "sco\n' + "".join(lines[1:]))
        with pytest.raises(RecordError, match="line 2 is not valid JSON") as err:
            read_scores(out)
        assert "scores.jsonl" in str(err.value)
        with pytest.raises(RecordError, match="line 2 is not valid JSON"):
            run_judge(config)


def test_units_sharing_a_figure_decode_it_once_and_get_the_same_requests(tmp_path, monkeypatch):
    from vital_hub.generation import prompts
    from vital_hub.preferences.items import ImageResolver
    from vital_hub.preferences.judge import request_for

    items = write_items(tmp_path / "items", count=3)
    config = JudgeConfig(candidates=str(items), out=str(tmp_path / "j"), model="m", image_max_side=64)
    units = load_units(config.candidates)
    resolver = ImageResolver(config.images, config.figures)
    decoded = []
    encode = prompts.image_data_url
    monkeypatch.setattr(prompts, "image_data_url", lambda data, side=None: decoded.append(data) or encode(data, side))

    def requests(image_urls=None) -> list:
        built = []
        for unit in units:
            try:
                built.append(request_for(unit, config, "rubric", resolver, {} if image_urls is None else image_urls))
            except prompts.ImageError as err:
                built.append(f"ImageError: {err}")
        return built

    one_by_one = requests()
    assert len(decoded) == 4  # the missing figure is never handed to the encoder
    decoded.clear()
    assert requests({}) == one_by_one
    assert len(decoded) == 2  # two figures, each once
    assert one_by_one[-1] == one_by_one[-2]
    no_image = "not found: the item names no image and no images folder or figures dataset was given"
    assert one_by_one[-1] == f"ImageError: figure of 30002_F1: {no_image}"


def test_batch_backend_never_uploads_an_oversized_request(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    items = write_items(tmp_path / "items", count=3)
    rows = [json.loads(line) for line in items.read_text().splitlines()]
    rows[0]["answer_a"] = "very long answer " * 2_000
    items.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "judge"
    with FakeOpenAIServer(reply=scripted_reply) as server:
        config = JudgeConfig(
            candidates=str(items),
            out=str(out),
            model="m",
            base_url=server.url,
            backend="batch",
            max_prompt_tokens=4000,
        )
        first = run_judge(config)
        uploaded = [line for path in (out / "batches").glob("*.jsonl") for line in path.read_text().splitlines()]
    assert first["waiting_in_batch_jobs"] == 3 and len(uploaded) == 3
    assert "very long answer" not in "".join(uploaded)
    failed = {r["score_id"]: r for r in read_scores(out)}["30000_F1#q0#a"]
    assert failed["status"] == "error" and "(max_prompt_tokens): not sent" in failed["error"]


def test_agreement_with_a_judge_of_another_candidate_set_says_what_to_run(tmp_path, capsys):
    """The judge scored single-answer candidates, the clinicians saw dual answers: exit 1 naming the items."""
    items = write_items(tmp_path / "items", count=4)
    annotations = tmp_path / "annotations"
    store = JudgementStore(annotations, "dr_a")
    for line in items.read_text().splitlines():
        item = json.loads(line)
        fields = ("item_id", "pair_id", "question", "answer_a", "answer_b", "caption", "mentions")
        store.append({**{k: item[k] for k in fields}, "acceptable_a": True, "acceptable_b": False, "better": None})
    repo = tmp_path / "prefs"
    assert preferences_main(["build", "--annotations", str(annotations), "--out", str(repo)]) == 0
    assert "no clinician pair is held out" not in capsys.readouterr().err
    assert {p["split"] for p in read_config(repo, "clinician")} >= {"train"}

    judge = tmp_path / "judge"
    judge.mkdir()
    rows = [
        {"score_id": f"c{i}#r0", "question": f"Other question {i}?", "answer": "other", "score": 5, "status": "ok"}
        for i in range(3)
    ]
    (judge / "scores.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (judge / "run.json").write_text(json.dumps({"config": {"candidates": "single-answer-cands/"}}))
    argv = ["agreement", "--scores", str(judge), "--repo", str(repo)]
    assert preferences_main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "4 of 4 clinician pairs have an answer the judge never scored" in err
    assert all(f"3000{i}_F1#q0" in err for i in range(4))
    assert f"{judge} scored single-answer-cands/" in err
    assert "vital judge rubric --candidates ITEMS.jsonl" in err
    assert not (repo / "stats" / "judge_agreement.json").exists()

    assert preferences_main([*argv, "--allow-missing"]) == 0
    assert json.loads((repo / "stats" / "judge_agreement.json").read_text())["not_judged"] == 4


def test_build_holds_clinician_pairs_out_by_default_and_warns_when_none_are(tmp_path, capsys):
    items = write_items(tmp_path / "items", count=5)
    annotations = tmp_path / "annotations"
    store = JudgementStore(annotations, "dr_a")
    for line in items.read_text().splitlines():
        item = json.loads(line)
        fields = ("item_id", "pair_id", "question", "answer_a", "answer_b", "caption", "mentions")
        store.append({**{k: item[k] for k in fields}, "acceptable_a": False, "acceptable_b": True, "better": None})
    assert preferences_main(["build", "--annotations", str(annotations), "--out", str(tmp_path / "p")]) == 0
    assert "test" in {p["split"] for p in read_config(tmp_path / "p", "clinician")}
    argv = ["build", "--annotations", str(annotations), "--out", str(tmp_path / "q"), "--test-fraction", "0"]
    assert preferences_main(argv) == 0
    assert "no clinician pair is held out" in capsys.readouterr().err


def test_a_bomb_and_a_cut_off_figure_fail_their_units_alone_with_a_line_naming_file_and_unit(
    tmp_path, monkeypatch, capsys
):
    """A PNG whose header claims 30000 x 30000 px is refused from its header (never decoded), a cut-off one is
    reported damaged: their units become error rows naming the file and the reason, one stderr line per figure, the
    other units are scored, and a re-run keeps every score without paying again."""
    from tests.test_annotate_security import bomb_png

    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    items = write_items(tmp_path / "items", count=4)  # the last item has no figure at all
    bomb, cut = tmp_path / "items" / "30000_F1.png", tmp_path / "items" / "30001_F1.png"
    bomb.write_bytes(bomb_png(30_000, 30_000))
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])
    out = tmp_path / "judge"
    with FakeOpenAIServer(reply=scripted_reply) as server:
        command = ["rubric", "--candidates", str(items), "--out", str(out), "--model", "m", "--base-url", server.url]
        command += ["--images", str(items.parent)]  # the figures' own folder: each file is named once
        assert judge_main(command) == 0
        err = capsys.readouterr().err
        rows = {row["score_id"]: row for row in read_scores(out)}
        assert [rows[f"30002_F1#q0#{side}"]["status"] for side in "ab"] == ["ok", "ok"]
        for side in "ab":
            assert rows[f"30000_F1#q0#{side}"]["status"] == "error"
            bombed, damaged = rows[f"30000_F1#q0#{side}"]["error"], rows[f"30001_F1#q0#{side}"]["error"]
            assert f"{bomb}: too large to open" in bombed and bombed.count(str(bomb)) == 1
            assert f"{cut}: damaged (cut off" in damaged and damaged.count(str(cut)) == 1
            missing = rows[f"30003_F1#q0#{side}"]["error"]
            assert missing == f"figure of 30003_F1: not found (looked for {items.parent / '30003_F1.jpg'})"
        assert len(server.chat_log()) == 2  # only the good figure's two units went out
        for figure, reason in ((bomb, "too large to open"), (cut, "damaged")):
            lines = [line for line in err.splitlines() if str(figure) in line]
            assert len(lines) == 1 and lines[0].startswith(f"warning: {figure.stem}#q0#a ") and reason in lines[0]
        assert "Traceback" not in err
        assert judge_main(command) == 0  # the re-run: figures still fail, scores kept, nothing paid twice
        assert len(server.chat_log()) == 2
    again = {row["score_id"]: row for row in read_scores(out)}
    assert {key: row["score"] for key, row in again.items()} == {key: row["score"] for key, row in rows.items()}
