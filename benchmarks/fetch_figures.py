"""Benchmark `vital fetch figures` against the sequential downloader LLaVA-Med shipped, in the same run.

A local fake of PMC (tests/fakes/pmc_server.py) serves every article twice: as bucket objects (2026 layout) and
as a legacy tarball (the article's JATS, a PDF-sized filler and its figures). Each request waits `--delay-ms`
first, standing in for the network. Three runs, each in its own fresh subprocess that reports its peak RSS:

- baseline: what LLaVA-Med's `download_images.py` did: download every record's article tarball, unpack every
  tarball to disk, copy every figure; one after another (tarfile's "data" filter stands in for its extractall);
- fetcher, bucket: `vital fetch figures` at `--concurrency`, through the 2026 bucket layout;
- fetcher, tarballs only: the same with no bucket (every lookup 404s), so every figure comes from a tarball.

    .venv/bin/python benchmarks/fetch_figures.py                        # 2,000 figures, 50 ms, concurrency 32
    .venv/bin/python benchmarks/fetch_figures.py --baseline-figures 400 # baseline on a subset, extrapolated
    .venv/bin/python benchmarks/fetch_figures.py --plot /tmp/fetch_figures.png
"""

from __future__ import annotations

import argparse
import json
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

FILLER_BYTES = 200_000  # stands in for the PDF and other files of a real package


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
        urllib.request.urlretrieve(url, articles / url.rsplit("/", 1)[1])
    for record in records:
        with tarfile.open(articles / record["pmc_tar_url"].rsplit("/", 1)[1]) as archive:
            for member in archive:
                archive.extract(member, articles, filter="data")
    for record in records:
        shutil.copyfile(articles / record["image_file_path"], images / f"{record['pair_id']}.jpg")


def peak_rss_mb() -> float:
    """This process's peak resident memory since its exec.

    A child's ru_maxrss also counts the parent it was forked from (here the server, which holds every image and
    tarball), so each measured process reports its own high-water mark, VmHWM, which starts anew at exec.
    """
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker(kind: str, rss_file: str, rest: list[str]) -> int:
    """Run one measured side in this fresh process, then write its peak RSS to `rss_file`."""
    if kind == "baseline":
        baseline_worker(Path(rest[0]), Path(rest[1]), rest[2])
        code = 0
    else:
        from vital_hub.cli import main as vital_main

        code = vital_main(rest)
    Path(rss_file).write_text(f"{peak_rss_mb():.1f}")
    return code


def run_measured(kind: str, rest: list[str], rss_file: Path) -> tuple[float, float]:
    """Wall seconds (process start to exit, imports included) and peak RSS in MB of one measured subprocess."""
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", kind, str(rss_file), *rest]
    started = time.monotonic()
    done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True)
    seconds = time.monotonic() - started
    if done.returncode != 0:
        raise RuntimeError(f"{kind} failed with {done.returncode}: {done.stdout}{done.stderr[-3000:]}")
    return seconds, float(rss_file.read_text())


def count_correct(folder: Path, expected: dict[str, bytes]) -> int:
    """Figures whose file holds exactly the served bytes."""
    return sum(
        (folder / f"{pair_id}.jpg").is_file() and (folder / f"{pair_id}.jpg").read_bytes() == data
        for pair_id, data in expected.items()
    )


def run_fetcher(name: str, pmc, urls: Path, out: Path, base_url: str, args, expected: dict) -> Result:
    argv = ["fetch", "figures", "--urls", str(urls), "--out", str(out), "--base-url", base_url, "--no-progress"]
    argv += [
        "--legacy-base-url",
        pmc.url,
        "--concurrency",
        str(args.concurrency),
        "--rate-limit",
        str(args.rate_limit),
    ]
    before = pmc.requests
    seconds, rss = run_measured("fetch", argv, out.with_suffix(".rss"))
    stats = json.loads((out / "index" / "shard-00000-of-00001.stats.json").read_text())
    correct = count_correct(out, expected)
    inner = stats["this_run"]["elapsed_s"]
    note = f"its own timer (no interpreter start-up, imports or index writing): {inner:.1f} s, {len(expected) / inner:.1f} figures/s"
    return Result(name, len(expected), correct, seconds, pmc.requests - before, stats["this_run"]["bytes"], rss, note)


def run_baseline(pmc, records: list[dict], work: Path, expected: dict, subset: int) -> Result:
    chosen = records[:subset]
    urls = work / "baseline_urls.jsonl"
    urls.write_text("".join(json.dumps(r) + "\n" for r in chosen))
    before = pmc.requests
    seconds, rss = run_measured("baseline", [str(urls), str(work / "baseline"), pmc.url], work / "baseline.rss")
    wanted = {r["pair_id"]: expected[r["pair_id"]] for r in chosen}
    downloaded = sum(p.stat().st_size for p in (work / "baseline" / "pmc_articles").glob("*.tar.gz"))
    correct = count_correct(work / "baseline" / "images", wanted)
    note = "" if subset == len(records) else f"ran on the first {subset} figures; figures/s extrapolates per figure"
    name = "LLaVA-Med sequential: tarball, extract, copy"
    # Each record downloads its article's tarball again; the files on disk hold one copy per article.
    total_bytes = downloaded * len(chosen) // max(len({r["pmc_tar_url"] for r in chosen}), 1)
    return Result(name, len(chosen), correct, seconds, pmc.requests - before, total_bytes, rss, note)


