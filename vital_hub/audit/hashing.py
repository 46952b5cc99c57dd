"""Perceptual hashes of figures: a few 64-bit pHashes per training figure, a few hundred per evaluation figure.

The hash is imagehash's DCT pHash of a greyscale region, decoded in JPEG draft mode (the decoder scales by 1/2..1/8
while it decodes; pHash looks at 32x32 anyway). A global hash survives resizing, recompression, greyscale and small
marks, but not a crop, a border, a caption strip, a flip, or being one panel of a compound figure. So:
- each training figure is hashed in its regions (`vital_hub.audit.regions`): whole, its trimmed content, and the
  panels and sub-panels found at its gutters; `vital build` stores them with the figure;
- each evaluation figure (they are few) is looked for in variants: 12 framings (crops up to 5%, trimmed, padded,
  corner crops) in each of the 8 orientations (flips, right-angle turns), crops of up to 30% a side (one side,
  two, four, in steps of 3%; and every side by its own amount, on a lattice of cuts), and its own panels, as cut
  and trimmed (a training figure may be one of them): ~1,140 hashes a figure, hashed in one batch.
A training figure is a candidate when any variant is within the threshold of any of its regions; candidates are
then verified (`vital_hub.audit.verify`). Variants and thresholds were chosen on the generated planted set
(`vital_hub.audit.planted`; docs/audit.md has the numbers).

Hashes are cached by the sha256 of the figure's bytes in a JSON-lines file, so a re-run or another evaluation
set only searches.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from itertools import product
from pathlib import Path

import numpy as np

from vital_hub.audit.regions import orient, panels, regions, trim_box

# Draft decoding keeps at least this many pixels a side (a 1,000 px JPEG decodes at 1/4, in ~2.5 ms; pHash then
# takes ~0.3 ms). At 1/8 the 8x8-block averages move with a border and a planted copy of a real qa50 figure was missed.
DRAFT_SIZE = 256
# Framings of an evaluation figure: (kind, fraction). Crops up to 5% a side, borders up to ~5%.
FRAMINGS = (
    ("whole", 0.0),
    ("crop", 0.025),
    ("crop", 0.05),
    ("trim", 0.0),
    ("trim-crop", 0.025),
    ("trim-crop", 0.05),
    ("pad-white", 0.025),
    ("pad-white", 0.05),
    ("pad-black", 0.025),
    ("pad-black", 0.05),
    ("corner-tl", 0.04),
    ("corner-br", 0.04),
)
REGIONS_VERSION = 1
UNEVEN_STEP, UNEVEN_MAX = 0.075, 0.3
CROP_STEPS = tuple(round(0.03 * k, 2) for k in range(1, 11))
# (left, top, right, bottom) cut or not
CROP_SIDES = (
    (1, 0, 0, 0),
    (0, 1, 0, 0),
    (0, 0, 1, 0),
    (0, 0, 0, 1),
    (1, 1, 0, 0),
    (0, 1, 1, 0),
    (0, 0, 1, 1),
    (1, 0, 0, 1),
    (1, 0, 1, 0),
    (0, 1, 0, 1),
    (1, 1, 1, 1),
)


def _grey(data: bytes):
    from PIL import Image

    image = Image.open(io.BytesIO(data))
    image.draft("L", (DRAFT_SIZE, DRAFT_SIZE))
    return image.convert("L")


def grey_of(data: bytes | None, size: int = DRAFT_SIZE) -> np.ndarray | None:
    """The figure in grey, decoded in draft mode to at least `size` pixels a side, or None when it does not."""
    if not data:
        return None
    try:
        from PIL import Image

        image = Image.open(io.BytesIO(data))
        image.draft("L", (size, size))
        return np.asarray(image.convert("L"))
    except Exception:  # as in figure_hash
        return None


def _phash(image) -> int:
    """imagehash's pHash, of the image first box-reduced by an integer factor to under 256 px a side (pHash looks
    at 32x32: the Lanczos resize of a large region cost 3 ms, the reduced one a tenth)."""
    import imagehash

    factor = max(image.size) // 128
    if factor > 1:
        image = image.reduce(factor)
    bits = imagehash.phash(image).hash.flatten()
    return int.from_bytes(np.packbits(bits).tobytes(), "big")


def _box_hash(grey: np.ndarray, box) -> int:
    from PIL import Image

    left, top, right, bottom = box
    return _phash(Image.fromarray(grey[top:bottom, left:right]))


def box_hashes(grey: np.ndarray, boxes) -> list[int]:
    """`_box_hash` of many boxes of one figure at once, bit for bit: each box reduced and resized by PIL straight
    from the figure (no copy), the DCTs of all of them in one call (a third of the time a box)."""
    import scipy.fftpack
    from PIL import Image

    if not len(boxes):
        return []
    image = Image.fromarray(grey)
    height, width = grey.shape
    smalls = []
    for box in boxes:
        left, top = max(0, int(box[0])), max(0, int(box[1]))
        right, bottom = min(width, int(box[2])), min(height, int(box[3]))
        if right <= left or bottom <= top:
            raise ValueError(f"empty box {box}")
        factor = max(right - left, bottom - top) // 128
        part = (
            image.reduce(factor, box=(left, top, right, bottom))
            if factor > 1
            else image.crop((left, top, right, bottom))
        )
        smalls.append(np.asarray(part.resize((32, 32), Image.Resampling.LANCZOS), dtype=np.float64))
    dct = scipy.fftpack.dct(scipy.fftpack.dct(np.stack(smalls), axis=1), axis=2)[:, :8, :8].reshape(len(boxes), 64)
    bits = dct > np.median(dct, axis=1, keepdims=True)
    return [int.from_bytes(row.tobytes(), "big") for row in np.packbits(bits, axis=1)]


def stored_regions(grey: np.ndarray) -> list[tuple[tuple[int, int, int, int], int]]:
    """(box, pHash) of each region a training figure is hashed in: whole first, then trimmed and panels; a region
    whose hash repeats an earlier one is left out, so the list is what `decode_hashes` stores, in order."""
    out, seen = [], set()
    boxes = regions(grey)
    for box, value in zip(boxes, box_hashes(grey, boxes), strict=True):
        if value not in seen:
            seen.add(value)
            out.append((box, value))
    return out


def decode_hashes(data: bytes) -> list[int]:
    """The pHashes of a figure's regions (whole first); raises what PIL raises when it does not decode."""
    return [value for _, value in stored_regions(np.asarray(_grey(data)))]


