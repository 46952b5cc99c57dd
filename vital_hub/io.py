"""File helpers every stage shares: streaming record readers, writes that never leave half a file behind, and the
YAML header of repo cards."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from vital_hub.schema import Location, RecordError

log = logging.getLogger(__name__)

CHUNK = 1 << 20
_FRONT_MATTER = re.compile(r"\A---\n(.*?)\n---\n?", re.DOTALL)
_decoder = json.JSONDecoder()
TOO_DEEP = "JSON nested too deeply to be a record of this project (thousands of '[' or '{')"


def iter_json_records(path: str | Path) -> Iterator[tuple[Location, Any]]:
    """Yield (location, record) from a JSON array or a JSONL file without loading the file.

    A 463 MB array is read in 1 MiB chunks and decoded one element at a time, so memory stays at the size of
    one record plus one chunk. A truncated or malformed file raises RecordError naming the file, the index of
    the record that could not be read and the id of the last good one.
    """
    path = Path(path)
    if path.is_dir():
        raise RecordError("is a folder, not a file", file=str(path))
    try:
        with open(path, encoding="utf-8") as handle:
            head = handle.read(CHUNK)
            stripped = head.lstrip()
            if not stripped:
                raise RecordError("file is empty (write `[]` for a file with no records)", file=str(path))
            if stripped.startswith("["):
                yield from _iter_array(path, handle, stripped[1:])
            else:
                handle.seek(0)
                yield from _iter_lines(path, handle)
    except UnicodeDecodeError:
        raise RecordError(_first_non_utf8(path), file=str(path)) from None


def _first_non_utf8(path: Path) -> str:
    """`not_utf8` of the first byte of the file that is not UTF-8, found in one streaming pass."""
    import codecs

    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = lines = 0
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(CHUNK), b""):
            pending = decoder.getstate()[0]  # the start of a character split across chunks
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as err:
                data = pending + chunk
                start = err.start
                return not_utf8(data[start], offset - len(pending) + start, lines + data.count(b"\n", 0, start) + 1)
            offset += len(chunk)
            lines += chunk.count(b"\n")
    return "not UTF-8 text; save the file as UTF-8"


def _iter_lines(path: Path, handle) -> Iterator[tuple[Location, Any]]:
    index = 0
    for line_number, line in enumerate(handle, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise RecordError(
                f"line {line_number} is not valid JSON ({err.msg})", file=str(path), index=index
            ) from err
        except RecursionError:
            raise RecordError(f"line {line_number}: {TOO_DEEP}", file=str(path), index=index) from None
        yield Location(str(path), index), record
        index += 1


def _iter_array(path: Path, handle, buffer: str) -> Iterator[tuple[Location, Any]]:
    index, position, last_id, at_eof = 0, 0, None, False
    expect_value = True  # after '[' or ','
    while True:
        while position < len(buffer) and buffer[position] in " \t\r\n":
            position += 1
        if position >= len(buffer) - 1 and not at_eof:
            # Keep at most one unread character and refill; decoding needs the whole next value in the buffer.
            buffer, position, at_eof = _refill(handle, buffer, position)
            continue
        if position >= len(buffer):
            raise RecordError(_truncated(last_id), file=str(path), index=index)
        char = buffer[position]
        if char == "]" and (index == 0 or not expect_value):
            rest = (buffer[position + 1 :] + handle.read()).strip()
            if rest:
                raise RecordError(f"unexpected data after the closing ']': {rest[:40]!r}", file=str(path), index=index)
            return
        if char == "," and not expect_value:
            expect_value, position = True, position + 1
            continue
        if not expect_value:
            raise RecordError(f"expected ',' or ']' after record, found {char!r}", file=str(path), index=index)
        try:
            record, end = _decoder.raw_decode(buffer, position)
        except RecursionError:
            raise RecordError(TOO_DEEP, file=str(path), index=index) from None
        except json.JSONDecodeError as err:
            if at_eof:
                raise RecordError(_truncated(last_id, err.msg), file=str(path), index=index) from err
            buffer, position, at_eof = _refill(handle, buffer, position)
            continue
        if end == len(buffer) and not at_eof:
            # A number at the very end of the buffer may continue in the next chunk.
            buffer, position, at_eof = _refill(handle, buffer, position)
            continue
        yield Location(str(path), index), record
        last_id = record.get("id") if isinstance(record, dict) else None
        index, position, expect_value = index + 1, end, False
        if position > CHUNK:
            buffer, position = buffer[position:], 0


def _refill(handle, buffer: str, position: int) -> tuple[str, int, bool]:
    """The unread rest of the buffer plus the next chunk, from position 0, and whether the file is exhausted."""
    chunk = handle.read(CHUNK)
    return buffer[position:] + chunk, 0, not chunk


def _truncated(last_id: Any, detail: str | None = None) -> str:
    after = f" after id {last_id!r}" if last_id is not None else ""
    return f"file is truncated or malformed{after}" + (f" ({detail})" if detail else "")


def iter_jsonl_log(path: str | Path) -> Iterator[tuple[int, Any]]:
    """(line number, record) of an append-only JSONL log this project writes, such as the judgements or answers a
    job appends as it goes.

    A last line without its newline that does not parse is what a crash leaves of an unfinished write: it is
    skipped with a warning, and the job redoes that work. A last line that parses is a finished record and is
    kept. Any other line that is not JSON is an error naming the file and the line.
    """
    return _iter_jsonl(Path(path), own_log=True)


def iter_jsonl_file(path: str | Path) -> Iterator[tuple[int, Any]]:
    """(line number, record) of a JSONL file a user gives: read whole, the last line with or without its newline;
    any line that is not JSON is an error naming the file and the line."""
    return _iter_jsonl(Path(path), own_log=False)


def _iter_jsonl(path: Path, own_log: bool) -> Iterator[tuple[int, Any]]:
    lines = read_text(path).split("\n")
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            if own_log and number == len(lines):  # no newline after it: an interrupted write
                log.warning("%s: ignoring an unfinished last line left by an interrupted run", path)
                return
            raise RecordError(f"line {number} is not valid JSON ({err.msg})", file=str(path)) from err
        except RecursionError:
            raise RecordError(f"line {number}: {TOO_DEEP}", file=str(path)) from None
        yield number, record


def read_json(path: str | Path) -> Any:
    """A whole JSON document; an empty, truncated or malformed file is a RecordError naming the file and where."""
    text = read_text(path)
    if not text.strip():
        raise RecordError("file is empty", file=str(path))
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise RecordError(
            f"not valid JSON at line {err.lineno} column {err.colno} ({err.msg})", file=str(path)
        ) from None
    except RecursionError:
        raise RecordError(TOO_DEEP, file=str(path)) from None


def read_text(path: str | Path) -> str:
    """A whole text file as UTF-8; a file that is not UTF-8, or a folder, is a RecordError naming the file."""
    path = Path(path)
    if path.is_dir():
        raise RecordError("is a folder, not a file", file=str(path))
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise RecordError(not_utf8(data[err.start], err.start, line), file=str(path)) from None


def not_utf8(byte: int, offset: int, line: int) -> str:
    """Where a file stops being UTF-8: the byte, its offset and its line."""
    return f"not UTF-8 text: byte 0x{byte:02x} at offset {offset} (line {line}); save the file as UTF-8"


def repair_tail(path: str | Path) -> None:
    """Cut a last line without its newline (a writer killed mid-write) off an append-only JSONL log, in place; a
    last line that parses is a finished record and only gets its newline, as `iter_jsonl_log` reads it.

    The file is read backwards in 64 KiB steps up to its last newline, so a large log is never read whole;
    appended lines then start on a line of their own.
    """
    path = Path(path)
    if not path.exists():
        return
    size = path.stat().st_size
    with open(path, "r+b") as handle:
        keep = size
        while keep > 0:
            step = min(keep, 1 << 16)
            handle.seek(keep - step)
            newline = handle.read(step).rfind(b"\n")
            if newline >= 0:
                keep = keep - step + newline + 1
                break
            keep -= step
        if keep == size:
            return
        handle.seek(keep)
        if _parses(handle.read()):  # a finished record whose newline was not written: keep it, end its line
            handle.write(b"\n")
        else:
            log.warning("%s: dropping an unfinished last line (%d bytes) left by a crash", path, size - keep)
            handle.truncate(keep)
        os.fsync(handle.fileno())


def _parses(data: bytes) -> bool:
    try:
        json.loads(data)
    except (ValueError, RecursionError):  # JSONDecodeError and UnicodeDecodeError alike; absurd nesting
        return False
    return True


def read_card(path: str | Path) -> tuple[dict, str]:
    """(YAML header, text after it) of a repo card; ({}, the whole text) without a header, ({}, "") without a file.
    A header that is not valid YAML raises yaml.YAMLError."""
    import yaml

    path = Path(path)
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    match = _FRONT_MATTER.match(text)
    if not match:
        return {}, text
    return yaml.safe_load(match.group(1)) or {}, text[match.end() :]


def write_card_config(
    readme: str | Path, config: dict, info: dict, default_body: str, edit=None, defaults: dict | None = None
) -> None:
    """Add or replace one config's entries under `configs` and `dataset_info` of a repo card, keeping every other
    config and the card's text (`default_body` when it has none); `edit(text)`, when given, returns the text to
    write instead (for instance with one section replaced). `defaults` are card fields (licence, task categories,
    pretty name) set where the card has none; the config is marked `default` when no other config is, so
    `load_dataset(repo)` needs no config name."""
    import yaml

    meta, body = read_card(readme)
    name = config["config_name"]
    for key, value in (defaults or {}).items():
        meta.setdefault(key, value)
    others = [c for c in meta.get("configs") or [] if c.get("config_name") != name]
    if not any(c.get("default") for c in others):
        config = {**config, "default": True}
    meta["configs"] = others + [config]
    infos = meta.get("dataset_info") or []
    infos = [infos] if isinstance(infos, dict) else infos
    meta["dataset_info"] = [i for i in infos if i.get("config_name") != name] + [info]
    if not body.strip():
        body = default_body
    if edit is not None:
        body = edit(body)
    with atomic_path(readme) as tmp:
        tmp.write_text(
            f"---\n{yaml.safe_dump(meta, sort_keys=False, allow_unicode=True)}---\n{body}", encoding="utf-8"
        )


def sha256_file(path: str | Path, desc: str | None = None) -> str:
    """The file's sha256, read in chunks; with `desc`, a progress bar of the bytes read."""
    from tqdm import tqdm

    digest = hashlib.sha256()
    with (
        open(path, "rb") as handle,
        tqdm(total=os.path.getsize(path), unit="B", unit_scale=True, desc=desc, disable=desc is None) as bar,
    ):
        for chunk in iter(lambda: handle.read(CHUNK), b""):
            digest.update(chunk)
            bar.update(len(chunk))
    return digest.hexdigest()


