import json
import subprocess
import sys

import pyarrow.parquet as pq
import pytest
import yaml

from tests.conftest import shared_fixture
from vital_hub.demo import sample_checksum, write_sample_sources
from vital_hub.io import iter_json_records, sha256_file
from vital_hub.mixtures.build import BuildOptions, build_repo, read_config_rows
from vital_hub.mixtures.compare import export_llava, verify_released
from vital_hub.mixtures.spec import load_plan
from vital_hub.schema import RecordError, row_to_llava

SOURCE_NAMES = {
    "biomed-vital-60k": "BioMed-VITAL-instructions-60K.json",
    "biomed-vital-80k": "BioMed-VITAL-instructions-80K.json",
    "llava-med-10k": "llava_med_instruct_10k.json",
    "llava-med-60k": "llava_med_instruct_60k.json",
}


def run_vital(*args: str) -> subprocess.CompletedProcess:
    """The `vital` command in a fresh process, as a user runs it."""
    return subprocess.run([sys.executable, "-m", "vital_hub.cli", *args], capture_output=True, text=True)


def build(sources, out, images=None, plan=None, **options):
    options.setdefault("show_progress", False)
    options.setdefault("workers", 1)
    return build_repo(
        plan or load_plan(), BuildOptions(sources=sources, out=out, images=images, **options), sample_checksum
    )


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    root = tmp_path_factory.mktemp("sample")
    info = write_sample_sources(root)
    manifest = build(info["sources"], root / "repo", info["images"])
    return {**info, "repo": root / "repo", "manifest": manifest}


def test_configs_are_the_released_mixtures(sample):
    configs = sample["manifest"]["configs"]
    assert [c["name"] for c in configs["150k"]["components"]] == ["biomed-vital-80k", "llava-med-10k", "llava-med-60k"]
    assert [c["name"] for c in configs["210k"]["components"]][-1] == "biomed-vital-60k"
    counts = sample["records"]
    assert configs["60k"]["rows"] == counts[SOURCE_NAMES["biomed-vital-60k"]]
    assert configs["210k"]["rows"] == sum(counts.values())


def test_components_are_stored_once(sample):
    repo = sample["repo"]
    parquet = sorted(p.relative_to(repo).as_posix() for p in repo.rglob("*.parquet"))
    assert all(path.split("/")[1] in SOURCE_NAMES for path in parquet)
    listed_by_210k = sample["manifest"]["configs"]["210k"]["shards"]
    assert sorted(listed_by_210k) == parquet  # 210k lists every shard, none written twice
    assert set(sample["manifest"]["configs"]["80k"]["shards"]) <= set(listed_by_210k)


def test_readme_yaml_lists_shards_and_checksums(sample):
    text = (sample["repo"] / "README.md").read_text()
    meta = yaml.safe_load(text.split("---")[1])
    configs = {c["config_name"]: c for c in meta["configs"]}
    assert set(configs) == {"60k", "80k", "150k", "210k"}
    info = {i["config_name"]: i for i in meta["dataset_info"]}
    shard = configs["80k"]["data_files"][0]["path"][0]
    assert info["80k"]["download_checksums"][shard]["checksum"] == sha256_file(sample["repo"] / shard)
    assert info["150k"]["splits"][0]["num_examples"] == sample["manifest"]["configs"]["150k"]["rows"]
    assert "## Citation" in text and "load_dataset" in text
    assert "&id" not in text and "*id" not in text  # no YAML anchors


def test_card_counts_text_only_rows_per_config(sample):
    text = (sample["repo"] / "README.md").read_text()
    manifest = sample["manifest"]
    for config in ("60k", "80k", "150k", "210k"):
        parts = manifest["configs"][config]["components"]
        absent = sum(manifest["components"][p["name"]]["rows"] - manifest["components"][p["name"]]["images"]["present"]
                     for p in parts)  # fmt: skip
        assert absent > 0
        assert f"| `{config}` | {manifest['configs'][config]['rows']:,} | {absent:,} |" in text
    assert "stored text-only" in text and "missing_images.jsonl" in text


