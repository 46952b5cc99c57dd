"""`vital build instructions`, `vital export llava` and `vital verify`."""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from vital_hub.cli_args import DefaultsOnce
from vital_hub.config import help_field, parse_config
from vital_hub.mixtures.spec import DEFAULT_LLAVA_MED_60K_FILE
from vital_hub.schema import RecordError


@dataclass
class InstructionsBuildConfig:
    sources: str = help_field("folder holding the source files under their released names")
    out: str = help_field("repo folder to write (README.md, manifest.json, data/)")
    images: str | None = help_field("folder of <pair_id>.jpg figures to embed", default=None)
    require_images: bool = help_field("fail on a missing or broken figure instead of storing null", default=False)
    include_retracted: bool = help_field(
        "keep records whose figure's article is retracted (the --images fetch index says which)", default=False
    )
    allow_unverified: bool = help_field("accept a source whose checksum does not match", default=False)
    mixtures: str | None = help_field("YAML with extra components and mixtures", default=None)
    configs: list[str] | None = help_field(
        "build only these configs (default: all; with --mixtures, the YAML's own mixtures plus the released "
        "configs whose source files are in --sources)",
        default=None,
    )
    repo_id: str | None = help_field(
        "the Hub repo id this folder will be pushed to, shown in the card's load example", default=None
    )
    llava_med_60k_file: str = help_field(
        "which LLaVA-Med 60K file is llava-med-60k", default=DEFAULT_LLAVA_MED_60K_FILE
    )
    rows_per_shard: int = help_field("rows per parquet shard", default=50_000)
    workers: int = help_field("components built side by side", default=os.cpu_count() or 1)

    def plan(self):
        from vital_hub.mixtures.spec import load_plan

        plan = load_plan(self.mixtures, self.llava_med_60k_file, self.configs)
        if self.mixtures and not self.configs:
            skip_unsourced_builtins(plan, Path(self.mixtures), Path(self.sources))
        return plan

    def build(self, plan) -> dict:
        from vital_hub.mixtures.build import BuildOptions, build_repo

        options = BuildOptions(
            sources=Path(self.sources),
            out=Path(self.out),
            images=self.images,
            require_images=self.require_images,
            include_retracted=self.include_retracted,
            allow_unverified=self.allow_unverified,
            rows_per_shard=self.rows_per_shard,
            workers=self.workers,
            repo_id=self.repo_id,
        )
        return build_repo(plan, options)


def skip_unsourced_builtins(plan, yaml_path: Path, sources: Path) -> None:
    """With a mixtures YAML of its own and no `only`/`--configs`, a user building only their mixtures does not
    need the released files: the released configs whose source files are absent are left out, and said so."""
    import yaml

    from vital_hub.io import read_text
    from vital_hub.mixtures.spec import builtin_mixtures

    named = (yaml.safe_load(read_text(yaml_path)) or {}).get("only")
    released = builtin_mixtures()
    own = [name for name, mixture in plan.mixtures.items() if released.get(name) != mixture]
    if named or not own:
        return
    skipped = [
        name
        for name, mixture in plan.mixtures.items()
        if name not in own
        and any(not (sources / plan.components[p.component].file_name).is_file() for p in mixture.parts)
    ]
    for name in skipped:
        del plan.mixtures[name]
    if skipped:
        print(
            f"note: building {', '.join(own)}; the released configs {', '.join(skipped)} are left out, their source "
            f"files are not in {sources} (`vital sources fetch --dir {sources}` adds them)",
            file=sys.stderr,
        )


def build_main(argv: list[str]) -> int:
    config = parse_config(
        InstructionsBuildConfig,
        argv,
        "vital build instructions",
        "Build the instructions dataset repo (60k/80k/150k/210k and YAML mixtures) from the source files.",
    )
    try:
        manifest = config.build(config.plan())
    except (RecordError, ValueError, OSError, KeyError) as err:
        print(f"vital build instructions: error: {err}", file=sys.stderr)
        return 1
    print_summary(manifest)
    print(f"\nwrote {config.out} (push it with: vital push {config.out} --to {config.repo_id or 'ORG/NAME'})")
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
    if any(c["fraction"] != 1.0 or c.get("excluded") is not None for c in entry["components"]):
        return "sampled"
    return f"{sum(s['present'] for s in stats):,} of {entry['rows']:,}"


def export_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        formatter_class=DefaultsOnce,
        prog="vital export llava",
        description="Write a config or a component as LLaVA JSON.",
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
        formatter_class=DefaultsOnce,
        prog="vital verify",
        description="Compare a released LLaVA JSON file with a config.",
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
    if report["verdict"] == "differs":
        counts = {key: report[key] for key in VERIFY_COUNTS if report[key]}
        print(f"vital verify: error: {args.released}: differs from config {args.config!r}: {counts}", file=sys.stderr)
        return 1
    return 0 if report["verdict"] == "identical" else 3


# what `vital verify` names in its error line when a released file differs from a config
VERIFY_COUNTS = ("differing", "absent_from_config", "config_rows_not_in_released", "repeated_in_released")
