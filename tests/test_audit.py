import io
import json
import subprocess
import sys
from collections import defaultdict

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image

from tests.audit_support import TRANSFORMS, generated_figure, jpeg
from tests.conftest import processes_mentioning, shared_fixture
from vital_hub.audit.index import HashIndex, all_pairs


def run_vital(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vital_hub.cli", *args], capture_output=True, text=True)


def conversation(question: str, answer: str) -> list[dict]:
    return [{"from": "human", "value": f"{question}\n<image>"}, {"from": "gpt", "value": answer}]


def plant(tmp_path, eval_figures: dict[str, bytes], clean_figures: list[bytes], questions: list[dict]):
    """Eval folder (qa50-format questions + figures) and a training repo holding every transformation of every
    eval figure under a new pair id, three copied question/answer pairs, one reused pair id and clean rows."""
    eval_dir, train_images, sources = tmp_path / "eval" / "images", tmp_path / "train_images", tmp_path / "sources"
    for folder in (eval_dir, train_images, sources):
        folder.mkdir(parents=True)
    for pair_id, data in eval_figures.items():
        (eval_dir / f"{pair_id}.jpg").write_bytes(data)
    (tmp_path / "eval" / "questions.jsonl").write_text("".join(json.dumps(q) + "\n" for q in questions))
    records, expected = [], {}
    originals = {p: Image.open(io.BytesIO(d)).convert("RGB") for p, d in eval_figures.items()}
    for f, (pair_id, image) in enumerate(originals.items()):
        for t, (name, transform) in enumerate({"identical": None, **TRANSFORMS}.items()):
            file = f"9{f:03d}{t:02d}1_F1.jpg"
            data = eval_figures[pair_id] if transform is None else jpeg(transform(image))
            (train_images / file).write_bytes(data)
            row_id = f"copy-{name}-{f}"
            records.append({"id": row_id, "image": file, "conversations": conversation("What is shown?", "A figure.")})
            expected[row_id] = (name, pair_id)
    words = "lesion mass opacity signal margin density nodule cyst tissue border contrast region".split()
    for k, data in enumerate(clean_figures):
        file = f"7{k:05d}_F1.jpg"
        (train_images / file).write_bytes(data)
        text = " ".join(words[(k + i) % len(words)] for i in range(20))
        records.append({"id": f"clean-{k}", "image": file, "conversations": conversation(f"Describe {k}.", text)})
    for k, question in enumerate(questions[:3]):
        file = f"7{len(clean_figures) + k:05d}_F1.jpg"
        (train_images / file).write_bytes(jpeg(generated_figure(90_000 + k)))
        records.append(
            {
                "id": f"textcopy-{k}",
                "image": file,
                "conversations": conversation(
                    question["text"].replace("<image>", "").strip(), question["gpt4_answer"]
                ),
            }
        )
        expected[f"textcopy-{k}"] = ("text", question["pair_id"])
    reused = questions[-1]["pair_id"]
    (train_images / f"{reused}.jpg").write_bytes(jpeg(generated_figure(95_000)))
    records.append({"id": "same-pair", "image": f"{reused}.jpg", "conversations": conversation("Q?", "A.")})
    expected["same-pair"] = ("pair_id", reused)
    (sources / "planted.json").write_text(json.dumps(records))
    mix = tmp_path / "mix.yaml"
    mix.write_text(
        yaml.safe_dump(
            {
                "components": {"planted": {"file": "planted.json"}},
                "mixtures": [{"name": "mix", "components": [{"name": "planted"}]}],
                "only": ["mix"],
            }
        )
    )
    built = run_vital(
        "build",
        "instructions",
        "--sources",
        str(sources),
        "--out",
        str(tmp_path / "repo"),
        "--images",
        str(train_images),
        "--mixtures",
        str(mix),
        "--allow-unverified",
        "--workers",
        "1",
    )
    assert built.returncode == 0, built.stderr
    return expected


def audit(tmp_path, *extra):
    result = run_vital(
        "audit",
        "contamination",
        "--train",
        str(tmp_path / "repo"),
        "--out",
        str(tmp_path / "audit"),
        "--eval",
        f"qa50={tmp_path / 'eval' / 'questions.jsonl'},{tmp_path / 'eval' / 'images'}",
        "--workers",
        "1",
        *extra,
    )
    assert result.returncode == 0, result.stderr
    return json.loads((tmp_path / "audit" / "contamination.json").read_text()), result.stdout


def check_every_plant_found_and_nothing_clean(tmp_path, expected, report) -> dict:
    flagged = set(report["flagged"]["planted"])
    assert flagged == set(expected), (sorted(set(expected) - flagged), sorted(flagged - set(expected)))
    by_row = defaultdict(list)
    for match in report["matches"]:
        by_row[match["row_id"]].append(match)
    per_transform = defaultdict(lambda: {"planted": 0, "found": 0, "flagged": 0, "distances": []})
    for row_id, (kind, pair_id) in expected.items():
        if kind in ("text", "pair_id"):
            continue
        stats = per_transform[kind]
        stats["planted"] += 1
        right = [m for m in by_row[row_id] if m["eval_pair_id"] == pair_id and "phash" in m["reasons"]]
        stats["found"] += bool(right)
        stats["flagged"] += len({m["eval_pair_id"] for m in by_row[row_id] if "phash" in m["reasons"]})
        stats["distances"] += [m["distance"] for m in right]
    for kind, (_, pair_id) in [(k, v) for k, v in expected.items() if v[0] == "text"]:
        assert any("text" in m["reasons"] and m["eval_pair_id"] == pair_id for m in by_row[kind])
    assert {"pair_id", "pmid"} <= set(by_row["same-pair"][0]["reasons"])
    identical = [m for m in report["matches"] if m["row_id"].startswith("copy-identical")]
    assert all("sha256" in m["reasons"] and m["distance"] == 0 for m in identical)
    for kind, stats in per_transform.items():
        assert stats["found"] == stats["planted"], (kind, stats)
        assert stats["flagged"] == stats["planted"], (kind, stats)  # each copy matched only its own original
    summary = {k: {**v, "max_distance": max(v["distances"])} for k, v in per_transform.items()}
    print(json.dumps({k: {x: y for x, y in v.items() if x != "distances"} for k, v in summary.items()}))
    return summary


def check_decontaminated_build(tmp_path, expected):
    mixture = yaml.safe_load((tmp_path / "clean.yaml").read_text())
    assert mixture["only"] == ["mix-decontaminated"]
    built = run_vital(
        "build",
        "instructions",
        "--sources",
        str(tmp_path / "sources"),
        "--out",
        str(tmp_path / "clean-repo"),
        "--mixtures",
        str(tmp_path / "clean.yaml"),
        "--allow-unverified",
        "--workers",
        "1",
    )
    assert built.returncode == 0, built.stderr
    manifest = json.loads((tmp_path / "clean-repo" / "manifest.json").read_text())
    shards = manifest["configs"]["mix-decontaminated"]["shards"]
    ids = [i for s in shards for i in pq.read_table(tmp_path / "clean-repo" / s, columns=["id"])["id"].to_pylist()]
    assert ids and all(i.startswith("clean-") for i in ids)
    assert not set(ids) & set(expected)


def qa50_questions(pair_ids, texts=None):
    questions = []
    for k, pair_id in enumerate(pair_ids):
        text, answer = (
            texts[k]
            if texts
            else (
                f"What does panel {k} of figure {pair_id} show about the patient's condition and its likely cause?",
                f"Panel {k} shows a finding number {k} that the authors attribute to the underlying disease process in "
                f"this particular patient, with margins described as irregular and a signal pattern number {k}.",
            )
        )
        questions.append(
            {
                "question_id": k,
                "image": f"{pair_id}.jpg",
                "pair_id": pair_id,
                "text": f"{text}\n<image>",
                "gpt4_answer": answer,
                "fig_caption": f"Caption of {pair_id}.",
                "type": "conversation",
                "domain": {"ct_scan": True},
            }
        )
    return questions


def test_generated_figures_every_planted_copy_found_and_no_clean_flagged(tmp_path):
    eval_figures = {f"1234{k:04d}_F{k}": jpeg(generated_figure(k)) for k in range(6)}
    clean = [jpeg(generated_figure(1_000 + k)) for k in range(40)]
    expected = plant(tmp_path, eval_figures, clean, qa50_questions(list(eval_figures)))
    report, stdout = audit(tmp_path, "--write-mixture", str(tmp_path / "clean.yaml"))
    check_every_plant_found_and_nothing_clean(tmp_path, expected, report)
    assert "contamination audit" in stdout and (tmp_path / "audit" / "contamination.png").stat().st_size > 10_000
    check_decontaminated_build(tmp_path, expected)
    # The build stored every figure's hash: the audit decoded none of them.
    assert report["rows_with_stored_hashes"] == len(expected) + 40 and report["hash_cache"]["added"] == 0
    assert report["hashed_training_figures"] == len(expected) + 40


def test_stored_hashes_are_what_the_audit_computes_and_old_repos_are_hashed_once(tmp_path):
    from vital_hub.audit.hashing import figure_hashes, to_hex

    eval_figures = {f"1234{k:04d}_F{k}": jpeg(generated_figure(k)) for k in range(3)}
    clean = [jpeg(generated_figure(2_000 + k)) for k in range(10)]
    expected = plant(tmp_path, eval_figures, clean, qa50_questions(list(eval_figures)))
    shards = sorted((tmp_path / "repo" / "data").glob("*/*.parquet"))
    for shard in shards:  # the column holds exactly the audit's own hash of each embedded figure
        table = pq.read_table(shard, columns=["images", "image_phash"]).to_pylist()
        assert table and all(r["image_phash"] == to_hex(figure_hashes(r["images"][0]["bytes"])) for r in table)
    stored, _ = audit(tmp_path)
    for shard in shards:  # a repo built before the column existed
        table = pq.read_table(shard)
        pq.write_table(table.drop_columns(["image_phash"]), shard)
    hashed, _ = audit(tmp_path, "--hash-cache", str(tmp_path / "cache.jsonl"))
    assert hashed["rows_with_stored_hashes"] == 0 and hashed["hash_cache"]["added"] == len(expected) + 10
    assert hashed["flagged"] == stored["flagged"] and hashed["configs"] == stored["configs"]
    again, _ = audit(tmp_path, "--hash-cache", str(tmp_path / "cache.jsonl"))
    assert again["hash_cache"]["added"] == 0 and again["flagged"] == stored["flagged"]


def whole_qa50_figures():
    folder = shared_fixture("llava_med", "qa50_images")
    whole = {}
    for path in sorted(folder.glob("*.jpg")):
        data = path.read_bytes()
        try:
            with Image.open(path) as image:
                image.load()
        except Exception:
            continue  # the cut-off and empty downloads
        whole[path.stem] = data
    return whole


def test_real_qa50_figures_every_planted_copy_found_and_no_clean_flagged(tmp_path):
    figures = whole_qa50_figures()
    qa50 = [json.loads(line) for line in shared_fixture("llava_med", "llava_med_eval_qa50_qa.jsonl").open()]
    pmid = {pair_id: pair_id.split("_")[0] for pair_id in figures}
    eval_ids = sorted(figures)[::2]
    clean_ids = [p for p in sorted(figures) if p not in eval_ids and pmid[p] not in {pmid[e] for e in eval_ids}]
    first = {}
    for question in qa50:
        first.setdefault(question["pair_id"], question)
    questions = [first[p] for p in eval_ids]
    expected = plant(tmp_path, {p: figures[p] for p in eval_ids}, [figures[p] for p in clean_ids], questions)
    report, _ = audit(tmp_path, "--write-mixture", str(tmp_path / "clean.yaml"))
    summary = check_every_plant_found_and_nothing_clean(tmp_path, expected, report)
    assert len(eval_ids) >= 14 and len(clean_ids) >= 10
    assert set(summary) == {"identical", *TRANSFORMS}
    check_decontaminated_build(tmp_path, expected)


def test_index_finds_exactly_what_all_pairs_finds():
    rng = np.random.default_rng(0)
    train = rng.integers(0, 2**63, size=20_000, dtype=np.int64).astype(np.uint64) * np.uint64(2) + np.uint64(1)
    queries = train[:300].copy()
    for q in range(len(queries)):  # flip up to 12 bits
        for bit in rng.choice(64, size=rng.integers(0, 13), replace=False):
            queries[q] ^= np.uint64(1) << np.uint64(int(bit))
    for distance in (0, 3, 4, 7, 9, 10, 11):
        got = sorted(zip(*(a.tolist() for a in HashIndex(train, distance).search(queries)), strict=True))
        want = sorted(zip(*(a.tolist() for a in all_pairs(queries, train, distance)), strict=True))
        assert got == want and len(want) > 0


def test_bad_eval_spec_is_one_clear_error(tmp_path):
    result = run_vital(
        "audit", "contamination", "--train", str(tmp_path), "--out", str(tmp_path / "a"), "--eval", "qa50"
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "vital audit contamination: error: --eval 'qa50': expected NAME=QUESTIONS_FILE[,IMAGES_FOLDER] or "
        "NAME=PREPARED_FOLDER"
    ]


def test_a_prepared_vqa_folder_is_an_eval_source(tmp_path):
    from vital_hub.audit.data import load_eval

    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "ab12.jpg").write_bytes(jpeg(generated_figure(3)))
    records = [
        {
            "id": f"vqa-rad-test-{k:05d}",
            "image": "ab12.jpg",
            "answer_type": "OPEN",
            "conversations": conversation(f"what organ is shown {k}?", "liver"),
        }
        for k in range(2)
    ] + [{"id": "vqa-rad-test-00002", "image": "gone.jpg", "conversations": conversation("is it normal?", "no")}]
    (tmp_path / "vqa-rad_test.json").write_text(json.dumps(records))
    (tmp_path / "vqa-rad_test.manifest.json").write_text("{}")
    eval_set = load_eval(f"vqa-rad={tmp_path}")
    assert eval_set.questions == 3
    assert [(f.image, f.question_ids, f.problem) for f in eval_set.figures] == [
        ("ab12.jpg", ["vqa-rad-test-00000", "vqa-rad-test-00001"], None),
        ("gone.jpg", ["vqa-rad-test-00002"], "missing"),
    ]
    assert {t.field for t in eval_set.texts} == {"question", "answer"}


