"""Command options as dataclasses: defaults in the class, then a YAML file (`--config`), then command-line flags.

Flags are generated from the dataclass fields (help from `field(metadata={"help": ...})`), so a command's YAML
keys and flags can never drift apart; unknown YAML keys and missing required options are errors that name them;
the dataclass's own `__post_init__` validation reports through the parser.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from pathlib import Path

import yaml

from vital_hub.io import read_text


def help_field(text: str, **kwargs):
    """A dataclass field with a help text for its flag."""
    return dataclasses.field(metadata={"help": text}, **kwargs)


def _flag_type(annotation) -> tuple[type, bool]:
    """The type a flag converts to and whether it takes several values: `list[str] | None` -> (str, True)."""
    if annotation in (list, tuple):
        return str, True
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        annotation = next(arg for arg in typing.get_args(annotation) if arg is not type(None))
        origin = typing.get_origin(annotation)
    if origin in (list, tuple):
        return typing.get_args(annotation)[0], True
    return annotation, False


def _is_required(item: dataclasses.Field) -> bool:
    return item.default is dataclasses.MISSING and item.default_factory is dataclasses.MISSING


def dataclass_parser(cls, prog: str, description: str) -> argparse.ArgumentParser:
    """An argparse parser with one flag per field of `cls` (plus `--config`); unset flags are left out."""
    parser = argparse.ArgumentParser(prog=prog, description=description, argument_default=argparse.SUPPRESS)
    parser.add_argument("--config", help="YAML file of these options (flags override it)")
    hints = typing.get_type_hints(cls)
    for item in dataclasses.fields(cls):
        flag = "--" + item.name.replace("_", "-")
        kind, many = _flag_type(hints[item.name])
        if _is_required(item):
            suffix = " [required]"
        else:
            default = item.default if item.default is not dataclasses.MISSING else item.default_factory()
            suffix = f" (default: {default})"
        help_text = item.metadata.get("help", "") + suffix
        if kind is bool:
            parser.add_argument(flag, dest=item.name, action=argparse.BooleanOptionalAction, help=help_text)
        elif many:
            parser.add_argument(flag, dest=item.name, nargs="*", type=kind, help=help_text)
        else:
            parser.add_argument(flag, dest=item.name, type=kind, help=help_text)
    return parser


def read_yaml_options(path: str | Path, cls) -> dict:
    """The options in a YAML file, keys spelled with '_' or '-'; unknown keys are an error naming the file."""
    try:
        loaded = yaml.safe_load(read_text(path)) or {}
    except (OSError, yaml.YAMLError) as err:
        raise ValueError(f"{path}: cannot read options: {err}") from err
    if not isinstance(loaded, dict):
        raise ValueError(f"{path}: expected a mapping of options, got {type(loaded).__name__}")
    values = {str(key).replace("-", "_"): value for key, value in loaded.items()}
    known = {item.name for item in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"{path}: unknown keys {unknown}; known: {sorted(known)}")
    return values


def parse_config(cls, argv: list[str], prog: str, description: str):
    """An instance of `cls` from its defaults, then `--config` YAML, then the flags in argv."""
    parser = dataclass_parser(cls, prog, description)
    args = vars(parser.parse_args(argv))
    config_file = args.pop("config", None)
    values: dict = {}
    if config_file:
        try:
            values.update(read_yaml_options(config_file, cls))
        except ValueError as err:
            parser.error(str(err))
    values.update(args)
    missing = [
        "--" + f.name.replace("_", "-") for f in dataclasses.fields(cls) if _is_required(f) and f.name not in values
    ]
    if missing:
        parser.error(f"missing required options: {', '.join(missing)}")
    try:
        return cls(**values)
    except (TypeError, ValueError) as err:
        parser.error(str(err))