def decode_hash(data: bytes) -> int:
    """The 64-bit pHash of the whole figure; raises what PIL raises when it does not decode (it reads every byte)."""
    return _phash(_grey(data))


def figure_hashes(data: bytes | None) -> list[int] | None:
    """`decode_hashes`, or None when the figure is missing or does not decode."""
    if not data:
        return None
    try:
        return decode_hashes(data)
    except Exception:  # PIL raises many types for broken files; a broken figure simply has no hash
        return None


def figure_hash(data: bytes | None) -> int | None:
    """The whole figure's pHash (the first of `figure_hashes`), or None."""
    hashes = figure_hashes(data)
    return hashes[0] if hashes else None


def to_hex(value: int | list[int] | None) -> str | None:
    """Hashes as stored in caches and columns: 16 hex digits each, comma-separated, whole figure first (None
    stays None)."""
    if value is None:
        return None
    return ",".join(f"{v:016x}" for v in ([value] if isinstance(value, int) else value))


def from_hex(text: str | None) -> list[int] | None:
    return None if text is None else [int(part, 16) for part in text.split(",")]


def hash_version() -> str:
    """What the hashes depend on, for the build caches: imagehash's version, the draft size and the regions."""
    from importlib.metadata import version

    return f"imagehash-{version('imagehash')}-draft{DRAFT_SIZE}-regions{REGIONS_VERSION}"


