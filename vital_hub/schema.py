"""The canonical instruction record and its two shapes.

A *LLaVA record* is what the released files hold (a JSON array of them)::

    {"id": "32432162_F1", "image": "32432162_F1.jpg", "domain": {...},
     "conversations": [{"from": "human", "value": "q\\n<image>"}, {"from": "gpt", "value": "..."}]}

A *row* is what the Hub dataset stores and TRL trains from::

    {"id", "image_id", "image_file", "domain", "source", "extra", "image_position": 1, "images": [image],
     "messages": [{"role": "user", "content": [{"type": "text", "text": "q\\n"}, {"type": "image", "text": None}]},
                  {"role": "assistant", "content": [{"type": "text", "text": "..."}]}]}

Every row is a valid TRL row: `messages` holds an image part exactly when `images` holds the figure. A row whose
figure is not available (missing, empty or broken at build time, or no images folder given) has `images: []` and
no image part: it is a text-only conversation. A record without `<image>` whose figure is there gets the image
part first in its first turn (TRL's placement for images without a placeholder). `image_position` keeps where the
source put `<image>` (the index of the image part among the first turn's parts, null when it had none), figure or
not, so that the export gives back the source text either way.

The conversion is lossless: text around `<image>` is kept verbatim (so both `q\\n<image>` and `<image>\\nq`
come back exactly, with or without the figure), absent domains stay absent, and any top-level key we do not model
is kept as JSON in `extra`.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

IMAGE_TOKEN = "<image>"
DOMAINS = ("chest_xray", "mri", "ct_scan", "histology", "gross")
# The order LLaVA-Med's evaluation uses when a record has several domain flags.
DOMAIN_PRIORITY = ("chest_xray", "mri", "histology", "gross", "ct_scan")
ROLE_OF_SPEAKER = {"human": "user", "gpt": "assistant"}
SPEAKER_OF_ROLE = {role: speaker for speaker, role in ROLE_OF_SPEAKER.items()}
MODELED_KEYS = ("id", "image", "domain", "conversations", "conversatons")


class RecordError(ValueError):
    """A record that cannot be used, with where it is and why."""

    def __init__(self, reason: str, *, file: str | None = None, index: int | None = None, record_id: Any = None):
        self.reason, self.file, self.index, self.record_id = reason, file, index, record_id
        where = []
        if file is not None:
            where.append(str(file))
        if index is not None:
            where.append(f"record {index}")
        if record_id is not None:
            where.append(f"id {record_id!r}")
        super().__init__(f"{', '.join(where)}: {reason}" if where else reason)


@dataclass(frozen=True)
class Location:
    """Where a record came from, for error messages."""

    file: str | None = None
    index: int | None = None

    def error(self, reason: str, record_id: Any = None) -> RecordError:
        return RecordError(reason, file=self.file, index=self.index, record_id=record_id)


def conversation_of(record: dict, where: Location = Location()) -> list[dict]:
    """The record's turns, under either spelling of the key."""
    turns = record.get("conversations", record.get("conversatons"))
    if turns is None:
        raise where.error("no 'conversations' list", record.get("id"))
    if not isinstance(turns, list):
        raise where.error(f"'conversations' is a {type(turns).__name__}, not a list", record.get("id"))
    return turns


