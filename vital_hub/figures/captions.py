"""LLaVA-Med's figure captions file, read for the fields a figure row takes (pmid, label, caption, mentions,
domain flags).

The captions file (`llava_med_instruct_fig_captions.json` in https://github.com/microsoft/LLaVA-Med) is one JSON
document, a list or a mapping of domain -> list, ~170 MB; records are read one at a time
(`iter_caption_records`), so only the wanted ones are kept, and a malformed record is named by its file and
position. JSON lines files are read the same way.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator
from pathlib import Path

from vital_hub.io import TOO_DEEP, read_text
from vital_hub.schema import DOMAINS, mention_texts

log = logging.getLogger(__name__)


CAPTION_KEYS = ("pair_id", "pmid", "fig_id", "fig_label", "fig_caption", "in_text_mention", "domain")
TEXT_KEYS = ("fig_label", "fig_caption")  # pmid and fig_id come as numbers in some copies


def load_captions(path: str | Path, wanted: set[str] | None = None) -> dict[str, dict]:
    """pair_id -> caption record from `llava_med_instruct_fig_captions.json` (a dict {domain: [records]}).

    Only the fields a figure row uses are kept, and only for `wanted` pair ids when given; the first record of a
    pair id wins (a figure can be listed under two domains), and a later record with a different caption is
    counted and named in a warning. A caption field that is not text is an error.
    """
    return collect_captions(iter_caption_records(path), wanted, source=path)


def collect_captions(
    records: Iterable[tuple[str, int, object]], wanted: set[str] | None = None, source: str | Path = "captions"
) -> dict[str, dict]:
    """pair_id -> caption record from (domain, index, record) triples, with `load_captions`'s rules; `source`
    names the input in errors."""
    captions: dict[str, dict] = {}
    conflicts: list[str] = []
    for domain, index, record in records:
        if not isinstance(record, dict) or not isinstance(record.get("pair_id"), str):
            raise ValueError(f"{source}: domain {domain!r} record {index} has no string 'pair_id'")
        for key in TEXT_KEYS:
            if record.get(key) is not None and not isinstance(record[key], str):
                raise ValueError(
                    f"{source}: domain {domain!r} record {index} (pair_id {record['pair_id']!r}): {key!r} must be "
                    f"text, got {type(record[key]).__name__}"
                )
        pair_id = record["pair_id"]
        if wanted is not None and pair_id not in wanted:
            continue
        if pair_id not in captions:
            captions[pair_id] = {key: record.get(key) for key in CAPTION_KEYS}
        elif captions[pair_id]["fig_caption"] != record.get("fig_caption"):
            conflicts.append(pair_id)
    if conflicts:
        log.warning(
            "%s: %d figures have a second, different caption; the first one is kept (first: %s)",
            source,
            len(conflicts),
            conflicts[:5],
        )
    return captions


def iter_caption_records(path: str | Path) -> Iterator[tuple[str, int, object]]:
    """(domain, index, record) one record at a time from `{domain: [records]}`, a plain list, or JSONL records
    (such as the qa50 file, whose records carry `pair_id` and `fig_caption`).

    The 169 MB captions file is held once as text and decoded record by record, instead of as a whole tree of
    Python objects (several GB).
    """
    text = read_text(path)
    decoder = json.JSONDecoder()
    position = _skip_space(text, 0)
    if text.startswith("[", position):
        yield from _iter_list(path, text, position, decoder, "")
        return
    if _starts_with_a_record(text, position, decoder):
        yield from _iter_json_lines(path, text)
        return
    position = _expect(path, text, position, "{")
    while not text.startswith("}", position):
        try:
            domain, position = decoder.raw_decode(text, position)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: a domain name is not valid JSON ({err.msg})") from None
        position = _expect(path, text, _skip_space(text, position), ":")
        position = yield from _iter_list(path, text, position, decoder, domain)
        if text.startswith(",", position):
            position = _skip_space(text, position + 1)


def _iter_list(path, text: str, position: int, decoder, domain: str):
    position = _expect(path, text, position, "[")
    index = 0
    while not text.startswith("]", position):
        try:
            record, position = decoder.raw_decode(text, position)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: domain {domain!r} record {index} is not valid JSON ({err.msg})") from err
        except RecursionError:
            raise ValueError(f"{path}: domain {domain!r} record {index}: {TOO_DEEP}") from None
        yield domain, index, record
        index += 1
        position = _skip_space(text, position)
        if text.startswith(",", position):
            position = _skip_space(text, position + 1)
    return _skip_space(text, position + 1)


def _starts_with_a_record(text: str, position: int, decoder) -> bool:
    """True when the first object's first value is not a list: a record (JSONL), not `{domain: [records]}`."""
    inner = _skip_space(text, position + 1)
    if not text.startswith("{", position) or not text.startswith('"', inner):
        return False
    try:
        _, after = decoder.raw_decode(text, inner)
    except json.JSONDecodeError:
        return False
    after = _skip_space(text, after)
    return text.startswith(":", after) and not text.startswith("[", _skip_space(text, after + 1))


def _iter_json_lines(path, text: str):
    index = 0
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: line {number} is not valid JSON ({err.msg})") from err
        except RecursionError:
            raise ValueError(f"{path}: line {number}: {TOO_DEEP}") from None
        yield "", index, record
        index += 1


def _skip_space(text: str, position: int) -> int:
    while position < len(text) and text[position] in " \t\r\n":
        position += 1
    return position


def _expect(path, text: str, position: int, char: str) -> int:
    if not text.startswith(char, position):
        found = text[position : position + 20] or "end of file"
        raise ValueError(f"{path}: expected {char!r} at character {position}, found {found!r}")
    return _skip_space(text, position + 1)


def domain_flags(value) -> dict | None:
    """The 5 domain flags, or None; a string domain (the captions file's group key) becomes one true flag."""
    if isinstance(value, dict):
        return {name: bool(value.get(name, False)) for name in DOMAINS}
    if isinstance(value, str) and value in DOMAINS:
        return {name: name == value for name in DOMAINS}
    return None


def caption_fields(caption: dict) -> dict:
    """The row fields a caption record gives: pmid as text, mention texts, the 5 domain flags (None when absent)."""
    return {
        "pmid": str(caption["pmid"]) if caption.get("pmid") is not None else None,
        "fig_id": caption.get("fig_id"),
        "fig_label": caption.get("fig_label"),
        "caption": caption.get("fig_caption"),
        "mentions": mention_texts(caption.get("in_text_mention")),
        "domain": domain_flags(caption.get("domain")),
    }