def _framing_box(width: int, height: int, kind: str, fraction: float, trimmed) -> tuple[int, int, int, int]:
    """A framing as a box of the (oriented) figure; a padded framing reaches outside it."""
    dx, dy = int(width * fraction), int(height * fraction)
    if kind == "whole":
        return 0, 0, width, height
    if kind == "crop":
        return dx, dy, width - dx, height - dy
    if kind.startswith("trim"):
        left, top, right, bottom = trimmed
        if kind == "trim":
            return trimmed
        tx, ty = int((right - left) * fraction), int((bottom - top) * fraction)
        return left + tx, top + ty, right - tx, bottom - ty
    if kind.startswith("pad"):
        return -dx, -dy, width + dx, height + dy
    if kind == "corner-tl":
        return dx, dy, width, height
    return 0, 0, width - dx, height - dy  # corner-br


def _crop_grid(trimmed) -> list[tuple[int, int, int, int]]:
    """Crops of a box (the figure, its trimmed content) by up to 30% a side: one side, two adjacent sides, two opposite sides, all four
    (equal amounts), in steps of 3%: pHash keeps a copy within distance 10 of a framing 1.5% off (docs/audit.md)."""
    left, top, right, bottom = trimmed
    width, height = right - left, bottom - top
    boxes = []
    for amount in CROP_STEPS:
        dx, dy = int(width * amount), int(height * amount)
        for cut in CROP_SIDES:
            boxes.append((left + dx * cut[0], top + dy * cut[1], right - dx * cut[2], bottom - dy * cut[3]))
    return boxes


def _uneven_crops(width: int, height: int) -> list[tuple[int, int, int, int]]:
    """Crops of the figure by a different amount on each side, up to 30%: the four cuts on a body-centred lattice
    of step UNEVEN_STEP (a grid and the same grid shifted by half a step on every side). A crop is rarely more than
    ~2-4% of a side off one of them, which pHash mostly keeps within distance 10: on 60 random uneven crops of
    generated figures, 58 came within 10 (881 crops), against 55 for the plain grid of 7.5% (625 crops), 59 for
    one of 6% (1,296) and 33 for the one- and two-sided crops alone."""
    steps = np.arange(0, UNEVEN_MAX + 1e-9, UNEVEN_STEP)
    lattice = [*product(steps, repeat=4), *product(steps[:-1] + UNEVEN_STEP / 2, repeat=4)]
    return [
        (int(width * left), int(height * top), width - int(width * right), height - int(height * bottom))
        for left, top, right, bottom in lattice
        if any((left, top, right, bottom))
    ]


def _padded_hash(grey: np.ndarray, box, shade: int) -> int:
    from PIL import Image

    left, top, right, bottom = box
    height, width = grey.shape
    canvas = np.full((bottom - top, right - left), shade, dtype=np.uint8)
    canvas[-top : -top + height, -left : -left + width] = grey
    return _phash(Image.fromarray(canvas))


def query_variants(grey: np.ndarray, uneven: bool = True) -> list[tuple[int, int, tuple[int, int, int, int]]]:
    """(pHash, orientation, box in the oriented figure) of each way an evaluation figure is looked for: the 12
    framings in each of the 8 orientations (flips and right-angle turns), then, as it is, crops of up to 30% a side
    (of the whole figure and of its trimmed content; with `uneven`, also every side by its own amount) and each
    panel. Distinct hashes only (the first variant that gives a hash is kept)."""
    out, seen = [], set()

    def add(value: int, k: int, box) -> None:
        if value not in seen:
            seen.add(value)
            out.append((value, k, tuple(int(v) for v in box)))

    for k in range(8):
        oriented = orient(grey, k)
        height, width = oriented.shape
        trimmed = trim_box(oriented)
        boxes = []
        for kind, fraction in FRAMINGS:
            box = _framing_box(width, height, kind, fraction, trimmed)
            if kind.startswith("pad"):
                add(_padded_hash(oriented, box, 255 if kind == "pad-white" else 0), k, box)
            else:
                boxes.append(box)
        if k == 0:
            bases = [(0, 0, width, height)] + ([trimmed] if trimmed != (0, 0, width, height) else [])
            boxes += (
                [b for base in bases for b in _crop_grid(base)]
                + (_uneven_crops(width, height) if uneven else [])
                + panels(oriented, untrimmed=True)
            )
        for box, value in zip(boxes, box_hashes(oriented, boxes), strict=True):
            add(value, k, box)
    return out