def validate_llava(record: Any, where: Location = Location()) -> None:
    """Raise RecordError naming the first thing wrong with a LLaVA record."""
    if not isinstance(record, dict):
        raise where.error(f"a record must be a JSON object, got {type(record).__name__}")
    record_id = record.get("id")
    if not isinstance(record_id, str | int) or isinstance(record_id, bool) or str(record_id) == "":
        raise where.error("missing or empty 'id'", record_id)
    image = record.get("image")
    if not isinstance(image, str) or not image:
        raise where.error("no image reference ('image' is missing or empty)", record_id)
    domain = record.get("domain")
    if domain is not None:
        if not isinstance(domain, dict):
            raise where.error(f"'domain' must be an object of flags, got {type(domain).__name__}", record_id)
        unknown = sorted(set(domain) - set(DOMAINS))
        if unknown:
            raise where.error(f"unknown domain flags {unknown}; known: {list(DOMAINS)}", record_id)
        if not all(isinstance(v, bool) for v in domain.values()):
            raise where.error("domain flags must be true/false", record_id)
    turns = conversation_of(record, where)
    if not turns:
        raise where.error("empty conversation", record_id)
    for position, turn in enumerate(turns):
        expected = "human" if position % 2 == 0 else "gpt"
        if not isinstance(turn, dict) or not isinstance(turn.get("value"), str):
            raise where.error(f"turn {position} must be an object with a string 'value'", record_id)
        speaker = turn.get("from")
        if speaker not in ROLE_OF_SPEAKER:
            raise where.error(f"turn {position} has unknown role {speaker!r} (expected 'human' or 'gpt')", record_id)
        if speaker != expected:
            raise where.error(
                f"turns do not alternate: turn {position} is {speaker!r}, expected {expected!r}", record_id
            )
        if not turn["value"].strip():
            raise where.error(f"turn {position} is empty", record_id)
        image_count = turn["value"].count(IMAGE_TOKEN)
        if position > 0 and image_count:
            raise where.error(
                f"'{IMAGE_TOKEN}' in turn {position}; it may only stand in the first question", record_id
            )
        if image_count > 1:
            raise where.error(f"'{IMAGE_TOKEN}' appears {image_count} times in the first question", record_id)
    if len(turns) % 2:
        raise where.error(f"odd number of turns ({len(turns)}): the last question has no answer", record_id)


def image_id_of(image_file: str) -> str:
    """`32432162_F1.jpg` -> `32432162_F1` (the pair id); other names keep everything but the extension."""
    name = image_file.rsplit("/", 1)[-1]
    return name.rsplit(".", 1)[0] if "." in name else name


def text_to_content(text: str) -> list[dict]:
    """Split a turn at `<image>` into TRL content parts, keeping every character of the text."""
    if IMAGE_TOKEN not in text:
        return [{"type": "text", "text": text}] if text else []
    pieces = text.split(IMAGE_TOKEN)
    content: list[dict] = []
    for position, piece in enumerate(pieces):
        if position:
            content.append({"type": "image", "text": None})
        if piece:
            content.append({"type": "text", "text": piece})
    return content


def content_to_text(content: list[dict]) -> str:
    return "".join(IMAGE_TOKEN if part["type"] == "image" else part["text"] for part in content)


def extra_json(record: dict) -> str | None:
    """The record's keys the row does not model, as canonical JSON (None when there are none), so export can
    give them back."""
    extra = {k: v for k, v in record.items() if k not in MODELED_KEYS}
    return json.dumps(extra, ensure_ascii=False, sort_keys=True) if extra else None


def image_position_of(record: dict) -> int | None:
    """Where the source put `<image>`: the index of the image part among the first turn's content parts (0 for
    `<image>\\nq`, 1 for `q\\n<image>`), or None when the record has no `<image>`."""
    first = conversation_of(record)[0]["value"]
    if IMAGE_TOKEN not in first:
        return None
    return 1 if first.split(IMAGE_TOKEN, 1)[0] else 0


IMAGE_PART = {"type": "image", "text": None}


def turn_content(text: str, with_image: bool, first: bool) -> list[dict]:
    """A turn's content parts: without the figure, no image part (a text-only turn); with it, the first turn
    holds exactly one image part, where `<image>` stood or else in front."""
    content = text_to_content(text)
    if not with_image:
        return [part for part in content if part["type"] != "image"]
    if first and IMAGE_TOKEN not in text:
        return [dict(IMAGE_PART), *content]
    return content


def llava_to_row(
    record: dict, source: str, image: Any = None, where: Location = Location(), phash: str | None = None
) -> dict:
    """A validated LLaVA record as a Hub/TRL row; `image` is the figure ({bytes, path} or a PIL image) or None,
    `phash` its perceptual hash (16 hex digits, `vital_hub.audit.hashing.figure_hash`) when known."""
    validate_llava(record, where)
    domain = record.get("domain")
    with_image = image is not None
    return {
        "id": str(record["id"]),
        "image_id": image_id_of(record["image"]),
        "image_file": record["image"],
        "domain": None if domain is None else {name: domain.get(name) for name in DOMAINS},
        "domain_keys": None if domain is None else list(domain),
        "source": source,
        "extra": extra_json(record),
        "id_is_int": isinstance(record["id"], int),
        "image_position": image_position_of(record),
        "images": [image] if with_image else [],
        "image_phash": phash if with_image else None,
        "messages": [
            {"role": ROLE_OF_SPEAKER[turn["from"]], "content": turn_content(turn["value"], with_image, number == 0)}
            for number, turn in enumerate(conversation_of(record))
        ],
    }


