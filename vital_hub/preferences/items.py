"""Annotation items: one question with two answers about one figure, as a clinician sees it.

Items come from a JSON/JSONL file (what `vital preferences sample` writes) or straight from a candidates dataset
in dual-answer mode (a local folder with `data/candidates/*.parquet`, or a Hub repo id). Pictures are found, in
order, in the item itself (bytes or a path), in an images folder (`<pair_id>.jpg`), or in a figure store.
"""

from __future__ import annotations

import base64
import re
import sys
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from vital_hub.io import iter_json_records
from vital_hub.schema import RecordError, mention_texts

# A figure file larger than this is not read at all (the largest PMC figures are a few megabytes).
MAX_FIGURE_BYTES = 64 * 1024 * 1024
TOO_LARGE = b"\x00too large"  # marks a file that was not read because of its size
EMBEDDED = "the item's embedded image"
# What each figure problem means, for log lines.
FIGURE_PROBLEMS = {
    "too_large": f"too large to open (over {MAX_FIGURE_BYTES // 2**20} MiB, or more pixels than PIL's "
    "decompression-bomb limit Image.MAX_IMAGE_PIXELS): not decoded",
    "damaged": "damaged (cut off, not an image, or unreadable)",
    "missing": "not found",
}
REQUIRED_ITEM_KEYS = ("item_id", "question", "answer_a", "answer_b")
HUB_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
LOCAL_SUFFIXES = (".json", ".jsonl", ".parquet", ".jpg", ".png")


def looks_local(source: str) -> bool:
    """A path that does not exist but was meant as one (so it is reported, not tried on the Hub for 25 s)."""
    if not HUB_REPO_ID.match(source) or source.lower().endswith(LOCAL_SUFFIXES):
        return True
    return Path(source.split("/", 1)[0]).is_dir()


def check_source(source: str, what: str) -> None:
    """Raise FileNotFoundError for a local path that is not there."""
    if not Path(source).exists() and looks_local(source):
        raise FileNotFoundError(f"{what} {source}: no such file or folder (nor a Hub repo id)")


@dataclass
class Item:
    item_id: str
    pair_id: str
    question: str
    answer_a: str
    answer_b: str
    caption: str = ""
    mentions: list[str] = field(default_factory=list)
    image: str | None = None  # a path (absolute, or relative to the items file) or a file name in an images folder
    image_bytes: bytes | None = None
    candidate_id: str | None = None

    def public(self) -> dict:
        """What the browser and the judgement log get: everything but the picture's bytes."""
        record = asdict(self)
        record.pop("image_bytes")
        return record


def item_id_of(candidate_id: str, question_index: int) -> str:
    return f"{candidate_id}#q{question_index}"


def item_from_record(record: Any, file: str, index: int, base_dir: Path | None) -> Item:
    """An Item from one JSON record of an items file, or a RecordError naming what is wrong."""
    if not isinstance(record, dict):
        raise RecordError(f"an item must be a JSON object, got {type(record).__name__}", file=file, index=index)
    record_id = record.get("item_id")
    for key in REQUIRED_ITEM_KEYS:
        if not isinstance(record.get(key), str) or not record[key].strip():
            raise RecordError(f"missing or empty {key!r}", file=file, index=index, record_id=record_id)
    image, image_bytes = _image_of(record, file, index, base_dir)
    return Item(
        item_id=record["item_id"],
        pair_id=str(record.get("pair_id") or record["item_id"].split("#", 1)[0]),
        question=record["question"],
        answer_a=record["answer_a"],
        answer_b=record["answer_b"],
        caption=record.get("caption") or "",
        mentions=mention_texts(record.get("mentions")),
        image=image,
        image_bytes=image_bytes,
        candidate_id=record.get("candidate_id"),
    )


def _image_of(record: dict, file: str, index: int, base_dir: Path | None) -> tuple[str | None, bytes | None]:
    """(path, bytes) from `image` (a path, or {bytes: base64, path}) or `image_base64`."""
    value = record.get("image")
    encoded = record.get("image_base64")
    path = None
    if isinstance(value, dict):
        encoded = value.get("bytes") or encoded
        path = value.get("path")
    elif isinstance(value, str) and value:
        path = value
    elif value is not None:
        raise RecordError(
            "'image' must be a path or {bytes, path}", file=file, index=index, record_id=record["item_id"]
        )
    if path and base_dir is not None and not Path(path).is_absolute() and (base_dir / path).exists():
        path = str(base_dir / path)
    if encoded is None:
        return path, None
    try:
        return path, base64.b64decode(encoded, validate=True)
    except (ValueError, TypeError) as err:
        raise RecordError(
            "image bytes are not valid base64", file=file, index=index, record_id=record["item_id"]
        ) from err


