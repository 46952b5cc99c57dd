"""`vital sources`: list, fetch and verify the released source files (`vital_hub.source_registry`, downloaded and
checked by `vital_hub.sources`).

    vital sources list
    vital sources fetch --dir sources                 # the files `vital build instructions` reads
    vital sources fetch all --dir sources
    vital sources verify --dir sources
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vital_hub.cli_args import DefaultsOnce
from vital_hub.source_registry import (
    DEFAULT_GROUP,
    GITHUB_BASE_ENV,
    GROUPS,
    HUB_REPO,
    SOURCES,
    SourceError,
    expand_names,
    github_media_base,
)
from vital_hub.sources import LOCK_NAME, fetch_source, verify_folder


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        formatter_class=DefaultsOnce, prog="vital sources", description="List, fetch and verify the released files."
    )
    sub = parser.add_subparsers(dest="action", required=True)
    sub.add_parser("list", formatter_class=DefaultsOnce, help="the registry: names, groups, origins, sizes, checksums")

    fetch = sub.add_parser("fetch", formatter_class=DefaultsOnce, help="download and verify source files")
    fetch.add_argument("names", nargs="*", help=f"file or group names ({', '.join(GROUPS)}); default: {DEFAULT_GROUP}")
    fetch.add_argument("--dir", type=Path, default=Path("sources"), help="folder for the files (default: sources)")
    fetch.add_argument("--lock", type=Path, help=f"lock file (default: {LOCK_NAME} in --dir)")
    fetch.add_argument("--allow-unverified", action="store_true", help="keep a file whose checksum does not match")
    fetch.add_argument("--github-base", help=f"GitHub LFS media base URL (default: ${GITHUB_BASE_ENV} or GitHub)")
    fetch.add_argument("--revision", help=f"revision of {HUB_REPO} (default: main)")

    verify = sub.add_parser(
        "verify", formatter_class=DefaultsOnce, help="check the files in a folder against the registry and lock"
    )
    verify.add_argument("names", nargs="*", help="file or group names (default: all)")
    verify.add_argument("--dir", type=Path, default=Path("sources"))
    verify.add_argument("--lock", type=Path, help=f"lock file (default: {LOCK_NAME} in --dir)")
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.action == "list":
            return _list()
        lock_path = args.lock or args.dir / LOCK_NAME
        if args.action == "verify" and args.lock and not args.lock.is_file():
            raise SourceError(f"{args.lock}: no such lock file (--lock names one to check against)")
        if args.action == "fetch":
            return _fetch(args, lock_path)
        return _verify_command(args, lock_path)
    except SourceError as err:
        print(f"vital sources {args.action}: error: {err}", file=sys.stderr)
        return 1


def _list() -> int:
    width = max(len(name) for name in SOURCES)
    print(f"{'name':<{width}}  {'origin':<6}  {'bytes':>14}  sha256")
    for source in SOURCES.values():
        checksum = source.sha256 or "not published: recorded in the lock file on first fetch"
        print(f"{source.name:<{width}}  {source.origin:<6}  {source.size_text:>14}  {checksum}")
    print("\ngroups: " + "; ".join(f"{g} = {', '.join(n)}" for g, n in GROUPS.items() if g != "all"))
    print(f"hub files: {HUB_REPO} (HF_ENDPOINT); github files: {github_media_base()}/<path>")
    return 0


def _fetch(args, lock_path: Path) -> int:
    sources = expand_names(args.names)
    args.dir.mkdir(parents=True, exist_ok=True)
    for source in sources:
        result = fetch_source(
            source,
            args.dir,
            lock_path,
            allow_unverified=args.allow_unverified,
            github_base=args.github_base,
            revision=args.revision,
        )
        print(f"{result.status:<10}  {result.name}  {result.size:,} bytes  sha256 {result.sha256}")
    print(f"{len(sources)} file(s) in {args.dir}; checksums in {lock_path}")
    return 0


def _verify_command(args, lock_path: Path) -> int:
    rows = verify_folder(args.dir, lock_path, args.names)
    for name, status, detail in rows:
        print(f"{status:<10}  {name}  {detail}".rstrip())
    return 1 if any(status == "mismatch" for _, status, _ in rows) else 0
