"""Candidate generation throughput against a rate-limited server, versus the paper's 5-thread script.

The paper's generation script sends one request at a time from each of 5 threads, so with ~0.5 s per reply it
tops out near 10 requests/s whatever the account allows. `vital generate candidates` keeps as many requests in
flight as the limits allow. Both run here, in the same run, against the same local OpenAI-compatible server
(tests/fakes/openai_server.py, in its own process) with 0.5 s latency per reply and a 3,000 requests/minute
limit (429 + Retry-After above it), on 600 synthetic figures with the same prompts. A third run is killed with
SIGKILL half-way and re-run, counting requests the server billed twice.

    .venv/bin/python benchmarks/generate.py [--figures 600] [--latency 0.5] [--rpm 3000]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.generation_support import make_demonstrations, make_figures  # noqa: E402

ENV = {**os.environ, "PYTHONPATH": str(REPO), "OPENAI_API_KEY": "sk-benchmark"}


class ServerProcess:
    """The fake server in its own process, so it does not share a CPU (or the GIL) with the client measured."""

    def __init__(self, latency: float, rpm: float):
        command = [sys.executable, "-m", "tests.fakes.openai_server", "--latency", str(latency), "--rpm", str(rpm)]
        self.process = subprocess.Popen(command, cwd=REPO, env=ENV, stdout=subprocess.PIPE, text=True)
        self.url = self.process.stdout.readline().strip()

    def log(self) -> list[dict]:
        with urllib.request.urlopen(self.url.rsplit("/v1", 1)[0] + "/_log") as response:
            return json.loads(response.read())

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(10)


def window_rate(log: list[dict]) -> tuple[int, float, int]:
    """(answered requests, requests/s from the first arrival to the last answer, 429s) as the server saw them."""
    answered = [e for e in log if e["route"] == "chat" and e["status"] == 200]
    refused = sum(1 for e in log if e["route"] == "chat" and e["status"] == 429)
    start = min(e["received"] for e in log if e["route"] == "chat")
    end = max(e["time"] for e in answered)
    return len(answered), len(answered) / (end - start), refused


def generate_command(data: Path, url: str, out: Path, rpm: float) -> list[str]:
    return [
        sys.executable, "-m", "vital_hub.cli", "generate", "candidates", "--figures", str(data / "images"),
        "--captions", str(data / "captions.json"), "--demos", str(data / "demos.json"), "--out", str(out),
        "--model", "gpt-4o", "--base-url", url, "--concurrency", "64", "--requests-per-minute", str(rpm),
        "--max-tokens", "1024",
    ]  # fmt: skip


def run_vital(data: Path, args) -> dict:
    server = ServerProcess(args.latency, args.rpm)
    try:
        started = time.monotonic()
        subprocess.run(generate_command(data, server.url, data / "out_vital", args.rpm), env=ENV, check=True,
                       capture_output=True)  # fmt: skip
        wall = time.monotonic() - started
        answered, rate, refused = window_rate(server.log())
    finally:
        server.close()
    return {"answered": answered, "wall_s": wall, "rate": rate, "refused": refused}


def run_paper_baseline(data: Path, args) -> dict:
    """5 threads, one blocking request each, the library's own retries: the shape of the paper's script."""
    import openai

    from vital_hub.figures.store import open_figures
    from vital_hub.generation.figure_input import normalise_figure
    from vital_hub.generation.prompts import PromptBuilder, PromptOptions, get_prompt_set, load_demonstrations

    server = ServerProcess(args.latency, args.rpm)
    store = open_figures(str(data / "images"), captions=str(data / "captions.json"))
    builder = PromptBuilder(
        get_prompt_set("conversation"), load_demonstrations(data / "demos.json"), PromptOptions(max_tokens=1024)
    )
    client = openai.OpenAI(base_url=server.url, api_key="sk-benchmark")

    def one(position_and_id: tuple[int, str]) -> str:
        position, pair_id = position_and_id
        request = builder.build(normalise_figure(store.get(pair_id)), position)
        return client.chat.completions.create(model="gpt-4o", **request).choices[0].message.content

    try:
        started = time.monotonic()
        with ThreadPoolExecutor(5) as pool:
            replies = list(pool.map(one, enumerate(store.pair_ids())))
        wall = time.monotonic() - started
        answered, rate, refused = window_rate(server.log())
    finally:
        server.close()
    assert len(replies) == args.figures
    return {"answered": answered, "wall_s": wall, "rate": rate, "refused": refused}


def run_interrupted(data: Path, args, how: signal.Signals, name: str) -> dict:
    """Stop a run with `how` after half the replies, run the same command again, and count double payments.

    A reply counts as paid before the stop when the server finished it before the signal; paid twice when the
    same request reached the server again after the re-run began. Requests still in flight at a SIGKILL are
    paid by a real provider even though the killed client never reads them; they are reported separately.
    """
    import pyarrow.parquet as pq

    server = ServerProcess(args.latency, args.rpm)
    out = data / name
    command = generate_command(data, server.url, out, args.rpm)
    try:
        process = subprocess.Popen(command, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while sum(1 for e in server.log() if e["route"] == "chat" and e["status"] == 200) < args.figures // 2:
            time.sleep(0.05)
        stopped_at = time.time()
        process.send_signal(how)
        process.wait()
        time.sleep(args.latency + 0.5)  # let the server finish (and log) the replies it was still working on
        with sqlite3.connect(out / "cache.sqlite") as db:
            cached = {key for (key,) in db.execute("SELECT key FROM responses")}
        resumed_at = time.time()
        subprocess.run(command, env=ENV, check=True, capture_output=True)
        log = [e for e in server.log() if e["route"] == "chat"]
    finally:
        server.close()
    paid_before = {e["key"] for e in log if e["status"] == 200 and e["time"] < stopped_at}
    in_flight = {e["key"] for e in log if e["received"] < stopped_at} - paid_before
    sent_after = {e["key"] for e in log if e["received"] >= resumed_at}
    rows = [
        r
        for shard in sorted((out / "data" / "candidates").glob("*.parquet"))
        for r in pq.read_table(shard).to_pylist()
    ]
    return {
        "exit code at stop": process.returncode,
        "paid before the stop": len(paid_before),
        "cached at the stop": len(cached),
        "paid twice": len(paid_before & sent_after),
        "cached, sent again": len(cached & sent_after),
        "in flight at the stop, sent again": len(in_flight & sent_after),
        "rows / ok / distinct ids": f"{len(rows)} / {sum(r['status'] == 'ok' for r in rows)} / "
        f"{len({r['candidate_id'] for r in rows})}",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--figures", type=int, default=600)
    parser.add_argument("--latency", type=float, default=0.5)
    parser.add_argument("--rpm", type=float, default=3000)
    args = parser.parse_args()
    limit = args.rpm / 60
    with tempfile.TemporaryDirectory(prefix="vital-gen-bench-") as tmp:
        data = Path(tmp)
        make_figures(data, args.figures)
        make_demonstrations(data / "demos.json")
        baseline = run_paper_baseline(data, args)
        vital = run_vital(data, args)
        crashes = {
            "SIGKILL": run_interrupted(data, args, signal.SIGKILL, "out_kill"),
            "SIGTERM": run_interrupted(data, args, signal.SIGTERM, "out_term"),
        }
    print(
        f"\n{args.figures} figures, server latency {args.latency} s, limit {args.rpm:.0f} requests/min ({limit:.0f}/s)"
    )
    print(f"{'run':<34}{'answered':>9}{'wall s':>9}{'req/s':>9}{'of limit':>10}{'429s':>6}")
    for name, result in (("paper-style 5 threads (sync)", baseline), ("vital generate candidates", vital)):
        print(
            f"{name:<34}{result['answered']:>9}{result['wall_s']:>9.1f}{result['rate']:>9.1f}"
            f"{result['rate'] / limit:>10.1%}{result['refused']:>6}"
        )
    print(f"{'ratio (vital / paper-style)':<34}{'':>9}{baseline['wall_s'] / vital['wall_s']:>8.2f}x"
          f"{vital['rate'] / baseline['rate']:>8.2f}x")  # fmt: skip
    print("req/s: answered requests from the first arrival to the last reply at the server; wall s: whole command")
    print(f"\nstop after {args.figures // 2} replies, then the same command again:")
    print(f"  {'':<36}{'SIGKILL':>16}{'SIGTERM':>16}")
    for key in crashes["SIGKILL"]:
        print(f"  {key:<36}{crashes['SIGKILL'][key]!s:>16}{crashes['SIGTERM'][key]!s:>16}")


if __name__ == "__main__":
    main()