def items_from_candidate_row(row: dict) -> Iterator[Item]:
    """Every dual-answer question of one candidate (rows whose status is not "ok" have none to show)."""
    if row.get("status", "ok") != "ok":
        return
    for question_index, dual in enumerate(row.get("dual_answers") or []):
        if not dual.get("question") or not dual.get("answer_a") or not dual.get("answer_b"):
            continue
        yield Item(
            item_id=item_id_of(row["candidate_id"], question_index),
            pair_id=row["pair_id"],
            question=dual["question"],
            answer_a=dual["answer_a"],
            answer_b=dual["answer_b"],
            caption=labelled_caption(row),
            mentions=mention_texts(row.get("mentions")),
            image=row.get("image"),
            candidate_id=row["candidate_id"],
        )


def labelled_caption(row: dict) -> str:
    """`Figure 2: caption` from a candidate's label and caption (the label is not repeated)."""
    label, caption = (row.get("fig_label") or "").strip(), (row.get("caption") or "").strip()
    return f"{label}: {caption}" if label and caption and not caption.startswith(label) else caption


def iter_candidate_rows(source: str, cache_dir: str | None = None) -> Iterator[dict]:
    """Rows of a candidates dataset: local parquet shards are read directly, anything else goes to the Hub."""
    shard_dir = Path(source) / "data" / "candidates"
    if shard_dir.is_dir():
        import pyarrow.parquet as pq

        shards = sorted(shard_dir.glob("*.parquet"))
        if not shards:
            raise FileNotFoundError(f"{shard_dir} holds no parquet shards")
        for shard in shards:
            yield from pq.read_table(shard).to_pylist()
        return
    if Path(source).exists():
        raise FileNotFoundError(f"{source} is neither an items file nor a candidates folder (no data/candidates/)")
    from datasets import load_dataset

    yield from load_dataset(source, "candidates", split="train", cache_dir=cache_dir)


def load_items(source: str | Path, cache_dir: str | None = None) -> list[Item]:
    """Items from an items file or a candidates dataset, in their order; ids must be unique."""
    source = str(source)
    check_source(source, "--items")
    if Path(source).is_file():
        items = [item_from_record(r, w.file, w.index, Path(source).parent) for w, r in iter_json_records(source)]
    else:
        items = [item for row in iter_candidate_rows(source, cache_dir) for item in items_from_candidate_row(row)]
    seen: dict[str, int] = {}
    for index, item in enumerate(items):
        if item.item_id in seen:
            raise RecordError(
                f"duplicate item id (first at {seen[item.item_id]})", file=source, index=index, record_id=item.item_id
            )
        seen[item.item_id] = index
    if not items:
        raise ValueError(f"{source} holds no annotation items (dual-answer candidates with status 'ok')")
    return items