def row_to_llava(row: dict) -> dict:
    """The exact LLaVA record a row was made from: `<image>` goes back at `image_position` (a text-only row has no
    image part; one the source lacked is dropped)."""
    record: dict[str, Any] = {"id": int(row["id"]) if row.get("id_is_int") else row["id"], "image": row["image_file"]}
    if row.get("domain") is not None:
        keys = row.get("domain_keys") or [k for k in DOMAINS if row["domain"].get(k) is not None]
        record["domain"] = {k: row["domain"][k] for k in keys}
    turns = []
    position = row.get("image_position")
    for number, message in enumerate(row["messages"]):
        content = message["content"]
        if number == 0 and "image_position" in row:
            content = [part for part in content if part["type"] != "image"]
            if position is not None:
                content = [*content[:position], IMAGE_PART, *content[position:]]
        turns.append({"from": SPEAKER_OF_ROLE[message["role"]], "value": content_to_text(content)})
    record["conversations"] = turns
    if row.get("extra"):
        record.update(json.loads(row["extra"]))
    return record


def first_domain(domain: dict | None) -> str | None:
    """The domain LLaVA-Med's evaluation reports a record under: the first true flag in DOMAIN_PRIORITY."""
    if not domain:
        return None
    return next((name for name in DOMAIN_PRIORITY if domain.get(name)), None)


def check_unique_ids(records: Iterable[tuple[Location, dict]]) -> Iterator[tuple[Location, dict]]:
    """Pass records through, failing on the first id seen twice (ids are unique within a component)."""
    seen: dict[str, int | None] = {}
    for where, record in records:
        key = str(record.get("id"))
        if key in seen:
            raise where.error(f"duplicate id (first seen at record {seen[key]})", record.get("id"))
        seen[key] = where.index
        yield where, record


def row_features():
    """The datasets Features of an instruction row (imported lazily: datasets is slow to import)."""
    from datasets import Features, Image, List, Value

    text_part = {"type": Value("string"), "text": Value("string")}
    return Features(
        {
            "id": Value("string"),
            "image_id": Value("string"),
            "image_file": Value("string"),
            "domain": {name: Value("bool") for name in DOMAINS},
            "domain_keys": List(Value("string")),
            "source": Value("string"),
            "extra": Value("string"),
            "id_is_int": Value("bool"),
            "image_position": Value("int32"),
            "images": List(Image()),
            # The figure's 64-bit DCT pHash as 16 hex digits (null without a figure): the contamination audit
            # reads it instead of decoding the figure again.
            "image_phash": Value("string"),
            "messages": List({"role": Value("string"), "content": List(text_part)}),
        }
    )


@functools.cache
def row_arrow_schema():
    """The Arrow schema of a row, with the datasets features in its metadata (computed once)."""
    return row_features().arrow_schema


def mention_texts(in_text_mention: Any) -> list[str]:
    """The text of every in-text mention, whatever shape the source used: null, strings, or {"tokens": ...}."""
    if in_text_mention is None:
        return []
    if isinstance(in_text_mention, str | dict):
        in_text_mention = [in_text_mention]
    texts = []
    for mention in in_text_mention:
        text = mention.get("tokens") if isinstance(mention, dict) else mention
        if isinstance(text, list):
            text = " ".join(map(str, text))
        if isinstance(text, str) and text.strip():
            texts.append(text.strip())
    return texts


