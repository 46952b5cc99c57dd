"""Every builder's YAML parses into its options, and the instructions builder runs end to end."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT
from vital_hub.config import read_yaml_options
from vital_hub.demo import write_sample_sources
from vital_hub.figures.store import open_figures

BUILDERS = sorted((REPO_ROOT / "builders").glob("*.py"))


def load_builder(path: Path):
    spec = importlib.util.spec_from_file_location(f"builder_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def options_class(module):
    return next(
        value
        for name, value in vars(module).items()
        if isinstance(value, type) and name.endswith("Artifact") and value.__module__ == module.__name__
    )


@pytest.mark.parametrize("path", BUILDERS, ids=lambda p: p.stem)
def test_each_builder_has_a_yaml_that_parses(path):
    module = load_builder(path)
    assert callable(module.main)
    cls = options_class(module)
    config = path.with_suffix(".yaml")
    assert config.exists(), f"{path.name} has no {config.name}"
    artifact = cls(**read_yaml_options(config, cls))
    assert artifact.out


def test_instructions_builder_builds_the_four_configs(tmp_path):
    sample = write_sample_sources(tmp_path)
    module = load_builder(REPO_ROOT / "builders" / "instructions.py")
    argv = [
        "--config",
        str(REPO_ROOT / "builders" / "instructions.yaml"),
        "--sources",
        str(sample["sources"]),
        "--images",
        str(sample["images"]),
        "--out",
        str(tmp_path / "repo"),
        "--no-fetch-sources",
        "--allow-unverified",
        "--workers",
        "1",
    ]
    assert module.main(argv) == 0
    manifest = json.loads((tmp_path / "repo" / "manifest.json").read_text())
    assert list(manifest["configs"]) == ["60k", "80k", "150k", "210k"]
    assert manifest["configs"]["210k"]["rows"] == sum(sample["records"].values())
    assert manifest["components"]["llava-med-10k"]["source"]["verified"] is False


def test_figures_builder_builds_the_config_only_once_every_shard_is_done(tmp_path, capsys):
    from tests.fakes.pmc_server import FakePmc, populate

    module = load_builder(REPO_ROOT / "builders" / "figures.py")
    with FakePmc() as pmc:
        scenario = populate(pmc, articles=4, figures_per_article=1)
        urls = tmp_path / "urls.jsonl"
        urls.write_text("".join(json.dumps(r) + "\n" for r in scenario.records))
        repo = tmp_path / "repo"
        argv = ["--urls", str(urls), "--out", str(tmp_path / "out"), "--repo", str(repo), "--base-url", pmc.url]
        argv += ["--legacy-base-url", pmc.url, "--no-progress"]
        assert module.main([*argv, "--shard", "1/2"]) == 0
        said = capsys.readouterr().out.splitlines()[-1]
        assert "1 fetch shard(s) unfinished (shard-00000-of-00002)" in said and not repo.exists()
        assert module.main([*argv, "--shard", "0/2"]) == 0
    assert "wrote 1 shard(s) of config 'figures'" in capsys.readouterr().out
    store = open_figures(repo)
    assert store.pair_ids() == sorted(scenario.expected)
    assert all(store.get(pair_id)["image"] == data for pair_id, data in scenario.expected.items())
