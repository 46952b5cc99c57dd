"""Building only your own mixture: a mixtures YAML and your file, no released files, no `--configs`; the card
loads from your repo and parses with huggingface_hub's own parser."""

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT
from tests.fakes.card_rules import card_errors
from vital_hub.demo import write_sample_sources


def vital(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.run([sys.executable, "-m", "vital_hub.cli", *args], capture_output=True, text=True, env=env)


def own_sources(tmp_path):
    sample = write_sample_sources(tmp_path / "sample")
    records = json.loads((sample["sources"] / "BioMed-VITAL-instructions-80K.json").read_text())[:12]
    sources = tmp_path / "sources"
    sources.mkdir()
    (sources / "selected.json").write_text(json.dumps(records))
    spec = tmp_path / "mine.yaml"
    spec.write_text(
        "components:\n  my-selection: {file: selected.json, licence: cc-by-4.0}\n"
        "mixtures:\n  - {name: mine, components: [{name: my-selection}]}\n"
    )
    return sources, spec, sample["images"]


@pytest.mark.slow
def test_only_your_own_mixture_needs_no_released_files(tmp_path):
    from huggingface_hub import DatasetCard

    sources, spec, images = own_sources(tmp_path)
    out = tmp_path / "repo"
    args = ["build", "instructions", "--sources", str(sources), "--mixtures", str(spec), "--out", str(out)]
    done = vital(*args, "--images", str(images), "--repo-id", "me/my-instructions")
    assert done.returncode == 0, done.stderr
    assert "the released configs 60k, 80k, 150k, 210k are left out" in done.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert list(manifest["configs"]) == ["mine"] and manifest["configs"]["mine"]["rows"] == 12
    readme = (out / "README.md").read_text()
    assert 'load_dataset("me/my-instructions", "mine", split="train")' in readme
    assert "biomed-vital/instructions" not in readme.split("## Configs")[0]
    assert card_errors(readme, "dataset") == []
    card = DatasetCard.load(out / "README.md")
    assert [c["config_name"] for c in card.data.configs] == ["mine"] and card.data.license == "other"

    again = vital(*args[:-2], "--out", str(tmp_path / "repo2"))
    assert again.returncode == 0, again.stderr
    assert 'load_dataset("ORG/NAME", "mine"' in (tmp_path / "repo2" / "README.md").read_text()


def test_your_missing_file_is_named_without_sending_you_to_the_released_files(tmp_path):
    sources, spec, _ = own_sources(tmp_path)
    (sources / "selected.json").unlink()
    done = vital(
        "build", "instructions", "--sources", str(sources), "--mixtures", str(spec), "--out", str(tmp_path / "r")
    )
    assert done.returncode == 1
    line = done.stderr.strip().splitlines()[-1]
    assert "selected.json" in line and "my-selection" in line and "--mixtures YAML" in line
    assert "vital sources fetch" not in line