def download_checksums(root: str | Path, files: Iterable[Path]) -> dict[str, dict]:
    """`dataset_info.download_checksums` of a repo card: each file's path under `root`, size and sha256.

    datasets keys its cache of a local repo folder on the card, so a card that changes whenever a shard does
    keeps it from serving rows of an older build.
    """
    return {
        Path(path).relative_to(root).as_posix(): {
            "num_bytes": Path(path).stat().st_size,
            "checksum": sha256_file(path),
        }
        for path in files
    }


_OBJECT_ADDRESS = re.compile(r"<[\w.]+ object at 0x[0-9a-fA-F]+>")


def describe_error(err: BaseException) -> str:
    """`Type: message` with object reprs such as `<_io.BytesIO object at 0x7f...>` (Pillow puts the file object
    in its messages) replaced by "the data", so that records holding the reason are the same on every run."""
    return f"{type(err).__name__}: {_OBJECT_ADDRESS.sub('the data', str(err))}"


def current_umask() -> int:
    """The process umask, read without changing it where Linux shows it (os.umask sets it to read it, which
    would race with other threads creating files)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(final: str | Path, suffix: str = "", fsync: bool = True) -> Iterator[Path]:
    """A temporary path beside `final` that is renamed onto it only when the block finishes without error.

    `fsync=False` leaves durability to the caller: for many small files whose content is checked again on resume
    (the fetched figures), one sync per batch instead of one per file."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=final.parent, prefix=f".{final.name}.", suffix=suffix + ".tmp")
    tmp_path = Path(tmp)
    try:
        os.fchmod(fd, 0o666 & ~current_umask())  # mkstemp makes 0600; outputs follow the umask like open() does
        os.close(fd)
        yield tmp_path
        if fsync:
            with open(tmp_path, "rb+") as handle:
                os.fsync(handle.fileno())
        os.replace(tmp_path, final)
    finally:
        tmp_path.unlink(missing_ok=True)


