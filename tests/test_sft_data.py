"""Training data: repo folders from `vital build instructions`, mixtures, missing images, the collator."""

import io
import logging

import pytest
import torch
from PIL import Image

from tests.sft_support import build_instructions_repo
from vital_hub.training.collator import VisionSFTCollator, decode_image
from vital_hub.training.data import (
    DatasetSource,
    load_mixture,
    mixture_of,
    parse_mixture,
    resolved_revision,
)
from vital_hub.training.masking import IGNORE_INDEX
from vital_hub.training.synthetic import build_processor


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    return build_instructions_repo(tmp_path_factory.mktemp("instructions"), configs=("60k", "80k"))


@pytest.fixture(scope="module")
def processor():
    return build_processor("llava-1.5")


def present_count(dataset) -> int:
    return sum(images[0] is not None for images in dataset["images"])


def test_one_config_loads_with_missing_images_skipped(repo, tmp_path, caplog):
    mixture = mixture_of(str(repo), "80k")
    with caplog.at_level(logging.WARNING, logger="vital_hub"):
        splits, counts = load_mixture(mixture, "skip", cache_dir=str(tmp_path / "cache"))
    train = splits["train"]
    assert counts == [len(train)] and set(splits) == {"train"}
    assert 0 < len(train) < 80, "the sample has broken figures, which the build stores as null"
    assert present_count(train) == len(train)
    assert "skipping" in caplog.text and "of 80 rows" in caplog.text
    assert set(train.column_names) == {"id", "source", "images", "messages", "length"}
    assert train[0]["length"] == sum(len(p["text"] or "") for m in train[0]["messages"] for p in m["content"])
    assert isinstance(train[0]["images"][0]["bytes"], bytes), "images stay encoded until the collator"


def test_text_policy_keeps_every_row_and_error_policy_names_the_row(repo, tmp_path):
    mixture = mixture_of(str(repo), "80k")
    splits, _ = load_mixture(mixture, "text", cache_dir=str(tmp_path / "a"))
    assert len(splits["train"]) == 80
    with pytest.raises(ValueError, match=r"rows have no image \(first: row \d+, id '"):
        load_mixture(mixture, "error", cache_dir=str(tmp_path / "b"))


def test_mixture_weights_seed_and_test_split(repo, tmp_path):
    spec = {
        "datasets": [{"id": str(repo), "config": "80k", "weight": 0.5}, {"id": str(repo), "config": "60k"}],
        "seed": 3,
        "test_split_size": 0.1,
    }
    splits, counts = load_mixture(parse_mixture(spec), "text", cache_dir=str(tmp_path / "a"))
    assert counts == [40, 60]
    assert len(splits["train"]) + len(splits["test"]) == 100 and len(splits["test"]) == 10
    again, _ = load_mixture(parse_mixture(spec), "text", cache_dir=str(tmp_path / "b"))
    assert again["test"]["id"] == splits["test"]["id"], "the seed fixes the sample and the split"


def test_mixture_from_yaml_file_and_its_errors(repo, tmp_path):
    path = tmp_path / "mixture.yaml"
    path.write_text(f"dataset_mixture:\n  datasets:\n    - {{id: {repo}, config: 80k, weight: 0.25}}\n  seed: 1\n")
    mixture = mixture_of(dataset_mixture=str(path))
    assert mixture.datasets == [DatasetSource(str(repo), "80k", weight=0.25)] and mixture.seed == 1
    path.write_text(f"datasets:\n  - {{id: {repo}, confg: 80k}}\n")
    with pytest.raises(ValueError, match=r"unknown keys \['confg'\]"):
        parse_mixture(path)
    with pytest.raises(ValueError, match="weight 1.5"):
        parse_mixture({"datasets": [{"id": "x", "weight": 1.5}]})
    with pytest.raises(ValueError, match="exactly one"):
        mixture_of("org/repo", "80k", dataset_mixture=str(path))


def test_local_revision_is_a_content_hash(repo):
    revision = resolved_revision(DatasetSource(str(repo), "80k"))
    assert revision.startswith("sha256:") and len(revision) == 23
    assert resolved_revision(DatasetSource(str(repo), "80k")) == revision


def test_collator_batches_images_labels_and_padding(repo, tmp_path, processor):
    splits, _ = load_mixture(mixture_of(str(repo), "80k"), "skip", cache_dir=str(tmp_path / "c"))
    rows = [splits["train"][i] for i in range(3)]
    batch = VisionSFTCollator(processor, max_length=None)(rows)
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape
    assert batch["pixel_values"].shape == (3, 3, 32, 32)
    lengths = batch["attention_mask"].sum(1)
    for row, length in enumerate(lengths.tolist()):
        assert bool((batch["input_ids"][row, length:] == processor.tokenizer.pad_token_id).all())
        assert bool((batch["labels"][row, length:] == IGNORE_INDEX).all())
        assert int((batch["labels"][row] != IGNORE_INDEX).sum()) > 0
    assert int((batch["input_ids"] == processor.image_token_id).sum()) == 3 * 16


def test_collator_missing_and_corrupt_images(processor, caplog):
    messages = [
        {"role": "user", "content": [{"type": "text", "text": "What?"}, {"type": "image", "text": None}]},
        {"role": "assistant", "content": [{"type": "text", "text": "A scan."}]},
    ]
    good = {"id": "good", "images": [{"bytes": jpeg(64, 64), "path": None}], "messages": messages}
    corrupt = {"id": "bad", "images": [{"bytes": b"\xff\xd8 not a jpeg", "path": None}], "messages": messages}
    missing = {"id": "gone", "images": [None], "messages": messages}
    with caplog.at_level(logging.WARNING, logger="vital_hub"):
        batch = VisionSFTCollator(processor)([good, corrupt, missing])
    assert batch["input_ids"].shape[0] == 1 and "row 'bad': unreadable image" in caplog.text
    text_batch = VisionSFTCollator(processor, missing_images="text")([good, missing])
    assert text_batch["input_ids"].shape[0] == 2 and text_batch["pixel_values"].shape[0] == 1
    with pytest.raises(ValueError, match=r"no row of this batch has a usable image \(ids \['gone'\]\)"):
        VisionSFTCollator(processor)([missing])


def test_decode_image_caps_the_longer_side():
    picture = decode_image({"bytes": jpeg(2000, 900), "path": None}, max_side=512)
    assert max(picture.size) <= 512 and picture.mode == "RGB"
    assert decode_image({"bytes": jpeg(300, 200), "path": None}, max_side=512).size == (300, 200)
    assert decode_image(None, 512) is None


def jpeg(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (10, 200, 30)).save(buffer, format="JPEG")
    return buffer.getvalue()


def test_pad_to_multiple(processor):
    messages = [
        {"role": "user", "content": [{"type": "image", "text": None}, {"type": "text", "text": "What?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "A scan."}]},
    ]
    row = {"id": "r", "images": [{"bytes": jpeg(40, 40), "path": None}], "messages": messages}
    batch = VisionSFTCollator(processor, pad_to_multiple_of=64)([row])
    assert batch["input_ids"].shape[1] == 64
    assert isinstance(batch["input_ids"], torch.Tensor)
