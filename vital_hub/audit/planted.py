"""A planted contamination set the project generates itself: PMC-like figures (charts drawn from templates,
microscopy-like textures, radiograph-like gradients with labels, gross-specimen-like photos, compound figures with
gutters), every transformation of an evaluation figure that the audit claims to find, and hard negatives it must
not flag (the same chart template with other data, a sibling panel of one compound figure, another figure of the
same modality).

`transformations()` maps a name to (group, function of (figure, rng, other figures) -> training figure).
"""

from __future__ import annotations

import io
import math
import random
from collections.abc import Callable

from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageFont, ImageOps

KINDS = ("chart", "microscopy", "radiograph", "photo", "compound")
WORDS = "lesion mass signal margin nodule tissue cortex vessel stain region lobe duct cyst axis week dose".split()


def font(size: int) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=max(8, size))


def jpeg(image: Image.Image, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def _size(rng: random.Random) -> tuple[int, int]:
    width = rng.randint(360, 560)
    return width, int(width * rng.uniform(0.6, 1.1))


# ---- figure kinds --------------------------------------------------------------------------------------------


def chart(template: int, data: int, size: tuple[int, int] | None = None) -> Image.Image:
    """A bar, line or scatter chart: `template` fixes style, axes, title and labels; `data` the values drawn."""
    style = random.Random(template)
    values = random.Random(data * 7919 + template)
    size = size or _size(style)
    width, height = size
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    left, top, right, bottom = int(width * 0.14), int(height * 0.12), int(width * 0.95), int(height * 0.82)
    draw.line([(left, top), (left, bottom), (right, bottom)], fill="black", width=2)
    draw.text((left, 4), " ".join(style.choice(WORDS) for _ in range(3)).title(), fill="black", font=font(14))
    for k in range(5):
        y = bottom - (bottom - top) * k / 4
        draw.line([(left - 5, y), (left, y)], fill="black")
        draw.text((4, y - 6), f"{k * style.choice((5, 10, 20, 25))}", fill="black", font=font(11))
    kind = style.choice(("bar", "line", "scatter"))
    colours = [tuple(style.randint(20, 220) for _ in range(3)) for _ in range(3)]
    n = style.randint(4, 9)
    step = (right - left) / (n + 1)
    for k in range(n):
        draw.text((left + step * (k + 0.7), bottom + 6), style.choice(WORDS)[:4], fill="black", font=font(10))
    for colour in colours[: 1 if kind == "bar" else style.randint(1, 3)]:
        points = [(left + step * (k + 1), bottom - (bottom - top) * values.uniform(0.08, 0.95)) for k in range(n)]
        if kind == "bar":
            for x, y in points:
                draw.rectangle((x - step * 0.3, y, x + step * 0.3, bottom - 1), fill=colour, outline="black")
        elif kind == "line":
            draw.line(points, fill=colour, width=3)
            for x, y in points:
                draw.ellipse((x - 4, y - 4, x + 4, y + 4), fill=colour)
        else:
            for _ in range(n * 6):
                x, y = values.uniform(left + 5, right - 5), values.uniform(top, bottom - 5)
                draw.ellipse((x - 3, y - 3, x + 3, y + 3), fill=colour)
    return image


def microscopy(seed: int, size: tuple[int, int] | None = None) -> Image.Image:
    """An H&E-like field: pink stroma, purple nuclei, lumens, grain."""
    rng = random.Random(seed)
    size = size or _size(rng)
    image = Image.new("RGB", size, (rng.randint(215, 240), rng.randint(160, 190), rng.randint(190, 215)))
    draw = ImageDraw.Draw(image)
    for _ in range(rng.randint(2, 5)):
        x, y, r = rng.randrange(size[0]), rng.randrange(size[1]), rng.randint(20, 70)
        draw.ellipse((x - r, y - r * rng.uniform(0.5, 1), x + r, y + r), fill=(250, 240, 245))
    for _ in range(rng.randint(150, 320)):
        x, y, r = rng.randrange(size[0]), rng.randrange(size[1]), rng.randint(3, 8)
        shade = (rng.randint(70, 130), rng.randint(30, 70), rng.randint(120, 170))
        draw.ellipse((x - r, y - r * rng.uniform(0.6, 1.0), x + r, y + r), fill=shade)
    image = image.filter(ImageFilter.GaussianBlur(1.2))
    return _grain(image, rng, 10)


def radiograph(seed: int, size: tuple[int, int] | None = None) -> Image.Image:
    """A radiograph-like picture: dark ground, a bright body with a gradient, bone-like bars, side labels."""
    rng = random.Random(seed)
    size = size or _size(rng)
    width, height = size
    grey = Image.new("L", size, rng.randint(5, 30))
    draw = ImageDraw.Draw(grey)
    cx, cy = width * rng.uniform(0.4, 0.6), height * rng.uniform(0.45, 0.55)
    for k in range(12, 0, -1):  # a body brighter towards its middle
        rx, ry = width * 0.42 * k / 12, height * 0.45 * k / 12
        draw.ellipse((cx - rx, cy - ry, cx + rx, cy + ry), fill=int(40 + 110 * (1 - k / 12) + rng.randint(0, 20)))
    for _ in range(rng.randint(3, 7)):
        x0, y0 = rng.uniform(0.15, 0.85) * width, rng.uniform(0.1, 0.9) * height
        angle, length = rng.uniform(0, math.pi), rng.uniform(0.15, 0.4) * width
        x1, y1 = x0 + length * math.cos(angle), y0 + length * math.sin(angle)
        draw.line([(x0, y0), (x1, y1)], fill=rng.randint(190, 250), width=rng.randint(6, 16))
    for _ in range(rng.randint(1, 3)):
        x, y, r = rng.uniform(0.25, 0.75) * width, rng.uniform(0.25, 0.75) * height, rng.randint(8, 30)
        draw.ellipse((x - r, y - r, x + r, y + r), fill=rng.randint(120, 240))
    grey = grey.filter(ImageFilter.GaussianBlur(2.5))
    draw = ImageDraw.Draw(grey)
    draw.text((8, 8), rng.choice(("L", "R", "AP", "PA")), fill=255, font=font(22))
    draw.text((width - 60, height - 24), f"{rng.randint(1, 99)} mm", fill=230, font=font(12))
    return _grain(grey.convert("RGB"), rng, 6)


def photo(seed: int, size: tuple[int, int] | None = None) -> Image.Image:
    """A gross-specimen-like photo: a reddish irregular shape on a cloth, a ruler."""
    rng = random.Random(seed)
    size = size or _size(rng)
    width, height = size
    image = Image.new("RGB", size, tuple(rng.randint(20, 90) for _ in range(3)))
    draw = ImageDraw.Draw(image)
    cx, cy = width * rng.uniform(0.35, 0.65), height * rng.uniform(0.35, 0.6)
    points = []
    for k in range(14):
        angle = 2 * math.pi * k / 14
        r = min(width, height) * rng.uniform(0.2, 0.38)
        points.append((cx + r * math.cos(angle), cy + r * math.sin(angle)))
    draw.polygon(points, fill=(rng.randint(150, 200), rng.randint(50, 90), rng.randint(50, 80)))
    for _ in range(rng.randint(5, 12)):
        x, y, r = cx + rng.uniform(-0.2, 0.2) * width, cy + rng.uniform(-0.2, 0.2) * height, rng.randint(5, 25)
        draw.ellipse((x - r, y - r, x + r, y + r), fill=(rng.randint(180, 250), rng.randint(140, 200), 120))
    ruler = int(height * 0.9)
    draw.rectangle((10, ruler, width * 0.6, ruler + 14), fill=(235, 235, 220))
    for k in range(int(width * 0.6 / 12)):
        draw.line([(10 + 12 * k, ruler), (10 + 12 * k, ruler + (8 if k % 5 else 13))], fill="black")
    return _grain(image.filter(ImageFilter.GaussianBlur(1.5)), rng, 8)


def compound(panels: list[Image.Image], columns: int, gutter: int = 10, letters: bool = True) -> Image.Image:
    """Panels on a grid with white gutters, each labelled A, B, ... in its corner."""
    rows = math.ceil(len(panels) / columns)
    cell_w = max(p.width for p in panels)
    cell_h = max(p.height for p in panels)
    sheet = Image.new("RGB", (columns * cell_w + (columns + 1) * gutter, rows * cell_h + (rows + 1) * gutter), "white")
    draw = ImageDraw.Draw(sheet)
    sheet.panel_boxes = []
    for k, panel in enumerate(panels):
        x = gutter + (k % columns) * (cell_w + gutter)
        y = gutter + (k // columns) * (cell_h + gutter)
        sheet.paste(panel, (x, y))
        sheet.panel_boxes.append((x, y, x + panel.width, y + panel.height))
        if letters:
            draw.text((x + 4, y + 2), "ABCDEFGHI"[k], fill="white", stroke_width=2, stroke_fill="black", font=font(18))
    return sheet


def figure(kind: str, seed: int) -> Image.Image:
    """One generated figure of a kind; a compound figure holds 2-4 panels of the other kinds."""
    if kind == "chart":
        return chart(seed, seed)
    if kind == "compound":
        rng = random.Random(seed)
        count = rng.choice((2, 3, 4))
        size = (rng.randint(220, 300), rng.randint(180, 240))
        panels = [figure(rng.choice(KINDS[:4]), seed * 10 + k) for k in range(count)]
        return compound([p.resize(size) for p in panels], rng.choice((count, 2)) if count == 4 else count)
    return {"microscopy": microscopy, "radiograph": radiograph, "photo": photo}[kind](seed)


def _grain(image: Image.Image, rng: random.Random, amount: int) -> Image.Image:
    noise = Image.effect_noise(image.size, amount).convert("RGB")
    return Image.blend(image, noise, 0.08) if amount else image


# ---- transformations -----------------------------------------------------------------------------------------


def _crop(image, left=0.0, top=0.0, right=0.0, bottom=0.0):
    w, h = image.size
    return image.crop((int(w * left), int(h * top), w - int(w * right), h - int(h * bottom)))


def _border(image, fraction, colour):
    return ImageOps.expand(image, (int(image.width * fraction), int(image.height * fraction)), fill=colour)


def _caption(image, rng):
    strip = int(image.height * rng.uniform(0.15, 0.25))
    out = Image.new("RGB", (image.width, image.height + strip), "white")
    out.paste(image, (0, 0))
    draw = ImageDraw.Draw(out)
    for line in range(max(1, strip // 18)):
        text = f"Figure {rng.randint(1, 9)}. " if line == 0 else ""
        draw.text(
            (6, image.height + 4 + 16 * line),
            text + " ".join(rng.choice(WORDS) for _ in range(8)),
            fill="black",
            font=font(12),
        )
    return out


def _label(image, rng, text=None, size=0.08):
    out = image.copy()
    draw = ImageDraw.Draw(out)
    text = text or rng.choice(("A", "B", "*", "arrow", "LAD"))
    draw.text(
        (image.width * 0.6, image.height * 0.15),
        text,
        fill="yellow",
        stroke_width=2,
        stroke_fill="black",
        font=font(int(image.height * size)),
    )
    return out


def _arrow(image, rng, others=None):
    out = image.copy()
    w, h = image.size
    size, x, y = min(w, h) * 0.12, w * 0.55, h * 0.45
    shape = [(0, 0), (0.5, 0.25), (0.3, 0.3), (1, 0.9), (0.85, 1), (0.25, 0.45), (0.2, 0.6)]
    ImageDraw.Draw(out).polygon([(x + a * size, y + b * size) for a, b in shape], fill=(255, 255, 0))
    return out


def _watermark(image, rng, others=None):
    layer = Image.new("RGBA", image.size, (0, 0, 0, 0))
    ImageDraw.Draw(layer).text(
        (image.width * 0.1, image.height * 0.45),
        "PREVIEW  COPY",
        fill=(255, 255, 255, 90),
        font=font(int(image.height * 0.09)),
    )
    return Image.alpha_composite(image.convert("RGBA"), layer).convert("RGB")


def _rerender(image, dpi):
    """As if the PDF page were rendered again at `dpi` (figures embedded at 150 dpi)."""
    scale = dpi / 150
    small = image.resize((max(8, int(image.width * scale)), max(8, int(image.height * scale))), Image.Resampling.BOX)
    return small.resize(image.size, Image.Resampling.BICUBIC) if dpi < 150 else small


def _screenshot(image, rng, others=None):
    """A screen grab: resampled at an odd scale, a window bar with text above, grey margins, PNG then JPEG."""
    scale = rng.uniform(0.7, 1.3)
    shown = image.resize((int(image.width * scale), int(image.height * scale)), Image.Resampling.BILINEAR)
    bar, margin = int(shown.height * 0.08) + 8, int(shown.width * 0.04)
    screen = Image.new("RGB", (shown.width + 2 * margin, shown.height + bar + 2 * margin), (228, 228, 232))
    draw = ImageDraw.Draw(screen)
    draw.rectangle((0, 0, screen.width, bar), fill=(60, 64, 72))
    draw.text((10, 4), "viewer - figure.png  100%", fill="white", font=font(12))
    screen.paste(shown, (margin, bar + margin))
    return Image.open(io.BytesIO(jpeg(screen, 80))).convert("RGB")


def _composite(image, others, columns, count, position):
    size = image.size
    panels = [o.resize(size) for o in others[: count - 1]]
    panels.insert(position, image)
    return compound(panels, columns)


def _superfigure(image, others):
    """The figure as one cell of a larger, uneven page of panels (a 2x3 grid, one cell two rows high)."""
    w, h = image.size
    gutter = 12
    page = Image.new("RGB", (3 * w + 4 * gutter, 2 * h + 3 * gutter), "white")
    page.paste(others[0].resize((w, 2 * h + gutter)), (gutter, gutter))
    cells = [(1, 0), (2, 0), (1, 1), (2, 1)]
    for k, (cx, cy) in enumerate(cells):
        panel = image if k == 2 else others[1 + k % (len(others) - 1)].resize((w, h))
        page.paste(panel, (gutter + cx * (w + gutter), gutter + cy * (h + gutter)))
    return page


def _subpanel(image, rng):
    """One panel of a compound evaluation figure cut out: the panel whose box `panel_boxes` knows."""
    boxes = getattr(image, "panel_boxes", None)
    if not boxes:
        return None
    return image.crop(rng.choice(boxes))


Transform = Callable[[Image.Image, random.Random, list[Image.Image]], Image.Image | None]


def transformations() -> dict[str, tuple[str, Transform]]:
    def recompress(q):
        return lambda im, rng, o: Image.open(io.BytesIO(jpeg(im, q))).convert("RGB")

    mild = {
        "identical": lambda im, rng, o: im,
        "jpeg-q30": recompress(30),
        "jpeg-q60": recompress(60),
        "resize-0.5x": lambda im, rng, o: im.resize((im.width // 2, im.height // 2), Image.Resampling.BILINEAR),
        "resize-2x": lambda im, rng, o: im.resize((im.width * 2, im.height * 2), Image.Resampling.BICUBIC),
        "greyscale": lambda im, rng, o: im.convert("L").convert("RGB"),
        "brightness": lambda im, rng, o: ImageEnhance.Brightness(im).enhance(1.25),
        "contrast": lambda im, rng, o: ImageEnhance.Contrast(im).enhance(0.7),
        "gamma": lambda im, rng, o: im.point(lambda v: int(255 * (v / 255) ** 0.7)),
        "blur": lambda im, rng, o: im.filter(ImageFilter.GaussianBlur(1.5)),
        "watermark": _watermark,
        "text-label": lambda im, rng, o: _label(im, rng),
        "arrow": _arrow,
        "rerender-72dpi": lambda im, rng, o: _rerender(im, 72),
        "rerender-200dpi": lambda im, rng, o: _rerender(im, 200),
        "crop-5%": lambda im, rng, o: _crop(im, 0.05, 0.05, 0.05, 0.05),
        "crop-5%-two-sides": lambda im, rng, o: _crop(im, left=0.05, bottom=0.05),
        "border-white-5%": lambda im, rng, o: _border(im, 0.05, "white"),
        "border-black-5%": lambda im, rng, o: _border(im, 0.05, "black"),
    }
    hard = {
        "crop-15%-one-side": lambda im, rng, o: _crop(im, **{rng.choice(("left", "top", "right", "bottom")): 0.15}),
        "crop-15%-two-sides": lambda im, rng, o: _crop(im, top=0.15, right=0.15),
        "crop-15%-four-sides": lambda im, rng, o: _crop(im, 0.15, 0.15, 0.15, 0.15),
        "crop-30%-one-side": lambda im, rng, o: _crop(im, **{rng.choice(("left", "top", "right", "bottom")): 0.3}),
        "crop-30%-two-sides": lambda im, rng, o: _crop(im, left=0.3, bottom=0.3),
        "crop-uneven": lambda im, rng, o: _crop(im, *(rng.uniform(0, 0.3) for _ in range(4))),
        "border-white-15%": lambda im, rng, o: _border(im, 0.15, "white"),
        "border-black-15%": lambda im, rng, o: _border(im, 0.15, "black"),
        "caption-strip": lambda im, rng, o: _caption(im, rng),
        "screenshot": _screenshot,
        "flip-horizontal": lambda im, rng, o: ImageOps.mirror(im),
        "flip-vertical": lambda im, rng, o: ImageOps.flip(im),
        "rotate-90": lambda im, rng, o: im.transpose(Image.Transpose.ROTATE_90),
        "rotate-180": lambda im, rng, o: im.transpose(Image.Transpose.ROTATE_180),
        "rotate-270": lambda im, rng, o: im.transpose(Image.Transpose.ROTATE_270),
        "panel-of-2x2": lambda im, rng, o: _composite(im, o, 2, 4, rng.randrange(4)),
        "panel-of-1x3": lambda im, rng, o: _composite(im, o, 3, 3, rng.randrange(3)),
        "in-superfigure": lambda im, rng, o: _superfigure(im, o),
        "sub-panel-cut-out": lambda im, rng, o: _subpanel(im, rng),
    }
    return {**{k: ("mild", v) for k, v in mild.items()}, **{k: ("hard", v) for k, v in hard.items()}}


def hard_negatives(seed: int) -> list[tuple[str, Image.Image, Image.Image]]:
    """(kind, evaluation figure, unrelated training figure) pairs that look alike and must not be flagged."""
    rng = random.Random(seed)
    kind = rng.choice(("microscopy", "radiograph", "photo"))
    field = {"microscopy": microscopy, "radiograph": radiograph, "photo": photo}[kind](seed, (900, 380))
    return [
        ("template-chart", chart(seed, 1), chart(seed, 2)),
        ("sibling-panel", field.crop((0, 0, 440, 380)), field.crop((460, 0, 900, 380))),
        ("same-modality", figure(kind, seed), figure(kind, seed + 100_000)),
        ("same-layout-compound", _layout(seed), _layout(seed + 100_000)),
    ]


def _layout(seed: int) -> Image.Image:
    """A 2x2 compound figure of fixed kinds and size: two of them share their layout and nothing else."""
    kinds = ("microscopy", "radiograph", "microscopy", "photo")
    return compound([figure(kind, seed * 10 + k).resize((240, 200)) for k, kind in enumerate(kinds)], 2)