@pytest.mark.parametrize("config", ["60k", "80k", "150k", "210k"])
def test_load_dataset_reads_every_config(sample, config, tmp_path):
    from datasets import load_dataset

    dataset = load_dataset(str(sample["repo"]), config, split="train", cache_dir=str(tmp_path))
    expected = list(read_config_rows(sample["repo"], config))
    assert len(dataset) == len(expected) == sample["manifest"]["configs"][config]["rows"]
    assert dataset["id"] == [r["id"] for r in expected]
    for row in dataset:  # a valid TRL row either way: an image part exactly when the figure is there
        assert row["messages"][0]["role"] == "user"
        parts = {part["type"] for part in row["messages"][0]["content"]}
        assert parts == ({"text", "image"} if row["images"] else {"text"}) and len(row["images"]) <= 1
    streamed = next(iter(load_dataset(str(sample["repo"]), config, split="train", streaming=True)))
    assert streamed["id"] == expected[0]["id"]


def test_images_embedded_and_broken_ones_listed(sample):
    stats = sample["manifest"]["components"]["llava-med-10k"]["images"]
    rows = list(read_config_rows(sample["repo"], "llava-med-10k"))
    present = [r for r in rows if r["images"]]
    assert stats["present"] == len(present) > 0
    assert stats["present"] + stats["missing"] + stats["empty"] + stats["corrupt"] == len(rows)
    assert len(present) < len(rows)
    listed = [json.loads(line) for line in (sample["repo"] / "data/llava-med-10k/missing_images.jsonl").open()]
    assert len(listed) == len(rows) - len(present)
    broken = {p for names in sample["broken"].values() for p in names}
    assert {entry["image"][:-4] for entry in listed} <= broken
    assert present[0]["images"][0]["bytes"] == (sample["images"] / present[0]["images"][0]["path"]).read_bytes()


def test_export_component_gives_back_the_source_exactly(sample, tmp_path):
    for component, file_name in SOURCE_NAMES.items():
        out = tmp_path / f"{component}.json"
        export_llava(sample["repo"], component, out)
        source = [r for _, r in iter_json_records(sample["sources"] / file_name)]
        exported = json.loads(out.read_text())
        normalised = [
            {("conversations" if k == "conversatons" else k): v for k, v in record.items()} for record in source
        ]
        assert exported == normalised


def test_verify_identical_and_differs(sample, tmp_path):
    released = sample["sources"] / SOURCE_NAMES["llava-med-60k"]
    assert verify_released(sample["repo"], "llava-med-60k", released)["verdict"] == "identical"

    records = json.loads(released.read_text())
    records[3]["conversations" if "conversations" in records[3] else "conversatons"][1]["value"] = "changed"
    records = records[:-1]
    changed = tmp_path / "changed.json"
    changed.write_text(json.dumps(records))
    report = verify_released(sample["repo"], "150k", changed)
    assert report["verdict"] == "differs"
    assert report["differing"] == 1 and report["differing_examples"][0]["index"] == 3
    assert report["differing_examples"][0]["fields"] == ["conversations"]
    assert report["released_records_matching_component"] == {"llava-med-60k": len(records) - 1}
    assert report["config_rows_not_in_released"] == sample["manifest"]["configs"]["150k"]["rows"] - (len(records) - 1)


def test_rebuild_is_byte_identical(sample, tmp_path):
    build(sample["sources"], tmp_path / "again", sample["images"])
    for path in sorted(sample["repo"].rglob("*")):
        if path.is_file():
            assert path.read_bytes() == (tmp_path / "again" / path.relative_to(sample["repo"])).read_bytes(), path


def test_shards_split_at_rows_per_shard(sample, tmp_path):
    manifest = build(sample["sources"], tmp_path / "repo", rows_per_shard=25)
    shards = manifest["components"]["biomed-vital-80k"]["shards"]
    assert [s["rows"] for s in shards] == [25, 25, 25, 5]
    assert shards[-1]["path"] == "data/biomed-vital-80k/train-00003-of-00004.parquet"
    assert [r["id"] for r in read_config_rows(tmp_path / "repo", "80k")] == [
        r["id"] for r in read_config_rows(sample["repo"], "80k")
    ]


def test_rerun_reuses_finished_components(sample, tmp_path):
    out = tmp_path / "repo"
    build(sample["sources"], out)
    shard = out / "data/llava-med-10k/train-00000-of-00001.parquet"
    before = shard.stat().st_mtime_ns
    build(sample["sources"], out)
    assert shard.stat().st_mtime_ns == before


