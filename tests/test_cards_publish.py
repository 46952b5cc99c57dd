"""Every card vital-hub writes carries what the Hub expects (licence, task categories, pretty name, a default
config so `load_dataset(repo)` needs no config name) and parses with huggingface_hub's own card classes; the fake
Hub's card rules (the Hub's, for the fields written) accept it."""

import io
import json
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from datasets import load_dataset
from huggingface_hub import DatasetCard, ModelCard

from tests.fakes.card_rules import card_errors
from tests.selector_helpers import preference_rows
from tests.test_figures_dataset import fetched  # noqa: F401 - the fetch folder fixture
from vital_hub.figures.cli import build_main as build_figures_main


class Terminal(io.StringIO):
    """A stderr that says it is a terminal, as a user's is: progress bars draw there."""

    def isatty(self) -> bool:
        return True


def check_dataset_card(folder, *, license_link_file: bool = False) -> DatasetCard:
    text = (folder / "README.md").read_text()
    assert card_errors(text, "dataset") == []
    card = DatasetCard.load(folder / "README.md")
    data = card.data
    assert data.license and data.task_categories and data.pretty_name
    assert sum(bool(c.get("default")) for c in data.configs) == 1
    if data.license == "other":
        assert data.license_name and data.license_link
        if license_link_file:
            assert (folder / data.license_link).is_file()
    return card


def test_figures_card_and_progress(fetched, tmp_path, monkeypatch):  # noqa: F811
    out, captions, _, _ = fetched
    repo = tmp_path / "repo"
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert build_figures_main(["--index", str(out), "--out", str(repo), "--captions", str(captions)]) == 0
    assert "build figures" in terminal.getvalue() and "7/7" in terminal.getvalue()
    card = check_dataset_card(repo)
    assert card.data.license == "other" and card.data.license_link.startswith("https://pmc.ncbi.nlm.nih.gov/")
    assert "| licence | figures |" in card.text  # the per-article licence table
    rows = load_dataset(str(repo), split="train", cache_dir=str(tmp_path / "cache"))  # no config name
    assert len(rows) == 7


def test_preferences_card(tmp_path):
    from vital_hub.preferences.repo import write_config

    repo = tmp_path / "prefs"
    rows = preference_rows([f"3000{i}_F{i}" for i in range(4)])
    write_config(repo, "clinician", [r for r in rows if r["origin"] == "clinician"])
    write_config(repo, "mixed", rows)
    card = check_dataset_card(repo, license_link_file=True)
    assert [c["config_name"] for c in card.data.configs if c.get("default")] == ["mixed"]
    pairs = load_dataset(str(repo), cache_dir=str(tmp_path / "cache"))
    assert sum(len(split) for split in pairs.values()) == len(rows)


def test_candidates_card_names_the_model_whose_output_it_is(tmp_path):
    from vital_hub.generation.candidate_rows import OutputFolder, write_readme

    folder = OutputFolder(tmp_path / "cands")
    folder.data.mkdir(parents=True)
    shard = folder.data / "train-00000-of-00001.parquet"
    pq.write_table(pa.table({"candidate_id": ["a"], "status": ["ok"]}), shard)
    folder.run_json.write_text(json.dumps({"identity": {"model": "gpt-4o"}, "config": {}}))
    write_readme(folder, [shard])
    card = check_dataset_card(folder.root, license_link_file=True)
    assert "`gpt-4o`" in (folder.root / card.data.license_link).read_text()
    assert len(load_dataset(str(folder.root), split="train", cache_dir=str(tmp_path / "cache"))) == 1


@pytest.mark.slow
def test_instructions_card_has_a_default_config(tmp_path):
    from tests.test_mixtures import build
    from vital_hub.demo import write_sample_sources

    sample = write_sample_sources(tmp_path / "sample")
    build(sample["sources"], tmp_path / "repo", sample["images"])
    card = check_dataset_card(tmp_path / "repo")
    assert [c["config_name"] for c in card.data.configs if c.get("default")] == ["80k"]


def test_selector_card_has_a_licence_and_names_only_a_hub_base_model(tmp_path):
    from vital_hub.selector.card import write_model_card

    info = {"backbone": "biomedclip", "dataset": "me/prefs", "metrics": {}, "license": "mit"}
    for base, expected in [("microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224", True), (str(tmp_path), False)]:
        write_model_card(tmp_path, {**info, "base_model": base})
        text = (tmp_path / "README.md").read_text()
        assert card_errors(text, "model") == []
        data = ModelCard.load(tmp_path / "README.md").data
        assert data.license == "mit" and data.datasets == ["me/prefs"]
        assert (data.base_model == base) if expected else data.base_model is None


def test_converted_model_card_keeps_the_source_licence(tmp_path):
    from vital_hub.convert.cli import Source, source_licence

    local = tmp_path / "ckpt"
    local.mkdir()
    assert source_licence(Source(local, str(local), None)) == {"license": "unknown"}
    (local / "README.md").write_text("---\nlicense: apache-2.0\n---\n# m\n")
    assert source_licence(Source(local, str(local), None)) == {"license": "apache-2.0"}
    hub = tmp_path / "snapshot"
    hub.mkdir()
    assert source_licence(Source(hub, "org/model", "abc")) == {
        "license": "other",
        "license_name": "base-model-licence",
        "license_link": "https://huggingface.co/org/model",
    }
    (hub / "README.md").write_text("---\nlicense: other\nlicense_name: llama2\nlicense_link: LICENSE\n---\n")
    fields = source_licence(Source(hub, "org/model", "abc"))
    assert fields["license_link"] == "https://huggingface.co/org/model/blob/abc/LICENSE"
    (hub / "README.md").write_text("---\n: [unbalanced\n---\n")  # a hostile card is not trusted, nor fatal
    assert source_licence(Source(hub, "org/model", "abc"))["license"] == "other"


@pytest.mark.slow
def test_convert_shows_progress_and_its_card_has_a_licence(tmp_path, monkeypatch):
    from tests.fakes.original_llava import build_clip, build_original
    from vital_hub.cli import main as vital

    tower = build_clip(tmp_path / "clip")  # the converter loads the tower mm_vision_tower names, as the original did
    source = build_original(tmp_path / "original", "llama", vision=True, tower=str(tower))
    (source / "README.md").write_text("---\nlicense: apache-2.0\n---\n# original\n")
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert vital(["convert", "llava-original", "--model", str(source), "--out", str(tmp_path / "out")]) == 0
    assert "convert" in terminal.getvalue() and "tensor" in terminal.getvalue()
    text = (tmp_path / "out" / "README.md").read_text()
    assert (
        card_errors(text, "model") == []
        and ModelCard.load(tmp_path / "out" / "README.md").data.license == "apache-2.0"
    )
