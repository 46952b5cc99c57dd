"""`vital fetch figures` and `vital build figures`: parse options, call the library, report.

vital fetch figures --urls llava_med_image_urls.jsonl --out figures/ --concurrency 32 --shard 0/4
vital build figures --index figures/ --out hub/figures-repo --captions llava_med_instruct_fig_captions.json
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import MISSING, fields
from pathlib import Path

import yaml

from vital_hub.schema import RecordError


def _config_parser() -> argparse.ArgumentParser:
    from vital_hub.figures.pipeline import FetchConfig

    parser = argparse.ArgumentParser(
        prog="vital fetch figures",
        description="Download PMC figures (2026 bucket layout, legacy tarballs as fallback) as <pair_id>.jpg + index.",
    )
    parser.add_argument("--config", help="YAML file of options; flags given here override it")
    for spec in fields(FetchConfig):
        flag = "--" + spec.name.replace("_", "-")
        help_text = spec.metadata.get("help", "")
        default = spec.default if spec.default is not MISSING else None
        if spec.type in (bool, "bool"):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        else:
            kind = {"int": int, "float": float}.get(str(spec.type), str)
            shown = "required" if default == "" else f"default: {default}"
            parser.add_argument(flag, type=kind, default=None, help=f"{help_text} ({shown})")
    return parser


def load_fetch_config(argv: list[str]):
    """Defaults, then the YAML file, then the flags; unknown YAML keys are an error, not a silent no-op."""
    from vital_hub.figures.pipeline import FetchConfig

    args = _config_parser().parse_args(argv)
    values: dict = {}
    if args.config:
        loaded = yaml.safe_load(Path(args.config).read_text()) or {}
        unknown = sorted(set(loaded) - set(FetchConfig.field_names()))
        if unknown:
            raise SystemExit(f"{args.config}: unknown option(s) {unknown}; known: {FetchConfig.field_names()}")
        values.update(loaded)
    values.update({name: value for name, value in vars(args).items() if name != "config" and value is not None})
    for required in ("urls", "out"):
        if not values.get(required):
            raise SystemExit(f"vital fetch figures: --{required} is required")
    try:
        return FetchConfig(**values)
    except (TypeError, ValueError) as err:
        raise SystemExit(f"vital fetch figures: {err}") from err


def fetch_main(argv: list[str]) -> int:
    from vital_hub.figures.pipeline import run_fetch, summary_table

    config = load_fetch_config(argv)
    try:
        stats = run_fetch(config)
    except RecordError as err:
        print(f"vital fetch figures: bad input record: {err}", file=sys.stderr)
        return 2
    except FileNotFoundError as err:
        print(f"vital fetch figures: {err}", file=sys.stderr)
        return 2
    print(summary_table(stats))
    return 0


def build_main(argv: list[str]) -> int:
    from vital_hub.figures.dataset import BuildOptions, build_figures

    parser = argparse.ArgumentParser(
        prog="vital build figures", description="Turn a fetch folder into the Hub dataset config `figures`."
    )
    parser.add_argument("--index", required=True, help="the --out folder of `vital fetch figures`")
    parser.add_argument("--out", required=True, help="dataset repo folder to write (README.md + data/figures/)")
    parser.add_argument("--captions", help="llava_med_instruct_fig_captions.json ({domain: [records]})")
    parser.add_argument("--images", help="folder of <pair_id>.jpg (default: the --index folder)")
    parser.add_argument("--shard-mb", type=float, default=256.0, help="target parquet shard size in MB")
    parser.add_argument("--allow-incomplete", action="store_true", help="build even if a fetch shard is unfinished")
    args = parser.parse_args(argv)
    options = BuildOptions(
        index=args.index,
        out=args.out,
        captions=args.captions,
        images=args.images,
        shard_mb=args.shard_mb,
        allow_incomplete=args.allow_incomplete,
    )
    try:
        report = build_figures(options)
    except (ValueError, FileNotFoundError, RecordError) as err:
        print(f"vital build figures: {err}", file=sys.stderr)
        return 2
    print(report)
    return 0
