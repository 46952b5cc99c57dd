"""`vital select`'s chunks: each figure decoded and sent once, texts tokenised by the tokenizer's backend, and the
assembled batch equal to the plain way (the batch's texts tokenised in one call, every candidate's figure decoded)."""

import numpy as np
import pytest
import torch

from tests.selector_helpers import candidate_rows, tiny_selector, tiny_tokenizer, write_figures
from vital_hub.selector import chunks as selector_chunks
from vital_hub.selector.chunks import assemble, chunk_loader, model_inputs, plan_chunks
from vital_hub.selector.data import FigureImages, TextEncoder, tokenize, try_decode
from vital_hub.selector.text import candidate_text


@pytest.mark.parametrize("kind", ["wordpiece", "bpe"])
def test_chunks_decode_each_figure_once_and_assemble_the_plain_batch(tmp_path, monkeypatch, kind):
    pair_ids = [f"3000{i}_F{1 + i}" for i in range(6)]
    figures = write_figures(tmp_path / "figures", pair_ids[:-1])  # the last figure is missing
    rows = candidate_rows(pair_ids, samples=4)
    rows += [{**row, "candidate_id": f"{row['pair_id']}#4"} for row in rows[:12:4]]  # runs of 5 and 4
    rows.sort(key=lambda r: r["candidate_id"])
    short = [{"from": "human", "value": "what?\n<image>"}, {"from": "gpt", "value": "a mass"}]
    for row in rows[4:20]:  # whole chunks of short texts: chunks padded to different lengths
        row.update(caption="", mentions=None, conversations=short)
    tokenizer = tiny_tokenizer(tmp_path / "tokenizer") if kind == "wordpiece" else bpe_tokenizer("<pad>")
    model = tiny_selector("clip", tokenizer).eval()
    images = FigureImages(figures)
    decoded = []
    real_decode = selector_chunks.decode_pixels
    monkeypatch.setattr(selector_chunks, "decode_pixels", lambda *a: decoded.append(a[0]) or real_decode(*a))

    shards = [(0, range(len(rows)))]
    loader, dataset = chunk_loader(rows, shards, images, tokenizer, model.config, len(rows), 7, num_workers=0)
    parts = list(loader)
    plan = dataset.chunks
    assert [part.index for part in parts] == list(range(len(plan)))
    assert [p for chunk in plan for p in chunk.positions] == list(range(len(rows)))
    assert all(len(chunk.positions) <= 7 for chunk in plan)
    # Chunks end where a figure's run ends (runs here are shorter than a chunk): no figure is decoded twice.
    assert len(decoded) == len(pair_ids) - 1
    batch = model_inputs(assemble(parts, dataset.encoder), torch.device("cpu"))

    plain = tokenize(tokenizer, [candidate_text(row) for row in rows], model.config)
    assert torch.equal(batch["input_ids"], plain["input_ids"])
    assert torch.equal(batch["attention_mask"], plain["attention_mask"])
    flags = np.concatenate([part.missing for part in parts]).tolist()
    size = model.config.image_size
    assert batch["pixel_values"].shape == (len(rows), 3, size, size) and batch["pixel_values"].is_contiguous()
    for slot, row in enumerate(rows):
        if row["pair_id"] == pair_ids[-1]:
            assert flags[slot] and not batch["pixel_values"][slot].any()
        else:
            assert not flags[slot]
            assert torch.equal(batch["pixel_values"][slot], try_decode(images.get(row["pair_id"]), size))
    with torch.no_grad():
        scores = model(**batch).logits
    assert scores.shape == (len(rows), 1) and torch.isfinite(scores).all()


def test_batches_do_not_depend_on_chunking_and_long_runs_are_cut():
    figures = ["a"] * 3 + ["b"] * 9 + ["c"] * 2 + ["d"] * 5
    shards = [(0, range(0, 12)), (1, range(12, 19))]
    plain = plan_chunks(shards, batch_size=8, chunk_size=4)
    aligned = plan_chunks(shards, batch_size=8, chunk_size=4, figures=figures)

    def batches(plan):
        out, current = [], []
        for chunk in plan:
            current += chunk.positions
            if chunk.ends_batch:
                out.append((chunk.shard, current))
                current = []
        return out

    assert batches(aligned) == batches(plain) == [(0, list(range(8))), (0, [8, 9, 10, 11]), (1, list(range(12, 19)))]
    assert [c.positions for c in aligned] == [
        [0, 1, 2],
        [3, 4, 5, 6],
        [7],
        [8, 9, 10, 11],
        [12, 13],
        [14, 15, 16, 17],
        [18],
    ]
    assert [c.ends_shard for c in aligned] == [False] * 3 + [True] + [False] * 2 + [True]


