"""The stages fit together: generated candidates are scored and selected, and the selection builds as a mixture
component whose export is exactly the selected records."""

import json

import yaml

from tests.fakes.openai_server import FakeOpenAIServer
from tests.generation_support import make_demonstrations, make_figures
from tests.selector_helpers import save_selector, tiny_selector, tiny_tokenizer
from vital_hub.demo import sample_checksum
from vital_hub.generation.cli import main as generate_main
from vital_hub.mixtures.build import BuildOptions, build_repo, read_config_rows
from vital_hub.mixtures.compare import export_llava, verify_released
from vital_hub.mixtures.spec import load_plan
from vital_hub.select_cli import main as select_main


def test_generate_then_select_then_build_a_mixture(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-pipeline")
    images, captions, pair_ids = make_figures(tmp_path, 8)
    with FakeOpenAIServer() as server:
        args = [
            "candidates", "--figures", str(images), "--captions", str(captions), "--out", str(tmp_path / "cands"),
            "--model", "gpt-4o", "--base-url", server.url, "--demos", str(make_demonstrations(tmp_path / "d.json")),
            "--samples", "2", "--min-rounds", "1",
        ]  # fmt: skip
        assert generate_main(args) == 0

    tokenizer = tiny_tokenizer(tmp_path / "tokenizer")
    selector = save_selector(tiny_selector("biomedclip", tokenizer), tokenizer, tmp_path / "selector")
    select_args = [
        "--selector", str(selector), "--candidates", str(tmp_path / "cands"), "--images", str(images),
        "--out", str(tmp_path / "selected"), "--top", "5", "--num-workers", "0", "--no-progress",
    ]  # fmt: skip
    assert select_main(select_args) == 0
    selected = json.loads((tmp_path / "selected" / "selected.json").read_text())
    assert len(selected) == 5 and all(record["image"][:-4] in pair_ids for record in selected)

    sources = tmp_path / "sources"
    sources.mkdir()
    (sources / "selected.json").write_text(json.dumps(selected))
    spec = tmp_path / "mix.yaml"
    spec.write_text(
        yaml.safe_dump(
            {
                "components": {"my-selection": {"file": "selected.json", "description": "top 5"}},
                "mixtures": [{"name": "mine", "components": [{"name": "my-selection"}]}],
                "only": ["mine"],
            }
        )
    )
    options = BuildOptions(sources=sources, out=tmp_path / "repo", images=images, show_progress=False, workers=1)
    manifest = build_repo(load_plan(spec), options, sample_checksum)
    assert manifest["configs"]["mine"]["rows"] == 5
    assert manifest["components"]["my-selection"]["images"]["present"] == 5
    rows = list(read_config_rows(tmp_path / "repo", "mine"))
    assert [row["id"] for row in rows] == [record["id"] for record in selected]  # rank order kept
    export_llava(tmp_path / "repo", "mine", tmp_path / "exported.json")
    assert json.loads((tmp_path / "exported.json").read_text()) == selected
    assert (
        verify_released(tmp_path / "repo", "mine", sources / "selected.json", progress=False)["verdict"] == "identical"
    )
