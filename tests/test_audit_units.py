"""Fast checks of the audit's parts: copied-text detection weighted by rarity, panels found at gutters, query
variants that reach flipped and cropped copies, and verification that confirms copies and rejects look-alikes."""

import io

import numpy as np
from PIL import Image, ImageOps

from vital_hub.audit.hashing import grey_of, query_variants, stored_regions
from vital_hub.audit.planted import chart, compound, figure, hard_negatives, jpeg, microscopy, radiograph
from vital_hub.audit.text import TextIndex
from vital_hub.audit.verify import WORK_SIDE, verify

BOILERPLATE = "However, a healthcare professional should be consulted for a thorough evaluation of these findings."


def copied(texts, rows):
    index = TextIndex(list(enumerate(texts)))
    for row in rows:
        index.scan(row)
    return {(m.row, m.item) for m in index.matches()}


def test_short_copied_questions_are_found_and_boilerplate_alone_is_not():
    texts = ["Which stain was used?", "The conjunctiva.", f"The lesion is a cyst of the left lobe. {BOILERPLATE}"]
    clean = [f"Answer {k} about a nodule. {BOILERPLATE}" for k in range(40)]
    rows = ["<image>\nWhich stain was used?\nH&E.", "What organ? The conjunctiva.", *clean, texts[2]]
    found = copied(texts, rows)
    assert found == {(0, 0), (1, 1), (len(rows) - 1, 2)}  # no clean row: they share only the boilerplate
    # the same boilerplate in two rows only is not common: with the whole answer it would count, alone it is
    # under half of the answer's weight
    assert copied(texts, ["Something else. " + BOILERPLATE] * 2) == set()


def test_a_light_paraphrase_of_a_long_answer_is_found_and_a_generic_question_is_not():
    answer = ("The axial CT image shows a well circumscribed hypodense mass in the posterior segment of the right "
              "hepatic lobe, measuring about four centimetres, with peripheral nodular enhancement.")  # fmt: skip
    paraphrase = answer.replace("shows", "depicts").replace("measuring about", "of roughly")
    generic = "What is shown in the image?"
    rows = [paraphrase] + [f"{generic} Figure {k}." for k in range(30)]
    assert copied([answer, generic], rows) == {(0, 0)}


def test_panels_of_a_compound_figure_are_regions_and_hash_like_the_panel():
    panels = [figure(kind, 11 + k).resize((260, 200)) for k, kind in enumerate(("microscopy", "radiograph", "chart"))]
    sheet = compound(panels, 3)
    regions = stored_regions(np.asarray(Image.open(io.BytesIO(jpeg(sheet))).convert("L")))
    for panel in panels:
        variants = query_variants(grey_of(jpeg(panel)))
        best = min(bin(v ^ h).count("1") for v, _, _ in variants for _, h in regions)
        assert best <= 10
    assert len(regions) >= 4


def test_flipped_turned_and_cropped_copies_are_within_reach_of_the_variants():
    original = radiograph(5)
    variants = np.array([v for v, _, _ in query_variants(grey_of(jpeg(original)))], dtype=np.uint64)
    w, h = original.size
    copies = [ImageOps.mirror(original), original.transpose(Image.Transpose.ROTATE_90),
              original.crop((int(0.3 * w), 0, w, h)), original.crop((0, int(0.15 * h), int(0.85 * w), h))]  # fmt: skip
    for copy in copies:
        hashes = np.array([v for _, v in stored_regions(grey_of(jpeg(copy)))], dtype=np.uint64)
        assert np.bitwise_count(variants[:, None] ^ hashes[None, :]).min() <= 10


def whole(grey):
    return (0, 0, grey.shape[1], grey.shape[0])


def test_verification_confirms_copies_and_rejects_template_charts_siblings_and_modality_lookalikes():
    for seed in range(3):
        original = microscopy(seed) if seed % 2 else chart(seed, seed)
        copy = ImageOps.mirror(original.resize((original.width * 2 // 3, original.height * 2 // 3)))
        e, t = grey_of(jpeg(original), WORK_SIDE), grey_of(jpeg(copy, 60), WORK_SIDE)
        verdict = verify(e, t, 4, whole(np.fliplr(e)), whole(t))
        assert verdict.confirmed and verdict.box is not None and verdict.confidence >= 0.9, (seed, verdict)
        for name, evaluated, other in hard_negatives(100 + seed):
            e, t = grey_of(jpeg(evaluated), WORK_SIDE), grey_of(jpeg(other), WORK_SIDE)
            assert not verify(e, t, 0, whole(e), whole(t)).confirmed, (name, seed)
