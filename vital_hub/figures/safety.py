"""Treat every download as hostile: read only wanted tar members, in one streamed pass, and keep only images that
decode completely within byte and pixel caps.

Nothing here writes to disk by a name taken from an archive: kept images are written under `<pair_id>.jpg` by
the caller, so a `../` member could not escape `--out` even if it were accepted; it is rejected anyway, with its
reason recorded, like links, devices, oversized members and decompression bombs.
"""

from __future__ import annotations

import gzip
import io
import posixpath
import tarfile
import warnings
from dataclasses import dataclass

from PIL import Image

from vital_hub.io import describe_error

# Formats a PMC figure can be in. Restricting Pillow to them keeps plugins such as EPS (which runs Ghostscript)
# away from downloaded bytes.
IMAGE_FORMATS = ("JPEG", "PNG", "GIF", "TIFF", "BMP", "WEBP")
JPEG_QUALITY = 95
TAR_HEADER_BUDGET = 1 << 20  # bytes a header (pax, GNU long name) may take; real ones are a few hundred
TAR_BLOCK = 512
MiB = 1 << 20


class Rejected(Exception):
    """Bytes that will not be kept, with the reason recorded in the index."""


@dataclass(frozen=True)
class Limits:
    """Caps on what a download may cost: bytes fetched, bytes unpacked and pixels decoded."""

    max_image_bytes: int = 64 * MiB
    max_pixels: int = 120_000_000
    max_archive_bytes: int = 2048 * MiB
    max_unpacked_bytes: int = 4096 * MiB
    # Wanted members are held in memory until the pass ends: many of them in one hostile archive must not add up.
    max_held_bytes: int = 512 * MiB


@dataclass(frozen=True)
class VerifiedImage:
    """A fully decoded image and the JPEG bytes to keep (the original bytes when it already was a JPEG)."""

    jpeg: bytes
    format: str
    width: int
    height: int

    @property
    def converted(self) -> bool:
        return self.format != "JPEG"


class PixelLimitError(Image.DecompressionBombError):
    """An image whose header declares more pixels than PIL's `Image.MAX_IMAGE_PIXELS`."""


def open_within_pixel_limit(data: bytes) -> Image.Image:
    """`Image.open` of encoded bytes (the header only), refusing an image over PIL's `Image.MAX_IMAGE_PIXELS` with
    `PixelLimitError`. PIL itself raises only over twice that limit; between one and two times it warns and would
    decode it. Callers that catch `Image.DecompressionBombError` catch this too."""
    with warnings.catch_warnings():  # PIL's warning for that range: the refusal below takes its place
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        image = Image.open(io.BytesIO(data))
    width, height = image.size
    limit = Image.MAX_IMAGE_PIXELS
    if limit and width * height > limit:
        image.close()
        raise PixelLimitError(f"image too large to decode: {width}x{height} px, over {limit:,} px")
    return image