def test_failed_build_keeps_finished_components_and_resumes(sample, tmp_path):
    sources = tmp_path / "sources"
    sources.mkdir()
    for name in SOURCE_NAMES.values():
        (sources / name).write_bytes((sample["sources"] / name).read_bytes())
    good_60k = (sources / SOURCE_NAMES["llava-med-60k"]).read_bytes()
    records = json.loads(good_60k)
    records.append(records[0])  # duplicate id: the last component fails
    (sources / SOURCE_NAMES["llava-med-60k"]).write_text(json.dumps(records))
    out = tmp_path / "repo"
    with pytest.raises(RecordError) as err:
        build(sources, out, workers=2)  # the other components finish in their own processes
    assert f"record {len(records) - 1}" in str(err.value) and "duplicate id" in str(err.value)
    assert SOURCE_NAMES["llava-med-60k"] in str(err.value)
    assert not (out / "README.md").exists() and not (out / "manifest.json").exists()
    done = out / "data/biomed-vital-80k/train-00000-of-00001.parquet"
    finished_at = done.stat().st_mtime_ns

    (sources / SOURCE_NAMES["llava-med-60k"]).write_bytes(good_60k)
    manifest = build(sources, out)
    assert done.stat().st_mtime_ns == finished_at
    assert manifest["configs"]["210k"]["rows"] == sum(sample["records"].values())


def test_truncated_source_fails_with_file_and_record(sample, tmp_path):
    sources = tmp_path / "sources"
    sources.mkdir()
    for name in SOURCE_NAMES.values():
        data = (sample["sources"] / name).read_bytes()
        (sources / name).write_bytes(data[:-300] if name == SOURCE_NAMES["llava-med-10k"] else data)
    with pytest.raises(RecordError) as err:
        build(sources, tmp_path / "repo")
    assert "llava_med_instruct_10k.json" in str(err.value) and "truncated" in str(err.value)


def test_a_record_that_is_not_an_object_fails_with_file_and_record(sample, tmp_path):
    sources = tmp_path / "sources"
    sources.mkdir()
    for name in SOURCE_NAMES.values():
        (sources / name).write_bytes((sample["sources"] / name).read_bytes())
    records = json.loads((sources / SOURCE_NAMES["llava-med-10k"]).read_text())
    (sources / SOURCE_NAMES["llava-med-10k"]).write_text(json.dumps(records[:3] + [[1, 2]] + records[3:]))
    with pytest.raises(RecordError) as err:
        build(sources, tmp_path / "repo")
    message = str(err.value)
    assert SOURCE_NAMES["llava-med-10k"] in message and "record 3" in message
    assert "a record must be a JSON object, got list" in message


def test_require_images_fails_on_first_broken_figure(sample, tmp_path):
    with pytest.raises(RecordError, match="--require-images"):
        build(sample["sources"], tmp_path / "repo", sample["images"], require_images=True)


def test_yaml_mixture_with_fraction_and_custom_component(sample, tmp_path):
    selected = tmp_path / "sources" / "my_selection.json"
    selected.parent.mkdir()
    for name in SOURCE_NAMES.values():
        (tmp_path / "sources" / name).write_bytes((sample["sources"] / name).read_bytes())
    picked = json.loads((sample["sources"] / SOURCE_NAMES["llava-med-10k"]).read_text())[:5]
    selected.write_text(json.dumps(picked))
    spec = tmp_path / "mix.yaml"
    spec.write_text(
        yaml.safe_dump(
            {
                "components": {"my-selection": {"file": "my_selection.json", "description": "top 5"}},
                "mixtures": [
                    {
                        "name": "half-80k-plus-mine",
                        "seed": 3,
                        "components": [{"name": "biomed-vital-80k", "fraction": 0.5}, {"name": "my-selection"}],
                    }
                ],
                "only": ["80k", "half-80k-plus-mine"],
            }
        )
    )
    manifest = build(tmp_path / "sources", tmp_path / "repo", plan=load_plan(spec))
    assert set(manifest["configs"]) == {"80k", "half-80k-plus-mine"}
    mix = manifest["configs"]["half-80k-plus-mine"]
    assert mix["rows"] == 40 + 5
    rows = list(read_config_rows(tmp_path / "repo", "half-80k-plus-mine"))
    full_ids = [r["id"] for r in read_config_rows(tmp_path / "repo", "80k")]
    sampled = [r["id"] for r in rows if r["source"] == "biomed-vital-80k"]
    assert sampled == [i for i in full_ids if i in set(sampled)]  # source order kept
    assert [row_to_llava(r) for r in rows if r["source"] == "my-selection"] == picked


