"""`vital build figures` and `open_figures`: the contract's columns, loadable with datasets, readable by pair id."""

import hashlib
import io
import json
import os
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from datasets import load_dataset
from PIL import Image

from tests.conftest import REPO_ROOT, shared_fixture
from tests.fakes.hub_server import running_hub
from tests.fakes.pmc_server import FakePmc, populate
from vital_hub.audit.hashing import figure_hashes, to_hex
from vital_hub.cli import main as vital
from vital_hub.figures.cli import build_main
from vital_hub.figures.pipeline import FetchConfig, run_fetch
from vital_hub.figures.store import open_figures

CONTRACT_COLUMNS = {
    "pair_id",
    "pmcid",
    "pmid",
    "fig_id",
    "fig_label",
    "caption",
    "mentions",
    "domain",
    "image",
    "licence",
    "retracted",
    "source_url",
    "sha256",
    "phash",
    "status",
}
FLAGS = {"chest_xray": False, "mri": True, "ct_scan": False, "histology": False, "gross": False}


@pytest.fixture(scope="module")
def fetched(tmp_path_factory):
    """A finished fetch folder: 6 figures fetched, one record whose article does not exist."""
    root = tmp_path_factory.mktemp("fetched")
    with FakePmc() as pmc:
        scenario = populate(pmc, articles=3, figures_per_article=2)
        records = [*scenario.records, {"pmcid": "PMC4242", "file": "x.jpg", "pair_id": "4242_F1"}]
        urls = root / "urls.jsonl"
        urls.write_text("".join(json.dumps(r) + "\n" for r in records))
        out = root / "out"
        run_fetch(FetchConfig(urls=str(urls), out=str(out), base_url=pmc.url, legacy_base_url=pmc.url, progress=False))
    first = scenario.records[0]["pair_id"]
    captions = {
        "mri": [
            {
                "pair_id": first,
                "pmid": int(first.split("_")[0]),
                "fig_id": "F0",
                "fig_label": "Figure 1",
                "fig_caption": "Axial T2 image.",
                "in_text_mention": [{"tokens": "As shown in Fig. 1 ,", "entities": []}, "  second mention "],
                "domain": FLAGS,
            }
        ]
    }
    captions_path = root / "captions.json"
    captions_path.write_text(json.dumps(captions))
    return out, captions_path, scenario, first


def test_build_figures_writes_a_loadable_config_with_the_contract_columns(fetched, tmp_path):
    out, captions, scenario, first = fetched
    repo = tmp_path / "repo"
    assert build_main(["--index", str(out), "--out", str(repo), "--captions", str(captions)]) == 0
    rows = load_dataset(str(repo), "figures", split="train", cache_dir=str(tmp_path / "cache"))
    assert set(rows.column_names) == CONTRACT_COLUMNS and len(rows) == 7
    by_id = {row["pair_id"]: row for row in rows}
    for pair_id, data in scenario.expected.items():
        row = by_id[pair_id]
        assert row["status"] == "ok" and row["image"].size == (64, 48)
        assert row["pmcid"].startswith("PMC") and row["sha256"] == hashlib.sha256(data).hexdigest()
        assert row["phash"] == to_hex(figure_hashes(data))  # what `vital audit contamination` reads
    assert by_id["4242_F1"]["status"] == "missing" and by_id["4242_F1"]["image"] is None
    assert by_id["4242_F1"]["sha256"] is None and by_id["4242_F1"]["pmid"] == "4242"
    assert by_id["4242_F1"]["phash"] is None
    captioned = by_id[first]
    assert (captioned["fig_label"], captioned["caption"]) == ("Figure 1", "Axial T2 image.")
    assert captioned["mentions"] == ["As shown in Fig. 1 ,", "second mention"]
    assert captioned["domain"] == FLAGS and captioned["licence"] == "CC BY" and captioned["retracted"] is False
    assert captioned["source_url"].endswith(".jpg")


