"""The `vital` command.

Each command lives in the module that owns its concept and is imported only when it runs, so `vital --help`
is instant and a stage whose extra is not installed fails with the name of the extra to install.
A command module exposes a function `main(argv: list[str]) -> int | None` that parses its own arguments.
"""

from __future__ import annotations

import importlib
import os
import sys
from dataclasses import dataclass

from vital_hub.cli_args import ModuleMissing, install_hint, missing_modules
from vital_hub.redaction import redact_environment


@dataclass(frozen=True)
class Command:
    words: tuple[str, ...]
    target: str  # "package.module:function"
    extra: str | None
    help: str
    subcommands: bool = False  # the first remaining argument names a subcommand, shown in error lines


COMMANDS: tuple[Command, ...] = (
    Command(("demo",), "vital_hub.demo:main", None, "build the four mixtures from a bundled synthetic sample"),
    Command(("sources",), "vital_hub.sources_cli:main", None, "list, fetch and verify the released files", True),
    Command(("build", "instructions"), "vital_hub.mixtures.cli:build_main", None, "build the instructions repo"),
    Command(("export", "llava"), "vital_hub.mixtures.cli:export_main", None, "write a config back as LLaVA JSON"),
    Command(("verify",), "vital_hub.mixtures.cli:verify_main", None, "compare a released file with a config"),
    Command(("push",), "vital_hub.hub:push_main", None, "upload a repo folder to the Hub"),
    Command(("fetch", "figures"), "vital_hub.figures.cli:fetch_main", "figures", "download PMC figures"),
    Command(("build", "figures"), "vital_hub.figures.cli:build_main", "figures", "build the figures config"),
    Command(("generate",), "vital_hub.generation.cli:main", "gen", "generate candidates with a vision LLM", True),
    Command(("judge",), "vital_hub.preferences.cli:judge_main", "gen", "score candidates with a rubric judge", True),
    Command(
        ("preferences",), "vital_hub.preferences.cli:main", "annotate", "sample items, build preference pairs", True
    ),
    Command(("annotate",), "vital_hub.preferences.serve:main", "annotate", "serve the clinician annotation app", True),
    Command(("select",), "vital_hub.select_cli:main", "train", "score candidates and keep the top ones"),
    Command(
        ("convert", "llava-original"),
        "vital_hub.convert.cli:llava_original_main",
        "train",
        "convert an original-LLaVA checkpoint to transformers",
    ),
    Command(("eval",), "vital_hub.eval.cli:main", "eval", "answer, judge and score evaluation sets", True),
    Command(
        ("audit", "contamination"),
        "vital_hub.audit.cli:contamination_main",
        "audit",
        "find evaluation figures and texts inside training mixtures",
    ),
)


# Optional modules a command imports, checked before it starts (a judge run that dies on a missing plotting
# library after every paid request is the failure this prevents). The command's extra installs them all;
# commands whose needs depend on their options (the sample encoder, the answer backend) check those themselves.
NEEDS: dict[tuple[str, ...], tuple[str, ...]] = {
    ("fetch", "figures"): ("aiohttp",),
    ("generate", "candidates"): ("openai",),
    ("generate", "collect"): ("openai",),
    ("generate", "reference-answers"): ("openai",),
    ("judge", "rubric"): ("openai", "matplotlib"),
    ("preferences", "sample"): ("numpy", "sklearn", "matplotlib"),
    ("annotate", "serve"): ("fastapi", "uvicorn"),
    ("select",): ("torch", "transformers", "accelerate"),
    ("convert", "llava-original"): ("torch", "transformers", "safetensors", "sentencepiece", "google.protobuf"),
    ("eval", "chat"): ("openai", "numpy"),
    ("eval", "winrate"): ("openai", "numpy"),
    ("eval", "report"): ("matplotlib",),
    ("audit", "contamination"): ("imagehash", "numpy", "matplotlib"),  # and cv2 unless --no-verify: it checks
}


def needs(command: Command, rest: list[str]) -> tuple[str, ...]:
    words = command.words + ((rest[0],) if command.subcommands and rest else ())
    return NEEDS.get(words, ())


