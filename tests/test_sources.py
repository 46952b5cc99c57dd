"""`vital sources`: registry, verified and resumable downloads, the lock file, against real local HTTP servers."""

import hashlib
import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT, shared_fixture
from tests.fakes.http_files import serving_files
from tests.fakes.hub_server import running_hub
from vital_hub import sources, sources_cli
from vital_hub.sources import (
    LOCK_NAME,
    ChecksumMismatch,
    SourceError,
    SourceFile,
    check_source_file,
    expand_names,
    fetch_source,
    read_lock,
    verify_folder,
)

QA50 = sources.SOURCES["llava_med_eval_qa50_qa.jsonl"]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def tiny_source(data: bytes | None, name: str = "tiny.json", known: bool = True) -> SourceFile:
    """A GitHub-origin source like the registry's, small enough for tests."""
    return SourceFile(
        name=name,
        origin="github",
        path=f"data/{name}",
        description="test file",
        size=len(data) if known and data is not None else None,
        sha256=sha(data) if known and data is not None else None,
    )


PAYLOAD = json.dumps([{"id": i, "text": "x" * 50} for i in range(400)]).encode()


def test_good_download_is_verified_and_recorded(tmp_path):
    source = tiny_source(PAYLOAD)
    with serving_files({"/data/tiny.json": PAYLOAD}) as server:
        result = fetch_source(source, tmp_path, tmp_path / LOCK_NAME, github_base=server.base_url)
    assert result.status == "downloaded"
    assert (tmp_path / "tiny.json").read_bytes() == PAYLOAD
    assert read_lock(tmp_path / LOCK_NAME)["tiny.json"]["sha256"] == sha(PAYLOAD)
    assert sorted(p.name for p in tmp_path.iterdir()) == [LOCK_NAME, "tiny.json"]  # no partial file left

    again = fetch_source(source, tmp_path, tmp_path / LOCK_NAME, github_base="http://127.0.0.1:9")
    assert again.status == "present"  # a verified file is not downloaded twice (the base URL is dead)


def test_wrong_checksum_is_an_error_and_never_takes_the_released_name(tmp_path):
    expected = tiny_source(PAYLOAD)
    tampered = PAYLOAD.replace(b'"x', b'"y', 1)
    with serving_files({"/data/tiny.json": tampered}) as server:
        with pytest.raises(ChecksumMismatch) as err:
            fetch_source(expected, tmp_path, tmp_path / LOCK_NAME, github_base=server.base_url)
        message = str(err.value)
        assert "tiny.json" in message and expected.sha256 in message and sha(tampered) in message
        assert not (tmp_path / "tiny.json").exists() and not (tmp_path / ".tiny.json.part").exists()
        assert not (tmp_path / LOCK_NAME).exists()

        kept = fetch_source(
            expected, tmp_path, tmp_path / LOCK_NAME, allow_unverified=True, github_base=server.base_url
        )
    assert kept.status == "unverified" and (tmp_path / "tiny.json").read_bytes() == tampered
    assert not (tmp_path / LOCK_NAME).exists()  # a file accepted despite a mismatch is not recorded as good


def test_unknown_checksum_is_locked_on_first_download_then_enforced(tmp_path):
    source = tiny_source(PAYLOAD, known=False)
    lock = tmp_path / "my.lock.json"
    files = {"/data/tiny.json": PAYLOAD}
    with serving_files(files) as server:
        first = fetch_source(source, tmp_path, lock, github_base=server.base_url)
        assert first.status == "downloaded"
        entry = read_lock(lock)["tiny.json"]
        assert (entry["sha256"], entry["size"], entry["origin"]) == (
            sha(PAYLOAD),
            len(PAYLOAD),
            "github:" + source.repo + "/data/tiny.json",
        )

        (tmp_path / "tiny.json").unlink()
        files["/data/tiny.json"] = PAYLOAD + b"\n"  # replaced upstream
        with pytest.raises(ChecksumMismatch, match=r"recorded in .*my\.lock\.json"):
            fetch_source(source, tmp_path, lock, github_base=server.base_url)
    assert read_lock(lock)["tiny.json"]["sha256"] == sha(PAYLOAD)


