"""Diverse sampling: encoders, k-means picks, determinism, the items file it writes, candidates as a source."""

import io
import json
import os
import random
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from vital_hub.preferences.cli import main as preferences_main
from vital_hub.preferences.items import ImageResolver, Item, load_items
from vital_hub.preferences.sample import ClipEncoder, diverse_sample, get_encoder

TOPICS = {
    "xray": ("chest radiograph", "Is there a pleural effusion in the left hemithorax?", (230, 230, 230)),
    "histo": ("haematoxylin eosin stained section", "Which cells infiltrate the stroma?", (200, 60, 160)),
    "gross": ("gross specimen of the resected kidney", "What colour is the cut surface?", (150, 90, 40)),
}


def picture(colour, variant: int) -> bytes:
    rng = np.random.default_rng(variant)
    pixels = np.clip(np.array(colour) + rng.normal(0, 12, (48, 48, 3)), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def grouped_items(per_group: int = 8) -> list[Item]:
    items = []
    for topic, (caption, question, colour) in TOPICS.items():
        for i in range(per_group):
            items.append(
                Item(
                    item_id=f"{topic}{i:02d}#q0",
                    pair_id=f"{topic}{i:02d}",
                    question=question,
                    answer_a=f"The {caption} shows finding {i}.",
                    answer_b=f"No abnormality in this {caption}.",
                    caption=f"Figure {i}: {caption}.",
                    mentions=[f"The {caption} is shown in Figure {i}."],
                    image_bytes=picture(colour, i),
                )
            )
    return items


def topic_of(item: Item) -> str:
    return item.item_id.rstrip("#q0123456789")


def test_hashing_encoder_picks_one_item_per_natural_group_and_is_order_independent():
    items = grouped_items()
    sample = diverse_sample(items, k=3, seed=0, encoder=get_encoder("hashing"), resolver=ImageResolver())
    assert sorted(topic_of(item) for item in sample.chosen) == ["gross", "histo", "xray"]
    assert sorted(sample.summary["cluster_sizes"]) == [8, 8, 8]
    shuffled = list(items)
    random.Random(1).shuffle(shuffled)
    again = diverse_sample(shuffled, k=3, seed=0, encoder=get_encoder("hashing"), resolver=ImageResolver())
    assert [i.item_id for i in again.chosen] == [i.item_id for i in sample.chosen]


def test_more_items_than_clusters_go_round_robin_nearest_first():
    items = grouped_items()
    sample = diverse_sample(items, k=7, seed=0, encoder=get_encoder("hashing"), resolver=ImageResolver(), clusters=3)
    counts = {topic: sum(topic_of(i) == topic for i in sample.chosen) for topic in TOPICS}
    assert sorted(counts.values()) == [2, 2, 3]
    assert len({i.item_id for i in sample.chosen}) == 7
    everything = diverse_sample(items, k=100, seed=0, encoder=get_encoder("hashing"), resolver=ImageResolver())
    assert len(everything.chosen) == len(items)


def test_tiny_clip_encoder_is_deterministic_given_the_seed():
    items = grouped_items(4)
    first = diverse_sample(items, 4, 0, get_encoder("tiny-clip", seed=0), ImageResolver())
    second = diverse_sample(items, 4, 0, get_encoder("tiny-clip", seed=0), ImageResolver())
    assert [i.item_id for i in first.chosen] == [i.item_id for i in second.chosen]
    assert np.allclose(first.embeddings, second.embeddings)
    assert first.embeddings.shape == (12, 32)


def test_unknown_encoder_names_the_known_ones():
    with pytest.raises(ValueError, match="clip.*hashing.*tiny-clip"):
        get_encoder("resnet")


def tiny_clip_checkpoint(folder):
    """A tiny CLIP saved like a Hub checkpoint (model, tokenizer, image processor), for loading by id."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    folder.mkdir(parents=True)
    letters = "abcdefghijklmnopqrstuvwxyz0123456789.,?"
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for char in letters:
        vocab[char] = len(vocab)
        vocab[char + "</w>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))
    config = CLIPConfig(
        text_config={
            "vocab_size": len(vocab),
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "max_position_embeddings": 77,
            "bos_token_id": 0,
            "eos_token_id": 1,
            "pad_token_id": 1,
        },
        vision_config={
            "image_size": 32,
            "patch_size": 8,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
        },
        projection_dim=16,
    )
    CLIPModel(config).save_pretrained(folder)
    processor = CLIPProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
        tokenizer=tokenizer,
    )
    processor.save_pretrained(folder)
    return str(folder)


def test_clip_encoder_loads_a_checkpoint_by_id(tmp_path):
    encoder = ClipEncoder(model_id=tiny_clip_checkpoint(tmp_path / "tiny-clip"), batch_size=4)
    texts = encoder.encode_texts(["chest radiograph", "gross specimen", "chest radiograph", "a b c d e f g h"])
    assert texts.shape == (4, 16) and np.allclose(texts[0], texts[2]) and not np.allclose(texts[0], texts[1])
    images = encoder.encode_images([picture((200, 0, 0), 0), None, picture((0, 0, 200), 1)])
    assert images.shape == (3, 16) and not images[1].any() and not np.allclose(images[0], images[2])
    assert encoder.encode_images([None, None]).shape == (2, 16)
    sample = diverse_sample(grouped_items(3), 3, 0, encoder, ImageResolver())
    assert len({i.item_id for i in sample.chosen}) == 3


def write_candidates(folder, images_dir=None):
    """A candidates dataset: dual-answer rows, a failed row and a single-answer row."""
    from vital_hub.generation.candidate_rows import candidate_schema

    rows = []
    for topic, (caption, question, colour) in TOPICS.items():
        for i in range(3):
            pair_id = f"{topic}{i}_F1"
            if images_dir is not None:
                images_dir.mkdir(parents=True, exist_ok=True)
                (images_dir / f"{pair_id}.jpg").write_bytes(picture(colour, i))
            rows.append(
                {
                    "candidate_id": f"{pair_id}#0",
                    "pair_id": pair_id,
                    "sample": 0,
                    "image": f"{pair_id}.jpg",
                    "fig_label": "Figure 1",
                    "caption": caption,
                    "mentions": [f"see {caption}"],
                    "domain": None,
                    "conversations": [
                        {"from": "human", "value": f"{question}\n<image>"},
                        {"from": "gpt", "value": "first answer"},
                    ],
                    "dual_answers": [
                        {"question": question, "answer_a": f"A about {caption}", "answer_b": "B short"},
                        {"question": "Second question?", "answer_a": "A2", "answer_b": "B2"},
                    ],
                    "status": "ok",
                }
            )
    rows.append(
        {
            "candidate_id": "bad_F1#0",
            "pair_id": "bad_F1",
            "sample": 0,
            "image": "bad_F1.jpg",
            "conversations": [],
            "dual_answers": [],
            "status": "error",
            "error": "HTTP 500",
        }
    )
    rows.append(
        {
            "candidate_id": "single_F1#0",
            "pair_id": "single_F1",
            "sample": 0,
            "image": "single_F1.jpg",
            "caption": "CT",
            "mentions": [],
            "status": "ok",
            "dual_answers": [],
            "conversations": [
                {"from": "human", "value": "<image>\nWhat is shown?"},
                {"from": "gpt", "value": "A CT."},
                {"from": "human", "value": "Any lesion?"},
                {"from": "gpt", "value": "Yes."},
            ],
        }
    )
    schema = candidate_schema()
    table = pa.Table.from_pylist([{name: row.get(name) for name in schema.names} for row in rows], schema=schema)
    shard_dir = folder / "data" / "candidates"
    shard_dir.mkdir(parents=True)
    pq.write_table(table, shard_dir / "train-00000-of-00001.parquet")
    return folder


def test_items_from_a_candidates_folder(tmp_path):
    items = load_items(write_candidates(tmp_path / "cands"))
    assert len(items) == 18
    first = items[0]
    assert (first.item_id, first.pair_id, first.candidate_id) == ("xray0_F1#0#q0", "xray0_F1", "xray0_F1#0")
    assert first.caption == "Figure 1: chest radiograph" and first.mentions == ["see chest radiograph"]
    assert items[1].question == "Second question?"


def test_sample_command_writes_an_items_file_the_app_can_serve(tmp_path):
    cands = write_candidates(tmp_path / "cands", tmp_path / "figs")
    out = tmp_path / "items.jsonl"
    assert (
        preferences_main(
            [
                "sample",
                "--candidates",
                str(cands),
                "--images",
                str(tmp_path / "figs"),
                "--k",
                "3",
                "--seed",
                "0",
                "--encoder",
                "hashing",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    chosen = load_items(out)
    assert len(chosen) == 3
    assert all(ImageResolver().bytes_for(item) for item in chosen)
    summary = json.loads((tmp_path / "items.sample.json").read_text())
    assert summary["k"] == 3 and summary["items"] == 18 and summary["chosen"] == [i.item_id for i in chosen]
    assert (tmp_path / "items.sample.png").stat().st_size > 1000

    embedded = tmp_path / "embedded.jsonl"
    config = tmp_path / "sample.yaml"
    config.write_text(
        f"candidates: {cands}\nimages: {tmp_path / 'figs'}\nk: 3\nencoder: hashing\nembed_images: true\n"
    )
    assert preferences_main(["sample", "--config", str(config), "--out", str(embedded)]) == 0
    again = load_items(embedded)
    assert [i.item_id for i in again] == [i.item_id for i in chosen]
    assert all(i.image_bytes and i.image is None for i in again)
    assert "image_base64" in embedded.read_text()


def test_sample_config_rejects_unknown_keys(tmp_path, capsys):
    config = tmp_path / "sample.yaml"
    config.write_text("candidates: x\nout: y\nkk: 3\n")
    with pytest.raises(SystemExit):
        preferences_main(["sample", "--config", str(config)])
    assert "unknown keys ['kk']" in capsys.readouterr().err


@pytest.mark.parametrize("encoder", ["hashing", "tiny-clip"])
def test_embedding_in_chunks_gives_the_same_vectors(encoder):
    from vital_hub.preferences.sample import embed

    items = grouped_items(4)
    whole = embed(items, get_encoder(encoder), ImageResolver(), chunk=256)
    chunked = embed(items, get_encoder(encoder), ImageResolver(), chunk=5)
    assert whole.shape[0] == 12 and np.allclose(whole, chunked, atol=1e-5)


def test_offline_clip_encoder_failure_suggests_the_hashing_encoder(tmp_path):
    from tests.conftest import REPO_ROOT

    cands = write_candidates(tmp_path / "cands", tmp_path / "figs")
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"), PYTHONPATH=str(REPO_ROOT))
    command = [sys.executable, "-m", "vital_hub.cli", "preferences", "sample", "--candidates", str(cands),
               "--k", "3", "--out", str(tmp_path / "items.jsonl")]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 1 and "offline, use --encoder hashing" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "items.jsonl").exists()