class RowBatchBuilder:
    """Builds an Arrow table of rows straight from validated LLaVA records, column by column.

    Equivalent to `pa.Table.from_pylist([llava_to_row(r, ...) for r in records], schema)` (a test holds them equal)
    but several times faster: no per-row dicts and one conversion per flat column instead of per nested value.
    This is what lets a 463 MB source build in seconds.
    """

    def __init__(self):
        self.schema = row_arrow_schema()
        names = ("id", "image_id", "image_file", "extra", "id_is_int", "image_position", "image_phash")
        self._columns: dict[str, list] = {name: [] for name in names}
        self._sources: list[str] = []
        self._domain_null: list[bool] = []
        self._domain_flags: dict[str, list] = {name: [] for name in DOMAINS}
        self._domain_key_offsets, self._domain_keys = [0], []
        self._image_offsets, self._image_bytes, self._image_paths = [0], [], []
        self._message_offsets, self._roles = [0], []
        self._content_offsets, self._part_types, self._part_texts = [0], [], []

    def __len__(self) -> int:
        return len(self._sources)

    def append(self, record: dict, source: str, image: dict | None = None, phash: str | None = None) -> None:
        """Add a record that `validate_llava` accepted; `image` is {bytes, path} or None, `phash` its hash."""
        columns = self._columns
        with_image = image is not None
        columns["image_phash"].append(phash if with_image else None)
        columns["image_position"].append(image_position_of(record))
        columns["id"].append(str(record["id"]))
        columns["image_id"].append(image_id_of(record["image"]))
        columns["image_file"].append(record["image"])
        columns["extra"].append(extra_json(record))
        columns["id_is_int"].append(isinstance(record["id"], int))
        self._sources.append(source)
        domain = record.get("domain")
        self._domain_null.append(domain is None)
        for name in DOMAINS:
            self._domain_flags[name].append(None if domain is None else domain.get(name))
        if domain is not None:
            self._domain_keys.extend(domain)
        self._domain_key_offsets.append(len(self._domain_keys))
        if with_image:
            self._image_bytes.append(image["bytes"])
            self._image_paths.append(image["path"])
        self._image_offsets.append(len(self._image_bytes))
        for number, turn in enumerate(conversation_of(record)):
            self._roles.append(ROLE_OF_SPEAKER[turn["from"]])
            for part in turn_content(turn["value"], with_image, number == 0):
                self._part_types.append(part["type"])
                self._part_texts.append(part["text"])
            self._content_offsets.append(len(self._part_types))
        self._message_offsets.append(len(self._roles))

    def table(self):
        import pyarrow as pa

        fields = {field.name: field for field in self.schema}
        arrays = {
            "id": pa.array(self._columns["id"], pa.string()),
            "image_id": pa.array(self._columns["image_id"], pa.string()),
            "image_file": pa.array(self._columns["image_file"], pa.string()),
            "domain": pa.StructArray.from_arrays(
                [pa.array(self._domain_flags[name], pa.bool_()) for name in DOMAINS],
                fields=list(fields["domain"].type),
                mask=pa.array(self._domain_null, pa.bool_()),
            ),
            "domain_keys": pa.ListArray.from_arrays(
                pa.array(self._domain_key_offsets, pa.int32()),
                pa.array(self._domain_keys, pa.string()),
                type=fields["domain_keys"].type,
                mask=pa.array(self._domain_null, pa.bool_()),
            ),
            "source": pa.array(self._sources, pa.string()),
            "extra": pa.array(self._columns["extra"], pa.string()),
            "id_is_int": pa.array(self._columns["id_is_int"], pa.bool_()),
            "image_position": pa.array(self._columns["image_position"], pa.int32()),
            "images": pa.ListArray.from_arrays(
                pa.array(self._image_offsets, pa.int32()),
                pa.StructArray.from_arrays(
                    [pa.array(self._image_bytes, pa.binary()), pa.array(self._image_paths, pa.string())],
                    fields=list(fields["images"].type.value_type),
                ),
                type=fields["images"].type,
            ),
            "image_phash": pa.array(self._columns["image_phash"], pa.string()),
            "messages": self._messages(pa, fields["messages"].type),
        }
        return pa.Table.from_arrays([arrays[field.name] for field in self.schema], schema=self.schema)

    def _messages(self, pa, messages_type):
        message_struct = messages_type.value_type
        content_type = message_struct.field("content").type
        parts = pa.StructArray.from_arrays(
            [pa.array(self._part_types, pa.string()), pa.array(self._part_texts, pa.string())],
            fields=list(content_type.value_type),
        )
        content = pa.ListArray.from_arrays(pa.array(self._content_offsets, pa.int32()), parts, type=content_type)
        messages = pa.StructArray.from_arrays(
            [pa.array(self._roles, pa.string()), content], fields=list(message_struct)
        )
        return pa.ListArray.from_arrays(pa.array(self._message_offsets, pa.int32()), messages, type=messages_type)
