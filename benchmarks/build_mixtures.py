"""Build the four released configs at real scale and compare with the naive way, in the same run.

    python benchmarks/build_mixtures.py [--scale 1.0] [--workdir /tmp/vital-bench]

Sources are synthetic LLaVA JSON arrays with the released files' record counts (60K, 80K, 10K, 60K records, about
the released bytes per record) and no images. Each approach runs in its own subprocess so that peak RSS is its own:

- naive: for each config, `json.load` every file it contains, concatenate, `Dataset.from_list`, `to_parquet`;
- vital-hub: `build_repo` (streaming reader, components built side by side in worker processes, each written
  once, configs as shard lists). Its peak memory counts the main process plus every worker at the largest
  worker's peak.

Targets: >= 3x faster, <= 1/3 of the naive peak memory, and no component bytes written twice.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

FILES = {
    "BioMed-VITAL-instructions-60K.json": 60_000,
    "BioMed-VITAL-instructions-80K.json": 80_000,
    "llava_med_instruct_10k.json": 10_000,
    "llava_med_instruct_60k.json": 60_000,
}
CONFIGS = {
    "60k": ["BioMed-VITAL-instructions-60K.json"],
    "80k": ["BioMed-VITAL-instructions-80K.json"],
    "150k": ["BioMed-VITAL-instructions-80K.json", "llava_med_instruct_10k.json", "llava_med_instruct_60k.json"],
    "210k": [
        "BioMed-VITAL-instructions-80K.json",
        "llava_med_instruct_10k.json",
        "llava_med_instruct_60k.json",
        "BioMed-VITAL-instructions-60K.json",
    ],
}
WORDS = (
    "the figure shows a hypodense lesion in the right lobe with contrast enhancement consistent with an abscess "
    "histology reveals nests of atypical cells and a high mitotic index the chest radiograph demonstrates bilateral "
    "opacities and a small effusion magnetic resonance imaging shows a hyperintense signal"
).split()


def write_sources(folder: Path, scale: float, seed: int = 0) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    domains = ["chest_xray", "mri", "ct_scan", "histology", "gross"]
    for name, count in FILES.items():
        with open(folder / name, "w", encoding="utf-8") as handle:
            handle.write("[")
            for number in range(int(count * scale)):
                pair_id = f"{rng.randint(18_000_000, 35_000_000)}_F{number}"
                turns = []
                for round_number in range(rng.randint(2, 4)):
                    question = " ".join(rng.choices(WORDS, k=12)) + "?"
                    if round_number == 0:
                        question = f"{question}\n<image>" if rng.random() < 0.7 else f"<image>\n{question}"
                    turns += [
                        {"from": "human", "value": question},
                        {"from": "gpt", "value": " ".join(rng.choices(WORDS, k=rng.randint(40, 90))) + "."},
                    ]
                flags = {d: False for d in domains}
                flags[rng.choice(domains)] = True
                record = {"id": pair_id, "image": f"{pair_id}.jpg", "domain": flags, "conversations": turns}
                handle.write((",\n" if number else "\n") + json.dumps(record))
            handle.write("\n]\n")


def run_naive(sources: Path, out: Path) -> None:
    from datasets import Dataset

    out.mkdir(parents=True, exist_ok=True)
    for config, files in CONFIGS.items():
        records = []
        for name in files:
            with open(sources / name, encoding="utf-8") as handle:
                records.extend(json.load(handle))
        Dataset.from_list(records).to_parquet(str(out / f"{config}.parquet"))
        del records


def run_vital(sources: Path, out: Path) -> None:
    from vital_hub.mixtures.build import BuildOptions, build_repo
    from vital_hub.mixtures.spec import load_plan

    build_repo(load_plan(), BuildOptions(sources=sources, out=out, allow_unverified=True, show_progress=False))


def child(approach: str, sources: Path, out: Path) -> None:
    """Runs in a subprocess; prints its wall time and peak RSS as JSON. Libraries are imported before the clock
    starts, so both approaches are timed on their work alone."""
    import datasets  # noqa: F401

    import vital_hub.mixtures.build  # noqa: F401

    started = time.perf_counter()
    {"naive": run_naive, "vital": run_vital}[approach](sources, out)
    seconds = time.perf_counter() - started
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    # Worker processes run at the same time: count each at the largest worker's peak (an upper bound).
    workers = 0 if approach == "naive" else min(os.cpu_count() or 1, len(FILES))
    largest_worker = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(json.dumps({"seconds": seconds, "peak_mib": own + workers * largest_worker}))


def measure(approach: str, sources: Path, out: Path) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, __file__, "--child", approach, "--sources", str(sources), "--out", str(out)]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode:
        raise SystemExit(f"{approach} failed:\n{result.stderr[-3000:]}")
    stats = json.loads(result.stdout.strip().splitlines()[-1])
    parquet = list(out.rglob("*.parquet"))
    stats["parquet_files"] = len(parquet)
    stats["parquet_mib"] = sum(p.stat().st_size for p in parquet) / 2**20
    return stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of the released record counts")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/vital-bench-build"))
    parser.add_argument("--repeat", type=int, default=2, help="runs of each approach; the fastest is reported")
    parser.add_argument("--child", choices=["naive", "vital"], help=argparse.SUPPRESS)
    parser.add_argument("--sources", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.sources, args.out)
        return

    sources = args.workdir / "sources"
    started = time.perf_counter()
    write_sources(sources, args.scale)
    source_mib = sum(p.stat().st_size for p in sources.iterdir()) / 2**20
    print(f"synthetic sources: {source_mib:,.0f} MiB in {time.perf_counter() - started:.0f} s")
    # The best of --repeat runs of each, alternating, so that load from other processes weighs on both alike.
    runs = {"naive": [], "vital": []}
    for _ in range(args.repeat):
        for approach in runs:
            runs[approach].append(measure(approach, sources, args.workdir / approach))
    naive, vital = (min(runs[approach], key=lambda stats: stats["seconds"]) for approach in ("naive", "vital"))

    manifest = json.loads((args.workdir / "vital" / "manifest.json").read_text())
    component_shards = [s["path"] for c in manifest["components"].values() for s in c["shards"]]
    rows = {name: config["rows"] for name, config in manifest["configs"].items()}
    written_once = len(component_shards) == len(set(component_shards)) == vital["parquet_files"]
    print(
        f"\nconfigs: {rows} ({sum(rows.values()):,} rows in all); best of {args.repeat} runs each, {os.cpu_count()} CPUs"
    )
    print(f"{'':<12}{'seconds':>10}{'peak MiB':>10}{'parquet MiB':>13}{'files':>7}")
    for name, stats in (("naive", naive), ("vital-hub", vital)):
        print(
            f"{name:<12}{stats['seconds']:>10.1f}{stats['peak_mib']:>10.0f}{stats['parquet_mib']:>13.0f}"
            f"{stats['parquet_files']:>7}"
        )
    speedup = naive["seconds"] / vital["seconds"]
    memory = vital["peak_mib"] / naive["peak_mib"]
    print(f"\nspeed-up: {speedup:.2f}x (target >= 3x)")
    print(f"peak memory: {memory:.2f} of naive (target <= 0.33)")
    print(
        f"component bytes written once: {written_once} ({vital['parquet_mib']:.0f} MiB vs {naive['parquet_mib']:.0f} MiB)"
    )


if __name__ == "__main__":
    main()
