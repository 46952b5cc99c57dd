"""`vital generate candidates | collect | reference-answers`.

Settings come from dataclass defaults, then a YAML file (`--config`), then command-line flags; the flags of
`candidates` are generated from `GenerateConfig` so the two never drift apart.
"""

from __future__ import annotations

import argparse
import sys

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
        print(f"error: {err}", file=sys.stderr)
        print("finished replies are in the cache: fix the problem and run the same command again", file=sys.stderr)
        return 1


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
        prog="vital generate collect", description="fetch finished Batch API jobs into the cache and assemble"
    )
    parser.add_argument("--out", required=True, help="the --out folder of `vital generate candidates`")
    parser.add_argument("--poll", action="store_true", help="wait until every job has finished")
    parser.add_argument("--interval", type=float, default=60.0, help="seconds between polls")
    args = parser.parse_args(argv)
    counts = collect(args.out, poll=args.poll, poll_interval_s=args.interval)
    return 0 if counts["still_waiting_jobs"] == 0 else 3


def reference_main(argv: list[str]) -> int:
    from vital_hub.generation.client import ChatClient
    from vital_hub.generation.pricing import load_prices
    from vital_hub.generation.reference import ReferenceConfig, reference_client_config, regenerate_reference_answers

    parser = argparse.ArgumentParser(
        prog="vital generate reference-answers", description="regenerate the qa50 reference answers"
    )
    parser.add_argument("--questions", required=True, help="llava_med_eval_qa50_qa.jsonl")
    parser.add_argument("--images", help="folder of <pair_id>.jpg figures (missing/corrupt ones go text-only)")
    parser.add_argument("--out", required=True, help="output JSONL (same records, new gpt4_answer)")
    parser.add_argument("--model", required=True)
    parser.add_argument("--base-url")
    parser.add_argument("--api-key-env", default="OPENAI_API_KEY")
    parser.add_argument("--azure-api-version")
    parser.add_argument("--prompt-file", help="system prompt file replacing the built-in one")
    parser.add_argument("--max-tokens", type=int, default=1024)
    parser.add_argument("--temperature", type=float)
    parser.add_argument("--detail", choices=("low", "high", "auto"))
    parser.add_argument("--max-image-side", type=int)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--requests-per-minute", type=float)
    parser.add_argument("--tokens-per-minute", type=float)
    parser.add_argument("--cache", help="SQLite request cache (default: <out>.cache.sqlite)")
    parser.add_argument("--prices", help="price table file (YAML/JSON)")
    args = parser.parse_args(argv)
    client_config = reference_client_config(
        args.model,
        args.cache or f"{args.out}.cache.sqlite",
        base_url=args.base_url,
        api_key_env=args.api_key_env,
        azure_api_version=args.azure_api_version,
        concurrency=args.concurrency,
        requests_per_minute=args.requests_per_minute,
        tokens_per_minute=args.tokens_per_minute,
    )
    client = ChatClient(client_config, load_prices(args.prices) if args.prices else None)
    config = ReferenceConfig(
        questions=args.questions,
        out=args.out,
        images=args.images,
        prompt_file=args.prompt_file,
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        detail=args.detail,
        max_image_side=args.max_image_side,
    )
    try:
        counts = regenerate_reference_answers(config, client)
    finally:
        client.close()
    return 0 if counts.get("error", 0) == 0 else 1