def test_yaml_errors_are_clear(tmp_path):
    spec = tmp_path / "bad.yaml"
    spec.write_text("mixtures:\n  - name: x\n    components: [{name: nope}]\n")
    with pytest.raises(ValueError, match=r"unknown components \['nope'\]"):
        load_plan(spec)
    spec.write_text("mixture: []\n")
    with pytest.raises(ValueError, match="unknown keys"):
        load_plan(spec)


def test_real_qa50_as_a_component_round_trips(tmp_path):
    qa50 = shared_fixture("llava_med", "llava_med_eval_qa50_qa.jsonl")
    records = [
        {
            "id": q["question_id"],
            "image": q["image"],
            "domain": q["domain"],
            "conversations": [{"from": "human", "value": q["text"]}, {"from": "gpt", "value": q["gpt4_answer"]}],
            "fig_caption": q["fig_caption"],
            "in_text_mention": q["in_text_mention"],
        }
        for _, q in iter_json_records(qa50)
    ]
    sources = tmp_path / "sources"
    sources.mkdir()
    (sources / "qa50.json").write_text(json.dumps(records))
    spec = tmp_path / "mix.yaml"
    spec.write_text(
        "components:\n  qa50: {file: qa50.json}\nmixtures:\n  - {name: qa50, components: [{name: qa50}]}\nonly: [qa50]\n"
    )
    images = shared_fixture("llava_med", "qa50_images")
    manifest = build(sources, tmp_path / "repo", images, plan=load_plan(spec))
    stats = manifest["components"]["qa50"]["images"]
    # The public copy of the qa50 figures: 29 whole, 2 cut off, 19 empty files (counted per question here).
    assert stats["empty"] > 0 and stats["corrupt"] > 0 and stats["missing"] == 0
    assert verify_released(tmp_path / "repo", "qa50", sources / "qa50.json")["verdict"] == "identical"
    by_pair = {}
    for row in read_config_rows(tmp_path / "repo", "qa50"):
        by_pair[row["image_id"]] = bool(row["images"])
    assert sum(by_pair.values()) == 29 and len(by_pair) == 50


def test_cli_build_export_verify(sample, tmp_path):
    out = tmp_path / "exported.json"
    run = run_vital("export", "llava", "--repo", str(sample["repo"]), "--config", "80k", "--out", str(out))
    assert run.returncode == 0, run.stderr
    verify = run_vital("verify", "--repo", str(sample["repo"]), "--config", "80k", "--released", str(out))
    assert verify.returncode == 0 and '"verdict": "identical"' in verify.stdout
    missing = run_vital("export", "llava", "--repo", str(sample["repo"]), "--config", "nope", "--out", str(out))
    assert missing.returncode == 1 and "no config or component 'nope'" in missing.stderr


def test_shards_carry_features_metadata(sample):
    shard = sample["repo"] / sample["manifest"]["configs"]["80k"]["shards"][0]
    metadata = pq.read_schema(shard).metadata[b"huggingface"]
    assert b'"Image"' in metadata


def test_cli_build_rejects_a_wrong_checksum(tmp_path):
    sources = tmp_path / "sources"
    sources.mkdir()
    (sources / "llava_med_instruct_10k.json").write_text("[]")
    spec = tmp_path / "mix.yaml"
    spec.write_text("only: [ten]\nmixtures:\n  - {name: ten, components: [{name: llava-med-10k}]}\n")
    run = run_vital(
        "build", "instructions", "--sources", str(sources), "--out", str(tmp_path / "repo"), "--mixtures", str(spec)
    )
    assert run.returncode == 1
    assert "llava_med_instruct_10k.json" in run.stderr and "sha256 mismatch" in run.stderr
    assert "84f75c2b83404fe7dd1631212b4ad73228a0dad77bb819ab29c511a535a279c8" in run.stderr
    assert not (tmp_path / "repo" / "README.md").exists()
    allowed = run_vital(
        "build",
        "instructions",
        "--sources",
        str(sources),
        "--out",
        str(tmp_path / "repo"),
        "--mixtures",
        str(spec),
        "--allow-unverified",
    )
    assert allowed.returncode == 0, allowed.stderr
    manifest = json.loads((tmp_path / "repo" / "manifest.json").read_text())
    assert manifest["components"]["llava-med-10k"]["source"]["verified"] is False
    assert manifest["configs"]["ten"]["rows"] == 0


