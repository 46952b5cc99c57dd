"""Where the content of a figure is: its uniform margin trimmed, and the panels of a compound figure found at its
gutters (runs of near-constant rows or columns), recursively (an XY cut: Nagy and Seth, "Hierarchical
representation of optically scanned documents", ICPR 1984). Over 30% of scientific figures are compound
(arXiv 2101.09903), and a published figure is often one panel of one: a global hash of the
whole figure cannot see a panel, a hash of each panel can.

Boxes are (left, top, right, bottom) in pixels of the image given. Everything works on greyscale numpy arrays.
"""

from __future__ import annotations

import numpy as np

# A row or column is a gutter when its pixels stay within this many grey levels of the gutter's shade.
FLAT = 12
# Smallest gutter: 0.5% of the side, at least 2 pixels; smallest panel: 8% of the side and 16 pixels.
GUTTER, MIN_GUTTER_PX = 0.005, 2
PANEL, MIN_PANEL_PX = 0.08, 16
DEPTH = 3
MAX_REGIONS = 16


def trim_box(grey: np.ndarray, box: tuple[int, int, int, int] | None = None) -> tuple[int, int, int, int]:
    """The box without its uniform margins: rows and columns of near-constant shade peeled from each side (a
    border of any colour, a screenshot's grey frame). Kept whole when less than a quarter of the area would stay."""
    left, top, right, bottom = box or (0, 0, grey.shape[1], grey.shape[0])
    part = grey[top:bottom, left:right]
    if part.size == 0:
        return left, top, right, bottom
    rows, cols = np.flatnonzero(~_flat_lines(part, 1)), np.flatnonzero(~_flat_lines(part, 0))
    if not len(rows) or not len(cols):
        return left, top, right, bottom
    t, b, lo, hi = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    if (b - t) * (hi - lo) < 0.25 * part.size:
        return left, top, right, bottom
    return left + lo, top + t, left + hi, top + b


def _gutters(flat: np.ndarray, min_run: int) -> list[tuple[int, int]]:
    """Runs of True at least `min_run` long, away from both ends (a margin is not a gutter)."""
    runs, start = [], None
    for i, value in enumerate(np.append(flat, False)):
        if value and start is None:
            start = i
        elif not value and start is not None:
            if i - start >= min_run and start > 0 and i < len(flat):
                runs.append((start, i))
            start = None
    return runs


def _flat_lines(part: np.ndarray, axis: int) -> np.ndarray:
    """Per row (axis=1) or column (axis=0): are its pixels near-constant (0.4% of them may stray: JPEG ringing; a drawn axis line may not)?"""
    part = part.astype(np.float32)
    mean = part.mean(axis=axis, keepdims=True)
    return (np.abs(part - mean) > FLAT).mean(axis=axis) <= 0.004


def _split_once(grey: np.ndarray, box, axis: int):
    """(the box without thin strips at its ends, the pieces between its gutters) along one axis. A strip thinner
    than a panel at an end (a title, a caption line, a window bar) is left out; one inside (a line of text) is
    merged with its smaller neighbour."""
    left, top, right, bottom = box
    part = grey[top:bottom, left:right]
    along = part.shape[0] if axis == 1 else part.shape[1]
    runs = _gutters(_flat_lines(part, axis), max(MIN_GUTTER_PX, int(GUTTER * along)))
    if not runs:
        return box, [box]
    edges = [0, *[x for run in runs for x in run], along]
    pieces = [(edges[k], edges[k + 1]) for k in range(0, len(edges), 2)]
    smallest = max(MIN_PANEL_PX, int(PANEL * along))
    while pieces and pieces[0][1] - pieces[0][0] < smallest:
        pieces.pop(0)
    while pieces and pieces[-1][1] - pieces[-1][0] < smallest:
        pieces.pop()
    while len(pieces) > 1 and min(b - a for a, b in pieces) < smallest:
        k = min(range(1, len(pieces) - 1), key=lambda i: pieces[i][1] - pieces[i][0])
        j = k - 1 if pieces[k - 1][1] - pieces[k - 1][0] < pieces[k + 1][1] - pieces[k + 1][0] else k + 1
        a, b = min(k, j), max(k, j)
        pieces[a : b + 1] = [(pieces[a][0], pieces[b][1])]
    if not pieces:
        return box, [box]
    if axis == 1:
        boxes = [(left, top + a, right, top + b) for a, b in pieces]
        return (left, boxes[0][1], right, boxes[-1][3]), boxes
    boxes = [(left + a, top, left + b, bottom) for a, b in pieces]
    return (boxes[0][0], top, boxes[-1][2], bottom), boxes


def panels(grey: np.ndarray, untrimmed: bool = False) -> list[tuple[int, int, int, int]]:
    """Trimmed boxes of the panels of a compound figure, and of the figure without thin strips at its edges
    (a title, a caption, a window bar); empty when there are none. With `untrimmed`, also each panel's box as cut
    at the gutters, before its own uniform margin is trimmed (a panel cut out of the figure keeps that margin,
    and trimming it alone may stop elsewhere)."""
    found = []

    def cut(box, depth: int) -> None:
        box = trim_box(grey, box)
        for axis in (0, 1):  # columns first, then rows
            stripped, pieces = _split_once(grey, box, axis)
            if stripped != box and len(pieces) == 1:
                found.append(trim_box(grey, stripped))
                if depth < DEPTH:
                    cut(stripped, depth + 1)
                return
            if len(pieces) > 1:
                if stripped != box:
                    found.append(trim_box(grey, stripped))
                for piece in pieces:
                    if untrimmed:
                        found.append(piece)
                    piece = trim_box(grey, piece)
                    found.append(piece)
                    if depth < DEPTH:
                        cut(piece, depth + 1)
                return

    cut((0, 0, grey.shape[1], grey.shape[0]), 1)
    height, width = grey.shape
    sized = [b for b in found if b[2] - b[0] >= MIN_PANEL_PX and b[3] - b[1] >= MIN_PANEL_PX]
    sized = sorted(set(sized), key=lambda b: (-(b[2] - b[0]) * (b[3] - b[1]), b))
    return [b for b in sized if (b[2] - b[0]) * (b[3] - b[1]) >= 0.02 * width * height][
        : MAX_REGIONS * (1 + untrimmed)
    ]


def regions(grey: np.ndarray) -> list[tuple[int, int, int, int]]:
    """The regions a figure is hashed in: whole, trimmed, then its panels (duplicates dropped, order kept)."""
    whole = (0, 0, grey.shape[1], grey.shape[0])
    out = []
    for box in (whole, trim_box(grey), *panels(grey)):
        if box not in out:
            out.append(box)
    return out


def orient(array: np.ndarray, k: int) -> np.ndarray:
    """The k-th of the 8 dihedral variants: k % 4 quarter turns anticlockwise, then a left-right mirror if k >= 4."""
    out = np.rot90(array, k % 4)
    return np.ascontiguousarray(out[:, ::-1] if k >= 4 else out)


ORIENTATIONS = ("as is", "rot90", "rot180", "rot270", "mirror", "rot90+mirror", "rot180+mirror", "rot270+mirror")
