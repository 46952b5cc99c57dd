"""Benchmark `vital fetch figures` against the sequential downloader LLaVA-Med shipped, in the same run.

A local fake of PMC (tests/fakes/pmc_server.py) serves every article twice: as bucket objects (2026 layout) and
as a legacy tarball (the article's JATS, a PDF-sized filler and its figures). Each request waits `--delay-ms`
first, standing in for the network. Three runs, each in its own subprocess so its peak RSS can be read:

- baseline: what LLaVA-Med's `download_images.py` did: for every record, download the article tarball, unpack
  it to disk, copy the figure; one record after another (tarfile's "data" filter stands in for its extractall);
- fetcher, bucket: `vital fetch figures` at `--concurrency`, through the 2026 bucket layout;
- fetcher, legacy: the same with no bucket (every lookup 404s), so every figure comes from the tarballs.

    .venv/bin/python benchmarks/fetch_figures.py                      # 2,000 figures, 50 ms, concurrency 32
    .venv/bin/python benchmarks/fetch_figures.py --baseline-figures 400 # baseline on a subset, extrapolated
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))


@dataclass
class Result:
    name: str
    figures: int
    correct: int
    seconds: float
    requests: int
    bytes: int
    peak_rss_mb: float
    note: str = ""

    @property
    def figures_per_s(self) -> float:
        return self.figures / self.seconds

    @property
    def lost(self) -> int:
        return self.figures - self.correct


def baseline_worker(urls: Path, work: Path, legacy_base: str) -> None:
    """LLaVA-Med's three loops: download every record's tarball, untar every tarball, copy every figure."""
    records = [json.loads(line) for line in urls.read_text().splitlines() if line.strip()]
    articles, images = work / "pmc_articles", work / "images"
    articles.mkdir(parents=True)
    images.mkdir(parents=True)
    for record in records:
        url = legacy_base + record["pmc_tar_url"].split("nih.gov", 1)[1]
        urllib.request.urlretrieve(url, articles / os.path.basename(url))
    for record in records:
        with tarfile.open(articles / os.path.basename(record["pmc_tar_url"])) as archive:
            for member in archive:
                archive.extract(member, articles, filter="data")
    for record in records:
        shutil.copyfile(articles / record["image_file_path"], images / f"{record['pair_id']}.jpg")


def run_measured(command: list[str]) -> tuple[float, float, str]:
    """Wall seconds and peak RSS (MB) of one subprocess, read from its own rusage."""
    started = time.monotonic()
    process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.monotonic() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise RuntimeError(f"{command[:4]} failed with {process.returncode}:\n{output}")
    return seconds, usage.ru_maxrss / 1024, output


def count_correct(folder: Path, expected: dict[str, bytes]) -> int:
    return sum(
        (folder / f"{pair_id}.jpg").is_file() and (folder / f"{pair_id}.jpg").read_bytes() == data
        for pair_id, data in expected.items()
    )


def run_fetcher(name, pmc, urls, out, base_url, concurrency, rate, expected) -> Result:
    command = [sys.executable, "-m", "vital_hub.cli", "fetch", "figures", "--urls", str(urls), "--out", str(out)]
    command += ["--base-url", base_url, "--legacy-base-url", pmc.url, "--concurrency", str(concurrency)]
    command += ["--rate-limit", str(rate), "--no-progress"]
    before = pmc.requests
    seconds, rss, _ = run_measured(command)
    stats = json.loads((out / "index" / "shard-00000-of-00001.stats.json").read_text())
    return Result(
        name,
        len(expected),
        count_correct(out, expected),
        seconds,
        pmc.requests - before,
        stats["this_run"]["bytes"],
        rss,
    )


def run_baseline(pmc, records, work, expected, subset: int) -> Result:
    chosen = records[:subset]
    urls = work / "baseline_urls.jsonl"
    urls.write_text("".join(json.dumps(r) + "\n" for r in chosen))
    before = pmc.requests
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--baseline-worker",
        str(urls),
        str(work / "baseline"),
        pmc.url,
    ]
    seconds, rss, _ = run_measured(command)
    wanted = {r["pair_id"]: expected[r["pair_id"]] for r in chosen}
    downloaded = sum(p.stat().st_size for p in (work / "baseline" / "pmc_articles").glob("*.tar.gz"))
    note = "" if subset == len(records) else f"run on {subset} figures; rate extrapolated per figure"
    return Result(
        "LLaVA-Med sequential: tarball, extract, copy",
        len(chosen),
        count_correct(work / "baseline" / "images", wanted),
        seconds,
        pmc.requests - before,
        downloaded,
        rss,
        note,
    )


def table(results: list[Result], baseline: Result, fetcher: Result) -> str:
    header = f"| {'method':<46} | {'figures':>7} | {'lost':>4} | {'seconds':>7} | {'figures/s':>9} | {'MB/s':>6} | {'requests':>8} | {'peak RSS MB':>11} |"
    lines = [header, "|" + "|".join("-" * (len(cell)) for cell in header.split("|")[1:-1]) + "|"]
    for r in results:
        lines.append(
            f"| {r.name:<46} | {r.figures:>7} | {r.lost:>4} | {r.seconds:>7.1f} | {r.figures_per_s:>9.1f} | "
            f"{r.bytes / r.seconds / 2**20:>6.2f} | {r.requests:>8} | {r.peak_rss_mb:>11.0f} |"
        )
    lines.append(f"ratio fetcher (bucket) / baseline: {fetcher.figures_per_s / baseline.figures_per_s:.1f}x figures/s")
    lines += [f"note: {r.name}: {r.note}" for r in results if r.note]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--figures", type=int, default=2000)
    parser.add_argument("--per-article", type=int, default=4, help="figures per article (tarball)")
    parser.add_argument("--delay-ms", type=float, default=50.0, help="added to every request by the server")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rate-limit", type=float, default=1000.0, help="fetcher requests/s per host")
    parser.add_argument("--baseline-figures", type=int, default=None, help="run the baseline on the first N only")
    parser.add_argument("--baseline-worker", nargs=3, metavar=("URLS", "WORK", "LEGACY_BASE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.baseline_worker:
        urls, work, base = args.baseline_worker
        baseline_worker(Path(urls), Path(work), base)
        return 0

    from tests.fakes.pmc_server import FakePmc, populate

    articles = args.figures // args.per_article
    with (
        tempfile.TemporaryDirectory(prefix="fetch_figures_bench_") as tmp,
        FakePmc(delay_s=args.delay_ms / 1000) as pmc,
    ):
        work = Path(tmp)
        scenario = populate(
            pmc,
            articles,
            args.per_article,
            routes=("bucket",),
            tarballs_everywhere=True,
            filler_bytes=200_000,
            size=(640, 480),
        )
        urls = work / "urls.jsonl"
        urls.write_text("".join(json.dumps(r) + "\n" for r in scenario.records))
        image_mb = sum(map(len, scenario.expected.values())) / len(scenario.expected) / 1024
        print(
            f"fetch_figures: {len(scenario.expected)} figures in {articles} articles ({image_mb:.0f} KB JPEGs, "
            f"tarballs ~{200 + args.per_article * image_mb:.0f} KB), server adds {args.delay_ms:.0f} ms per request; "
            f"fetcher concurrency {args.concurrency}, rate limit {args.rate_limit:.0f}/s per host",
            flush=True,
        )
        subset = min(args.baseline_figures or len(scenario.records), len(scenario.records))
        baseline = run_baseline(pmc, scenario.records, work, scenario.expected, subset)
        print(f"baseline done in {baseline.seconds:.1f} s", flush=True)
        bucket = run_fetcher(
            f"vital fetch figures, bucket, concurrency {args.concurrency}",
            pmc,
            urls,
            work / "bucket",
            pmc.url,
            args.concurrency,
            args.rate_limit,
            scenario.expected,
        )
        legacy = run_fetcher(
            f"vital fetch figures, tarballs only, concurrency {args.concurrency}",
            pmc,
            urls,
            work / "legacy",
            pmc.url + "/no-bucket",
            args.concurrency,
            args.rate_limit,
            scenario.expected,
        )
        print(table([baseline, bucket, legacy], baseline, bucket))
    return 0


if __name__ == "__main__":
    sys.exit(main())