def test_interrupted_download_resumes_with_a_range_request(tmp_path):
    source = tiny_source(PAYLOAD)
    with serving_files({"/data/tiny.json": PAYLOAD}) as server:
        server.cut_after["/data/tiny.json"] = 5000
        with pytest.raises(SourceError, match="interrupted after 5,000 of .* re-run the same command to resume"):
            fetch_source(source, tmp_path, tmp_path / LOCK_NAME, github_base=server.base_url)
        assert (tmp_path / ".tiny.json.part").stat().st_size == 5000

        result = fetch_source(source, tmp_path, tmp_path / LOCK_NAME, github_base=server.base_url)
        assert server.requests[-1] == ("/data/tiny.json", "bytes=5000-")
    assert result.status == "downloaded" and (tmp_path / "tiny.json").read_bytes() == PAYLOAD


def test_server_without_range_support_restarts_from_zero(tmp_path):
    source = tiny_source(PAYLOAD)
    part = tmp_path / ".tiny.json.part"
    part.write_bytes(b"garbage that is not a prefix")
    with serving_files({"/data/tiny.json": PAYLOAD}, ranges=False) as server:
        result = fetch_source(source, tmp_path, tmp_path / LOCK_NAME, github_base=server.base_url)
    assert result.status == "downloaded" and (tmp_path / "tiny.json").read_bytes() == PAYLOAD


def test_oversized_body_is_cut_off(tmp_path):
    source = tiny_source(PAYLOAD)
    with serving_files({"/data/tiny.json": PAYLOAD + b" " * 10}) as server:
        with pytest.raises(SourceError, match="sent more than the expected"):
            fetch_source(source, tmp_path, tmp_path / LOCK_NAME, github_base=server.base_url)


def test_cli_names_file_expected_and_actual_checksum(tmp_path, capsys):
    wrong = b'{"question_id": 1}\n' * 100
    with serving_files({"/" + QA50.path: wrong}) as server:
        code = sources_cli.main(["fetch", QA50.name, "--dir", str(tmp_path), "--github-base", server.base_url])
    err = capsys.readouterr().err.splitlines()[-1]  # after the progress bars
    assert code == 1
    assert err.startswith("vital sources fetch: error: ")
    assert str(tmp_path / QA50.name) in err
    assert f"expected {QA50.sha256} (registry)" in err and f"got {sha(wrong)}" in err
    assert "--allow-unverified" in err
    assert not (tmp_path / QA50.name).exists()


def test_cli_fetches_the_real_qa50_file_and_verifies_it(tmp_path, capsys, monkeypatch):
    real = shared_fixture("llava_med", "llava_med_eval_qa50_qa.jsonl").read_bytes()
    with serving_files({"/" + QA50.path: real}) as server:
        monkeypatch.setenv(sources.GITHUB_BASE_ENV, server.base_url)
        assert sources_cli.main(["fetch", "eval", "--dir", str(tmp_path)]) == 0
    assert "downloaded  llava_med_eval_qa50_qa.jsonl  262,328 bytes" in capsys.readouterr().out
    assert sources_cli.main(["verify", "eval", "--dir", str(tmp_path)]) == 0
    assert "ok          llava_med_eval_qa50_qa.jsonl  sha256 matches (registry)" in capsys.readouterr().out


@pytest.fixture
def fake_hub(tmp_path):
    with running_hub(tmp_path / "fake_hub") as server:
        yield server


