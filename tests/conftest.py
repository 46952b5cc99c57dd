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


def processes_mentioning(text: str) -> list[int]:
    """Live processes whose command line mentions `text` (forked workers keep their parent's command line)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = next(line for line in (entry / "status").read_text().splitlines() if line.startswith("State:"))
        except (OSError, StopIteration):
            continue
        if text in cmdline and "zombie" not in state:
            found.append(int(entry.name))
    return found