def verify_image(data: bytes, limits: Limits) -> VerifiedImage:
    """Decode the whole image (truncation shows up only then) after checking the declared size against the caps; a
    JPEG, kept as sent, is decoded in draft mode at 1/8 scale: every byte is still read, at two thirds of the CPU."""
    if not data:
        raise Rejected("empty file")
    if len(data) > limits.max_image_bytes:
        raise Rejected(f"{len(data)} bytes exceeds the image cap of {limits.max_image_bytes}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as image:
                width, height = image.size
                if width * height > limits.max_pixels:
                    raise Rejected(f"{width}x{height} pixels exceeds the cap of {limits.max_pixels} (pixel bomb)")
                fmt = image.format or "unknown"
                if fmt == "JPEG":  # kept as sent, pixels unused: decode at 1/8 scale, which still reads every byte
                    image.draft("RGB", (max(1, width // 8), max(1, height // 8)))  # (a cut-off file still fails)
                image.load()
                jpeg = data if fmt == "JPEG" else to_jpeg(image)
        except Image.DecompressionBombError as err:
            raise Rejected(f"pixel bomb: {err}") from err
        except Rejected:
            raise
        except Exception as err:  # Pillow raises many types for bad bytes; every one means "not an image"
            raise Rejected(f"not a decodable image ({describe_error(err)})") from err
    return VerifiedImage(jpeg=jpeg, format=fmt, width=width, height=height)


def to_jpeg(image: Image.Image) -> bytes:
    """The documented conversion: first frame, transparency flattened onto white, RGB, JPEG quality 95."""
    image.seek(0)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        flat = Image.new("RGB", rgba.size, (255, 255, 255))
        flat.paste(rgba, mask=rgba.getchannel("A"))
        rgb = flat
    elif image.mode in ("I;16", "I;16B", "I;16L", "I"):
        rgb = image.point(lambda value: value * (1 / 256)).convert("L").convert("RGB")
    else:
        rgb = image.convert("RGB")
    buffer = io.BytesIO()
    rgb.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


class BudgetedReader:
    """A file object over a decompressed stream that refuses to read past a total cap or a per-step budget.

    A gzip of a few KB can unpack to terabytes, and tarfile reads a pax or GNU long-name header whole into
    memory before yielding the member: the per-step budget stops both before they cost memory or time.
    """

    def __init__(self, raw, total_cap: int):
        self.raw, self.total_cap = raw, total_cap
        self.read_total, self.step_left = 0, TAR_HEADER_BUDGET

    def grant(self, step_bytes: int) -> None:
        self.step_left = step_bytes

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            size = self.step_left
        if size > self.step_left or self.read_total + size > self.total_cap:
            allowed = min(self.step_left, self.total_cap - self.read_total)
            chunk = self.raw.read(max(allowed, 0))
            self._count(chunk)
            if len(chunk) == allowed:
                raise Rejected(f"archive unpacks beyond its cap ({self.total_cap} bytes or a per-entry budget)")
            return chunk
        chunk = self.raw.read(size)
        self._count(chunk)
        return chunk

    def _count(self, chunk: bytes) -> None:
        self.read_total += len(chunk)
        self.step_left -= len(chunk)


def unsafe_member_reason(member: tarfile.TarInfo, limits: Limits) -> str | None:
    """Why a member must not be read, or None for a regular file within the caps."""
    name = member.name
    parts = name.replace("\\", "/").split("/")
    if name.startswith(("/", "\\")) or ".." in parts or (len(name) > 1 and name[1] == ":"):
        return f"path escapes the archive ({name!r})"
    if member.issym() or member.islnk():
        return f"link member ({name!r} -> {member.linkname!r})"
    if member.ischr() or member.isblk() or member.isfifo():
        return f"device or fifo member ({name!r})"
    if not member.isfile():
        return f"not a regular file ({name!r})"
    if member.size > limits.max_image_bytes:
        return f"member {name!r} claims {member.size} bytes, over the cap of {limits.max_image_bytes}"
    return None


@dataclass
class ArchiveScan:
    """What one pass over a tarball found: bytes of wanted members, reasons for the rest, and why it stopped."""

    found: dict[str, bytes]
    rejected: dict[str, str]
    unwanted_rejected: list[tuple[str, str]]
    stopped: str | None = None
    held_bytes: int = 0


def read_wanted_members(fileobj, wanted: set[str], limits: Limits) -> ArchiveScan:
    """One streamed pass (`r|` over a budgeted gzip reader) returning the wanted members' bytes by file name.

    Members are matched by their base name because a legacy package holds `PMC<id>/<file>` and the records
    name `<file>`; the first safe member of a name wins. Unsafe members are recorded, never read. The pass
    stops as soon as every wanted name was read, or at the first sign of a bomb or a broken archive.
    """
    scan = ArchiveScan(found={}, rejected={}, unwanted_rejected=[])
    reader = BudgetedReader(gzip.GzipFile(fileobj=fileobj, mode="rb"), limits.max_unpacked_bytes)
    try:
        with tarfile.open(fileobj=reader, mode="r|") as archive:
            while wanted - scan.found.keys():
                member = archive.next()
                if member is None:
                    break
                _take_member(archive, member, wanted, limits, reader, scan)
                if scan.stopped:
                    break
    except Rejected as err:
        scan.stopped = str(err)
    except (tarfile.TarError, OSError, EOFError) as err:
        scan.stopped = f"archive is truncated or unreadable ({type(err).__name__}: {err})"
    return scan


def _take_member(archive, member, wanted, limits, reader, scan) -> None:
    base = posixpath.basename(member.name.replace("\\", "/"))
    reason = unsafe_member_reason(member, limits)
    if member.offset_data + member.size > limits.max_unpacked_bytes:
        scan.stopped = f"member {member.name!r} would unpack past the archive cap of {limits.max_unpacked_bytes}"
        reason = reason or scan.stopped
    # The next header read first skips (decompresses) this member's data: budget exactly that much.
    padded = -(-member.size // TAR_BLOCK) * TAR_BLOCK
    reader.grant(padded + TAR_HEADER_BUDGET)
    if (
        not reason
        and base in wanted
        and base not in scan.found
        and scan.held_bytes + member.size > limits.max_held_bytes
    ):
        reason = f"member {member.name!r} would hold more than {limits.max_held_bytes} bytes from one archive"
    if reason:
        if base in wanted and base not in scan.found:
            scan.rejected[base] = reason
        elif not member.isdir():
            scan.unwanted_rejected.append((member.name, reason))
        return
    if base in wanted and base not in scan.found:
        handle = archive.extractfile(member)
        scan.found[base] = handle.read(member.size) if handle else b""
        scan.held_bytes += len(scan.found[base])
        scan.rejected.pop(base, None)
        reader.grant(padded + TAR_HEADER_BUDGET)
