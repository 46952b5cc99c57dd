"""`vital select`'s chunks decode and send each figure once, and score exactly as per-candidate pixels do."""

import torch

from tests.selector_helpers import candidate_rows, tiny_selector, tiny_tokenizer, write_figures
from vital_hub.selector import data as selector_data
from vital_hub.selector.data import FigureImages, try_decode
from vital_hub.selector.select import CandidateChunks, expand_images, merge_chunks, plan_chunks


def test_a_chunk_decodes_each_figure_once_and_every_candidate_gets_its_own_pixels(tmp_path, monkeypatch):
    pair_ids = [f"3000{i}_F{1 + i}" for i in range(5)]
    figures = write_figures(tmp_path / "figures", pair_ids[:-1])  # the last figure is missing
    rows = sorted(candidate_rows(pair_ids, samples=3), key=lambda r: r["candidate_id"])
    tokenizer = tiny_tokenizer(tmp_path / "tokenizer")
    model = tiny_selector("clip", tokenizer).eval()
    images = FigureImages(figures)
    decoded = []
    real_decode = selector_data.decode_image
    monkeypatch.setattr(selector_data, "decode_image", lambda *a: decoded.append(a) or real_decode(*a))
    plan = plan_chunks([(0, range(len(rows)))], batch_size=len(rows), chunk_size=7)
    dataset = CandidateChunks(rows, plan, images, tokenizer, model.config)
    parts, flags = [], []
    for index in range(len(plan)):
        _, tensors, missing = dataset[index]
        parts.append(tensors)
        flags += missing.tolist()
    distinct_per_chunk = sum(len({rows[p]["pair_id"] for p in chunk.positions} - {pair_ids[-1]}) for chunk in plan)
    assert len(decoded) == distinct_per_chunk < len(rows) - 3  # once per figure and chunk, not per candidate
    batch = expand_images(merge_chunks(parts))
    size = model.config.image_size
    for slot, row in enumerate(rows):
        if row["pair_id"] == pair_ids[-1]:
            assert flags[slot] and not batch["pixel_values"][slot].any()
        else:
            assert not flags[slot]
            assert torch.equal(batch["pixel_values"][slot], try_decode(images.get(row["pair_id"]), size))
    with torch.no_grad():
        scores = model(**batch).logits
    assert scores.shape == (len(rows), 1) and torch.isfinite(scores).all()
