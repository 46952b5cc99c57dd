"""The offline family model builders share their pieces from one module (`family_kit`), not copies of them."""

import ast
from pathlib import Path

import vital_hub.training.family_kit as kit

TRAINING = Path(kit.__file__).parent
BUILDER_MODULES = ("family_models.py", "family_models_recent.py")
# Source fragments of the shared pieces; each may be spelt out only in family_kit.
SHARED_FRAGMENTS = (
    '"<row_{i}_col_{j}>"',  # the tile-position tokens
    "for i in range(1, 3) for j in range(1, 3)",  # the anyres pinpoints
    '"Qwen2VLImageProcessor")',  # Qwen's image processor class
    '"intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2',  # the tiny vision tower
)


def top_level_names(path: Path) -> set[str]:
    names = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.FunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(target.id for target in node.targets if isinstance(target, ast.Name))
    return names


def test_builders_define_nothing_family_kit_defines():
    shared = top_level_names(TRAINING / "family_kit.py")
    for module in BUILDER_MODULES:
        assert not shared & top_level_names(TRAINING / module), module


def test_shared_pieces_are_spelt_out_only_in_family_kit():
    for module in BUILDER_MODULES:
        text = (TRAINING / module).read_text(encoding="utf-8")
        assert [fragment for fragment in SHARED_FRAGMENTS if fragment in text] == [], module
    kit_text = (TRAINING / "family_kit.py").read_text(encoding="utf-8")
    assert all(fragment in kit_text for fragment in SHARED_FRAGMENTS)