def test_index_overflowing_buckets_and_duplicates_are_found():
    rng = np.random.default_rng(1)
    base = rng.integers(0, 2**63, size=500, dtype=np.int64).astype(np.uint64)
    crowded = np.repeat(base[:3], 40)  # 40 copies in one bucket of every chunk: far over the capacity
    train = np.concatenate([base, crowded, base[:50] ^ np.uint64(0b1011)])
    index = HashIndex(train, 10)
    assert max(chunk.capacity for chunk in index.chunks) < 40
    got = sorted(zip(*(a.tolist() for a in index.search(base[:60])), strict=True))
    want = sorted(zip(*(a.tolist() for a in all_pairs(base[:60], train, 10)), strict=True))
    assert got == want and len(want) == 60 + 3 * 40 + 50


def test_a_figures_repo_is_audited_from_its_hash_columns(tmp_path):
    """`--train` a `vital build figures` repo: its phash and sha256 columns are read (no image bytes, nothing
    hashed), and copies, near copies and copied caption text are found; the clean figure is not flagged."""
    import hashlib

    from vital_hub.figures.index import write_index

    eval_figures = {f"5555{k:04d}_F1": jpeg(generated_figure(40 + k)) for k in range(2)}
    questions = qa50_questions(list(eval_figures))
    eval_dir = tmp_path / "eval" / "images"
    eval_dir.mkdir(parents=True)
    for pair_id, data in eval_figures.items():
        (eval_dir / f"{pair_id}.jpg").write_bytes(data)
    (tmp_path / "eval" / "questions.jsonl").write_text("".join(json.dumps(q) + "\n" for q in questions))
    first, second = eval_figures.values()
    resized = Image.open(io.BytesIO(second)).convert("RGB")
    figures = {
        "9001_F1": (first, "An unrelated caption about a bar chart."),
        "9002_F1": (jpeg(resized.resize((resized.width // 2, resized.height // 2))), "Another plain caption."),
        "9003_F1": (jpeg(generated_figure(4_000)), questions[0]["gpt4_answer"]),
        "9004_F1": (jpeg(generated_figure(4_001)), "A clean figure with its own caption text."),
    }
    fetch = tmp_path / "fetch"
    fetch.mkdir()
    rows, captions = [], {"mri": []}
    for pair_id, (data, caption) in figures.items():
        (fetch / f"{pair_id}.jpg").write_bytes(data)
        pmid, fig = pair_id.split("_")
        rows.append({"pair_id": pair_id, "pmcid": f"PMC{pmid}", "pmid": pmid, "fig_id": fig, "status": "ok",
                     "sha256": hashlib.sha256(data).hexdigest()})  # fmt: skip
        captions["mri"].append({"pair_id": pair_id, "fig_caption": caption, "domain": "mri"})
    write_index(rows, fetch / "index" / "shard-00000-of-00001.parquet")
    (fetch / "index" / "shard-00000-of-00001.done").write_text("{}\n")
    (fetch / "captions.json").write_text(json.dumps(captions))
    built = run_vital("build", "figures", "--index", str(fetch), "--out", str(tmp_path / "repo"),
                      "--captions", str(fetch / "captions.json"))  # fmt: skip
    assert built.returncode == 0, built.stderr
    report, _ = audit(tmp_path)
    assert report["train_kind"] == "figures" and report["hash_cache"]["added"] == 0
    assert report["rows_with_stored_hashes"] == report["hashed_training_figures"] == 4
    reasons = {m["row_id"]: set(m["reasons"]) for m in report["matches"]}
    assert reasons == {"9001_F1": {"sha256", "phash"}, "9002_F1": {"phash"}, "9003_F1": {"text"}}
    assert report["verified"] and report["matches"][0]["figure_match"]["signal"] in ("orb+pixels", "hash-box+pixels")
    unverified, _ = audit(tmp_path, "--no-verify")  # every hash candidate, as found
    assert not unverified["verified"] and {m["row_id"] for m in unverified["matches"]} >= set(reasons)
    assert all(m["figure_match"]["signal"] == "hash" for m in unverified["matches"] if "phash" in m["reasons"])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_kill_9_mid_hashing_leaves_no_worker_and_the_rerun_resumes_from_the_cache(tmp_path):
    """An old repo (no hash column) audited on 2 processes, killed once hashing has started: no worker outlives
    it, and the re-run keeps the hashes already cached and flags what an uninterrupted audit flags."""
    import os
    import signal
    import time

    eval_figures = {f"1234{k:04d}_F{k}": jpeg(generated_figure(k)) for k in range(2)}
    clean = [jpeg(generated_figure(3_000 + k, (320, 240))) for k in range(700)]  # hashed in batches of 256
    plant(tmp_path, eval_figures, clean, qa50_questions(list(eval_figures)))
    for shard in sorted((tmp_path / "repo" / "data").glob("*/*.parquet")):
        pq.write_table(pq.read_table(shard).drop_columns(["image_phash"]), shard)
    reference, _ = audit(tmp_path)
    out, cache = tmp_path / "killed", tmp_path / "killed" / "figure_hashes.jsonl"
    command = [sys.executable, "-m", "vital_hub.cli", "audit", "contamination", "--train", str(tmp_path / "repo"),
               "--out", str(out), "--eval", f"qa50={tmp_path / 'eval' / 'questions.jsonl'},{tmp_path / 'eval' / 'images'}",
               "--workers", "2"]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not (cache.exists() and cache.stat().st_size) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the audit finished before it could be killed"
    deadline = time.monotonic() + 3
    while processes_mentioning(str(out)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not processes_mentioning(str(out)), "a hashing worker outlived the killed audit"
    kept = len(cache.read_text().splitlines())
    resumed = subprocess.run(command, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    again = json.loads((out / "contamination.json").read_text())
    assert 0 < kept and again["hash_cache"]["added"] == again["hash_cache"]["entries"] - kept
    assert again["flagged"] == reference["flagged"] and again["configs"] == reference["configs"]