def test_hub_files_come_through_hf_endpoint_and_are_locked(tmp_path, fake_hub):
    """The BioMed-VITAL files come from the Hub dataset repo; their checksums are unknown until first fetched."""
    name = "BioMed-VITAL-instructions-60K.json"
    first = json.dumps([{"id": "1", "conversations": []}]).encode()
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_HOME=str(tmp_path / "hf_home"), HF_HUB_DISABLE_XET="1", PYTHONPATH=str(REPO_ROOT))
    command = [sys.executable, "-m", "vital_hub.cli", "sources", "fetch", name, "--dir", str(tmp_path / "src")]
    fake_hub.add_files(sources.HUB_REPO, {name: first, "README.md": b"# released files\n"})
    env["HF_ENDPOINT"] = fake_hub.endpoint
    fetched = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert fetched.returncode == 0, fetched.stderr[-2000:]
    assert (tmp_path / "src" / name).read_bytes() == first
    assert read_lock(tmp_path / "src" / LOCK_NAME)[name]["sha256"] == sha(first)
    assert sorted(p.name for p in (tmp_path / "src").iterdir()) == [name, LOCK_NAME]  # staging removed

    absent = subprocess.run(
        [*command[:5], "BioMed-VITAL-instructions-80K.json", *command[6:]], env=env, capture_output=True, text=True
    )
    assert absent.returncode == 1
    assert "error: BioMed-VITAL-instructions-80K.json: cannot download BioMed-VITAL-instructions-80K.json" in (
        absent.stderr
    )
    assert "no such file in the repo" in absent.stderr

    fake_hub.add_files(sources.HUB_REPO, {name: first.replace(b'"1"', b'"2"')}, message="replace the file")
    (tmp_path / "src" / name).unlink()
    refetched = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert refetched.returncode == 1
    assert f"{name}: sha256 mismatch: expected {sha(first)}" in refetched.stderr
    assert sorted(p.name for p in (tmp_path / "src").iterdir()) == [LOCK_NAME]  # nothing unverified left


def test_check_source_file_for_the_builder(tmp_path, capsys):
    path = tmp_path / QA50.name
    path.write_bytes(b"not the released file\n")
    with pytest.raises(ChecksumMismatch, match=QA50.sha256):
        check_source_file(path)
    result = check_source_file(path, allow_unverified=True)
    assert result == {"size": 22, "sha256": sha(b"not the released file\n"), "verified": False}
    assert "used anyway: --allow-unverified" in capsys.readouterr().err

    custom = tmp_path / "my_selection.json"
    custom.write_bytes(b"[]")
    assert check_source_file(custom)["verified"] is False  # not in the registry, not locked: reported, not failed
    assert not (tmp_path / LOCK_NAME).exists()  # checking never writes, so two builds give the same manifest
    sources.record_in_lock(tmp_path / LOCK_NAME, custom.name, sha(b"[]"), 2, "local")
    assert check_source_file(custom)["verified"] is True
    custom.write_bytes(b"[ ]")
    with pytest.raises(ChecksumMismatch, match="recorded in"):
        check_source_file(custom)
    with pytest.raises(SourceError, match="source file not found"):
        check_source_file(tmp_path / "absent.json")


def test_verify_folder_reports_each_file(tmp_path):
    (tmp_path / QA50.name).write_bytes(b"x")
    (tmp_path / "BioMed-VITAL-instructions-80K.json").write_bytes(b"[]")
    rows = {name: status for name, status, _ in verify_folder(tmp_path, tmp_path / LOCK_NAME)}
    assert rows[QA50.name] == "mismatch"
    assert rows["BioMed-VITAL-instructions-80K.json"] == "unverified"
    assert rows["llava_med_instruct_10k.json"] == "missing"
    assert sources_cli.main(["verify", "--dir", str(tmp_path)]) == 1


def test_registry_names_and_groups():
    assert [s.name for s in expand_names([])] == list(sources.GROUPS["build"])
    assert [s.name for s in expand_names(["eval", QA50.name])] == [QA50.name]
    assert len(expand_names(["all"])) == len(sources.SOURCES) == 10
    with pytest.raises(SourceError, match="known: BioMed-VITAL-instructions-60K.json"):
        expand_names(["llava_med_instruct_99k.json"])
    assert QA50.url("http://mirror/x/") == "http://mirror/x/data/eval/llava_med_eval_qa50_qa.jsonl"
    assert (
        sources.SOURCES["llava_med_instruct_10k.json"]
        .url()
        .startswith("https://media.githubusercontent.com/media/microsoft/LLaVA-Med/main/data/instruct/")
    )
