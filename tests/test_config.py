from dataclasses import dataclass, field

import pytest

from vital_hub.config import help_field, parse_config


@dataclass
class Options:
    source: str = help_field("where from")
    count: int = help_field("how many", default=3)
    ratio: float | None = None
    names: list[str] = field(default_factory=list)
    strict: bool = False

    def __post_init__(self):
        if self.count < 0:
            raise ValueError("count cannot be negative")


def parse(argv):
    return parse_config(Options, argv, "test", "test options")


def test_defaults_then_yaml_then_flags(tmp_path):
    config = tmp_path / "o.yaml"
    config.write_text("source: a\ncount: 5\nnames: [x, y]\nstrict: true\n")
    assert parse(["--config", str(config), "--count", "7", "--no-strict"]) == Options("a", 7, None, ["x", "y"], False)
    assert parse(["--source", "b", "--names", "p", "q", "--ratio", "0.5"]) == Options("b", 3, 0.5, ["p", "q"], False)


def test_yaml_keys_may_use_dashes(tmp_path):
    config = tmp_path / "o.yaml"
    config.write_text("source: a\nnames: [z]\n")
    assert parse(["--config", str(config)]).names == ["z"]


@pytest.mark.parametrize(
    ("yaml_text", "argv", "message"),
    [
        ("sourse: a\n", [], "unknown keys ['sourse']"),
        ("- a\n", [], "expected a mapping of options"),
        (None, [], "missing required options: --source"),
        (None, ["--source", "a", "--count", "-1"], "count cannot be negative"),
    ],
)
def test_errors_name_the_problem(tmp_path, capsys, yaml_text, argv, message):
    if yaml_text is not None:
        config = tmp_path / "o.yaml"
        config.write_text(yaml_text)
        argv = ["--config", str(config), *argv]
    with pytest.raises(SystemExit):
        parse(argv)
    assert message in capsys.readouterr().err


def test_help_shows_defaults_and_required(capsys):
    with pytest.raises(SystemExit):
        parse(["--help"])
    text = capsys.readouterr().out
    assert "where from [required]" in text and "how many (default: 3)" in text
