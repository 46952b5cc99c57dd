"""`vital eval answer|chat|vqa-prepare|vqa-score|winrate|report`: thin entry points over vital_hub.eval.

Every sub-command takes its options from a dataclass (see `--help`), optionally from a YAML file first
(`--config run.yaml`, unknown keys rejected), with command-line flags overriding the file.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from vital_hub.cli_args import DefaultsOnce, require
from vital_hub.config import parse_config


def _print(data: dict) -> None:
    print(json.dumps(data, indent=2, ensure_ascii=False, default=str))


def answer_main(argv: list[str]) -> int:
    from vital_hub.eval.answer import AnswerConfig, answer

    config = parse_config(AnswerConfig, argv, "vital eval answer", "Answer an eval set with a model (resumable).")
    if config.backend == "transformers":
        require(("torch", "transformers", "accelerate"), "train", "the transformers backend runs the model here")
    else:
        require(("openai",), "eval")
    _print(answer(config))
    return 0


def chat_main(argv: list[str]) -> int:
    from vital_hub.eval.chat import ChatJudgeConfig, run_chat_judge

    config = parse_config(ChatJudgeConfig, argv, "vital eval chat", "Judge qa50 answers; relative scores.")
    if config.reviews is not None:
        from vital_hub.eval.reviews import score_reviews

        summary = score_reviews(config)
    else:
        summary = run_chat_judge(config)
    _print({"overall": summary["overall"], "by_type": summary["by_type"], "out_dir": config.out_dir})
    return 0


@dataclasses.dataclass
class VqaPrepareConfig:
    dataset: str = dataclasses.field(metadata={"help": "vqa-rad | slake | pathvqa"})
    out_dir: str = dataclasses.field(metadata={"help": "where records, images/ and the manifest go"})
    source: str | None = dataclasses.field(default=None, metadata={"help": "local folder or Hub repo id override"})
    split: str = dataclasses.field(default="test", metadata={"help": "split to convert"})
    revision: str | None = dataclasses.field(default=None, metadata={"help": "Hub revision to pin"})
    limit: int | None = dataclasses.field(default=None, metadata={"help": "convert only the first N questions"})


def vqa_prepare_main(argv: list[str]) -> int:
    from vital_hub.eval.vqa import prepare_vqa

    config = parse_config(VqaPrepareConfig, argv, "vital eval vqa-prepare", "Convert a public VQA test set.")
    manifest = prepare_vqa(config.dataset, config.out_dir, config.source, config.split, config.revision, config.limit)
    _print({key: manifest[key] for key in ("dataset", "repo_id", "counts", "files")})
    return 0


def vqa_score_main(argv: list[str]) -> int:
    from vital_hub.eval.records import JsonlAppender
    from vital_hub.eval.vqa import score_vqa_files
    from vital_hub.io import atomic_path, write_json_atomic

    parser = argparse.ArgumentParser(
        formatter_class=DefaultsOnce, prog="vital eval vqa-score", description="Open recall and closed accuracy x100."
    )
    parser.add_argument("--questions", required=True, help="LLaVA-Med VQA records (JSON array or JSONL)")
    parser.add_argument("--answers", required=True, help="answers JSONL {question_id, text}")
    parser.add_argument("--compat", choices=("llava-med", "strict"), default="llava-med", help="headline rules")
    parser.add_argument(
        "--closed-rule",
        choices=("substring", "substring-yes-no"),
        default="substring",
        help="llava-med closed rule: batch script (substring) or run_eval.py (also needs yes/no)",
    )
    parser.add_argument("--allow-missing", action="store_true", help="score unanswered questions as empty answers")
    parser.add_argument("--name", help="dataset name in the report (default: questions file stem)")
    parser.add_argument("--out", required=True, help="result JSON")
    parser.add_argument("--details", help="per-question JSONL (default: <out stem>.details.jsonl)")
    args = parser.parse_args(argv)
    result, details = score_vqa_files(args.questions, args.answers, args.compat, args.closed_rule, args.allow_missing)
    out = Path(args.out)
    details_path = Path(args.details) if args.details else out.with_name(out.stem + ".details.jsonl")
    with atomic_path(details_path, suffix=".jsonl") as tmp, JsonlAppender(tmp) as writer:
        writer.write_many(details)
    result = {"dataset": args.name or Path(args.questions).stem, **result, "details_file": str(details_path)}
    write_json_atomic(out, result)
    _print({key: result[key] for key in ("dataset", "compat", "open_recall", "closed_accuracy", "counts")})
    return 0


def winrate_main(argv: list[str]) -> int:
    from vital_hub.eval.winrate import WinRateConfig, run_winrate

    config = parse_config(WinRateConfig, argv, "vital eval winrate", "Pairwise judge win rate of A over B.")
    summary = run_winrate(config)
    _print({"judgements": summary["judgements"], "questions": summary["questions"], "out_dir": config.out_dir})
    return 0


def report_main(argv: list[str]) -> int:
    from vital_hub.eval.report import ReportConfig, build_report

    config = parse_config(ReportConfig, argv, "vital eval report", "Summary, details dataset, card section, plot.")
    summary = build_report(config)
    _print({"out": config.out, "model_index": summary["model_index"], "details": summary["details_configs"]})
    return 0


SUBCOMMANDS = {
    "answer": (answer_main, "answer an eval set with a transformers model or an OpenAI-compatible server"),
    "chat": (chat_main, "judge qa50 open visual chat answers and compute relative scores"),
    "vqa-prepare": (vqa_prepare_main, "convert VQA-RAD, SLAKE or PathVQA into LLaVA-Med VQA records"),
    "vqa-score": (vqa_score_main, "open recall and closed accuracy of VQA answers"),
    "winrate": (winrate_main, "pairwise-judge win rate of one model's answers over another's"),
    "report": (report_main, "summary JSON, details dataset, model card section and plot"),
}


def usage() -> str:
    width = max(map(len, SUBCOMMANDS))
    lines = ["usage: vital eval SUBCOMMAND [OPTIONS]  (vital eval SUBCOMMAND --help)", "", "subcommands:"]
    return "\n".join(lines + [f"  {name:<{width}}  {text}" for name, (_, text) in SUBCOMMANDS.items()])


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    if argv[0] not in SUBCOMMANDS:
        print(f"vital eval: unknown subcommand {argv[0]!r}\n\n{usage()}", file=sys.stderr)
        return 2
    return SUBCOMMANDS[argv[0]][0](argv[1:])
