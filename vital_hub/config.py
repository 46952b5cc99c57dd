"""Command options as dataclasses: defaults in the class, then a YAML file (`--config`), then command-line flags.

Flags are generated from the dataclass fields (help from `field(metadata={"help": ...})`), so a command's YAML
keys and flags can never drift apart; unknown YAML keys and missing required options are errors that name them;
the dataclass's own `__post_init__` validation reports through the parser.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import types
import typing
from pathlib import Path

import yaml

from vital_hub.cli_args import FLAG_NAMES, check_for
from vital_hub.io import read_text


def help_field(text: str, *, choices: tuple | None = None, **kwargs):
    """A dataclass field with a help text for its flag (and the values it takes, when not listed as `a | b`)."""
    metadata = {"help": text, **({"choices": choices} if choices else {})}
    return dataclasses.field(metadata=metadata, **kwargs)


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


def _converter(item: dataclasses.Field, kind: type):
    """What turns a flag's text (or a YAML value) into the field's value: its own check, its concept's rule
    (`vital_hub.cli_args.OPTION_CHECKS`), else the type."""
    return item.metadata.get("check") or check_for(item.name, kind) or kind


def _help_text(item: dataclasses.Field) -> str:
    text = item.metadata.get("help", "")
    if _is_required(item):
        return text + " [required]"
    if "default" in text.lower():  # the help already says it
        return text
    default = item.default if item.default is not dataclasses.MISSING else item.default_factory()
    return text if default is None else f"{text} (default: {default})"  # "default: None" says nothing


# "mode: conversation | dual-answer (...)": a help text that lists the values is the list argparse checks
_LISTED = re.compile(r"^(?:[^|]*?: )?([\w.-]+(?: \| [\w.-]+)+)(?:[ ,(]|$)")


def choices_of(item: dataclasses.Field) -> tuple | None:
    """The values a field takes: its metadata's `choices`, else those its help lists as `a | b | c`."""
    if item.metadata.get("choices"):
        return tuple(item.metadata["choices"])
    found = _LISTED.match(item.metadata.get("help", ""))
    return tuple(found.group(1).split(" | ")) if found else None


def flag_of(item: dataclasses.Field) -> str:
    """The flag of a field: its concept's one spelling (`vital_hub.cli_args.FLAG_NAMES`), else from its name."""
    return item.metadata.get("flag") or FLAG_NAMES.get(item.name) or "--" + item.name.replace("_", "-")


def _old_flags(item: dataclasses.Field) -> list[str]:
    """Spellings kept for one release: the one derived from the field's name when the concept's differs."""
    derived = "--" + item.name.replace("_", "-")
    return [flag for flag in (derived, *item.metadata.get("aliases", ())) if flag != flag_of(item)]


def dataclass_parser(cls, prog: str, description: str) -> argparse.ArgumentParser:
    """An argparse parser with one flag per field of `cls` (plus `--config`); unset flags are left out.
    A field's metadata may give `choices`, `check` (a `vital_hub.cli_args` function), `flag` and `aliases`
    (old spellings, accepted but hidden from --help)."""
    parser = argparse.ArgumentParser(prog=prog, description=description, argument_default=argparse.SUPPRESS)
    parser.add_argument("--config", help="YAML file of these options (flags override it)")
    hints = typing.get_type_hints(cls)
    for item in dataclasses.fields(cls):
        kind, many = _flag_type(hints[item.name])
        options: dict = {"dest": item.name}
        if kind is bool:
            options["action"] = argparse.BooleanOptionalAction
        else:
            options["type"] = _converter(item, kind)
            if many:
                options["nargs"] = "*"
            if choices := choices_of(item):
                options["choices"] = choices
        parser.add_argument(flag_of(item), help=_help_text(item), **options)
        for alias in _old_flags(item):
            parser.add_argument(alias, help=argparse.SUPPRESS, **options)
    return parser


def _yaml_value(item: dataclasses.Field, annotation, value):
    """A value read from a YAML option file, checked as its flag would be (`workers: two` is an error)."""
    kind, many = _flag_type(annotation)
    if value is None:
        if type(None) in typing.get_args(annotation) or item.default is None:
            return None
        raise argparse.ArgumentTypeError("expected a value, got null")
    if many:
        values = value if isinstance(value, list) else [value]
        return [_yaml_value(item, kind, one) for one in values]
    if kind is bool:
        if not isinstance(value, bool):
            raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")
        return value
    if isinstance(value, dict | list):
        raise argparse.ArgumentTypeError(f"expected a single value, got a {type(value).__name__}")
    if kind in (str, Path) and isinstance(value, int | float):
        value = str(value)
    converted = _converter(item, kind)(value)
    choices = choices_of(item)
    if choices and converted not in choices:
        raise argparse.ArgumentTypeError(f"invalid choice: {converted!r} (choose from {', '.join(choices)})")
    return converted


def check_yaml_options(values: dict, cls, path: str | Path) -> dict:
    """The YAML options converted and checked field by field; the first bad one is an error naming it."""
    hints = typing.get_type_hints(cls)
    fields = {item.name: item for item in dataclasses.fields(cls)}
    checked = {}
    for name, value in values.items():
        try:
            checked[name] = _yaml_value(fields[name], hints[name], value)
        except argparse.ArgumentTypeError as err:
            raise ValueError(f"{path}: option {name}: {err}") from None
    return checked


def read_yaml_options(path: str | Path, cls) -> dict:
    """The options in a YAML file, keys spelled with '_' or '-'; unknown keys are an error naming the file."""
    try:
        loaded = yaml.safe_load(read_text(path)) or {}
    except (OSError, yaml.YAMLError) as err:
        raise ValueError(f"{path}: cannot read options: {err}") from err
    except RecursionError:
        raise ValueError(f"{path}: cannot read options: nested too deeply") from None
    if not isinstance(loaded, dict):
        raise ValueError(f"{path}: expected a mapping of options, got {type(loaded).__name__}")
    # a key is spelled as the field, or as its flag (current or old), with '_' or '-'
    spellings = {}
    for item in dataclasses.fields(cls):
        for flag in (flag_of(item), *_old_flags(item)):
            spellings[flag[2:].replace("-", "_")] = item.name
        spellings[item.name] = item.name
    keys = [str(key).replace("-", "_") for key in loaded]
    unknown = sorted(key for key in keys if key not in spellings)
    if unknown:
        known = sorted({flag_of(item)[2:].replace("-", "_") for item in dataclasses.fields(cls)})
        raise ValueError(f"{path}: unknown keys {unknown}; known: {known}")
    values = {}
    for key, value in zip(keys, loaded.values(), strict=True):
        if spellings[key] in values:
            raise ValueError(f"{path}: {key!r} repeats an option given above under another spelling")
        values[spellings[key]] = value
    return check_yaml_options(values, cls, path)


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
    missing = [flag_of(f) for f in dataclasses.fields(cls) if _is_required(f) and f.name not in values]
    if missing:
        parser.error(f"missing required options: {', '.join(missing)}")
    try:
        return cls(**values)
    except (TypeError, ValueError) as err:
        parser.error(str(err))
