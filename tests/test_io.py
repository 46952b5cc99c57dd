import json
import os
import stat
import subprocess
import sys

import pytest
import yaml

import vital_hub.io as vio
from tests.conftest import REPO_ROOT
from vital_hub.io import atomic_path, iter_json_records, read_card, write_card_config
from vital_hub.schema import RecordError


def write_array(path, records, indent=None):
    path.write_text(json.dumps(records, indent=indent), encoding="utf-8")
    return path


@pytest.mark.parametrize("indent", [None, 1, 4])
def test_streams_array_across_small_chunks(tmp_path, monkeypatch, indent):
    monkeypatch.setattr(vio, "CHUNK", 7)  # force every record and number to straddle chunk borders
    records = [{"id": i, "value": "x" * (i % 13), "n": 12345678901234} for i in range(50)]
    path = write_array(tmp_path / "a.json", records, indent)
    got = list(iter_json_records(path))
    assert [r for _, r in got] == records
    assert [w.index for w, _ in got] == list(range(50))


def test_empty_array_and_jsonl(tmp_path):
    assert list(iter_json_records(write_array(tmp_path / "e.json", []))) == []
    lines = tmp_path / "x.jsonl"
    lines.write_text('{"a": 1}\n\n{"a": 2}\n', encoding="utf-8")
    assert [r for _, r in iter_json_records(lines)] == [{"a": 1}, {"a": 2}]


def test_truncated_array_names_file_index_and_last_id(tmp_path):
    path = tmp_path / "t.json"
    text = json.dumps([{"id": "a"}, {"id": "b"}, {"id": "c", "v": "long"}])
    path.write_text(text[:-12], encoding="utf-8")
    with pytest.raises(RecordError) as err:
        list(iter_json_records(path))
    message = str(err.value)
    assert "t.json" in message and "record 2" in message and "'b'" in message and "truncated" in message


def test_missing_comma_and_trailing_garbage(tmp_path):
    path = tmp_path / "m.json"
    path.write_text('[{"id": 1} {"id": 2}]', encoding="utf-8")
    with pytest.raises(RecordError, match="expected ',' or ']'"):
        list(iter_json_records(path))
    path.write_text('[{"id": 1}] extra', encoding="utf-8")
    with pytest.raises(RecordError, match="unexpected data after"):
        list(iter_json_records(path))


def test_bad_jsonl_line(tmp_path):
    path = tmp_path / "b.jsonl"
    path.write_text('{"a": 1}\n{"a": \n', encoding="utf-8")
    with pytest.raises(RecordError, match="line 2"):
        list(iter_json_records(path))


def test_atomic_path_leaves_nothing_on_error(tmp_path):
    final = tmp_path / "out.txt"
    with pytest.raises(RuntimeError), atomic_path(final) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash")
    assert not final.exists()
    assert list(tmp_path.iterdir()) == []
    with atomic_path(final) as tmp:
        tmp.write_text("whole")
    assert final.read_text() == "whole"


def test_jsonl_log_skips_only_a_torn_last_line(tmp_path, caplog):
    from vital_hub.io import iter_jsonl_log

    log = tmp_path / "log.jsonl"
    log.write_text('{"a": 1}\n\n{"a": 2}\n{"a": ', encoding="utf-8")
    assert list(iter_jsonl_log(log)) == [(1, {"a": 1}), (3, {"a": 2})]
    assert "unfinished last line" in caplog.text
    caplog.clear()
    log.write_text('{"a": 1}\n{"a": 2}', encoding="utf-8")  # a finished last record without its newline is kept
    assert list(iter_jsonl_log(log)) == [(1, {"a": 1}), (2, {"a": 2})]
    assert "unfinished" not in caplog.text
    log.write_text('{"a": 1}\n{"a": \n', encoding="utf-8")  # a bad line that has its newline is no torn write
    with pytest.raises(RecordError, match="line 2 is not valid JSON"):
        list(iter_jsonl_log(log))
    log.write_text('{"a": 1}\n{"a": \n{"a": 3}\n', encoding="utf-8")
    with pytest.raises(RecordError, match="line 2 is not valid JSON") as err:
        list(iter_jsonl_log(log))
    assert "log.jsonl" in str(err.value)


def test_a_users_jsonl_file_is_read_whole_and_every_bad_line_is_an_error(tmp_path):
    from vital_hub.io import iter_jsonl_file

    path = tmp_path / "answers.jsonl"
    path.write_text('{"a": 1}\n{"a": 2}', encoding="utf-8")
    assert list(iter_jsonl_file(path)) == [(1, {"a": 1}), (2, {"a": 2})]
    path.write_text('{"a": 1}\n{"a": ', encoding="utf-8")
    with pytest.raises(RecordError, match=r"answers.jsonl: line 2 is not valid JSON"):
        list(iter_jsonl_file(path))
    path.write_bytes(b'{"a": 1}\n{"a": "caf\xe9"}\n')
    with pytest.raises(RecordError, match=r"answers.jsonl: not UTF-8 text: byte 0xe9 at offset 19 \(line 2\)"):
        list(iter_jsonl_file(path))
    with pytest.raises(RecordError, match="is a folder, not a file"):
        list(iter_jsonl_file(tmp_path))


