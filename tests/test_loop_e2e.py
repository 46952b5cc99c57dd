"""The whole loop as a new user runs it, from the docs' commands: fetch PMC figures -> build the figures config ->
generate candidates and the clinicians' dual answers -> sample items -> two clinicians judge them in the app ->
the rubric judge scores the same answers and the candidates -> preferences -> a tiny selector -> select -> your
own mixture -> a few SFT steps -> answer, judge, win rate, report -> push every artifact to a Hub -> load each one
back with stock tools, and check that no checkpoint, cache, log or run file went up.

PMC, the model server and the Hub are the local stand-ins in tests/fakes. Every stage is the `vital` command (in
this process) or the recipe script the docs name; pushing and loading back run in one fresh interpreter, which
sees the fake Hub as the Hub (huggingface_hub reads HF_ENDPOINT when it is imported).
"""

import json
import os
import subprocess
import sys
import textwrap
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.annotate_helpers import invite, start_server, stop
from tests.conftest import REPO_ROOT
from tests.fakes.hub_server import running_hub
from tests.fakes.judge_replies import chat_judge_reply, pairwise_judge_reply
from tests.fakes.openai_server import FakeOpenAIServer
from tests.fakes.pmc_server import FakePmc, populate
from tests.generation_support import make_demonstrations
from vital_hub.cli import main as vital_main

PRIVATE = ("checkpoint-", "optimizer.pt", "scheduler.pt", "rng_state", "trainer_state.json", ".sqlite", "run.json")


def vital(*argv) -> None:
    """One documented command, as typed; any failure stops the loop there."""
    assert vital_main([str(a) for a in argv]) == 0, f"vital {' '.join(map(str, argv))}"


def judge_reply(body: dict) -> str:
    """One fake model server for every judge: rubric scores by answer length, qa50-style and pairwise verdicts."""
    system = " ".join(str(m.get("content")) for m in body["messages"] if m.get("role") == "system")
    text = body["messages"][-1]["content"]
    text = text if isinstance(text, str) else "".join(p.get("text", "") for p in text if p.get("type") == "text")
    if "[Ground truth]" in text:
        return pairwise_judge_reply(body)
    if "[Assistant 1]" in text:
        return chat_judge_reply(body)
    assert "rubric" in system.lower() or "score" in system.lower()
    return f"{len(text) % 9 + 1}\nScored by length."