def write_json_atomic(path: str | Path, data: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False, sort_keys=False) + "\n", encoding="utf-8")


FALLBACK_LICENCE_NAME = "base-model-licence"  # `inherited_licence` only links to the base model's repo


def inherited_licence(card_path: str | Path | None, hub_id: str | None, revision: str | None = None) -> dict:
    """The licence fields a derived model carries over from the model it came from: that model's card's licence
    fields (a licence file it links to becomes a link into its Hub repo), else `other` linked to its Hub repo, else
    `unknown` (a local folder without a card says nothing). A card that cannot be read is not trusted, nor fatal."""
    import yaml

    meta = {}
    if card_path is not None:
        try:
            meta = read_card(card_path)[0]
        except (yaml.YAMLError, OSError, UnicodeDecodeError):
            meta = {}
    return licence_fields(meta, hub_id, revision)


def licence_fields(meta, hub_id: str | None, revision: str | None = None) -> dict:
    """`inherited_licence` from card metadata already read (a local card's, or the Hub's parse of a repo's card)."""
    fields = {
        key: meta[key] for key in ("license", "license_name", "license_link") if isinstance(meta, dict) and key in meta
    }
    link = fields.get("license_link")
    if isinstance(link, str) and not link.startswith("https://"):
        if hub_id is None:
            return {"license": "unknown"}
        fields["license_link"] = f"https://huggingface.co/{hub_id}/blob/{revision or 'main'}/{link}"
    if "license" in fields:
        return fields
    if hub_id is not None:
        return {
            "license": "other",
            "license_name": FALLBACK_LICENCE_NAME,
            "license_link": f"https://huggingface.co/{hub_id}",
        }
    return {"license": "unknown"}
