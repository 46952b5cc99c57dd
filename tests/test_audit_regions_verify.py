"""Units of the figure side of the audit that the planted-set test covers only end to end: crops that cut every
side by its own amount, a white chart verified as one panel of a composite, strips and blank backgrounds not
taken for copies, and the batched pHash being imagehash's bit for bit."""

import numpy as np
import pytest

pytest.importorskip("cv2")

from vital_hub.audit.hashing import _box_hash, box_hashes, grey_of, query_variants, stored_regions  # noqa: E402
from vital_hub.audit.planted import KINDS, _composite, _crop, figure, jpeg, photo  # noqa: E402
from vital_hub.audit.regions import orient, regions  # noqa: E402
from vital_hub.audit.verify import WORK_SIDE, verify  # noqa: E402

# (left, top, right, bottom) cuts drawn at random in 0-30%; the equal-amount crops alone left half of them at
# Hamming distance 12-20 from every variant.
UNEVEN = [(0.136, 0.168, 0.277, 0.14), (0.152, 0.176, 0.055, 0.154), (0.189, 0.238, 0.028, 0.091),
          (0.027, 0.243, 0.208, 0.013), (0.295, 0.289, 0.196, 0.185), (0.047, 0.005, 0.159, 0.018),
          (0.057, 0.073, 0.009, 0.139), (0.132, 0.253, 0.156, 0.192), (0.15, 0.199, 0.137, 0.083),
          (0.299, 0.299, 0.252, 0.212), (0.095, 0.069, 0.087, 0.021), (0.23, 0.12, 0.254, 0.116)]  # fmt: skip


def distance(a: int, b: int) -> int:
    return bin(a ^ b).count("1")


def test_uneven_crops_come_within_the_default_distance_of_a_variant():
    for n, cut in enumerate(UNEVEN):
        image = figure(KINDS[n % 4], 9_100 + n)
        variants = [v for v, _, _ in query_variants(grey_of(jpeg(image)))]
        stored = [v for _, v in stored_regions(grey_of(jpeg(_crop(image, *cut))))]
        assert min(distance(a, b) for a in variants for b in stored) <= 10, (n, cut)


def test_without_uneven_crops_an_evaluation_figure_has_a_quarter_of_the_variants():
    grey = grey_of(jpeg(figure("microscopy", 9_200)))
    every, fewer = query_variants(grey), query_variants(grey, uneven=False)
    assert 1_000 < len(every) and 150 < len(fewer) < 400
    assert {v for v, _, _ in fewer} <= {v for v, _, _ in every}


@pytest.mark.parametrize("seed", [1_000, 1_005, 1_010])
def test_a_white_chart_is_verified_as_one_panel_of_a_composite(seed):
    """Compared at the composite's scale, a third of it, the chart's thin lines differed in over 7% of the pixels
    and the copy was rejected; the panel is now compared on its own, at working size."""
    chart = figure("chart", seed)
    others = [figure(KINDS[(seed + j) % 5], 2_000 + 10 * seed + j) for j in range(1, 4)]
    composite = _composite(chart, others, 3, 3, 2)
    e, t = grey_of(jpeg(chart), WORK_SIDE), grey_of(jpeg(composite), WORK_SIDE)
    panel = [v * t.shape[1] / composite.width for v in composite.panel_boxes[2]]
    verdict = verify(e, t, 0, (0, 0, e.shape[1], e.shape[0]), panel)
    assert verdict.confirmed, verdict
    left, top, right, bottom = verdict.box
    assert abs(left - panel[0]) < 12 and abs(right - panel[2]) < 12 and abs(bottom - panel[3]) < 12


def test_a_ruler_strip_or_a_blank_background_is_not_a_copy():
    a, b = photo(41, (460, 380)), photo(42, (460, 380))  # other specimens, the same ruler, other cloths
    ga, gb = grey_of(jpeg(a), WORK_SIDE), grey_of(jpeg(b), WORK_SIDE)
    ruler = (0, int(380 * 0.9) - 4, int(460 * 0.6) + 14, int(380 * 0.9) + 18)
    assert not verify(ga, gb, 0, ruler, ruler).confirmed
    flat = np.full((300, 400), 90, np.uint8) + np.random.default_rng(0).integers(0, 3, (300, 400), dtype=np.uint8)
    other = np.full((300, 400), 140, np.uint8) + np.random.default_rng(1).integers(0, 3, (300, 400), dtype=np.uint8)
    assert not verify(flat, other, 0, (0, 0, 400, 300), (0, 0, 400, 300)).confirmed


def test_batched_phash_is_imagehash_bit_for_bit():
    for n in range(6):
        grey = grey_of(jpeg(figure(KINDS[n % 5], 9_300 + n)))
        for k in (0, 1, 5):
            oriented = orient(grey, k)
            height, width = oriented.shape
            boxes = [*regions(oriented), (3, 5, width - 7, height - 2), (width // 3, height // 4, width // 2, height)]
            assert box_hashes(oriented, boxes) == [_box_hash(oriented, box) for box in boxes]