class ImageResolver:
    """Finds an item's picture and checks that it decodes: broken downloads are reported missing, never shown."""

    def __init__(self, images_dir: str | Path | None = None, figures: str | None = None):
        self.images_dir = Path(images_dir) if images_dir else None
        self.figures_path = figures
        self._figures = None
        self._reported: set[str] = set()  # items whose missing picture was reported

    def check_sources(self) -> None:
        """Fail at start, not per item: a folder that is missing, or a figure store that cannot be opened."""
        if self.images_dir is not None and not self.images_dir.is_dir():
            raise FileNotFoundError(f"--images {self.images_dir}: no such folder")
        if self.figures_path:
            check_source(self.figures_path, "--figures")
            self._figure_store()

    def bytes_for(self, item: Item) -> bytes | None:
        return self.locate(item)[0]

    def locate(self, item: Item) -> tuple[bytes | None, Path | None]:
        """The item's first picture that decodes, and its file (None when embedded or from the figure store)."""
        data, path, _ = self.resolve(item)
        return data, path

    def resolve(self, item: Item, report: bool = False) -> tuple[bytes | None, Path | None, str | None]:
        """(bytes, file, None) for a picture that decodes, else (None, None, why: 'missing', 'damaged' or
        'too_large'); a source that cannot even be asked (a broken figure store row) counts as damaged. With
        `report`, the first time an item has no usable picture one line on stderr names it, the file and why."""
        data, path, problem, why = self.diagnose(item)
        if report and problem is not None and item.item_id not in self._reported:
            self._reported.add(item.item_id)
            print(f"figure of item {item.item_id} not shown: {why}", file=sys.stderr, flush=True)
        return data, path, problem

    def diagnose(self, item: Item) -> tuple[bytes | None, Path | None, str | None, str | None]:
        """`resolve` and, for an item without a usable picture, a sentence for a log line: each source that held
        something unusable and what was wrong with it, or where nothing was found. It names server paths: it is
        for logs, never for a browser."""
        tried: list[tuple[str, str]] = []
        try:
            for data, path, source in self._candidates(item):
                problem = figure_problem(data)
                if problem is None:
                    return data, path, None, None
                tried.append((source, problem))
        except Exception:  # noqa: BLE001 -- a hostile figure store row must cost the item its picture, nothing more
            tried.append((f"figures {self.figures_path} (pair {item.pair_id})", "damaged"))
        worst = next((p for p in ("too_large", "damaged") if p in {problem for _, problem in tried}), "missing")
        unusable = [f"{source}: {FIGURE_PROBLEMS[problem]}" for source, problem in tried if problem != "missing"]
        looked = [source for source, _ in tried if source != EMBEDDED]
        why = "; ".join(unusable) or (
            f"not found (looked for {', '.join(looked)})"
            if looked
            else "not found: the item names no image and no images folder or figures dataset was given"
        )
        return None, None, worst, why

    def _candidates(self, item: Item) -> Iterator[tuple[bytes | None, Path | None, str]]:
        """(bytes, file, where they come from) of each place the item's picture may be, in order."""
        yield item.image_bytes, None, EMBEDDED
        paths = []
        if item.image:
            paths.append(Path(item.image))
            if self.images_dir:
                paths.append(self.images_dir / Path(item.image).name)
        if self.images_dir:
            paths.append(self.images_dir / f"{item.pair_id}.jpg")
        for path in dict.fromkeys(paths):  # an item's own path may also be the one under images_dir
            yield _read_figure(path), path, str(path)
        if self.figures_path:
            row = self._figure_store().get(item.pair_id)
            image = (row or {}).get("image")
            yield (
                (image.get("bytes") if isinstance(image, dict) else image),
                None,
                f"figures {self.figures_path} (pair {item.pair_id})",
            )

    def _figure_store(self):
        if self._figures is None:
            from vital_hub.figures.store import open_figures

            self._figures = open_figures(self.figures_path)
        return self._figures


def _read_figure(path: Path) -> bytes | None:
    """A figure file's bytes (b"" when it cannot be read, TOO_LARGE when it is over MAX_FIGURE_BYTES), or None when
    there is no such file."""
    try:
        if not path.is_file():
            return None
        if path.stat().st_size > MAX_FIGURE_BYTES:
            return TOO_LARGE
        return path.read_bytes()
    except OSError:
        return b""


def figure_problem(data: bytes | None) -> str | None:
    """None for a picture that opens and decodes in full, else why not: 'missing', 'too_large' (over
    MAX_FIGURE_BYTES, or over PIL's `Image.MAX_IMAGE_PIXELS`, the size of a decompression bomb) or 'damaged'
    (truncated, not an image, or any other failure of a decoder). Files are hostile: one of them must cost its
    item the picture, never the server an error."""
    from PIL import Image

    from vital_hub.figures.safety import open_within_pixel_limit

    if data is None:
        return "missing"
    if data is TOO_LARGE:
        return "too_large"
    if not data:
        return "damaged"
    try:
        with open_within_pixel_limit(data) as picture:
            picture.load()
        return None
    except Image.DecompressionBombError:
        return "too_large"
    except Exception:  # noqa: BLE001 -- PIL's decoders raise many kinds (struct, index, memory, value, OS)
        return "damaged"


def image_mime(data: bytes) -> str:
    if data.startswith(b"\x89PNG"):
        return "image/png"
    if data[:4] in (b"GIF8",):
        return "image/gif"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return "image/jpeg"