def post_judgement(port: int, credential: str, record: dict) -> None:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/judgements",
        data=json.dumps(record).encode(),
        headers={"Authorization": f"Bearer {credential}", "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 200


def captions_file(path: Path, pair_ids: list[str]) -> Path:
    """LLaVA-Med's captions layout ({domain: [records]}) for the fetched figures."""
    domains = ("mri", "ct_scan", "histology", "chest_xray")
    records: dict[str, list] = {d: [] for d in domains}
    for n, pair_id in enumerate(pair_ids):
        domain = domains[n % len(domains)]
        records[domain].append(
            {
                "pair_id": pair_id,
                "pmid": int(pair_id.split("_")[0]),
                "fig_id": pair_id.split("_")[1],
                "fig_label": f"Figure {n + 1}",
                "fig_caption": f"Axial image {n} of the lesion in the left lung.",
                "in_text_mention": [f"As shown in Figure {n + 1}, a mass is present."],
                "domain": {d: d == domain for d in ("chest_xray", "mri", "ct_scan", "histology", "gross")},
            }
        )
    path.write_text(json.dumps(records))
    return path


@pytest.mark.slow
def test_the_whole_loop_from_the_docs_to_the_hub_and_back(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-loop-test")
    monkeypatch.chdir(REPO_ROOT)  # the recipes' relative paths (the smoke tokenizer) are from the repository root
    w = tmp_path

    # ---- figures: fetch from PMC, build the `figures` config
    with FakePmc() as pmc:
        scenario = populate(pmc, articles=4, figures_per_article=2, size=(96, 72))
        urls = w / "urls.jsonl"
        urls.write_text("".join(json.dumps(r) + "\n" for r in scenario.records))
        vital("fetch", "figures", "--urls", urls, "--out", w / "fetch", "--base-url", pmc.url,
              "--legacy-base-url", pmc.url)  # fmt: skip
    pair_ids = sorted(scenario.expected)
    captions = captions_file(w / "captions.json", pair_ids)
    vital("build", "figures", "--index", w / "fetch", "--out", w / "figures", "--captions", captions)

    # ---- candidates, and the dual answers the clinicians will compare (docs/preferences.md, "start to end")
    demos = make_demonstrations(w / "clinician_demonstrations.json")
    with FakeOpenAIServer() as llm:
        common = ["--figures", w / "figures", "--demos", demos, "--model", "gpt-4o", "--base-url", llm.url]
        vital("generate", "candidates", *common, "--out", w / "candidates", "--samples", "2", "--min-rounds", "1")
        vital("generate", "candidates", *common, "--mode", "dual-answer", "--limit", "6", "--out", w / "dual")
    vital("preferences", "sample", "--candidates", w / "dual", "--figures", w / "figures", "--k", "8",
          "--encoder", "hashing", "--out", w / "items.jsonl")  # fmt: skip
    items = [json.loads(line) for line in (w / "items.jsonl").read_text().splitlines()]
    assert len(items) == 8

    # ---- two clinicians judge every item through the app's API (one account each)
    annotations = w / "annotations"
    keys = {name: invite(annotations, name) for name in ("dr_lee", "dr_kim")}
    server, port = start_server(w / "items.jsonl", annotations, "--figures", w / "figures")
    try:
        for index, item in enumerate(items):
            for name, credential in keys.items():
                a_wins = index % 3 != 2 or name == "dr_lee"  # the third item of each three: a disagreement
                record = {"index": index, "item_id": item["item_id"], "acceptable_a": a_wins,
                          "acceptable_b": not a_wins, "better": None, "comment": ""}  # fmt: skip
                post_judgement(port, credential, record)
    finally:
        stop(server)
    vital("preferences", "build", "--annotations", annotations, "--out", w / "prefs")

    # ---- the rubric judge: the clinicians' answers (agreement), then the candidates (model pairs)
    with FakeOpenAIServer(reply=judge_reply) as judge:
        vital("judge", "rubric", "--candidates", w / "items.jsonl", "--model", "judge", "--base-url", judge.url,
              "--out", w / "judge-items")  # fmt: skip
        vital("preferences", "agreement", "--scores", w / "judge-items", "--repo", w / "prefs")
        vital("judge", "rubric", "--candidates", w / "candidates", "--figures", w / "figures", "--model", "judge",
              "--base-url", judge.url, "--out", w / "judge")  # fmt: skip
    wrong_set = vital_main(["preferences", "agreement", "--scores", str(w / "judge"), "--repo", str(w / "prefs")])
    assert wrong_set == 1  # the candidates' judge never saw the clinicians' answers
    agreement = json.loads((w / "prefs" / "stats" / "judge_agreement.json").read_text())
    assert agreement["not_judged"] == 0 and agreement["pairs"] > 0
    vital("preferences", "pairs", "--scores", w / "judge", "--n", "60", "--seed", "0", "--out", w / "prefs")

    # ---- a tiny selector (the smoke recipe, as docs/selector.md runs it), then select
    run_script(["recipes/reward.py", "--config", "recipes/selector/config_smoke.yaml", "--dataset_name",
                w / "prefs", "--images_dir", w / "fetch", "--output_dir", w / "selector"], w)  # fmt: skip
    training = json.loads((w / "selector" / "selector_training.json").read_text())
    assert "eval_clinician_auc" in training["metrics"]  # clinician pairs held out by default
    vital("select", "--selector", w / "selector", "--candidates", w / "candidates", "--figures", w / "figures",
          "--top", "10", "--out", w / "selected", "--num-workers", "0", "--no-progress")  # fmt: skip

    # ---- your own mixture from the selection (README, "Only your own mixture")
    sources = w / "my-sources"
    sources.mkdir()
    (sources / "selected.json").write_text((w / "selected" / "selected.json").read_text())
    (w / "mine.yaml").write_text(
        yaml.safe_dump(
            {
                "components": {"my-selection": {"file": "selected.json", "licence": "see the candidates' terms"}},
                "mixtures": [{"name": "mine", "components": [{"name": "my-selection"}]}],
            }
        )
    )
    vital("build", "instructions", "--sources", sources, "--mixtures", w / "mine.yaml", "--images", w / "fetch",
          "--out", w / "instructions", "--repo-id", "me/instructions")  # fmt: skip

    # ---- a few SFT steps of the LLaVA-1.5 recipe on a tiny model (docs/training.md, smoke runs)
    assert run_module(["vital_hub.training.synthetic", "model", "--size", "tiny", "--out", w / "llava-tiny"]) == 0
    run_script(["recipes/sft.py", "--config", "recipes/llava-1.5-7b/sft/config_full.yaml",
                "--model_name_or_path", w / "llava-tiny", "--init_random_weights", "true", "--dataset_name",
                w / "instructions", "--dataset_config", "mine", "--output_dir", w / "sft", "--max_steps", "2",
                "--save_steps", "1", *CPU_SFT], w)  # fmt: skip
    assert (w / "sft" / "checkpoint-1" / "optimizer.pt").exists()  # what must stay home

    # ---- evaluation: answer, judge (qa50 style), win rate, report
    questions = eval_questions(w / "eval", items[:4])
    vital("eval", "answer", "--model", w / "sft", "--questions", questions, "--image-folder", w / "fetch",
          "--out", w / "eval" / "answers.jsonl", "--max-new-tokens", "4", "--model-id", "me/sft")  # fmt: skip
    baseline = w / "eval" / "baseline.jsonl"
    baseline.write_text("".join(json.dumps({"question_id": q["question_id"], "text": "a lesion"}) + "\n"
                                for q in map(json.loads, questions.read_text().splitlines())))  # fmt: skip
    with FakeOpenAIServer(reply=judge_reply) as judge:
        vital("eval", "chat", "--questions", questions, "--answers", w / "eval" / "answers.jsonl", "--out-dir",
              w / "eval" / "chat", "--base-url", judge.url, "--judge-model", "judge", "--swap")  # fmt: skip
        vital("eval", "winrate", "--questions", vqa_questions(w / "eval", items[:4]), "--answers-a",
              w / "eval" / "answers.jsonl", "--answers-b", baseline, "--out-dir", w / "eval" / "winrate",
              "--base-url", judge.url, "--name-a", "me/sft", "--name-b", "baseline")  # fmt: skip

    # ---- push everything, then load it back with stock tools only
    pushes = [
        ("figures", "me/figures", "dataset"),
        ("candidates", "me/candidates", "dataset"),
        ("prefs", "me/preferences", "dataset"),
        ("instructions", "me/instructions", "dataset"),
        ("selector", "me/selector", "model"),
        ("sft", "me/sft", "model"),
    ]
    with running_hub(w / "hub", token="hf_loopTest0123456789") as hub:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING_FACE", "OPENAI"))}
        env.update(HF_ENDPOINT=hub.endpoint, HF_HOME=str(w / "hf"), HF_HUB_DISABLE_XET="1",
                   HF_TOKEN="hf_loopTest0123456789", PYTHONPATH=str(REPO_ROOT), TOKENIZERS_PARALLELISM="false")  # fmt: skip
        # `vital eval report --push-details` publishes the details and writes the model-index into the SFT card,
        # then every folder is pushed as docs/hub.md says.
        report = ["eval", "report", "--out", str(w / "report"), "--model-id", "me/sft", "--chat",
                  str(w / "eval" / "chat"), "--winrate", str(w / "eval" / "winrate"), "--card",
                  str(w / "sft" / "README.md"), "--push-details", "me/sft-eval"]  # fmt: skip
        script = PUSH_AND_LOAD.format(report=report, pushes=[(str(w / f), r, t) for f, r, t in pushes])
        done = subprocess.run([sys.executable, "-c", script], env=env, cwd=w, capture_output=True, text=True,
                              timeout=300)  # fmt: skip
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
        loaded = json.loads(done.stdout.strip().splitlines()[-1])
        uploaded = {repo: sorted(hub.list_files(repo, repo_type=kind)) for _, repo, kind in pushes}
        uploaded["me/sft-eval"] = sorted(hub.list_files("me/sft-eval"))

    for repo, files in uploaded.items():
        leaked = [f for f in files if any(mark in f for mark in PRIVATE) or f.endswith(".log")]
        assert files and not leaked, (repo, leaked)
    assert {"model.safetensors", "config.json", "README.md"} <= set(uploaded["me/sft"])
    assert "LICENSE.md" in uploaded["me/candidates"] and "LICENSE.md" in uploaded["me/preferences"]
    assert loaded["me/figures"]["rows"] == len(pair_ids)
    assert loaded["me/candidates"]["rows"] == 2 * len(pair_ids)
    assert loaded["me/preferences"]["configs"] == ["clinician", "mixed", "model"]
    assert loaded["me/instructions"]["rows"] == 10
    assert loaded["me/selector"]["score_shape"] == [1, 1]
    assert loaded["me/sft"]["generated"] >= 1
    for repo, card in loaded["cards"].items():
        assert card["license"], repo
    assert loaded["cards"]["me/sft"]["model_index_datasets"] == ["me/sft-eval"]


CPU_SFT = [
    "--bf16", "false", "--use_cpu", "true", "--dtype", "float32", "--compile_pointwise_modules", "false",
    "--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "1", "--dataloader_num_workers", "0",
    "--dataloader_persistent_workers", "false", "--max_length", "512", "--max_image_side", "256",
    "--pad_to_multiple_of", "8", "--logging_steps", "1",
]  # fmt: skip


def run_script(argv: list, w: Path) -> None:
    """`python SCRIPT ARGS...`, run in this process (as `python` would, `__main__` and all) to save a start-up."""
    import runpy

    saved = sys.argv
    sys.argv = [str(a) for a in argv]
    try:
        runpy.run_path(str(REPO_ROOT / argv[0]), run_name="__main__")
    except SystemExit as stop_:
        assert not stop_.code, f"{argv[0]}: {stop_.code}"
    finally:
        sys.argv = saved


def run_module(argv: list) -> int:
    import runpy

    saved = sys.argv
    sys.argv = ["python", *map(str, argv[1:])]
    try:
        runpy.run_module(argv[0], run_name="__main__")
    except SystemExit as stop_:
        return int(stop_.code or 0)
    finally:
        sys.argv = saved
    return 0


def eval_questions(folder: Path, items: list[dict]) -> Path:
    """qa50-style open questions about the figures the clinicians saw."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for n, item in enumerate(items):
        lines.append(
            {
                "question_id": n,
                "image": f"{item['pair_id']}.jpg",
                "text": item["question"],
                "gpt4_answer": item["answer_a"] + " This is a longer reference answer.",
                "fig_caption": item["caption"],
                "fig_label": "Figure 1",
                "domain": {"chest_xray": False, "mri": True, "ct_scan": False, "histology": False, "gross": False},
                "type": "conversation",
                "pair_id": item["pair_id"],
            }
        )
    path = folder / "qa.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def vqa_questions(folder: Path, items: list[dict]) -> Path:
    """LLaVA-Med VQA records (one round, a ground truth) for the win rate."""
    records = [
        {
            "id": n,
            "image": f"{item['pair_id']}.jpg",
            "answer_type": "OPEN",
            "conversations": [
                {"from": "human", "value": f"<image>\n{item['question']}"},
                {"from": "gpt", "value": "lesion"},
            ],  # fmt: skip
        }
        for n, item in enumerate(items)
    ]
    path = folder / "vqa.json"
    path.write_text(json.dumps(records))
    return path


PUSH_AND_LOAD = textwrap.dedent(
    """
    import json
    from vital_hub.cli import main as vital

    assert vital({report}) == 0
    for folder, repo, kind in {pushes}:
        assert vital(["push", "--repo", folder, "--to", repo, "--repo-type", kind]) == 0, repo

    # From here on: stock tools only.
    import torch
    from datasets import get_dataset_config_names, load_dataset
    from huggingface_hub import DatasetCard, ModelCard, snapshot_download
    from PIL import Image
    from transformers import AutoModel, AutoModelForImageTextToText, AutoProcessor, AutoTokenizer

    out = {{"cards": {{}}}}
    for repo in ("me/figures", "me/candidates", "me/instructions"):
        out[repo] = {{"rows": load_dataset(repo, split="train").num_rows}}  # the default config
    out["me/preferences"] = {{"configs": sorted(get_dataset_config_names("me/preferences"))}}
    load_dataset("me/preferences")  # default config: mixed
    load_dataset("me/sft-eval")
    for repo in ("me/figures", "me/candidates", "me/preferences", "me/instructions", "me/sft-eval"):
        data = DatasetCard.load(repo, repo_type="dataset").data
        out["cards"][repo] = {{"license": data.license}}
    for repo in ("me/selector", "me/sft"):
        data = ModelCard.load(repo).data
        datasets = sorted({{r.dataset_type for r in data.eval_results or []}})
        out["cards"][repo] = {{"license": data.license, "model_index_datasets": datasets}}

    selector = AutoModel.from_pretrained("me/selector", trust_remote_code=True).eval()
    tokenizer = AutoTokenizer.from_pretrained("me/selector")
    tokens = tokenizer(["a caption Question: what? Answer: a lesion"], return_tensors="pt")
    size = selector.config.image_size
    pixels = torch.zeros(1, 3, size, size, dtype=torch.uint8)
    with torch.no_grad():
        score = selector(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"],
                         token_type_ids=tokens.get("token_type_ids"), pixel_values=pixels).logits
    out["me/selector"] = {{"score_shape": list(score.shape)}}

    model = AutoModelForImageTextToText.from_pretrained("me/sft").eval()
    processor = AutoProcessor.from_pretrained("me/sft")
    messages = [{{"role": "user", "content": [{{"type": "image"}}, {{"type": "text", "text": "What is shown?"}}]}}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(images=Image.new("RGB", (64, 48)), text=prompt, return_tensors="pt")
    generated = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    out["me/sft"] = {{"generated": int(generated.shape[1] - inputs["input_ids"].shape[1])}}
    print(json.dumps(out))
    """
)