def test_real_demonstrations_as_a_component_build_and_verify(tmp_path):
    demos = shared_fixture("biomed_vital", "clinician_demonstrations.json")
    records = []
    for _, demo in iter_json_records(demos):
        record = {k: v for k, v in demo.items() if k != "imgs"}
        record["image"] = demo["imgs"]
        records.append(record)
    sources = tmp_path / "sources"
    sources.mkdir()
    (sources / "demos.json").write_text(json.dumps(records))
    spec = tmp_path / "mix.yaml"
    spec.write_text(
        "components:\n  demos: {file: demos.json}\nmixtures:\n  - {name: demos, components: [{name: demos}]}\nonly: [demos]\n"
    )
    with pytest.raises(RecordError) as err:  # ids 34 and 49 have two answers in a row
        build(sources, tmp_path / "repo", plan=load_plan(spec))
    assert "record 33" in str(err.value) and "id 34" in str(err.value) and "do not alternate" in str(err.value)

    valid = [r for r in records if r["id"] not in (34, 49)]
    (sources / "demos.json").write_text(json.dumps(valid))
    manifest = build(sources, tmp_path / "repo", plan=load_plan(spec))
    assert manifest["configs"]["demos"]["rows"] == 56
    report = verify_released(tmp_path / "repo", "demos", sources / "demos.json", progress=False)
    assert report["verdict"] == "identical" and report["identical_in_place"] == 56
    reordered = tmp_path / "reordered.json"
    reordered.write_text(json.dumps(valid[::-1]))
    assert (
        verify_released(tmp_path / "repo", "demos", reordered, progress=False)["verdict"]
        == "same records, different order"
    )


def test_same_figures_elsewhere_give_the_same_manifest_and_new_figures_rebuild(sample, tmp_path):
    import os
    import shutil

    copy = tmp_path / "images"
    shutil.copytree(sample["images"], copy)
    for path in copy.iterdir():
        os.utime(path, (1, 1))
    manifest = build(sample["sources"], tmp_path / "repo", copy)
    assert (tmp_path / "repo" / "manifest.json").read_bytes() == (sample["repo"] / "manifest.json").read_bytes()

    missing = sample["broken"]["missing"][0]
    broken = {name for names in sample["broken"].values() for name in names}
    good = next(path for path in sorted(copy.glob("*.jpg")) if path.stem not in broken)
    (copy / f"{missing}.jpg").write_bytes(good.read_bytes())
    again = build(sample["sources"], tmp_path / "repo", copy)
    present = sum(c["images"]["present"] for c in again["components"].values())
    assert present == sum(c["images"]["present"] for c in manifest["components"].values()) + 1


def test_unknown_configs_in_only_are_named_from_the_yaml_and_from_the_flag(tmp_path):
    spec = tmp_path / "mix.yaml"
    spec.write_text("mixtures:\n  - {name: ten, components: [{name: llava-med-10k}]}\nonly: [ten, tne]\n")
    with pytest.raises(ValueError, match=r"mix\.yaml: unknown configs \['tne'\]; known: \["):
        load_plan(spec)
    with pytest.raises(ValueError, match=r"^unknown configs \['81k'\]; known: \["):
        load_plan(only_configs=["80k", "81k"])
    spec.write_text("mixtures:\n  - {name: ten, components: [{name: llava-med-10k}]}\nonly: [ten, 80k]\n")
    assert list(load_plan(spec, only_configs=["ten"]).mixtures) == ["ten"]


