"""Confirming a candidate match before it is reported: the two figures are aligned, then compared pixel by pixel.

A hash match only says that two regions look alike at 32x32: charts drawn from one template with other data,
sibling panels of one article and figures of one modality can too. So every candidate pair is aligned (ORB
features matched and a similarity transform fitted by RANSAC, OpenCV; failing that, the boxes whose hashes
matched), the evaluation figure is warped onto the training figure, and the aligned region must agree: its
normalised pixels correlate, nearly every tile of a 6x6 grid agrees (a copy with an arrow or a label burned in
differs in a tile or two), the fine structure of nearly every textured tile of an 8x8 grid correlates (two tissue
sections, or two panels of one layout, agree in their coarse shades only), and few pixels differ strongly (a
template chart with other data differs wherever the data is drawn). The alignment is refined by ECC first, so
that a re-rendered copy lines up to the pixel.
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


@dataclass
class Verdict:
    confirmed: bool
    signal: str  # "orb+pixels" | "hash-box+pixels"
    box: tuple[int, int, int, int] | None  # matched region of the training figure, its own pixels
    confidence: float  # share of tiles that agree, the lower of the coarse and the fine grid (0..1)
    correlation: float


def _working(grey: np.ndarray) -> tuple[np.ndarray, float]:
    import cv2

    scale = min(1.0, WORK_SIDE / max(grey.shape))
    if scale < 1.0:
        grey = cv2.resize(grey, (round(grey.shape[1] * scale), round(grey.shape[0] * scale)), cv2.INTER_AREA)
    return np.ascontiguousarray(grey), scale


def _orb_transform(source: np.ndarray, target: np.ndarray) -> np.ndarray | None:
    """A 2x3 similarity transform mapping source pixels onto target pixels, or None (too few consistent matches)."""
    import cv2

    orb = cv2.ORB_create(nfeatures=1500, fastThreshold=8)
    kp1, d1 = orb.detectAndCompute(source, None)
    kp2, d2 = orb.detectAndCompute(target, None)
    if d1 is None or d2 is None or len(kp1) < MIN_INLIERS or len(kp2) < MIN_INLIERS:
        return None
    pairs = cv2.BFMatcher(cv2.NORM_HAMMING).knnMatch(d1, d2, k=2)
    good = [p[0] for p in pairs if len(p) == 2 and p[0].distance < 0.8 * p[1].distance]
    if len(good) < MIN_INLIERS:
        return None
    src = np.float32([kp1[m.queryIdx].pt for m in good])
    dst = np.float32([kp2[m.trainIdx].pt for m in good])
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


def _compare(source: np.ndarray, target: np.ndarray, matrix: np.ndarray):
    """(share of tiles agreeing: the lower of the coarse 6x6 and the fine textured-tile shares, correlation, box in
    target pixels, share of strongly differing pixels) of source warped onto target by matrix."""
    import cv2

    matrix = _refine(source, target, matrix)
    height, width = target.shape
    warped = cv2.warpAffine(source.astype(np.float32), matrix, (width, height), flags=cv2.INTER_AREA)
    mask = cv2.warpAffine(np.ones(source.shape, np.uint8), matrix, (width, height), flags=cv2.INTER_NEAREST)
    ys, xs = np.nonzero(mask)
    if len(ys) < 0.02 * source.size or len(ys) < 400:
        return 0.0, 0.0, None, 1.0
    box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
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
    shades but not here."""
    import cv2

    size, cells = 192, 8
    a = cv2.GaussianBlur(cv2.resize(a, (size, size), interpolation=cv2.INTER_AREA), (3, 3), 0.8)
    b = cv2.GaussianBlur(cv2.resize(b, (size, size), interpolation=cv2.INTER_AREA), (3, 3), 0.8)
    cell = size // cells
    ta = a.reshape(cells, cell, cells, cell).transpose(0, 2, 1, 3).reshape(cells * cells, -1)
    tb = b.reshape(cells, cell, cells, cell).transpose(0, 2, 1, 3).reshape(cells * cells, -1)
    sa, sb = ta.std(axis=1), tb.std(axis=1)
    textured = (sa > TEXTURE) | (sb > TEXTURE)
    if not textured.any():
        return 1.0
    za = (ta - ta.mean(axis=1, keepdims=True)) / (sa[:, None] + 1e-3)
    zb = (tb - tb.mean(axis=1, keepdims=True)) / (sb[:, None] + 1e-3)
    correlation = (za * zb).mean(axis=1)
    return float((correlation[textured] >= 0.3).mean())


def _ratio(grey: np.ndarray, shape) -> float:
    """How many pixels of `grey` a pixel of an image of `shape` (the same figure decoded at another size) is."""
    return (grey.shape[0] / shape[0] + grey.shape[1] / shape[1]) / 2


def verify(eval_grey, train_grey, orientation: int, eval_box, train_box, eval_shape=None, train_shape=None) -> Verdict:
    """Is the training figure a copy of (part of) the evaluation figure, or the other way round? `orientation` is
    the dihedral variant of the evaluation figure whose hash matched, `eval_box` the box of that oriented figure
    and `train_box` the training region whose hashes matched, in pixels of the figures decoded at `eval_shape` and
    `train_shape` (default: the greys given). The verdict's box is in pixels of `train_grey`."""
    source, s_scale = _working(orient(eval_grey, orientation))
    target, t_scale = _working(train_grey)
    eval_box = [v * (_ratio(eval_grey, eval_shape) if eval_shape else 1.0) for v in eval_box]
    train_box = [v * (_ratio(train_grey, train_shape) if train_shape else 1.0) for v in train_box]
    best = Verdict(False, "hash-box+pixels", None, 0.0, 0.0)
    candidates = []
    matrix = _orb_transform(source, target)
    if matrix is not None:
        candidates.append(("orb+pixels", matrix))
    box_s = [round(v * s_scale) for v in eval_box]
    box_t = [round(v * t_scale) for v in train_box]
    candidates.append(("hash-box+pixels", _box_transform(box_s, box_t)))
    for signal, matrix in candidates:
        tiles, correlation, box, strong = _compare(source, target, matrix)
        if box is None:
            continue
        confirmed = tiles >= MIN_TILES and correlation >= MIN_CORRELATION and strong <= MAX_STRONG
        verdict = Verdict(confirmed, signal, tuple(round(v / t_scale) for v in box), tiles, correlation)
        if confirmed:
            return verdict
        if tiles > best.confidence:
            best = verdict
    return best
