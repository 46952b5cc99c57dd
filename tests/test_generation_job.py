"""The candidates job end to end against a real local server: dataset, resume after kill -9, Batch API, CLI."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest

from tests.conftest import REPO_ROOT, shared_fixture
from tests.fakes.openai_server import FakeOpenAIServer
from tests.generation_support import make_demonstrations, make_figures
from vital_hub.cli import main as vital
from vital_hub.generation.batch import collect
from vital_hub.generation.cli import main as generate_main
from vital_hub.generation.client import FatalAPIError


@pytest.fixture
def api_key(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-secret-123")
    return "sk-test-secret-123"


def read_candidates(out) -> list[dict]:
    shards = sorted((out / "data" / "candidates").glob("*.parquet"))
    return [row for shard in shards for row in pq.read_table(shard).to_pylist()]


def job_args(tmp_path, url, figures, captions, *extra) -> list[str]:
    return [
        "candidates", "--figures", str(figures), "--captions", str(captions), "--out", str(tmp_path / "out"),
        "--model", "gpt-4o", "--base-url", url, "--demos", str(make_demonstrations(tmp_path / "demos.json")),
        *extra,
    ]  # fmt: skip


def test_candidates_dataset_rows(tmp_path, api_key):
    images, captions, pair_ids = make_figures(tmp_path, 5, missing=(2,))
    with FakeOpenAIServer() as server:
        assert generate_main(job_args(tmp_path, server.url, images, captions, "--samples", "2")) == 0
        assert len(server.chat_log()) == 8  # the figure without an image is never sent
    rows = read_candidates(tmp_path / "out")
    assert [r["candidate_id"] for r in rows] == [f"{p}#{s}" for p in pair_ids for s in (0, 1)]
    missing = [r for r in rows if r["pair_id"] == pair_ids[2]]
    assert {r["status"] for r in missing} == {"error"} and missing[0][
        "error"
    ] == "no usable image (figure status: missing)"
    ok = rows[0]
    assert ok["status"] == "ok" and ok["image"] == f"{pair_ids[0]}.jpg"
    assert ok["conversations"][0]["value"].endswith("\n<image>") and len(ok["conversations"]) == 10
    assert "\nIt continues on a second line" in ok["conversations"][1]["value"]
    assert ok["dual_answers"] == [] and ok["raw_text"].startswith("**User:**")
    assert ok["model"] == "gpt-4o" and len(ok["prompt_version"]) == 12
    assert json.loads(ok["sampling"]) == {"max_tokens": 4096}
    assert ok["prompt_tokens"] > 0 and ok["cost_usd"] > 0 and ok["finish_reason"] == "stop"
    assert ok["domain"] == {"chest_xray": True, "mri": False, "ct_scan": False, "histology": False, "gross": False}
    assert rows[2]["mentions"] == ["As shown in Fig. 1 , the finding persists ."]
    assert rows[0]["seed"] != rows[1]["seed"]
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    assert run["identity"]["prompt_version"] == ok["prompt_version"]
    assert (tmp_path / "out" / "prompts" / f"{ok['prompt_version']}.txt").exists()
    assert not list((tmp_path / "out" / ".parts").glob("*.parquet"))


def test_dataset_loads_as_the_candidates_config(tmp_path, api_key):
    from datasets import load_dataset

    images, captions, _ = make_figures(tmp_path, 3)
    with FakeOpenAIServer() as server:
        generate_main(job_args(tmp_path, server.url, images, captions))
    dataset = load_dataset(str(tmp_path / "out"), "candidates", split="train", cache_dir=str(tmp_path / "hf"))
    assert dataset.num_rows == 3 and dataset[0]["status"] == "ok"


def test_figures_dataset_input(tmp_path, api_key):
    from vital_hub.figures.dataset import DATA_DIR, write_shards

    images, _, pair_ids = make_figures(tmp_path, 4, missing=(1,))
    rows = []
    for number, pair_id in enumerate(pair_ids):
        data = (images / f"{pair_id}.jpg").read_bytes()
        rows.append(
            {"pair_id": pair_id, "pmcid": None, "pmid": None, "fig_id": None, "fig_label": "Fig. 2",
             "caption": f"Dataset caption {number}", "mentions": [f"mention {number}"], "domain": None,
             "image": {"bytes": data, "path": None} if data else None, "licence": None, "source_url": None,
             "sha256": None, "status": "ok" if data else "missing"}
        )  # fmt: skip
    write_shards(iter(rows), tmp_path / "repo" / DATA_DIR, shard_bytes=1000)
    with FakeOpenAIServer() as server:
        args = ["candidates", "--figures", str(tmp_path / "repo"), "--out", str(tmp_path / "out"), "--model", "m"]
        assert generate_main([*args, "--base-url", server.url, "--min-rounds", "5"]) == 0
        sent = [e["key"] for e in server.chat_log()]
    candidates = read_candidates(tmp_path / "out")
    assert [r["status"] for r in candidates] == ["ok", "error", "ok", "ok"] and len(sent) == 3
    assert candidates[1]["error"] == "no usable image (figure status: missing)"
    assert candidates[2]["caption"] == "Dataset caption 2" and candidates[2]["mentions"] == ["mention 2"]
    assert candidates[2]["cost_usd"] is None  # model "m" is not in the price table


def test_figures_of_retracted_articles_are_left_out_unless_asked(tmp_path, api_key, capsys):
    from vital_hub.figures.dataset import DATA_DIR, write_shards

    images, _, pair_ids = make_figures(tmp_path, 3)
    rows = [
        {"pair_id": pair_id, "fig_label": "Fig. 1", "caption": f"caption {n}", "mentions": [], "status": "ok",
         "image": {"bytes": (images / f"{pair_id}.jpg").read_bytes(), "path": None}, "retracted": n == 1}
        for n, pair_id in enumerate(pair_ids)
    ]  # fmt: skip
    write_shards(iter(rows), tmp_path / "repo" / DATA_DIR, shard_bytes=1 << 20)
    with FakeOpenAIServer() as server:
        args = ["candidates", "--figures", str(tmp_path / "repo"), "--model", "m", "--base-url", server.url]
        assert generate_main([*args, "--out", str(tmp_path / "out")]) == 0
        assert "left out 1 figures of retracted articles" in capsys.readouterr().out
        assert generate_main([*args, "--out", str(tmp_path / "all"), "--include-retracted"]) == 0
    assert {r["pair_id"] for r in read_candidates(tmp_path / "out")} == {pair_ids[0], pair_ids[2]}
    assert {r["pair_id"] for r in read_candidates(tmp_path / "all")} == set(pair_ids)


def test_unparsable_and_dual_answer_replies(tmp_path, api_key):
    images, captions, _ = make_figures(tmp_path, 2)
    with FakeOpenAIServer(reply=lambda body: "I cannot help with this figure.") as server:
        generate_main(job_args(tmp_path, server.url, images, captions))
    rows = read_candidates(tmp_path / "out")
    assert [r["status"] for r in rows] == ["unparsed", "unparsed"]
    assert rows[0]["raw_text"] == "I cannot help with this figure." and rows[0]["conversations"] == []

    with FakeOpenAIServer() as server:
        args = job_args(tmp_path, server.url, images, captions, "--mode", "dual-answer")
        args[args.index("--out") + 1] = str(tmp_path / "dual")
        generate_main(args)
    dual = read_candidates(tmp_path / "dual")
    assert all(r["status"] == "ok" for r in dual)
    assert dual[0]["dual_answers"][0]["answer_b"].startswith("Second view 1")
    assert dual[0]["conversations"][1]["value"] == dual[0]["dual_answers"][0]["answer_a"]


def test_rerun_is_free_and_errors_are_retried(tmp_path, api_key):
    images, captions, _ = make_figures(tmp_path, 4)
    with FakeOpenAIServer(faults={"chat": ["400"]}) as server:
        args = job_args(tmp_path, server.url, images, captions, "--concurrency", "1")
        generate_main(args)
        first = read_candidates(tmp_path / "out")
        assert [r["status"] for r in first].count("error") == 1
        sent = len(server.log)
        generate_main(args)
        assert len(server.log) == sent + 1  # only the failed request went out again
    assert [r["status"] for r in read_candidates(tmp_path / "out")] == ["ok"] * 4


def test_a_different_configuration_is_refused(tmp_path, api_key):
    images, captions, _ = make_figures(tmp_path, 1)
    with FakeOpenAIServer() as server:
        generate_main(job_args(tmp_path, server.url, images, captions))
        with pytest.raises(SystemExit, match="another configuration .*seed: 0 -> 5"):
            generate_main(job_args(tmp_path, server.url, images, captions, "--seed", "5"))


def test_fatal_errors_exit_with_a_message(tmp_path, api_key, capsys):
    images, captions, _ = make_figures(tmp_path, 3)
    with FakeOpenAIServer(faults={"chat": ["401"]}) as server:
        assert vital(["generate", *job_args(tmp_path, server.url, images, captions, "--concurrency", "1")]) == 1
    err = capsys.readouterr().err
    assert "vital generate candidates: error: HTTP 401" in err and "the API key was rejected" in err


def test_yaml_config_with_cli_override(tmp_path, api_key, capsys):
    images, captions, _ = make_figures(tmp_path, 2)
    with FakeOpenAIServer() as server:
        config = tmp_path / "gen.yaml"
        config.write_text(
            f"figures: {images}\ncaptions: {captions}\nout: {tmp_path / 'out'}\nmodel: gpt-4o\n"
            f"base_url: {server.url}\nsamples: 3\n"
        )
        assert generate_main(["candidates", "--config", str(config), "--samples", "1", "--limit", "1"]) == 0
    assert len(read_candidates(tmp_path / "out")) == 1
    config.write_text("figures: x\nout: y\nmodel: m\nsampels: 2\n")
    with pytest.raises(SystemExit):
        generate_main(["candidates", "--config", str(config)])
    assert "unknown keys ['sampels']" in capsys.readouterr().err


def test_kill_9_then_rerun_completes_without_paying_twice(tmp_path, api_key):
    images, captions, pair_ids = make_figures(tmp_path, 40)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    with FakeOpenAIServer(latency_s=0.1) as server:
        args = job_args(tmp_path, server.url, images, captions, "--samples", "2", "--concurrency", "4")
        command = [sys.executable, "-m", "vital_hub.cli", "generate", *args, "--flush-rows", "3"]
        process = subprocess.Popen(
            command, env=env, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 60
        while len(server.chat_log()) < 30 and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.02)
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        assert process.returncode == -signal.SIGKILL
        with sqlite3.connect(tmp_path / "out" / "cache.sqlite") as db:
            answered = {key for (key,) in db.execute("SELECT key FROM responses")}
        seen_before = len(server.log)
        assert 0 < len(answered) < 80

        finished = subprocess.run(command, env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
        assert finished.returncode == 0, finished.stderr[-2000:]
        resent = [e["key"] for e in server.log[seen_before:] if e["route"] == "chat"]
    assert not answered & set(resent), "a request answered before the crash was sent again"
    rows = read_candidates(tmp_path / "out")
    assert [r["candidate_id"] for r in rows] == [f"{p}#{s}" for p in pair_ids for s in (0, 1)]
    assert {r["status"] for r in rows} == {"ok"}
    billed = [e["key"] for e in server.chat_log() if e["delivered"]]
    assert len(billed) - len(set(billed)) <= 4  # at most the requests in flight at the kill


def test_sigterm_stops_gracefully_and_nothing_is_paid_twice(tmp_path, api_key):
    images, captions, pair_ids = make_figures(tmp_path, 30)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    with FakeOpenAIServer(latency_s=0.2) as server:
        args = job_args(tmp_path, server.url, images, captions, "--concurrency", "6")
        command = [sys.executable, "-m", "vital_hub.cli", "generate", *args]
        process = subprocess.Popen(command, env=env, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while len(server.chat_log()) < 10 and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.02)
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=60)
        assert process.returncode == 130 and b"run the same command again to resume" in output
        assert not (tmp_path / "out" / "data").exists()
        assert len(server.chat_log()) < 30
        finished = subprocess.run(command, env=env, cwd=REPO_ROOT, capture_output=True, timeout=120)
        assert finished.returncode == 0
        keys = [e["key"] for e in server.chat_log(None)]
    assert len(keys) == len(set(keys)) == 30  # every request sent exactly once across stop and resume
    assert [r["candidate_id"] for r in read_candidates(tmp_path / "out")] == [f"{p}#0" for p in pair_ids]


def test_batch_backend_submit_collect_and_resume(tmp_path, api_key):
    images, captions, pair_ids = make_figures(tmp_path, 6, missing=(4,))
    data = json.loads(captions.read_text())
    data["synthetic"][5]["fig_caption"] = "FAIL-IN-BATCH"  # the fake server fails this item inside its job
    captions.write_text(json.dumps(data))
    with FakeOpenAIServer(batch_ready_after=1, faults={"content": ["pass", "403"]}) as server:
        args = job_args(tmp_path, server.url, images, captions, "--backend", "batch", "--batch-max-requests", "2")
        assert generate_main(args) == 0
        out = tmp_path / "out"
        inputs = sorted((out / "batches").glob("input-*.jsonl"))
        assert [len(p.read_text().splitlines()) for p in inputs] == [2, 2, 1]
        line = json.loads(inputs[0].read_text().splitlines()[0])
        assert line["method"] == "POST" and line["url"] == "/v1/chat/completions" and line["body"]["model"] == "gpt-4o"
        assert not (out / "data").exists() and server.chat_log(None) == []

        assert generate_main(args) == 0  # nothing new is submitted while jobs wait
        assert len([e for e in server.log if e["route"] == "batches"]) == 3

        assert collect(out)["still_waiting_jobs"] == 3  # first look: in progress
        with pytest.raises(FatalAPIError, match="download file-"):
            collect(out)  # job 1 stored, job 2's download refused: half collected
        counts = collect(out)
        assert counts["collected_jobs"] == 2 and counts["stored"] == 2 and counts["still_waiting_jobs"] == 0
        assert counts["failed_items"] == 1
        downloads = [e["file_id"] for e in server.log if e["route"] == "content" and e["status"] == 200]
        assert len(downloads) == len(set(downloads)) == 4  # job 1's output was not fetched twice
        assert len([e for e in server.log if e["route"] == "batches"]) == 3  # the failed item is not resubmitted
    rows = read_candidates(out)
    assert [r["candidate_id"] for r in rows] == [f"{p}#0" for p in pair_ids]
    assert [r["status"] for r in rows] == ["ok"] * 4 + ["error"] * 2
    assert rows[5]["error"] == "batch item failed: server_error: fake batch failure"
    assert rows[0]["cost_usd"] == pytest.approx(
        (rows[0]["prompt_tokens"] * 2.5 + rows[0]["completion_tokens"] * 10) / 2e6
    )


def test_reference_answers_on_qa50(tmp_path, api_key):
    questions = shared_fixture("llava_med", "llava_med_eval_qa50_qa.jsonl")
    images = shared_fixture("llava_med", "qa50_images")
    lines = questions.read_text().splitlines()
    sample = [json.loads(line) for line in lines]
    picked = [r for r in sample if (images / r["image"]).stat().st_size not in (0, 262144)][:2]  # whole JPEGs
    picked += [r for r in sample if (images / r["image"]).stat().st_size == 0][:2]
    subset = tmp_path / "qa.jsonl"
    subset.write_text("".join(json.dumps(r) + "\n" for r in picked))
    out = tmp_path / "qa_ref.jsonl"
    with FakeOpenAIServer(reply=lambda body: "A concise answer.") as server:
        argv = ["reference-answers", "--questions", str(subset), "--images", str(images), "--out", str(out)]
        assert generate_main([*argv, "--model", "gpt-4o", "--base-url", server.url]) == 0
        bodies = len(server.chat_log())
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert bodies == 4 and [r["question_id"] for r in records] == [r["question_id"] for r in picked]
    assert all(r["gpt4_answer"] == "A concise answer." and r["reference_model"] == "gpt-4o" for r in records)
    assert [r["original_gpt4_answer"] for r in records] == [r["gpt4_answer"] for r in picked]
    assert [r["reference_image"] for r in records] == [True, True, False, False]


def test_a_figure_image_is_encoded_once_for_all_its_samples(tmp_path, monkeypatch):
    import vital_hub.generation.prompts as prompts
    from vital_hub.generation.candidates import GenerateConfig, Job

    images, captions, pair_ids = make_figures(tmp_path, 2, missing=(1,))
    config = GenerateConfig(
        figures=str(images), captions=str(captions), out=str(tmp_path / "out"), model="gpt-4o",
        demos=str(make_demonstrations(tmp_path / "demos.json")), samples=3,
    )  # fmt: skip
    job = Job.prepare(config)
    encoded = []
    real = prompts.image_data_url
    monkeypatch.setattr(
        prompts, "image_data_url", lambda data, max_side=None: encoded.append(data) or real(data, max_side)
    )
    prepared = job.requests_for(pair_ids[0], [0, 1, 2])
    assert len(encoded) == 1
    figure = job.figure(pair_ids[0])
    for (row, request), sample in zip(prepared, (0, 1, 2), strict=True):
        assert request == job.builder.build(figure, row["seed"]) and row["sample"] == sample
    assert len(encoded) == 4
    failed = job.requests_for(pair_ids[1], [0, 1])
    assert [request for _, request in failed] == [None, None] and len(encoded) == 4
    assert {row["error"] for row, _ in failed} == {"no usable image (figure status: missing)"}