def query_hashes(data: bytes | None) -> list[int]:
    """The distinct pHashes of an evaluation figure's variants (empty when it does not decode)."""
    if not data:
        return []
    try:
        return [value for value, _, _ in query_variants(np.asarray(_grey(data)))]
    except Exception:  # as in figure_hash
        return []


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


BAD_CACHE_HINT = "give another --cache or delete this one"


class HashCache:
    """sha256 -> pHashes (hex, or null for a figure that does not decode), appended as JSON lines. An entry written
    by another hashing version (`hash_version`: other regions, another imagehash) is ignored and hashed again."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.version = hash_version()
        self.hashes: dict[str, list[int] | None] = {}
        if self.path.exists():
            from vital_hub.io import read_text

            for number, line in enumerate(read_text(self.path).splitlines(), start=1):
                try:
                    entry = json.loads(line)
                except (json.JSONDecodeError, RecursionError):  # a torn last line of an interrupted run: hashed again
                    continue
                if not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str):
                    raise ValueError(
                        f"{self.path}: line {number} is not a hash cache entry ({{sha256, phash}}); {BAD_CACHE_HINT}"
                    )
                if entry.get("version") != self.version:  # another hashing version's entry: hashed again
                    continue
                try:
                    self.hashes[entry["sha256"]] = from_hex(entry.get("phash"))
                except (TypeError, ValueError):
                    raise ValueError(
                        f"{self.path}: line {number}: phash is not hexadecimal; {BAD_CACHE_HINT}"
                    ) from None
        self.added = 0

    def __contains__(self, sha256: str) -> bool:
        return sha256 in self.hashes

    def get(self, sha256: str) -> list[int] | None:
        return self.hashes.get(sha256)

    def add_many(self, entries: Iterable[tuple[str, list[int] | None]]) -> None:
        lines = []
        for sha256, value in entries:
            if sha256 in self.hashes:
                continue
            self.hashes[sha256] = value
            lines.append(json.dumps({"sha256": sha256, "phash": to_hex(value), "version": self.version}))
        if lines:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as handle:
                handle.write("\n".join(lines) + "\n")
            self.added += len(lines)


class Hasher:
    """Hashes figures, in worker processes (which die with this process, however it dies) when workers > 1;
    `hash_batch` goes through a cache, `hash_all` does not."""

    def __init__(self, cache: HashCache | None, workers: int = 1):
        self.cache = cache
        self.pool = None
        if workers > 1:
            from vital_hub.workers import die_with_parent

            self.pool = ProcessPoolExecutor(max_workers=workers, initializer=die_with_parent, initargs=(os.getpid(),))
        self.workers = workers

    def hash_all(self, datas: list[bytes]) -> list[list[int] | None]:
        """figure_hashes of every figure, in order."""
        if self.pool is None:
            return [figure_hashes(data) for data in datas]
        return list(self.pool.map(figure_hashes, datas, chunksize=max(1, len(datas) // (4 * self.workers))))

    def hash_batch(self, figures: list[bytes | None]) -> list[tuple[str | None, list[int] | None]]:
        """(sha256, pHash) per figure through the cache; None, None for a missing one."""
        digests = [sha256_hex(data) if data else None for data in figures]
        todo = {
            digest: data for digest, data in zip(digests, figures, strict=True) if digest and digest not in self.cache
        }
        if todo:
            self.cache.add_many(zip(todo, self.hash_all(list(todo.values())), strict=True))
        return [(digest, None if digest is None else self.cache.get(digest)) for digest in digests]

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(cancel_futures=True)


def default_workers() -> int:
    return max(1, min(os.cpu_count() or 1, 8))