def _input_errors() -> tuple[type[BaseException], ...]:
    """Errors that mean "the input or the service is wrong", reported without a traceback (VITAL_DEBUG=1 shows it).
    ValueError covers RecordError and the Hub client's validation errors; OSError covers missing files and
    HTTP failures; FatalAPIError is a model server refusing the key, the model or every request."""
    from vital_hub.cli_args import ModuleMissing
    from vital_hub.generation.client import FatalAPIError
    from vital_hub.hub import HubError

    return (ValueError, OSError, HubError, FatalAPIError, ModuleMissing)


def find_command(argv: list[str]) -> tuple[Command, list[str]] | None:
    """The command whose words are the longest prefix of argv, and the remaining arguments."""
    matches = [c for c in COMMANDS if tuple(argv[: len(c.words)]) == c.words]
    if not matches:
        return None
    best = max(matches, key=lambda c: len(c.words))
    return best, argv[len(best.words) :]


def load(command: Command):
    module_name, function_name = command.target.split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if command.extra and err.name and not err.name.startswith("vital_hub"):
            raise ModuleMissing(install_hint([err.name], command.extra)) from err
        raise
    return getattr(module, function_name)


def program(command: Command, rest: list[str]) -> str:
    """`vital eval chat`, `vital push`: the command as the user typed it, for error lines."""
    words = list(command.words)
    if command.subcommands and rest and not rest[0].startswith("-"):
        words.append(rest[0])
    return "vital " + " ".join(words)


def usage(commands=COMMANDS, synopsis: str = "vital COMMAND [ARGS...]") -> str:
    width = max(len(" ".join(c.words)) for c in commands)
    lines = [f"usage: {synopsis}  (vital COMMAND --help for its options)", "", "commands:"]
    lines += [f"  {' '.join(c.words):<{width}}  {c.help}" for c in commands]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    if argv[0] == "--version":
        from vital_hub import __version__

        print(__version__)
        return 0
    found = find_command(argv)
    if found is None:
        group = [c for c in COMMANDS if len(c.words) > 1 and c.words[0] == argv[0]]
        if group and (len(argv) == 1 or argv[1] in ("-h", "--help")):  # `vital build --help`
            print(usage(group, f"vital {argv[0]} COMMAND [ARGS...]"))
            return 0
        print(f"vital: unknown command {' '.join(argv[:2])!r}\n\n{usage(group or COMMANDS)}", file=sys.stderr)
        return 2
    command, rest = found
    asks_help = any(arg in ("-h", "--help") for arg in rest)
    if not asks_help and (missing := missing_modules(needs(command, rest))):
        extra = command.extra or "dev"
        print(f"{program(command, rest)}: error: {install_hint(missing, extra)}", file=sys.stderr)
        return 1
    return run_reporting_errors(program(command, rest), lambda: load(command)(rest))


def run_reporting_errors(name: str, function) -> int:
    """Run `function()`; bad input or an unreachable service becomes one line `NAME: error: ...` and exit status 1
    (VITAL_DEBUG=1 shows the traceback). Shared by the `vital` commands and the recipes."""
    try:
        return int(function() or 0)
    except SystemExit as stop:
        if not isinstance(stop.code, str) or os.environ.get("VITAL_DEBUG"):
            raise  # argparse's exits (usage printed, code 2), --help (0) and plain exit codes pass through
        # a command stopping with a reason (`raise SystemExit("...")`): the same one line as any input error
        reason = stop.code.removeprefix(f"{name}: ").removeprefix("error: ")
        print(redact_environment(f"{name}: error: {reason}"), file=sys.stderr)
        return 1
    except BrokenPipeError:
        # the reader went away (`vital sources list | head`): stop quietly, as other command-line tools do, and
        # point stdout at /dev/null so the interpreter's last flush does not raise again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except RecursionError:
        if os.environ.get("VITAL_DEBUG"):
            raise
        # every reader names its file when it sees absurd nesting; this is the net under one that does not
        print(f"{name}: error: an input is nested too deeply to read", file=sys.stderr)
        return 1
    except _input_errors() as err:
        if os.environ.get("VITAL_DEBUG"):
            raise
        # Bad input or an unreachable service: one line naming the file, record or repo and the reason.
        # Every stage writes finished work as it goes, so re-running the same command resumes. A server may have
        # echoed a credential into the message: it is redacted here once more, whatever raised it.
        print(redact_environment(f"{name}: error: {err}"), file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
