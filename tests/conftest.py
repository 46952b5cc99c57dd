"""Shared test set-up: CPU only, no network, no shared caches, and the path of the real fixtures."""

import os
from pathlib import Path

import pytest

# Before any Hugging Face import: no network, nothing written to the user's caches.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ["CUDA_VISIBLE_DEVICES"] = ""
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_FIXTURES = REPO_ROOT.parent / "shared" / "fixtures"


@pytest.fixture(autouse=True)
def _isolated_hf_caches(tmp_path_factory, monkeypatch):
    """Every test gets its own datasets/hub cache: datasets 5 reuses stale caches across folders otherwise."""
    cache = tmp_path_factory.mktemp("hf_cache")
    monkeypatch.setenv("HF_HOME", str(cache))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(cache / "datasets"))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache / "hub"))


def shared_fixture(*parts: str) -> Path:
    """Path of a file under ../shared/fixtures, skipping the test when the shared folder is absent."""
    path = SHARED_FIXTURES.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real fixture {path} is not available (../shared is absent)")
    return path