def test_repair_tail_cuts_only_an_unfinished_last_line(tmp_path):
    from vital_hub.io import repair_tail

    log = tmp_path / "log.jsonl"
    repair_tail(log)  # no file: nothing to do
    assert not log.exists()
    log.write_bytes(b"")
    repair_tail(log)
    assert log.read_bytes() == b""
    whole = b'{"a": 1}\n{"a": 2}\n'
    log.write_bytes(whole)
    repair_tail(log)
    assert log.read_bytes() == whole
    # a torn line longer than one 64 KiB step back from the end
    log.write_bytes(whole + b'{"a": "' + b"x" * 200_000)
    repair_tail(log)
    assert log.read_bytes() == whole
    log.write_bytes(b'{"a": "' + b"x" * 70_000)  # a first line torn: nothing is left
    repair_tail(log)
    assert log.read_bytes() == b""
    log.write_bytes(whole + b'{"a": 3}')  # a finished record without its newline only gets the newline
    repair_tail(log)
    assert log.read_bytes() == whole + b'{"a": 3}\n'


def test_card_config_is_added_then_replaced_keeping_other_configs_and_the_text(tmp_path):
    readme = tmp_path / "README.md"
    other = {"config_name": "80k", "data_files": [{"split": "train", "path": "data/80k/*.parquet"}]}
    header = yaml.safe_dump({"configs": [other], "dataset_info": {"config_name": "80k", "description": "a --- b"}})
    readme.write_text(f"---\n{header}---")  # no newline after the closing line
    assert read_card(readme) == (
        {"configs": [other], "dataset_info": {"config_name": "80k", "description": "a --- b"}},
        "",
    )
    mine = {"config_name": "figures", "data_files": [{"split": "train", "path": "data/figures/*.parquet"}]}
    write_card_config(readme, mine, {"config_name": "figures", "splits": [1]}, "\n# Default text\n")
    write_card_config(readme, mine, {"config_name": "figures", "splits": [2]}, "\n# Not used: the card has text\n")
    meta, body = read_card(readme)
    # no config of the card was the default, so the one written becomes it (`load_dataset(repo)` needs one)
    assert meta["configs"] == [other, {**mine, "default": True}] and body == "\n# Default text\n"
    assert meta["dataset_info"] == [
        {"config_name": "80k", "description": "a --- b"},
        {"config_name": "figures", "splits": [2]},
    ]
    assert read_card(tmp_path / "absent.md") == ({}, "")
    (tmp_path / "plain.md").write_text("# No header\n")
    assert read_card(tmp_path / "plain.md") == ({}, "# No header\n")


@pytest.mark.parametrize("umask", [0o002, 0o022, 0o077])
def test_atomic_path_follows_the_umask(tmp_path, umask):
    """A shared output folder must be readable by the group when the umask says so (mkstemp alone gives 0600)."""
    previous = os.umask(umask)
    try:
        with atomic_path(tmp_path / "out.json") as tmp:
            tmp.write_text("{}")
        reference = tmp_path / "plain.txt"
        reference.write_text("x")  # what open() gives under this umask
    finally:
        os.umask(previous)
    mode = stat.S_IMODE((tmp_path / "out.json").stat().st_mode)
    assert mode == 0o666 & ~umask == stat.S_IMODE(reference.stat().st_mode)


def test_a_command_writes_its_outputs_with_the_umask(tmp_path):
    """`vital demo` run with umask 027: every file of the built repo is group-readable, none world-readable."""
    done = subprocess.run(
        [sys.executable, "-m", "vital_hub.cli", "demo", "--out", str(tmp_path / "demo")],
        cwd=REPO_ROOT, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)}, capture_output=True, text=True,
        timeout=300, preexec_fn=lambda: os.umask(0o027),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    files = [path for path in (tmp_path / "demo" / "repo").rglob("*") if path.is_file()]
    assert any(path.name == "manifest.json" for path in files) and any(path.suffix == ".parquet" for path in files)
    modes = {str(path.relative_to(tmp_path)): oct(stat.S_IMODE(path.stat().st_mode)) for path in files}
    assert set(modes.values()) == {oct(0o640)}, modes


def test_describe_error_drops_object_addresses():
    from vital_hub.io import describe_error

    err = OSError("cannot identify image file <_io.BytesIO object at 0x7f3a2c1d9e40>")
    assert describe_error(err) == "OSError: cannot identify image file the data"
