"""What durability costs a clinician: judgement latency with flush + fsync against a plain buffered append.

    python benchmarks/annotate_latency.py [--n 300] [--workdir /tmp/vital-annotate-bench]

Measured in the same run, on the same disk:
- baseline: the same JSON line appended to a file with no flush or fsync (what a naive app would do);
- store: `JudgementStore.append` (write, flush, fsync; fsync of the folder on creation);
- HTTP: a browser's "Save" end to end, POST /api/judgements to a real `vital annotate serve` subprocess.
Also timed, without a baseline: drawing 30,000 model pairs from 40,000 judged answers (the paper's scale).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vital_hub.preferences.pairs import model_pairs  # noqa: E402
from vital_hub.preferences.store import JudgementStore  # noqa: E402


def judgement(i: int) -> dict:
    return {
        "item_id": f"{i:06d}_F1#0#q0",
        "pair_id": f"{i:06d}_F1",
        "question": "Where is the lesion?" * 3,
        "answer_a": "In the right lobe. " * 20,
        "answer_b": "In the left kidney. " * 20,
        "caption": "CT. " * 30,
        "mentions": ["As shown in Figure 1."],
        "acceptable_a": True,
        "acceptable_b": False,
        "better": "a",
        "comment": "",
    }


def timed(action, n: int) -> list[float]:
    times = []
    for i in range(n):
        start = time.perf_counter()
        action(i)
        times.append((time.perf_counter() - start) * 1000)
    return times


def baseline(workdir: Path, n: int) -> list[float]:
    handle = open(workdir / "plain.jsonl", "a", encoding="utf-8")
    try:
        return timed(lambda i: handle.write(json.dumps(judgement(i), sort_keys=True) + "\n"), n)
    finally:
        handle.close()


def store(workdir: Path, n: int) -> list[float]:
    log = JudgementStore(workdir / "store", "bench")
    return timed(lambda i: log.append(judgement(i)), n)


def http(workdir: Path, n: int) -> list[float]:
    items = workdir / "items.jsonl"
    items.write_text(
        "".join(
            json.dumps(
                {
                    k: v
                    for k, v in judgement(i).items()
                    if k in ("item_id", "pair_id", "question", "answer_a", "answer_b", "caption", "mentions")
                }
            )
            + "\n"
            for i in range(n)
        )
    )
    command = [
        sys.executable,
        "-m",
        "vital_hub.cli",
        "annotate",
        "serve",
        "--items",
        str(items),
        "--out",
        str(workdir / "http"),
        "--annotator",
        "bench",
        "--port",
        "0",
    ]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        line = server.stdout.readline()
        url = line.split(" on ", 1)[1].split(" ", 1)[0].rstrip("/")
        with httpx.Client(base_url=url, trust_env=False) as client:
            for _ in range(50):
                try:
                    client.get("/api/state")
                    break
                except httpx.TransportError:
                    time.sleep(0.1)

            def post(i: int) -> None:
                body = {
                    "index": i,
                    "item_id": f"{i:06d}_F1#0#q0",
                    "acceptable_a": True,
                    "acceptable_b": False,
                    "better": "a",
                    "comment": "",
                }
                client.post("/api/judgements", json=body).raise_for_status()

            return timed(post, n)
    finally:
        server.terminate()
        server.wait(10)


def pair_drawing() -> float:
    rng = random.Random(0)
    scores = [
        {
            "score_id": f"c{i}#q0#a",
            "pair_id": f"p{i}",
            "question": f"q{i}",
            "answer": f"a{i}",
            "score": float(rng.choice(range(11))),
            "status": "ok",
        }
        for i in range(40_000)
    ]
    start = time.perf_counter()
    pairs = model_pairs(scores, n=30_000, seed=0)
    elapsed = time.perf_counter() - start
    assert len(pairs) == 30_000
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--workdir", default="/tmp/vital-annotate-bench")
    args = parser.parse_args()
    workdir = Path(args.workdir)
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    results = {
        "baseline: buffered append": baseline(workdir, args.n),
        "store: append + fsync": store(workdir, args.n),
        "HTTP POST /api/judgements": http(workdir, args.n),
    }
    base = statistics.median(results["baseline: buffered append"])
    print(f"{'per judgement (n=' + str(args.n) + ')':<30} {'p50 ms':>9} {'p95 ms':>9} {'x baseline p50':>15}")
    for name, times in results.items():
        p50, p95 = statistics.median(times), statistics.quantiles(times, n=20)[-1]
        print(f"{name:<30} {p50:>9.3f} {p95:>9.3f} {p50 / base:>15.0f}")
    print(f"\nmodel pairs: 30,000 drawn from 40,000 judged answers in {pair_drawing():.2f} s")


if __name__ == "__main__":
    main()