WIDTHS = (52, 7, 4, 7, 9, 6, 8, 11)


def table_row(cells) -> str:
    """One markdown row: the first cell left-aligned, the numbers right-aligned."""
    padded = [f"{c!s:<{w}}" if i == 0 else f"{c!s:>{w}}" for i, (c, w) in enumerate(zip(cells, WIDTHS, strict=True))]
    return "| " + " | ".join(padded) + " |"


def table(results: list[Result], baseline: Result, fetcher: Result) -> str:
    lines = [table_row(("method", "figures", "lost", "seconds", "figures/s", "MB/s", "requests", "peak RSS MB"))]
    lines.append("|" + "|".join("-" * (w + 2) for w in WIDTHS) + "|")
    for r in results:
        mb_per_s = r.bytes / r.seconds / 2**20
        lines.append(
            table_row(
                (r.name, r.figures, r.lost, f"{r.seconds:.1f}", f"{r.figures_per_s:.1f}", f"{mb_per_s:.2f}")
                + (r.requests, f"{r.peak_rss_mb:.0f}")
            )
        )
    lines.append(
        f"ratio, fetcher (bucket) / baseline: {fetcher.figures_per_s / baseline.figures_per_s:.1f}x figures/s"
    )
    lines += [f"note: {r.name}: {r.note}" for r in results if r.note]
    return "\n".join(lines)


def plot(results: list[Result], path: Path) -> None:
    """A bar chart of figures/s per method, for people who would rather see than read the table."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(8, 3))
    names = [r.name.replace(", concurrency", "\nconcurrency") for r in results]
    bars = axis.barh(names, [r.figures_per_s for r in results], color=["#999999", "#2a7ab9", "#7ab92a"])
    axis.bar_label(bars, fmt="%.1f figures/s", padding=3)
    axis.invert_yaxis()
    axis.set_xlabel("figures per second (higher is better)")
    axis.set_xlim(0, max(r.figures_per_s for r in results) * 1.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--figures", type=int, default=2000)
    parser.add_argument("--per-article", type=int, default=4, help="figures per article (tarball)")
    parser.add_argument("--delay-ms", type=float, default=50.0, help="added to every request by the server")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rate-limit", type=float, default=1000.0, help="fetcher requests/s per host")
    parser.add_argument("--baseline-figures", type=int, default=None, help="run the baseline on the first N only")
    parser.add_argument("--plot", type=Path, default=None, help="also save a bar chart of figures/s (PNG)")
    args = parser.parse_args()

    from tests.fakes.pmc_server import FakePmc, populate

    articles = args.figures // args.per_article
    with tempfile.TemporaryDirectory(prefix="fetch_figures_") as tmp, FakePmc(delay_s=args.delay_ms / 1000) as pmc:
        work = Path(tmp)
        scenario = populate(
            pmc,
            articles,
            args.per_article,
            routes=("bucket",),
            tarballs_everywhere=True,
            filler_bytes=FILLER_BYTES,
            size=(640, 480),
            noise=0.35,
        )
        urls = work / "urls.jsonl"
        urls.write_text("".join(json.dumps(r) + "\n" for r in scenario.records))
        image_kb = sum(map(len, scenario.expected.values())) / len(scenario.expected) / 1024
        tarball_kb = FILLER_BYTES / 1024 + args.per_article * image_kb
        print(
            f"fetch_figures: {len(scenario.expected)} figures in {articles} articles ({image_kb:.0f} KB JPEGs, "
            f"tarballs ~{tarball_kb:.0f} KB), server adds {args.delay_ms:.0f} ms per request; fetcher concurrency "
            f"{args.concurrency}, rate limit {args.rate_limit:.0f}/s per host; times include process start-up",
            flush=True,
        )
        subset = min(args.baseline_figures or len(scenario.records), len(scenario.records))
        baseline = run_baseline(pmc, scenario.records, work, scenario.expected, subset)
        name = f"vital fetch figures, bucket, concurrency {args.concurrency}"
        bucket = run_fetcher(name, pmc, urls, work / "bucket", pmc.url, args, scenario.expected)
        name = f"vital fetch figures, tarballs only, concurrency {args.concurrency}"
        legacy = run_fetcher(name, pmc, urls, work / "legacy", f"{pmc.url}/no-bucket", args, scenario.expected)
        print(table([baseline, bucket, legacy], baseline, bucket))
    if args.plot:
        plot([baseline, bucket, legacy], args.plot)
        print(f"plot: {args.plot}")
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["--worker"]:
        sys.exit(worker(sys.argv[2], sys.argv[3], sys.argv[4:]))
    sys.exit(main())
