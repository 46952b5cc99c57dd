"""Confirming a candidate match before it is reported: the two figures are aligned, then compared pixel by pixel.

A hash match only says that two regions look alike at 32x32: charts drawn from one template with other data,
sibling panels of one article and figures of one modality can too. So every candidate pair is aligned (ORB
features matched and a similarity transform fitted by RANSAC, OpenCV; failing that, the boxes whose hashes
matched), the evaluation figure is warped onto the training figure, and the aligned region must agree: its
normalised pixels correlate, nearly every tile of a 6x6 grid agrees (a copy with an arrow or a label burned in
differs in a tile or two), the fine structure of nearly every textured tile of an 8x8 grid correlates (two tissue
sections, or two panels of one layout, agree in their coarse shades only), and few pixels differ strongly (a
template chart with other data differs wherever the data is drawn). An alignment that is a near miss is refined by
ECC and compared again, so that a re-rendered copy can line up to the pixel.

A matched box that is a small part of its figure (a panel of a compound figure) is compared on its own, cropped
with a margin, at working size. Each figure's view (working pixels and ORB features) is made once and reused for
all its candidates (`View`). A strip, a near-blank background, or an alignment by the hash boxes alone that is not
near-perfect is not evidence of a copy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vital_hub.audit.regions import orient

WORK_SIDE = 384  # both figures are compared at most this many pixels a side
GRID = 6
# Chosen on the generated planted set (vital_hub.audit.planted, docs/audit.md): copies agree in >= 0.83 of the
# tiles (coarse and fine: a panel letter, a label or a watermark costs a few), differ strongly (> 1.2 standard
# deviations, dilated) in <= 4% of the pixels (a large text label: 8%); template charts with other data differed
# in >= 10%, and look-alikes (sibling panels, one modality, one compound layout) agreed in <= 0.73 fine tiles.
MIN_TILES, MIN_CORRELATION, TILE_TOLERANCE = 0.8, 0.6, 0.45
MIN_INLIERS = 12
STRONG, MAX_STRONG = 1.2, 0.07
TEXTURE = 4.0  # grey levels: a tile flatter than this has no structure to compare
FEATURES = 1000  # ORB features per view (matching costs their square)
# A matched box smaller than this share of its figure is compared on its own, with a margin of this share of its size.
SMALL, MARGIN = 0.5, 0.1
# An alignment that does not confirm as it is gets refined by ECC only when it is a near miss: the two correlate at
# least this much. ECC cost more than everything else together (77 ms a call on the planted set), and of the 404
# alignments of the planted set (seeds 0-9) that did not confirm as they were, none was a copy; 20 reach 0.9.
ECC_GATE = 0.9
# The compared overlap must be at least MIN_SIDE working pixels a side, and textured in both figures in at least
# MIN_TEXTURED of its tiles: on the planted set, ruler strips (15-37 px high) and near-blank backgrounds (5% of the
# tiles textured) of unrelated figures agreed, while every copy had >= 86 px and >= 19%.
MIN_SIDE, MIN_TEXTURED = 48, 0.1
# An alignment by the hash boxes alone (ORB found no consistent transform) confirms only when nearly every tile
# agrees and almost no pixel differs strongly: on the planted set, the copies confirmed so agreed in every tile with
# no strong difference, while look-alikes of one modality reached 0.91-0.94 of the tiles and 2.5% strong pixels.
BOX_MIN_TILES, BOX_MAX_STRONG = 0.95, 0.015


@dataclass
class Verdict:
    confirmed: bool
    signal: str  # "orb+pixels" | "hash-box+pixels"
    box: tuple[int, int, int, int] | None  # matched region of the training figure, its own pixels
    confidence: float  # share of tiles that agree, the lower of the coarse and the fine grid (0..1)
    correlation: float


@dataclass
class View:
    """A figure, or the part of it around a matched box, at working size (at most WORK_SIDE pixels a side), with
    its ORB features: computed once and reused for every candidate that looks at the same part."""

    grey: np.ndarray
    scale: float  # working pixels per pixel of the figure given
    offset: tuple[int, int]  # (left, top) of the part, pixels of the figure given
    keypoints: np.ndarray | None  # (n, 2) working pixels
    descriptors: np.ndarray | None

    def to_working(self, box) -> list[float]:
        left, top = self.offset
        return [(v - (left, top)[k % 2]) * self.scale for k, v in enumerate(box)]


def part_of(grey: np.ndarray, box=None) -> tuple[int, int, int, int]:
    """The part of a figure a view shows for a matched box: the whole figure, unless the box covers less than
    SMALL of it (a panel of a compound figure, a deep crop): then the box with a margin of MARGIN of its size, so
    that the panel is compared at working size and not at a third of it (thin chart lines vanish there)."""
    height, width = grey.shape
    if box is None:
        return 0, 0, width, height
    left, top, right, bottom = (int(round(v)) for v in box)
    if (right - left) * (bottom - top) >= SMALL * width * height:
        return 0, 0, width, height
    dx, dy = int((right - left) * MARGIN), int((bottom - top) * MARGIN)
    return max(0, left - dx), max(0, top - dy), min(width, right + dx), min(height, bottom + dy)


def view(grey: np.ndarray, part=None) -> View:
    """The View of `part` (a box from `part_of`; default the whole figure) of a grey figure."""
    import cv2

    left, top, right, bottom = part or (0, 0, grey.shape[1], grey.shape[0])
    crop = grey[top:bottom, left:right]
    scale = min(1.0, WORK_SIDE / max(crop.shape))
    if scale < 1.0:
        crop = cv2.resize(crop, (round(crop.shape[1] * scale), round(crop.shape[0] * scale)), cv2.INTER_AREA)
    crop = np.ascontiguousarray(crop)
    keypoints, descriptors = cv2.ORB_create(nfeatures=FEATURES, fastThreshold=8).detectAndCompute(crop, None)
    points = np.float32([k.pt for k in keypoints]) if keypoints else None
    if descriptors is None or len(keypoints) < MIN_INLIERS:
        points, descriptors = None, None
    return View(crop, scale, (left, top), points, descriptors)


def _orb_transform(source: View, target: View) -> np.ndarray | None:
    """A 2x3 similarity transform mapping source pixels onto target pixels, or None (too few consistent matches)."""
    import cv2

    if source.descriptors is None or target.descriptors is None:
        return None
    pairs = cv2.BFMatcher(cv2.NORM_HAMMING).knnMatch(source.descriptors, target.descriptors, k=2)
    good = [p[0] for p in pairs if len(p) == 2 and p[0].distance < 0.8 * p[1].distance]
    if len(good) < MIN_INLIERS:
        return None
    src = source.keypoints[[m.queryIdx for m in good]]
    dst = target.keypoints[[m.trainIdx for m in good]]
    matrix, inliers = cv2.estimateAffinePartial2D(src, dst, method=cv2.RANSAC, ransacReprojThreshold=4.0)
    if matrix is None or int(inliers.sum()) < MIN_INLIERS:
        return None
    scale = float(np.hypot(matrix[0, 0], matrix[1, 0]))
    return matrix if 0.1 < scale < 10 else None


def _box_transform(source_box, target_box) -> np.ndarray:
    (sl, st, sr, sb), (tl, tt, tr, tb) = source_box, target_box
    sx, sy = (tr - tl) / max(1, sr - sl), (tb - tt) / max(1, sb - st)
    return np.array([[sx, 0, tl - sl * sx], [0, sy, tt - st * sy]], dtype=np.float64)


def _refine(source: np.ndarray, target: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """The transform refined by maximising the correlation of the two figures (ECC: Evangelidis and Psarakis,
    PAMI 2008), so that a copy re-rendered at another scale lines up to the pixel; unchanged if it does not
    converge."""
    import cv2

    inverse = cv2.invertAffineTransform(matrix).astype(np.float32)
    try:
        criteria = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 30, 1e-4)
        _, refined = cv2.findTransformECC(
            target.astype(np.float32), source.astype(np.float32), inverse, cv2.MOTION_AFFINE, criteria, None, 5
        )
    except cv2.error:
        return matrix
    return cv2.invertAffineTransform(refined).astype(np.float64)


def _compare(source: np.ndarray, target: np.ndarray, matrix: np.ndarray, refine: bool = True):
    """(share of tiles agreeing: the lower of the coarse 6x6 and the fine textured-tile shares, correlation, box in
    target pixels, share of strongly differing pixels) of source warped onto target by matrix (refined by ECC
    first when `refine`)."""
    import cv2

    if refine:
        matrix = _refine(source, target, matrix)
    height, width = target.shape
    warped = cv2.warpAffine(source.astype(np.float32), matrix, (width, height), flags=cv2.INTER_AREA)
    mask = cv2.warpAffine(np.ones(source.shape, np.uint8), matrix, (width, height), flags=cv2.INTER_NEAREST)
    ys, xs = np.nonzero(mask)
    if len(ys) < 0.02 * source.size or len(ys) < 400:
        return 0.0, 0.0, None, 1.0
    box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
    if min(box[2] - box[0], box[3] - box[1]) < MIN_SIDE:  # a strip (a ruler, a line of text): nothing to compare
        return 0.0, 0.0, None, 1.0
    inset = max(1, round(0.02 * min(box[2] - box[0], box[3] - box[1])))  # resampled edges disagree
    left, top, right, bottom = box[0] + inset, box[1] + inset, box[2] - inset, box[3] - inset
    structure = _structure(warped[top:bottom, left:right], target[top:bottom, left:right].astype(np.float32))
    a = cv2.resize(warped[top:bottom, left:right], (96, 96), interpolation=cv2.INTER_AREA)
    b = cv2.resize(target[top:bottom, left:right].astype(np.float32), (96, 96), interpolation=cv2.INTER_AREA)
    a, b = cv2.GaussianBlur(a, (5, 5), 1.2), cv2.GaussianBlur(b, (5, 5), 1.2)
    a = (a - a.mean()) / (a.std() + 1e-3)
    b = (b - b.mean()) / (b.std() + 1e-3)
    correlation = float((a * b).mean())
    strong = float(cv2.dilate((np.abs(a - b) > STRONG).astype(np.uint8), np.ones((5, 5), np.uint8)).mean())
    cell = 96 // GRID
    differs = (
        np.abs(a[: cell * GRID, : cell * GRID] - b[: cell * GRID, : cell * GRID])
        .reshape(GRID, cell, GRID, cell)
        .mean(axis=(1, 3))
        > TILE_TOLERANCE
    )
    return min(1.0 - float(differs.mean()), structure), correlation, box, strong


def _structure(a: np.ndarray, b: np.ndarray) -> float:
    """Share of the textured tiles (8x8 grid at 192 px) whose fine structure correlates (>= 0.3), each tile
    normalised on its own: two different tissue sections, or two panels of one layout, agree in their coarse
    shades but not here. 0 when fewer than MIN_TEXTURED of the tiles are textured in both (a background matched
    to a background)."""
    import cv2

    size, cells = 192, 8
    a = cv2.GaussianBlur(cv2.resize(a, (size, size), interpolation=cv2.INTER_AREA), (3, 3), 0.8)
    b = cv2.GaussianBlur(cv2.resize(b, (size, size), interpolation=cv2.INTER_AREA), (3, 3), 0.8)
    cell = size // cells
    ta = a.reshape(cells, cell, cells, cell).transpose(0, 2, 1, 3).reshape(cells * cells, -1)
    tb = b.reshape(cells, cell, cells, cell).transpose(0, 2, 1, 3).reshape(cells * cells, -1)
    sa, sb = ta.std(axis=1), tb.std(axis=1)
    textured = (sa > TEXTURE) | (sb > TEXTURE)
    if ((sa > TEXTURE) & (sb > TEXTURE)).mean() < MIN_TEXTURED:  # two near-blank regions: no evidence either way
        return 0.0
    za = (ta - ta.mean(axis=1, keepdims=True)) / (sa[:, None] + 1e-3)
    zb = (tb - tb.mean(axis=1, keepdims=True)) / (sb[:, None] + 1e-3)
    correlation = (za * zb).mean(axis=1)
    return float((correlation[textured] >= 0.3).mean())


def _ratio(grey: np.ndarray, shape) -> float:
    """How many pixels of `grey` a pixel of an image of `shape` (the same figure decoded at another size) is."""
    return (grey.shape[0] / shape[0] + grey.shape[1] / shape[1]) / 2


def verify_views(source: View, target: View, eval_box, train_box) -> Verdict:
    """Is the target (training) view a copy of (part of) the source (evaluation) view, or the other way round?
    `eval_box` and `train_box` are the boxes whose hashes matched, in pixels of the figures the views were made
    from; the verdict's box is in pixels of the training figure. Each alignment (ORB, then the hash boxes) is
    compared as it is first, and refined by ECC only when that does not already confirm it and the two
    correlate at least ECC_GATE (unrelated figures do not; refining them costs more than the rest)."""
    best = Verdict(False, "hash-box+pixels", None, 0.0, 0.0)
    candidates = []
    matrix = _orb_transform(source, target)
    if matrix is not None:
        candidates.append(("orb+pixels", matrix))
    candidates.append(("hash-box+pixels", _box_transform(source.to_working(eval_box), target.to_working(train_box))))
    for signal, matrix in candidates:
        for refine in (False, True):
            tiles, correlation, box, strong = _compare(source.grey, target.grey, matrix, refine)
            if box is None:
                break
            strict = signal == "hash-box+pixels"  # no keypoints agree: the pixels alone must, nearly everywhere
            confirmed = (
                tiles >= (BOX_MIN_TILES if strict else MIN_TILES)
                and correlation >= MIN_CORRELATION
                and strong <= (BOX_MAX_STRONG if strict else MAX_STRONG)
            )
            scale, (left, top) = target.scale, target.offset
            box = tuple(round(v / scale + (left, top)[k % 2]) for k, v in enumerate(box))
            verdict = Verdict(confirmed, signal, box, tiles, correlation)
            if confirmed:
                return verdict
            if tiles > best.confidence:
                best = verdict
            if correlation < ECC_GATE:
                break
    return best


def verify(eval_grey, train_grey, orientation: int, eval_box, train_box, eval_shape=None, train_shape=None) -> Verdict:
    """`verify_views` of two grey figures: `orientation` is the dihedral variant of the evaluation figure whose hash
    matched, `eval_box` the box of that oriented figure and `train_box` the training region whose hashes matched, in
    pixels of the figures decoded at `eval_shape` and `train_shape` (default: the greys given). The verdict's box is
    in pixels of `train_grey`."""
    oriented = orient(eval_grey, orientation)
    eval_box = [v * (_ratio(eval_grey, eval_shape) if eval_shape else 1.0) for v in eval_box]
    train_box = [v * (_ratio(train_grey, train_shape) if train_shape else 1.0) for v in train_box]
    source = view(oriented, part_of(oriented, eval_box))
    target = view(train_grey, part_of(train_grey, train_box))
    return verify_views(source, target, eval_box, train_box)
