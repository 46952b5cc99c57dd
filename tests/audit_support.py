"""Planted contamination for the audit tests and benchmark: known transformations of evaluation figures."""

from __future__ import annotations

import io
import random

from PIL import Image, ImageDraw, ImageFilter


def jpeg(image: Image.Image, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def _crop(image, fraction):
    width, height = image.size
    dx, dy = int(width * fraction), int(height * fraction)
    return image.crop((dx, dy, width - dx, height - dy))


def _border(image, fraction, colour):
    width, height = image.size
    dx, dy = int(width * fraction), int(height * fraction)
    framed = Image.new("RGB", (width + 2 * dx, height + 2 * dy), colour)
    framed.paste(image, (dx, dy))
    return framed


def _arrow(image):
    """A filled yellow arrow over ~12% of the figure, as authors burn in to point at a finding."""
    marked = image.copy()
    width, height = marked.size
    size, x, y = min(width, height) * 0.12, width * 0.55, height * 0.45
    points = [(0, 0), (0.5, 0.25), (0.3, 0.3), (1, 0.9), (0.85, 1), (0.25, 0.45), (0.2, 0.6)]
    ImageDraw.Draw(marked).polygon([(x + a * size, y + b * size) for a, b in points], fill=(255, 255, 0))
    return marked


def _recompressed(image):
    return Image.open(io.BytesIO(jpeg(image, 35))).convert("RGB")


TRANSFORMS = {
    "resize-50%": lambda im: im.resize((im.width // 2, im.height // 2), Image.Resampling.BILINEAR),
    "jpeg-q35": _recompressed,
    "crop-3%": lambda im: _crop(im, 0.03),
    "crop-corner-4%": lambda im: im.crop((int(im.width * 0.04), int(im.height * 0.04), im.width, im.height)),
    "border-white-5%": lambda im: _border(im, 0.05, "white"),
    "border-black-4%": lambda im: _border(im, 0.04, "black"),
    "greyscale": lambda im: im.convert("L").convert("RGB"),
    "arrow": _arrow,
}


def generated_figure(seed: int, size: tuple[int, int] = (480, 360)) -> Image.Image:
    """A figure-like picture: blurred blobs and lines on a plain ground, different for every seed."""
    rng = random.Random(seed)
    dark = rng.random() < 0.5
    image = Image.new("RGB", size, (10, 10, 10) if dark else (236, 226, 230))
    draw = ImageDraw.Draw(image)
    for _ in range(rng.randint(8, 16)):
        x, y = rng.randrange(size[0]), rng.randrange(size[1])
        r = rng.randint(15, 90)
        tone = tuple(rng.randint(40, 230) for _ in range(3))
        draw.ellipse((x - r, y - r * rng.uniform(0.5, 1.5), x + r, y + r), fill=tone)
    for _ in range(rng.randint(2, 6)):
        draw.line(
            [(rng.randrange(size[0]), rng.randrange(size[1])) for _ in range(3)],
            fill=tuple(rng.randint(0, 255) for _ in range(3)),
            width=rng.randint(2, 8),
        )
    return image.filter(ImageFilter.GaussianBlur(3))
