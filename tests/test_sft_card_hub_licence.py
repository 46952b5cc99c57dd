"""The SFT model card takes its base model's licence from the base's card on the Hub (a fake Hub here, a real
local HTTP server), and keeps linking to the base when the Hub cannot be read. The card is written by a separate
Python process, as `recipes/sft.py` writes it, and read back with stock `huggingface_hub.ModelCard.load`."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from huggingface_hub import ModelCard

from tests.fakes.hub_server import running_hub

REPO_ROOT = Path(__file__).resolve().parents[1]
TOKEN = "hf_cardLicenceTestToken0123456789"
WRITE_CARD = """
import logging, sys
from vital_hub.training.card import DatasetUsed, card_text, write_card
logging.basicConfig(level=logging.WARNING, format="%(message)s")
data = [DatasetUsed("biomed-vital/instructions", "80k", "train", "abc", 1.0, 80)]
write_card(sys.argv[2], card_text("org/tuned", sys.argv[1], data, {"learning_rate": 2e-5}))
"""
BASES = {
    "google/gemma-3-4b-it": "---\nlicense: gemma\nlibrary_name: transformers\n---\n# Gemma 3\n",
    "meta-llama/Llama-3.2-11B-Vision-Instruct": (
        "---\nlicense: other\nlicense_name: llama3.2\nlicense_link: LICENSE.txt\n---\n# Llama 3.2 Vision\n"
    ),
    "org/no-licence": "---\nlibrary_name: transformers\n---\n# says nothing about its licence\n",
}
FALLBACK = {"license": "other", "license_name": "base-model-licence"}


@pytest.fixture
def hub(tmp_path):
    with running_hub(tmp_path / "hub_store", token=TOKEN) as server:
        for repo_id, readme in BASES.items():
            server.store.create("model", repo_id, private=repo_id.startswith("meta-llama/"))  # gated: token reads it
            server.add_files(repo_id, {"README.md": readme.encode(), "LICENSE.txt": b"terms\n"}, repo_type="model")
        yield server


def write_card(tmp_path: Path, base: str, endpoint: str, offline: bool = False) -> tuple[dict, str]:
    out = tmp_path / base.replace("/", "--")
    out.mkdir(parents=True)
    env = dict(
        os.environ, PYTHONPATH=str(REPO_ROOT), HF_ENDPOINT=endpoint, HF_TOKEN=TOKEN, HF_HOME=str(tmp_path / "hf"),
        HF_HUB_OFFLINE="1" if offline else "0", HF_HUB_DISABLE_XET="1",
    )  # fmt: skip
    run = subprocess.run(
        [sys.executable, "-c", WRITE_CARD, base, str(out)], env=env, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr
    card = ModelCard.load(out / "README.md")  # stock reader, from the local file
    assert TOKEN not in (out / "README.md").read_text() and TOKEN not in run.stderr + run.stdout
    return card.data.to_dict(), run.stderr


def test_card_takes_the_licence_from_the_base_card_on_the_hub(tmp_path, hub):
    meta, log = write_card(tmp_path, "google/gemma-3-4b-it", hub.endpoint)
    assert meta["license"] == "gemma" and "license_name" not in meta and "license_link" not in meta
    assert meta["base_model"] == "google/gemma-3-4b-it" and log == ""

    meta, _ = write_card(tmp_path, "meta-llama/Llama-3.2-11B-Vision-Instruct", hub.endpoint)
    commit = hub.store.files_at("model", "meta-llama/Llama-3.2-11B-Vision-Instruct", "main")[1]
    assert meta["license"] == "other" and meta["license_name"] == "llama3.2"
    # the base's licence file, pinned to the commit whose card was read
    link = f"https://huggingface.co/meta-llama/Llama-3.2-11B-Vision-Instruct/blob/{commit}/LICENSE.txt"
    assert meta["license_link"] == link


@pytest.mark.parametrize("base", ["org/no-licence", "org/not-on-the-hub"])
def test_a_base_without_a_readable_licence_keeps_the_link(tmp_path, hub, base):
    meta, log = write_card(tmp_path, base, hub.endpoint)
    assert {key: meta[key] for key in FALLBACK} == FALLBACK
    assert meta["license_link"] == f"https://huggingface.co/{base}"
    if base == "org/not-on-the-hub":
        assert len(log.strip().splitlines()) == 1 and base in log


def test_offline_or_unreachable_hub_keeps_the_link_and_logs_one_line(tmp_path, hub):
    for endpoint, offline in [(hub.endpoint, True), ("http://127.0.0.1:9", False)]:
        meta, log = write_card(tmp_path / str(offline), "google/gemma-3-4b-it", endpoint, offline)
        assert {key: meta[key] for key in FALLBACK} == FALLBACK
        assert len(log.strip().splitlines()) == 1 and "base model licence" in log
