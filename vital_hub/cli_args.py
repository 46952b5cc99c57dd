"""What an option value may be, checked where it is parsed: flags (argparse `type=`) and YAML option files alike.

Each check takes the text of a flag or the value a YAML file holds and returns the value, or raises
`argparse.ArgumentTypeError` with the reason, so argparse prints its usual one-line `error: argument --x: ...`.
Options are checked by concept: a name means one thing across every command (`workers`, `timeout_s`,
`test_fraction`...), so `OPTION_CHECKS` is the one place that says which values it takes.

`FLAG_NAMES` gives each concept one flag spelling; the old spellings stay accepted, hidden from `--help`, for one
release. `missing_modules` and `require` check a command's optional modules before it starts any work.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
from collections.abc import Callable

Check = Callable[[object], object]


def _number(value: object, kind: type) -> int | float:
    if isinstance(value, bool):
        raise argparse.ArgumentTypeError(f"expected a number, got {value!r}")
    if kind is int:
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        try:
            return int(str(value).strip().replace("_", ""))
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {value!r}") from None
    try:
        number = float(value) if isinstance(value, int | float) else float(str(value).strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {value!r}") from None
    if not math.isfinite(number):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {value!r}")
    return number


def whole_number(value: object) -> int:
    return _number(value, int)


def finite_float(value: object) -> float:
    return _number(value, float)


def _bounded(kind: type, low: float | None, high: float | None, low_open: bool, high_open: bool, name: str) -> Check:
    def check(value: object):
        number = _number(value, kind)
        too_low = low is not None and (number <= low if low_open else number < low)
        too_high = high is not None and (number >= high if high_open else number > high)
        if too_low or too_high:
            raise argparse.ArgumentTypeError(f"must be {name}, got {value!r}")
        return number

    check.__name__ = name.replace(" ", "_")
    return check


positive_int = _bounded(int, 0, None, True, False, "a whole number of at least 1")
non_negative_int = _bounded(int, 0, None, False, False, "a whole number of at least 0")
positive_float = _bounded(float, 0, None, True, False, "a number above 0")
non_negative_float = _bounded(float, 0, None, False, False, "a number of at least 0")
probability = _bounded(float, 0, 1, True, False, "a number above 0 and at most 1")
fraction = _bounded(float, 0, 1, False, True, "a fraction of at least 0 and below 1")
percent = _bounded(float, 0, 100, True, False, "a percentage above 0 and at most 100")
port = _bounded(int, 0, 65535, False, False, "a port number from 0 to 65535")


def count_upto(high: int) -> Check:
    """A positive count with a ceiling: a value far beyond any real run (10**20 samples per figure) would
    otherwise exhaust memory or never finish instead of failing."""
    return _bounded(int, 0, high, True, False, f"a whole number from 1 to {high:,}")


def seconds_upto(high: float) -> Check:
    return _bounded(float, 0, high, True, False, f"a number of seconds above 0 and at most {high:,g}")


# What each option name accepts, whatever the command: one concept, one rule. A float option not listed here is
# still refused when NaN or infinite; an int option not listed must still be a whole number.
OPTION_CHECKS: dict[str, Check] = {
    **dict.fromkeys(
        ("min_rounds", "limit", "max_tokens", "max_new_tokens",
         "max_prompt_tokens", "batch_max_requests", "flush_rows", "shard_rows", "rows_per_shard", "max_pixels",
         "batch_size", "chunk_size", "shard_size", "max_pairs", "sheet_top", "max_image_side",
         "image_max_side", "top"),
        positive_int,
    ),
    **dict.fromkeys(("max_retries", "seed", "max_distance"), non_negative_int),
    **dict.fromkeys(
        ("timeout", "timeout_s", "shard_mb", "max_image_mb", "max_archive_mb", "max_unpacked_mb", "max_held_mb",
         "backoff_max", "requests_per_minute", "tokens_per_minute", "clinician_weight", "max_shard_gb"),
        positive_float,
    ),
    **dict.fromkeys(("rate_limit", "backoff_base", "temperature", "image_weight"), non_negative_float),
    # ceilings far above any real run, below what exhausts a machine
    "samples": count_upto(1_000),
    "workers": count_upto(1_024),
    "num_workers": _bounded(int, 0, 1_024, False, False, "a whole number from 0 to 1,024"),  # 0: in the main process
    "concurrency": count_upto(100_000),
    "k": count_upto(10_000_000),
    "clusters": count_upto(10_000_000),
    "n": count_upto(1_000_000_000),
    "bootstrap": _bounded(int, 0, 1_000_000, False, False, "a whole number from 0 to 1,000,000"),
    "interval": seconds_upto(86_400),
    "session_hours": _bounded(float, 0, 24 * 366, True, False, "a number of hours above 0 and at most 8,784"),
    "top_p": probability,
    "test_fraction": fraction,
    "top_percent": percent,
    "port": port,
}  # fmt: skip


# One spelling per concept across commands, by the field names commands gave it; the field's own spelling stays
# accepted (hidden from --help) for one release.
FLAG_NAMES: dict[str, str] = {
    "image_folder": "--images",  # a folder of <pair_id>.jpg figures, as every other command calls it
    "image_max_side": "--max-image-side",
    "image_detail": "--detail",
    "out_dir": "--out",
    "cache_path": "--cache",  # one file caching requests or hashes, so a re-run does not redo them
    "hash_cache": "--cache",
    "timeout": "--timeout-s",
    "rows_per_shard": "--shard-rows",
}


def option_check(name: str) -> Check:
    """The check of the option `name`, for a parser written by hand."""
    return OPTION_CHECKS[name]


def check_for(name: str, kind: type) -> Check | None:
    """The check of an option: its concept's rule, else any whole / finite number for int / float options."""
    found = OPTION_CHECKS.get(name)
    if found is not None:
        return found
    return {int: whole_number, float: finite_float}.get(kind)


# the distribution that installs a module, where the names differ
PACKAGES = {"sklearn": "scikit-learn", "google.protobuf": "protobuf", "PIL": "pillow", "cv2": "opencv-python-headless"}


def missing_modules(modules: tuple[str, ...] | list[str]) -> list[str]:
    """The modules that cannot be imported, found without importing them (so checking costs nothing)."""
    missing = []
    for name in modules:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):  # a parent package missing, or an import hook refusing it
            found = False
        if not found:
            missing.append(name)
    return missing


def install_hint(missing: list[str], extra: str) -> str:
    packages = ", ".join(repr(PACKAGES.get(name, name)) for name in missing)
    return f"needs {packages}, not installed: pip install 'vital-hub[{extra}]'"


def require(modules: tuple[str, ...] | list[str], extra: str, why: str = "") -> None:
    """Stop with one line naming what is missing and the extra that installs it, before any work starts."""
    missing = missing_modules(modules)
    if missing:
        raise ModuleMissing(install_hint(missing, extra) + (f" ({why})" if why else ""))


class ModuleMissing(RuntimeError):
    """An optional module a command needs is not installed: reported as one error line by `vital`."""


class DefaultsOnce(argparse.HelpFormatter):
    """Help that states each option's default once: added where the help text does not already say it, left out
    for None, False and suppressed defaults (which say nothing)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            "default" in text.lower()
            or default in (None, False, argparse.SUPPRESS)
            or not action.option_strings
            or action.nargs == 0
        ):
            return text
        return f"{text} (default: %(default)s)" if text else "(default: %(default)s)"
