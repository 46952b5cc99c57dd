"""kill -9 a real `vital fetch figures` process at several moments, re-run it, and compare with an uninterrupted run."""

import json
import subprocess
import sys
import time

import pyarrow.parquet as pq

from tests.conftest import REPO_ROOT
from tests.fakes.pmc_server import FakePmc, populate
from vital_hub.figures.pipeline import FetchConfig, run_fetch

INDEX = "index/shard-00000-of-00001.parquet"


def fetch_command(pmc, urls, out):
    return [
        sys.executable,
        "-m",
        "vital_hub.cli",
        "fetch",
        "figures",
        "--urls",
        str(urls),
        "--out",
        str(out),
        "--base-url",
        pmc.url,
        "--legacy-base-url",
        pmc.url,
        "--concurrency",
        "2",
        "--backoff-base",
        "0.01",
        "--no-progress",
    ]


def journal_lines(out) -> int:
    journal = out / "index" / "shard-00000-of-00001.journal.jsonl"
    return journal.read_bytes().count(b"\n") if journal.exists() else 0


def kill_after(command, out, lines: int) -> bool:
    """Start the fetch, SIGKILL it once the journal has `lines` lines; False if it finished first."""
    process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while process.poll() is None and journal_lines(out) < lines and time.monotonic() < deadline:
        time.sleep(0.002)
    finished = process.poll() is not None
    process.kill()
    process.wait()
    return not finished


def assert_nothing_half_written(out, expected):
    """Every image under its final name is whole: exactly the bytes the server holds for it."""
    for image in out.glob("*.jpg"):
        assert image.read_bytes() == expected[image.stem], f"{image.name} is not the complete figure"


def test_kill_9_at_any_moment_then_rerun_equals_an_uninterrupted_run(tmp_path):
    with FakePmc(delay_s=0.03) as pmc:
        scenario = populate(pmc, articles=24, figures_per_article=3)
        missing = {"pmcid": "PMC999999", "file": "nowhere.jpg", "pair_id": "1_F1"}
        urls = tmp_path / "urls.jsonl"
        urls.write_text("".join(json.dumps(r) + "\n" for r in [*scenario.records, missing]))
        scenario.expected["1_F1"] = None
        reference = tmp_path / "reference"
        run_fetch(
            FetchConfig(urls=str(urls), out=str(reference), base_url=pmc.url, legacy_base_url=pmc.url, progress=False)
        )
        out = tmp_path / "killed"
        command = fetch_command(pmc, urls, out)
        kills = [kill_after(command, out, lines) for lines in (0, 4, 20, 45)]
        assert sum(kills) >= 3, "the fetch finished before it could be killed"
        assert not (out / "index" / "shard-00000-of-00001.done").exists()
        assert journal_lines(out) < len(scenario.expected)
        assert_nothing_half_written(out, scenario.expected)
        resumed = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    assert "already done" in resumed.stdout
    assert_nothing_half_written(out, scenario.expected)
    assert pq.read_table(out / INDEX).equals(pq.read_table(reference / INDEX))
    assert sorted(p.name for p in out.glob("*.jpg")) == sorted(p.name for p in reference.glob("*.jpg"))
    assert not list(out.rglob("*.tmp")) and not (out / ".partial").exists()
    journal = (out / "index" / "shard-00000-of-00001.journal.jsonl").read_bytes()
    assert journal.endswith(b"\n") and all(json.loads(line) for line in journal.splitlines())