def bpe_tokenizer(pad_token: str):
    """A byte-level BPE tokenizer (as CLIP and GPT-2 family models use) whose pad token is not id 0."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE(unk_token=None))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    corpus = ["the chest ct shows a lesion in the left lung", "histology of the biopsy: tumour cells, é ü 肺"] * 20
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<s>", "</s>", pad_token])
    backend.train_from_iterator(corpus, trainer)
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>",
        special_tokens=[("<s>", backend.token_to_id("<s>")), ("</s>", backend.token_to_id("</s>"))],
    )
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token=pad_token, bos_token="<s>", eos_token="</s>")


TEXTS = [
    "The chest CT shows a lesion.Question:What is seen?Answer:a mass",
    "",
    "Histology:" + " tumour cells in the biopsy" * 40,  # past the length limit
    "Accents é ü, CJK 肺, [SEP] and </s> as plain text\x00\n\ttabs",
    "left lung",
]


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("kind", ["wordpiece", "bpe"])
def test_text_encoder_gives_the_tokenizers_own_ids(tmp_path, kind, side):
    tokenizer = tiny_tokenizer(tmp_path / "tok") if kind == "wordpiece" else bpe_tokenizer("<pad>")
    tokenizer.padding_side = side
    config = tiny_selector("clip", tiny_tokenizer(tmp_path / "t2")).config
    config.truncation_side = side
    encoder = TextEncoder(tokenizer, config)
    pieces = [encoder.encode(TEXTS[:2]), encoder.encode(TEXTS[2:])]  # the first call checks, the second is fast
    assert encoder._backend is not None
    batch = encoder.pad(pieces)
    plain = tokenize(tokenizer, TEXTS, config)
    assert batch["input_ids"].dtype == plain["input_ids"].dtype == torch.long
    assert torch.equal(batch["input_ids"], plain["input_ids"])
    assert torch.equal(batch["attention_mask"], plain["attention_mask"])
    assert batch["input_ids"].shape[1] == config.text_max_length  # the long text was truncated
    if kind == "bpe":
        assert tokenizer.pad_token_id != 0 and (batch["input_ids"] == tokenizer.pad_token_id).any()


def test_text_encoder_falls_back_where_the_backend_alone_differs(tmp_path):
    from transformers import BertTokenizerFast

    class Shouting(BertTokenizerFast):
        """Changes texts in Python before its backend sees them."""

        def _encode_plus(self, text, *args, **kwargs):
            return super()._encode_plus([t.replace("lung", "liver") for t in text], *args, **kwargs)

    plain_tokenizer = tiny_tokenizer(tmp_path / "tok")
    tokenizer = Shouting(tokenizer_object=plain_tokenizer.backend_tokenizer, pad_token="[PAD]")
    config = tiny_selector("clip", plain_tokenizer).config
    encoder = TextEncoder(tokenizer, config)
    first = encoder.encode(TEXTS)
    assert encoder._backend is None
    later = encoder.encode(TEXTS)
    plain = tokenize(tokenizer, TEXTS, config)
    for piece in (first, later):
        assert torch.equal(encoder.pad([piece])["input_ids"], plain["input_ids"])


def test_select_scores_equal_the_model_on_plainly_made_batches(tmp_path):
    """What `score_shards` writes (2 decoding workers) is what the model gives for each batch built the plain way."""
    import pyarrow.parquet as pq

    from vital_hub.selector.data import decode_image
    from vital_hub.selector.select import score_shards

    pair_ids = [f"5000{i}_F1" for i in range(7)]
    figures = write_figures(tmp_path / "figures", pair_ids[1:])  # the first figure is missing
    (figures / f"{pair_ids[3]}.jpg").write_bytes(b"\xff\xd8 truncated")  # and one is unreadable
    rows = sorted(candidate_rows(pair_ids, samples=3), key=lambda r: r["candidate_id"])
    tokenizer = tiny_tokenizer(tmp_path / "tokenizer")
    model = tiny_selector("biomedclip", tokenizer).eval()
    shards = [(0, range(0, 12)), (1, range(12, len(rows)))]
    images = FigureImages(figures)
    scored = score_shards(model, tokenizer, rows, shards, images, tmp_path / "scores", 8, 2, 3, progress=False)
    assert scored == len(rows)
    written = {}
    for shard in sorted((tmp_path / "scores").glob("shard-*.parquet")):
        written.update({r["candidate_id"]: r["score"] for r in pq.read_table(shard).to_pylist()})

    size = model.config.image_size
    for _, positions in shards:
        for start in range(0, len(positions), 8):
            batch = [rows[p] for p in positions[start : start + 8]]
            plain = tokenize(tokenizer, [candidate_text(row) for row in batch], model.config)
            sources = [images.get(row["pair_id"]) for row in batch]
            readable = [try_decode(source, size) is not None for source in sources]
            pixels = [
                decode_image(s, size) if ok else torch.zeros(3, size, size, dtype=torch.uint8)
                for s, ok in zip(sources, readable, strict=True)
            ]
            with torch.inference_mode():
                expected = model(**plain, pixel_values=torch.stack(pixels)).logits.squeeze(-1).tolist()
            for row, ok, value in zip(batch, readable, expected, strict=True):
                assert written[row["candidate_id"]] == (value if ok else None), row["candidate_id"]
    assert sum(value is None for value in written.values()) == 6
