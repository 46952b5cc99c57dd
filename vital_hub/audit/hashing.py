"""Perceptual hashes of figures: one 64-bit pHash per training figure, a few per evaluation figure.

The hash is imagehash's DCT pHash of the greyscale figure, decoded in JPEG draft mode (the decoder scales by
1/2..1/8 while it decodes, so a 1,000 px figure costs a 125 px decode; pHash looks at 32x32 anyway).
A global hash survives resizing, recompression, greyscale and small marks, but not a crop or an added border:
those shift the frame. Rather than hash every training figure many times, each evaluation figure is hashed in
a few framings (centred crops, border trimmed, padded, corner crops), and a training figure matches when any
framing is within the threshold. The threshold and the framings were chosen on the transformations measured in
`tests/test_audit.py` (docs/audit.md has the numbers).

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
from pathlib import Path

import numpy as np

# Draft decoding keeps at least this many pixels a side (a 1,000 px JPEG decodes at 1/4, in ~2.5 ms; pHash then
# takes ~0.3 ms). At 1/8 the 8x8-block averages move with a border and a planted copy of a real qa50 figure was missed.
DRAFT_SIZE = 128
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


def _grey(data: bytes):
    from PIL import Image

    image = Image.open(io.BytesIO(data))
    image.draft("L", (DRAFT_SIZE, DRAFT_SIZE))
    return image.convert("L")


def _phash(image) -> int:
    import imagehash

    bits = imagehash.phash(image).hash.flatten()
    return int.from_bytes(np.packbits(bits).tobytes(), "big")


def decode_hash(data: bytes) -> int:
    """The 64-bit pHash of a figure; raises what PIL raises when it does not decode (it reads every byte)."""
    return _phash(_grey(data))


def figure_hash(data: bytes | None) -> int | None:
    """The 64-bit pHash of a figure, or None when it is missing or does not decode."""
    if not data:
        return None
    try:
        return decode_hash(data)
    except Exception:  # PIL raises many types for broken files; a broken figure simply has no hash
        return None


def to_hex(value: int | None) -> str | None:
    """A pHash as stored in caches and columns: 16 hex digits (None stays None)."""
    return None if value is None else f"{value:016x}"


def from_hex(text: str | None) -> int | None:
    return None if text is None else int(text, 16)


def hash_version() -> str:
    """What the hashes depend on, for the build caches: imagehash's version and the draft size."""
    from importlib.metadata import version

    return f"imagehash-{version('imagehash')}-draft{DRAFT_SIZE}"


def _trim(image):
    """The figure without a uniform margin of its top-left corner's shade (kept whole if that leaves < 25%)."""
    from PIL import Image, ImageChops

    background = Image.new("L", image.size, image.getpixel((0, 0)))
    box = ImageChops.difference(image, background).point(lambda v: 255 if v > 24 else 0).getbbox()
    if box and (box[2] - box[0]) * (box[3] - box[1]) > 0.25 * image.size[0] * image.size[1]:
        return image.crop(box)
    return image


def _framed(image, kind: str, fraction: float):
    from PIL import Image

    width, height = image.size
    dx, dy = int(width * fraction), int(height * fraction)
    if kind == "whole":
        return image
    if kind == "crop":
        return image.crop((dx, dy, width - dx, height - dy))
    if kind.startswith("trim"):
        trimmed = _trim(image)
        return _framed(trimmed, "crop", fraction) if kind == "trim-crop" else trimmed
    if kind.startswith("pad"):
        padded = Image.new("L", (width + 2 * dx, height + 2 * dy), 255 if kind == "pad-white" else 0)
        padded.paste(image, (dx, dy))
        return padded
    if kind == "corner-tl":
        return image.crop((dx, dy, width, height))
    return image.crop((0, 0, width - dx, height - dy))  # corner-br


def query_hashes(data: bytes | None) -> list[int]:
    """The distinct pHashes of an evaluation figure's framings (empty when it does not decode)."""
    if not data:
        return []
    try:
        image = _grey(data)
        return sorted({_phash(_framed(image, kind, fraction)) for kind, fraction in FRAMINGS})
    except Exception:  # as in figure_hash
        return []


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


BAD_CACHE_HINT = "give another --cache or delete this one"


class HashCache:
    """sha256 -> pHash (hex, or null for a figure that does not decode), appended as JSON lines."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.hashes: dict[str, int | None] = {}
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
                try:
                    self.hashes[entry["sha256"]] = from_hex(entry.get("phash"))
                except (TypeError, ValueError):
                    raise ValueError(
                        f"{self.path}: line {number}: phash is not hexadecimal; {BAD_CACHE_HINT}"
                    ) from None
        self.added = 0

    def __contains__(self, sha256: str) -> bool:
        return sha256 in self.hashes

    def get(self, sha256: str) -> int | None:
        return self.hashes.get(sha256)

    def add_many(self, entries: Iterable[tuple[str, int | None]]) -> None:
        lines = []
        for sha256, value in entries:
            if sha256 in self.hashes:
                continue
            self.hashes[sha256] = value
            lines.append(json.dumps({"sha256": sha256, "phash": to_hex(value)}))
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

    def hash_all(self, datas: list[bytes]) -> list[int | None]:
        """figure_hash of every figure, in order."""
        if self.pool is None:
            return [figure_hash(data) for data in datas]
        return list(self.pool.map(figure_hash, datas, chunksize=max(1, len(datas) // (4 * self.workers))))

    def hash_batch(self, figures: list[bytes | None]) -> list[tuple[str | None, int | None]]:
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