def test_yaml_exclude_ids_drops_those_rows_and_nothing_else(sample, tmp_path):
    full_ids = [r["id"] for r in read_config_rows(sample["repo"], "80k")]
    dropped = [full_ids[1], full_ids[7]]
    spec = tmp_path / "mix.yaml"

    def write_spec(excluded):
        mixture = {"name": "80k-clean", "components": [{"name": "biomed-vital-80k", "exclude_ids": excluded}]}
        spec.write_text(yaml.safe_dump({"mixtures": [mixture], "only": ["80k", "80k-clean"]}))

    write_spec([*dropped, "not-a-row"])  # a mistyped id would leave the row it meant in: an error, not ignored
    with pytest.raises(ValueError, match=r"'80k-clean', component 'biomed-vital-80k': 1 exclude_ids match no row"):
        build(sample["sources"], tmp_path / "repo", plan=load_plan(spec))
    write_spec(dropped)
    manifest = build(sample["sources"], tmp_path / "repo", plan=load_plan(spec))
    clean = [r["id"] for r in read_config_rows(tmp_path / "repo", "80k-clean")]
    assert clean == [i for i in full_ids if i not in dropped]
    assert manifest["configs"]["80k-clean"]["components"][0] == {
        "name": "biomed-vital-80k",
        "fraction": 1.0,
        "rows": len(full_ids) - 2,
        "excluded": 2,
    }
    spec.write_text("mixtures:\n  - name: x\n    components: [{name: biomed-vital-80k, exclude_ids: abc}]\n")
    with pytest.raises(ValueError, match="exclude_ids of 'biomed-vital-80k' in mixture 'x' must be a list"):
        load_plan(spec)


def test_card_data_report_counts_domains_rounds_and_figures_from_the_sources(sample):
    records = [r for _, r in iter_json_records(sample["sources"] / SOURCE_NAMES["biomed-vital-80k"])]
    domains = [r.get("domain") for r in records]
    card = (sample["repo"] / "README.md").read_text()
    report = card.split("## Data report", 1)[1]
    row = next(line for line in report.splitlines() if line.startswith("| `80k` |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    flags = ["chest_xray", "mri", "ct_scan", "histology", "gross"]
    assert cells[1] == str(len(records))
    assert cells[2:7] == [str(sum(bool(d and d.get(f)) for d in domains)) for f in flags]
    assert cells[7] == str(sum(bool(d) and sum(bool(d.get(f)) for f in flags) > 1 for d in domains))
    assert cells[9] == str(sum(d is None for d in domains))
    rounds = [len(r.get("conversations", r.get("conversatons"))) // 2 for r in records]
    assert cells[10] == f"{sum(rounds) / len(rounds):.2f}"
    present = sample["manifest"]["components"]["biomed-vital-80k"]["images"]["present"]
    assert cells[12] == f"{present} / {len(records) - present}"
    assert "left out as retracted: unknown (no images folder, or one without the fetch index" in report  # not 0
    for config in ("60k", "80k", "150k", "210k"):
        assert f"![data report of {config}](report/{config}.png)" in card
        assert (sample["repo"] / "report" / f"{config}.png").read_bytes()[:4] == b"\x89PNG"


def test_records_of_retracted_articles_are_left_out_and_counted(sample, tmp_path):
    import shutil

    import pyarrow as pa
    import pyarrow.parquet as pq

    images = tmp_path / "figures"
    shutil.copytree(sample["images"], images)
    rows = list(read_config_rows(sample["repo"], "llava-med-10k"))
    gone = rows[0]["image_id"]
    (images / "index").mkdir()
    index = pa.table({"pair_id": [gone, rows[1]["image_id"]], "retracted": [True, None]})
    pq.write_table(index, images / "index" / "shard-00000-of-00001.parquet")
    manifest = build(sample["sources"], tmp_path / "repo", images)
    kept = list(read_config_rows(tmp_path / "repo", "llava-med-10k"))
    assert gone not in {row["image_id"] for row in kept} and len(kept) == len(rows) - 1
    assert manifest["components"]["llava-med-10k"]["images"]["retracted_left_out"] == 1
    assert (
        "left out because PMC marks their figure's article retracted" in (tmp_path / "repo" / "README.md").read_text()
    )
    again = build(sample["sources"], tmp_path / "all", images, include_retracted=True)
    assert again["components"]["llava-med-10k"]["rows"] == len(rows)
