"""`vital build instructions` under crashes and concurrency, run as the user runs it: workers die with a killed
build, a re-run gives the same bytes as an uninterrupted build, worker errors arrive as one line, and two runs
never share one output folder."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT, processes_mentioning
from vital_hub.demo import write_sample_sources
from vital_hub.workers import folder_lock

ENV = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    return write_sample_sources(tmp_path_factory.mktemp("sample"))


def build_command(sample, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "vital_hub.cli", "build", "instructions", "--sources", str(sample["sources"]),
            "--images", str(sample["images"]), "--out", str(out), "--workers", "2", "--rows-per-shard", "5",
            *extra]  # fmt: skip


def run(command: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(command, env=ENV, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)


def tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def error_lines(stderr: str) -> list[str]:
    """Lines of stderr as a terminal shows them (progress bars redraw with carriage returns)."""
    return [line for line in stderr.replace("\r", "\n").splitlines() if ": error: " in line]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_kill_9_at_random_points_leaves_no_worker_and_the_rerun_is_byte_identical(sample, tmp_path):
    reference = tmp_path / "reference"
    started = time.monotonic()
    done = run(build_command(sample, reference, "--allow-unverified"))
    duration = time.monotonic() - started
    assert done.returncode == 0, done.stderr[-2000:]
    expected = tree(reference)
    assert any(name.endswith("missing_images.jsonl") for name in expected)

    rng = random.Random(14)
    killed_while_running = 0
    for trial in range(3):
        out = tmp_path / f"trial-{trial}"
        process = subprocess.Popen(
            build_command(sample, out, "--allow-unverified"), env=ENV, cwd=REPO_ROOT,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        time.sleep(rng.uniform(0.3, 0.85) * duration)
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        killed_while_running += process.returncode == -signal.SIGKILL
        deadline = time.monotonic() + 3
        while processes_mentioning(str(out)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not processes_mentioning(str(out)), f"trial {trial}: a worker outlived the killed build"
        resumed = run(build_command(sample, out, "--allow-unverified"))
        assert resumed.returncode == 0, f"trial {trial}: {resumed.stderr[-2000:]}"
        assert tree(out) == expected, f"trial {trial}: the resumed build differs from an uninterrupted one"
    assert killed_while_running >= 2  # the kills landed mid-build, not after it had finished


def test_a_worker_error_arrives_as_one_line_naming_the_file(sample, tmp_path):
    """The sample's files carry the released names, not the released bytes: a checksum mismatch in a worker."""
    done = run(build_command(sample, tmp_path / "repo", "--configs", "150k"))
    assert done.returncode == 1
    assert "Traceback" not in done.stderr and "BrokenProcessPool" not in done.stderr, done.stderr[-3000:]
    (line,) = error_lines(done.stderr)
    assert line.startswith("vital build instructions: error: ") and "sha256 mismatch" in line
    assert str(sample["sources"]) in line and "--allow-unverified" in line


def test_a_second_build_into_the_same_folder_is_refused(sample, tmp_path):
    out = tmp_path / "repo"
    with folder_lock(out, "vital build instructions"):
        done = run(build_command(sample, out, "--allow-unverified"))
    assert done.returncode == 1
    (line,) = error_lines(done.stderr)
    assert f"{out} is in use by another `vital build instructions` (pid {os.getpid()})" in line
    assert not (out / "manifest.json").exists()
    assert run(build_command(sample, out, "--allow-unverified")).returncode == 0  # the lock went with its holder
    assert not (out / ".vital.lock").exists()


def test_a_damaged_missing_images_list_is_rebuilt(sample, tmp_path):
    out = tmp_path / "repo"
    assert run(build_command(sample, out, "--allow-unverified")).returncode == 0
    manifest = json.loads((out / "manifest.json").read_text())
    listed = manifest["components"]["llava-med-10k"]["missing_images"]
    path = out / listed["path"]
    full = path.read_bytes()
    assert listed["num_bytes"] == len(full) and listed["path"] == "data/llava-med-10k/missing_images.jsonl"
    path.write_bytes(full[: len(full) // 2])  # what a racing worker left in one trial
    assert run(build_command(sample, out, "--allow-unverified")).returncode == 0
    assert path.read_bytes() == full
    assert json.loads((out / "manifest.json").read_text()) == manifest
