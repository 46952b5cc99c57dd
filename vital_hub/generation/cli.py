"""`vital generate candidates | collect | reference-answers`.

Settings come from dataclass defaults, then a YAML file (`--config`), then command-line flags; the flags of
`candidates` are generated from `GenerateConfig` so the two never drift apart.
"""

from __future__ import annotations

import argparse
import sys

from vital_hub.cli_args import DefaultsOnce, option_check
from vital_hub.config import parse_config
from vital_hub.generation.client import FatalAPIError

COMMANDS = ("candidates", "collect", "reference-answers")


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print(f"usage: vital generate {{{','.join(COMMANDS)}}} [--help]", file=sys.stderr if argv else sys.stdout)
        return 0 if not argv or argv[0] in ("-h", "--help") else 2
    command, rest = argv[0], argv[1:]
    try:
        if command == "candidates":
            return candidates_main(rest)
        if command == "collect":
            return collect_main(rest)
        return reference_main(rest)
    except FatalAPIError as err:
        raise FatalAPIError(f"{err}; finished replies are cached: fix this and run the same command again") from None


def candidates_main(argv: list[str]) -> int:
    from vital_hub.generation.candidates import GenerateConfig, run_job

    config = parse_config(
        GenerateConfig, argv, "vital generate candidates", "generate candidate instruction data for figures"
    )
    summary = run_job(config)
    return 130 if summary.get("interrupted") else 0


def collect_main(argv: list[str]) -> int:
    from vital_hub.generation.batch import collect

    parser = argparse.ArgumentParser(
        formatter_class=DefaultsOnce,
        prog="vital generate collect",
        description="fetch finished Batch API jobs into the cache and assemble",
    )
    parser.add_argument("--out", required=True, help="the --out folder of `vital generate candidates`")
    parser.add_argument("--poll", action="store_true", help="wait until every job has finished")
    parser.add_argument("--interval", type=option_check("interval"), default=60.0, help="seconds between polls")
    parser.add_argument(
        "--base-url", help="the endpoint again, when it carries user:password@ (run.json keeps it without them)"
    )
    args = parser.parse_args(argv)
    counts = collect(args.out, poll=args.poll, poll_interval_s=args.interval, base_url=args.base_url)
    return 0 if counts["still_waiting_jobs"] == 0 else 3


def reference_main(argv: list[str]) -> int:
    from vital_hub.generation.reference import ReferenceConfig, regenerate_reference_answers

    config = parse_config(
        ReferenceConfig, argv, "vital generate reference-answers", "regenerate the qa50 reference answers"
    )
    client = config.client()
    try:
        counts = regenerate_reference_answers(config, client)
    finally:
        client.close()
    return 0 if counts.get("error", 0) == 0 else 1
