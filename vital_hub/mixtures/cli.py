"""`vital build instructions`, `vital export llava` and `vital verify`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from vital_hub.schema import RecordError


def build_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="vital build instructions",
        description="Build the instructions dataset repo (60k/80k/150k/210k and YAML mixtures) from the source files.",
    )
    parser.add_argument(
        "--sources", required=True, type=Path, help="folder holding the source files under their released names"
    )
    parser.add_argument(
        "--out", required=True, type=Path, help="repo folder to write (README.md, manifest.json, data/)"
    )
    parser.add_argument("--images", type=Path, help="folder of <pair_id>.jpg figures to embed")
    parser.add_argument(
        "--require-images", action="store_true", help="fail on a missing or broken figure instead of storing null"
    )
    parser.add_argument(
        "--allow-unverified", action="store_true", help="accept a source whose checksum does not match"
    )
    parser.add_argument("--mixtures", type=Path, help="YAML with extra components and mixtures")
    parser.add_argument("--configs", nargs="+", help="build only these configs")
    parser.add_argument(
        "--llava-med-60k-file", default=None, help="which LLaVA-Med 60K file is component llava-med-60k"
    )
    parser.add_argument("--rows-per-shard", type=int, default=50_000)
    args = parser.parse_args(argv)

    from vital_hub.mixtures.build import BuildOptions, build_repo
    from vital_hub.mixtures.spec import DEFAULT_LLAVA_MED_60K_FILE, load_plan

    try:
        plan = load_plan(args.mixtures, args.llava_med_60k_file or DEFAULT_LLAVA_MED_60K_FILE, args.configs)
        options = BuildOptions(
            sources=args.sources,
            out=args.out,
            images=args.images,
            require_images=args.require_images,
            allow_unverified=args.allow_unverified,
            rows_per_shard=args.rows_per_shard,
        )
        manifest = build_repo(plan, options)
    except (RecordError, ValueError, FileNotFoundError, KeyError) as err:
        print(f"vital build instructions: error: {err}", file=sys.stderr)
        return 1
    print_summary(manifest)
    print(f"\nwrote {args.out} (push it with: vital push --repo {args.out} --to ORG/NAME)")
    return 0


def print_summary(manifest: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="instructions repo")
    for column in ("config", "rows", "components", "images present"):
        table.add_column(column, justify="right" if column in ("rows", "images present") else "left")
    for name, config in manifest["configs"].items():
        table.add_row(
            name,
            f"{config['rows']:,}",
            ", ".join(c["name"] for c in config["components"]),
            images_present(manifest, name),
        )
    Console().print(table)


def images_present(manifest: dict, config: str) -> str:
    """'present of rows' for a config whose components are whole, or 'not embedded'."""
    entry = manifest["configs"][config]
    stats = [manifest["components"][c["name"]]["images"] for c in entry["components"]]
    if any(s is None for s in stats):
        return "not embedded"
    if any(c["fraction"] != 1.0 for c in entry["components"]):
        return "sampled"
    return f"{sum(s['present'] for s in stats):,} of {entry['rows']:,}"


def export_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="vital export llava", description="Write a config or a component as LLaVA JSON."
    )
    parser.add_argument("--repo", required=True, type=Path)
    parser.add_argument("--config", required=True, help="a config (80k...) or a component (llava-med-10k...)")
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args(argv)
    from vital_hub.mixtures.compare import export_llava

    try:
        count = export_llava(args.repo, args.config, args.out)
    except (KeyError, FileNotFoundError) as err:
        print(f"vital export llava: error: {err}", file=sys.stderr)
        return 1
    print(f"wrote {count:,} records to {args.out}")
    return 0


def verify_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="vital verify", description="Compare a released LLaVA JSON file with a config."
    )
    parser.add_argument("--repo", required=True, type=Path)
    parser.add_argument("--config", required=True)
    parser.add_argument("--released", required=True, type=Path)
    parser.add_argument("--report", type=Path, help="also write the full report as JSON")
    args = parser.parse_args(argv)
    from vital_hub.mixtures.compare import verify_released

    try:
        report = verify_released(args.repo, args.config, args.released)
    except (KeyError, FileNotFoundError, RecordError) as err:
        print(f"vital verify: error: {err}", file=sys.stderr)
        return 1
    if args.report:
        args.report.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(json.dumps({k: v for k, v in report.items() if not k.endswith("_examples")}, indent=2))
    for example in report["differing_examples"][:5]:
        print(
            f"  differs: record {example['index']} id {example['id']!r} ({example['component']}): {example['fields']}"
        )
    return 0 if report["verdict"] == "identical" else 3