def test_rebuild_in_place_is_seen_by_the_datasets_cache_and_keeps_other_configs(fetched, tmp_path):
    out, captions, scenario, first = fetched
    repo = tmp_path / "repo"
    (repo / "data" / "80k").mkdir(parents=True)
    pq.write_table(pa.table({"id": ["a"]}), repo / "data" / "80k" / "train.parquet")
    (repo / "README.md").write_text(
        "---\nconfigs:\n- config_name: 80k\n  data_files:\n  - split: train\n    path: data/80k/*.parquet\n---\n# Card\n"
    )
    assert build_main(["--index", str(out), "--out", str(repo)]) == 0
    cache = str(tmp_path / "cache")
    assert (
        load_dataset(str(repo), "figures", split="train", cache_dir=cache).filter(lambda r: r["pair_id"] == first)[0][
            "caption"
        ]
        is None
    )
    assert build_main(["--index", str(out), "--out", str(repo), "--captions", str(captions)]) == 0
    reloaded = load_dataset(str(repo), "figures", split="train", cache_dir=cache)
    assert reloaded.filter(lambda r: r["pair_id"] == first)[0]["caption"] == "Axial T2 image."
    readme = (repo / "README.md").read_text()
    assert "config_name: 80k" in readme and "# Card" in readme and readme.count("config_name: figures") == 2


def test_build_refuses_an_unfinished_fetch(fetched, tmp_path, capsys):
    out, _, _, _ = fetched
    marker = out / "index" / "shard-00000-of-00001.done"
    marker.unlink()
    try:
        assert vital(["build", "figures", "--index", str(out), "--out", str(tmp_path / "r")]) == 1
        assert "vital build figures: error: " in capsys.readouterr().err
        assert build_main(["--index", str(out), "--out", str(tmp_path / "r"), "--allow-incomplete"]) == 0
    finally:
        marker.write_text("complete\n")


def test_open_figures_reads_a_repo_folder_and_a_fetch_folder_alike(fetched, tmp_path):
    out, captions, scenario, first = fetched
    repo = tmp_path / "repo"
    build_main(["--index", str(out), "--out", str(repo), "--shard-mb", "0.000001"])
    assert len(list((repo / "data" / "figures").glob("*.parquet"))) == 7
    for store in (open_figures(repo, captions=captions), open_figures(out, captions=captions)):
        assert store.pair_ids() == sorted([*scenario.expected, "4242_F1"])
        row = store.get(first)
        assert row["image"] == scenario.expected[first] and row["status"] == "ok"
        assert row["caption"] == "Axial T2 image." and row["domain"] == FLAGS
        assert store.get("4242_F1")["image"] is None and store.get("nope") is None


def test_open_figures_on_the_real_qa50_folder_drops_empty_and_cut_off_files():
    folder = shared_fixture("llava_med", "qa50_images")
    qa = shared_fixture("llava_med", "llava_med_eval_qa50_qa.jsonl")
    captions = {}
    for line in qa.read_text().splitlines():
        record = json.loads(line)
        captions.setdefault(record["pair_id"], record)
    store = open_figures(folder, captions=captions)
    assert len(store) == 50
    statuses = {pair_id: store.get(pair_id)["status"] for pair_id in store.pair_ids()}
    assert sum(s == "ok" for s in statuses.values()) == 29
    assert sum(s == "missing" for s in statuses.values()) == 19 and sum(s == "corrupt" for s in statuses.values()) == 2
    row = store.get("18063892_F3")
    assert Image.open(io.BytesIO(row["image"])).size[0] > 0 and row["caption"] and row["domain"]["histology"]


def test_captions_stream_record_by_record_and_name_a_bad_record(tmp_path):
    from vital_hub.figures.captions import load_captions

    path = tmp_path / "captions.json"
    path.write_text(
        ' {"mri": [ {"pair_id": "1_F1", "fig_caption": "a", "extra": 1} , {"pair_id": "2_F1"}],\n "gross": []}'
    )
    assert load_captions(path) == {
        "1_F1": {
            "pair_id": "1_F1",
            "pmid": None,
            "fig_id": None,
            "fig_label": None,
            "fig_caption": "a",
            "in_text_mention": None,
            "domain": None,
        },
        "2_F1": {
            "pair_id": "2_F1",
            "pmid": None,
            "fig_id": None,
            "fig_label": None,
            "fig_caption": None,
            "in_text_mention": None,
            "domain": None,
        },
    }
    assert set(load_captions(path, wanted={"2_F1"})) == {"2_F1"}
    path.write_text('[{"pair_id": "3_F1"}]')
    assert set(load_captions(path)) == {"3_F1"}
    path.write_text('{"mri": [{"pair_id": "1_F1"}, {"pmid": 5}]}')
    with pytest.raises(ValueError, match="domain 'mri' record 1 has no string 'pair_id'"):
        load_captions(path)
    path.write_text('{"mri": [{"pair_id": "1_F1"}, {"pair_id": ')
    with pytest.raises(ValueError, match="record 1 is not valid JSON"):
        load_captions(path)


