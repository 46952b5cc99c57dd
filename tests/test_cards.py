"""Repo cards the Hub accepts: checked by the fake Hub's `/api/validate-yaml`, which applies the Hub's rules for
the fields vital-hub writes (licence, size category, base model), the way `huggingface_hub.RepoCard.validate`
asks the real one."""

import json
import urllib.error
import urllib.request

import pytest

from tests.fakes.hub_server import running_hub
from vital_hub.mixtures.card import card_metadata, size_category
from vital_hub.training.card import DatasetUsed, card_text, hub_base_model


@pytest.fixture
def hub(tmp_path):
    with running_hub(tmp_path / "hub_store") as server:
        yield server


def validate(hub, content: str, repo_type: str) -> tuple[int, str]:
    body = json.dumps({"repoType": repo_type, "content": content}).encode()
    request = urllib.request.Request(
        f"{hub.endpoint}/api/validate-yaml", data=body, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


@pytest.mark.parametrize(
    ("header", "repo_type", "reason"),
    [
        ("license: other\n", "dataset", "license_name"),
        ("license: other\nlicense_name: my-terms\n", "dataset", "license_link"),
        ("license: not-a-licence\n", "dataset", "license"),
        ("size_categories:\n- 100K<n<2M\n", "dataset", "size_categories"),
        ("base_model: /work/checkpoints/stage1\n", "model", "base_model"),
    ],
)
def test_fake_hub_refuses_what_the_hub_refuses(hub, header, repo_type, reason):
    status, text = validate(hub, f"---\n{header}---\n\n# card\n", repo_type)
    assert status == 400 and reason in text


def test_fake_hub_accepts_valid_metadata(hub):
    header = "license: other\nlicense_name: my-terms\nlicense_link: LICENSE\nsize_categories:\n- n<1K\n"
    assert validate(hub, f"---\n{header}---\n", "dataset")[0] == 200
    assert validate(hub, "---\nbase_model: llava-hf/llava-1.5-7b-hf\n---\n", "model")[0] == 200


def test_instructions_card_is_accepted_and_sizes_itself(hub, tmp_path):
    from tests.test_mixtures import build
    from vital_hub.demo import write_sample_sources

    sample = write_sample_sources(tmp_path / "sample")
    manifest = build(sample["sources"], tmp_path / "repo", sample["images"])
    readme = (tmp_path / "repo" / "README.md").read_text()
    assert validate(hub, readme, "dataset") == (200, "{}")
    meta = card_metadata(manifest)
    assert meta["size_categories"] == ["n<1K"]  # 220 distinct rows, not the released 100K<n<1M
    assert meta["license"] == "other" and meta["license_name"] and meta["license_link"].startswith("https://")


@pytest.mark.parametrize(
    ("rows", "label"),
    [(0, "n<1K"), (999, "n<1K"), (1_000, "1K<n<10K"), (210_000, "100K<n<1M"), (505_000, "100K<n<1M")],
)
def test_size_category_buckets(rows, label):
    assert size_category(rows) == label


def test_sft_card_names_the_hub_base_model_or_none(hub, tmp_path):
    local = tmp_path / "stage1"
    local.mkdir()
    cached = tmp_path / "hub" / "models--llava-hf--llava-1.5-7b-hf" / "snapshots" / "0123abc"
    cached.mkdir(parents=True)
    assert hub_base_model("llava-hf/llava-1.5-7b-hf") == "llava-hf/llava-1.5-7b-hf"
    assert hub_base_model(str(cached)) == "llava-hf/llava-1.5-7b-hf"
    assert hub_base_model(str(local)) is None
    (local / "README.md").write_text("---\nbase_model: llava-hf/llava-1.5-7b-hf\n---\n# stage 1\n")
    assert hub_base_model(str(local)) == "llava-hf/llava-1.5-7b-hf"  # stage 2 starts from stage 1's output

    data = [DatasetUsed("biomed-vital/instructions", "80k", "train", "abc", 1.0, 80)]
    for base, expected in [(str(local), "llava-hf/llava-1.5-7b-hf"), (str(tmp_path / "elsewhere"), None)]:
        (tmp_path / "elsewhere").mkdir(exist_ok=True)
        card = card_text("org/tuned", base, data, {"learning_rate": 2e-5})
        assert validate(hub, card, "model")[0] == 200
        assert str(tmp_path) not in card, "no local path in a published card"
        assert (f"base_model: {expected}" in card) if expected else ("base_model" not in card)


def test_sft_card_carries_the_base_model_licence(hub, tmp_path):
    """A fine-tune is bound by its base model's licence: the base's card fields, else a link to the base repo."""
    from huggingface_hub import ModelCard

    data = [DatasetUsed("biomed-vital/instructions", "80k", "train", "abc", 1.0, 80)]
    local = tmp_path / "base"
    local.mkdir()
    (local / "README.md").write_text("---\nlicense: apache-2.0\n---\n# a base model\n")
    stage2 = tmp_path / "stage1-output"
    stage2.mkdir()
    (stage2 / "README.md").write_text("---\nbase_model: org/base\n---\n# stage 1, no licence field\n")
    cases = [
        (str(local), {"license": "apache-2.0"}),
        (
            "llava-hf/llava-1.5-7b-hf",
            {"license": "other", "license_link": "https://huggingface.co/llava-hf/llava-1.5-7b-hf"},
        ),
        (str(stage2), {"license": "other", "license_link": "https://huggingface.co/org/base"}),
        (str(tmp_path / "bare"), {"license": "unknown"}),
    ]
    (tmp_path / "bare").mkdir()
    for base, expected in cases:
        card = card_text("org/tuned", base, data, {"learning_rate": 2e-5})
        assert validate(hub, card, "model")[0] == 200
        meta = ModelCard(card).data.to_dict()
        assert {key: meta.get(key) for key in expected} == expected, base