def test_open_figures_downloads_a_hub_repo_id(fetched, tmp_path):
    out, captions, scenario, first = fetched
    repo = tmp_path / "repo"
    build_main(["--index", str(out), "--out", str(repo)])
    files = {p.relative_to(repo).as_posix(): p.read_bytes() for p in repo.rglob("*") if p.is_file()}
    script = (
        "import json, sys; from vital_hub.figures.store import open_figures; "
        "store = open_figures('lab/pmc-figures'); row = store.get(sys.argv[1]); "
        "print(json.dumps([len(store), row['status'], len(row['image'])]))"
    )
    with running_hub(tmp_path / "hub") as hub:
        hub.add_files("lab/pmc-figures", files)
        env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
        env.update(HF_ENDPOINT=hub.endpoint, HF_HOME=str(tmp_path / "hf"), HF_HUB_DISABLE_XET="1")
        done = subprocess.run(
            [sys.executable, "-c", script, first], env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
        )
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout) == [7, "ok", len(scenario.expected[first])]


def test_shards_hold_several_row_groups_and_the_store_reads_them_out_of_order(fetched, tmp_path, monkeypatch):
    import vital_hub.figures.dataset as dataset

    out, captions, scenario, first = fetched
    monkeypatch.setattr(dataset, "ROW_GROUP_ROWS", 2)
    repo = tmp_path / "repo"
    assert build_main(["--index", str(out), "--out", str(repo)]) == 0
    (shard,) = (repo / "data" / "figures").glob("*.parquet")
    assert pq.ParquetFile(shard).metadata.num_rows == 7 and pq.ParquetFile(shard).num_row_groups == 4
    store = open_figures(repo, captions=captions)
    for pair_id in sorted(scenario.expected, reverse=True):
        assert store.get(pair_id)["image"] == scenario.expected[pair_id]
    assert store.get("4242_F1")["image"] is None and store.get(first)["caption"] == "Axial T2 image."


def test_open_figures_takes_a_loaded_captions_dict_with_the_file_rules(fetched, tmp_path):
    out, captions, scenario, first = fetched
    loaded = json.loads(captions.read_text())
    loaded["gross"] = [{**loaded["mri"][0], "fig_caption": "listed again", "domain": "gross"}]
    row = open_figures(out, captions=loaded).get(first)
    assert row["caption"] == "Axial T2 image." and row["domain"] == FLAGS
    with pytest.raises(ValueError, match="domain 'gross' record 1 has no string 'pair_id'"):
        open_figures(out, captions={"gross": [loaded["mri"][0], {"pmid": 5}]})


def test_captions_from_the_real_qa50_jsonl_file(tmp_path):
    from vital_hub.figures.captions import load_captions

    qa50 = shared_fixture("llava_med", "llava_med_eval_qa50_qa.jsonl")
    records = [json.loads(line) for line in qa50.read_text().splitlines() if line.strip()]
    captions = load_captions(qa50)
    assert set(captions) == {r["pair_id"] for r in records}
    first = records[0]
    assert captions[first["pair_id"]]["fig_caption"] == first["fig_caption"]
    broken = tmp_path / "broken.jsonl"
    broken.write_text(qa50.read_text().splitlines()[0] + "\n{not json\n")
    with pytest.raises(ValueError, match="line 2 is not valid JSON"):
        load_captions(broken)


def test_build_figures_hashes_the_same_on_one_or_several_processes(fetched, tmp_path):
    out, captions, _, _ = fetched
    shards = {}
    for workers in ("1", "2"):
        repo = tmp_path / f"repo-{workers}"
        assert (
            build_main(["--index", str(out), "--out", str(repo), "--captions", str(captions), "--workers", workers])
            == 0
        )
        shards[workers] = {p.name: p.read_bytes() for p in sorted((repo / "data" / "figures").glob("*.parquet"))}
        hashes = pq.read_table(repo / "data" / "figures", columns=["status", "phash"]).to_pylist()
        assert all((row["phash"] is not None) == (row["status"] == "ok") for row in hashes)
    assert shards["1"] and shards["1"] == shards["2"]
