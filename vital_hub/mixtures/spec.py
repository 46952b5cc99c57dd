"""Mixtures as data: which components exist, which source file each is read from, and how configs combine them.

The released sets are fixed here (the README of https://github.com/mao1207/BioMed-VITAL): `60k` and `80k` are
BioMed-VITAL selections, `150k` = 80k + LLaVA-Med 10K + LLaVA-Med 60K, `210k` = 150k + the 60K selection. Users add components (any LLaVA
JSON file, for instance a `vital select` output) and mixtures (components with fractions and a seed) in YAML.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from vital_hub.io import read_text

# Which LLaVA-Med 60K file went into the released 150K is not published. LLaVA-Med's own stage-2 default is the
# plain file; `--llava-med-60k-file llava_med_instruct_60k_inline_mention.json` selects the other, and
# `vital verify` tells which one a released file matches.
DEFAULT_LLAVA_MED_60K_FILE = "llava_med_instruct_60k.json"
LLAVA_MED_60K_FILES = (DEFAULT_LLAVA_MED_60K_FILE, "llava_med_instruct_60k_inline_mention.json")
NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]*$")


@dataclass(frozen=True)
class Component:
    """One source of records, stored once as parquet shards under data/<name>/."""

    name: str
    file_name: str
    description: str
    licence: str

    def __post_init__(self):
        if not NAME_PATTERN.match(self.name):
            raise ValueError(f"component name {self.name!r} must be lower-case letters, digits, '.', '_' or '-'")


@dataclass(frozen=True)
class Part:
    """A component in a mixture: a seeded `fraction` of its rows, after dropping the rows whose id is in
    `exclude_ids` (for instance the rows `vital audit contamination` flags as overlapping an evaluation set)."""

    component: str
    fraction: float = 1.0
    exclude_ids: tuple[str, ...] = ()

    def __post_init__(self):
        if not 0 < self.fraction <= 1:
            raise ValueError(f"fraction of {self.component!r} must be in (0, 1], got {self.fraction}")
        object.__setattr__(self, "exclude_ids", tuple(sorted({str(i) for i in self.exclude_ids})))

    @property
    def is_whole(self) -> bool:
        """Every row of the component, so a config can list the component's own shards."""
        return self.fraction == 1.0 and not self.exclude_ids


@dataclass(frozen=True)
class Mixture:
    """A dataset config: its rows are the parts' rows, in the order the parts are listed."""

    name: str
    parts: tuple[Part, ...]
    description: str = ""
    seed: int = 0

    def __post_init__(self):
        if not NAME_PATTERN.match(self.name):
            raise ValueError(f"mixture name {self.name!r} must be lower-case letters, digits, '.', '_' or '-'")
        names = [p.component for p in self.parts]
        if not names:
            raise ValueError(f"mixture {self.name!r} has no components")
        if len(set(names)) != len(names):
            raise ValueError(f"mixture {self.name!r} lists a component twice: {names}")


BIOMED_VITAL_LICENCE = (
    "released by the BioMed-VITAL authors for research use; figures are PMC Open Access, per-article licences"
)
LLAVA_MED_LICENCE = "LLaVA-Med data: research use only (Microsoft Research licence terms); PMC OA per-article licences"


def builtin_components(llava_med_60k_file: str = DEFAULT_LLAVA_MED_60K_FILE) -> dict[str, Component]:
    if llava_med_60k_file not in LLAVA_MED_60K_FILES:
        raise ValueError(f"unknown LLaVA-Med 60K file {llava_med_60k_file!r}; known: {list(LLAVA_MED_60K_FILES)}")
    components = [
        Component(
            "biomed-vital-60k",
            "BioMed-VITAL-instructions-60K.json",
            "BioMed-VITAL 60K selection (the intermediate set selected by the distilled model)",
            BIOMED_VITAL_LICENCE,
        ),
        Component(
            "biomed-vital-80k",
            "BioMed-VITAL-instructions-80K.json",
            "BioMed-VITAL 80K selection (clinician-preference-aligned)",
            BIOMED_VITAL_LICENCE,
        ),
        Component("llava-med-10k", "llava_med_instruct_10k.json", "LLaVA-Med instruct 10K", LLAVA_MED_LICENCE),
        Component(
            "llava-med-60k", llava_med_60k_file, f"LLaVA-Med instruct 60K ({llava_med_60k_file})", LLAVA_MED_LICENCE
        ),
    ]
    return {c.name: c for c in components}


def builtin_mixtures() -> dict[str, Mixture]:
    parts_150k = (Part("biomed-vital-80k"), Part("llava-med-10k"), Part("llava-med-60k"))
    mixtures = [
        Mixture("60k", (Part("biomed-vital-60k"),), "BioMed-VITAL 60K selection"),
        Mixture("80k", (Part("biomed-vital-80k"),), "BioMed-VITAL 80K selection"),
        Mixture("150k", parts_150k, "80K + LLaVA-Med 10K + LLaVA-Med 60K"),
        Mixture("210k", (*parts_150k, Part("biomed-vital-60k")), "150K + the 60K selection"),
    ]
    return {m.name: m for m in mixtures}


@dataclass
class MixturePlan:
    """Everything a build needs to know: the components to store and the configs to declare."""

    components: dict[str, Component] = field(default_factory=builtin_components)
    mixtures: dict[str, Mixture] = field(default_factory=builtin_mixtures)

    def validate(self) -> None:
        for mixture in self.mixtures.values():
            unknown = [p.component for p in mixture.parts if p.component not in self.components]
            if unknown:
                raise ValueError(
                    f"mixture {mixture.name!r} uses unknown components {unknown}; known: {sorted(self.components)}"
                )

    def used_components(self) -> list[str]:
        """Components some config uses, in the order they are first named."""
        seen: dict[str, None] = {}
        for mixture in self.mixtures.values():
            for part in mixture.parts:
                seen.setdefault(part.component)
        return list(seen)


def load_plan(
    yaml_path: str | Path | None = None,
    llava_med_60k_file: str = DEFAULT_LLAVA_MED_60K_FILE,
    only_configs: list[str] | None = None,
) -> MixturePlan:
    """The built-in plan, extended by a user YAML::

    components:
      my-selection: {file: selected.json, description: "top 20% by my selector", licence: "CC-BY-4.0"}
    mixtures:
      - name: 80k-plus-mine
        seed: 0
        components: [{name: biomed-vital-80k, exclude_ids: ["32432162_F1"]}, {name: my-selection, fraction: 0.5}]
    only: [80k, 80k-plus-mine]   # optional: build just these configs
    """
    plan = MixturePlan(components=builtin_components(llava_med_60k_file))
    if yaml_path is not None:
        yaml_only = _extend_plan(plan, Path(yaml_path))
        if yaml_only:
            _keep_only(plan, yaml_only, f"{yaml_path}: ")
    if only_configs:
        _keep_only(plan, only_configs)
    plan.validate()
    return plan


def _keep_only(plan: MixturePlan, names: list[str], where: str = "") -> None:
    unknown = sorted(set(names) - set(plan.mixtures))
    if unknown:
        raise ValueError(f"{where}unknown configs {unknown}; known: {sorted(plan.mixtures)}")
    plan.mixtures = {name: plan.mixtures[name] for name in names}


def _extend_plan(plan: MixturePlan, path: Path) -> list[str] | None:
    """Add the YAML's components and mixtures to `plan`; returns its `only` list (None when absent).

    A name the plan already has (a built-in config such as `80k`, a built-in component, or a name the YAML gives
    twice) is an error: taking the later one would silently change what a released config name means."""
    try:
        data = yaml.safe_load(read_text(path)) or {}
    except (OSError, yaml.YAMLError) as err:
        raise ValueError(f"{path}: cannot read mixture YAML: {err}") from err
    except RecursionError:
        raise ValueError(f"{path}: cannot read mixture YAML: nested too deeply") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping with components, mixtures, only; got {type(data).__name__}")
    unknown_keys = sorted(set(data) - {"components", "mixtures", "only"})
    if unknown_keys:
        raise ValueError(f"{path}: unknown keys {unknown_keys}; expected components, mixtures, only")
    components = data.get("components") or {}
    if not isinstance(components, dict):
        raise ValueError(f"{path}: 'components' must map names to {{file, description, licence}}")
    builtin = set(plan.components)
    for name, spec in components.items():
        spec = spec or {}
        if not isinstance(spec, dict) or sorted(set(spec) - {"file", "description", "licence"}) or "file" not in spec:
            raise ValueError(
                f"{path}: component {name!r} needs 'file' (and may have description, licence); got {spec!r:.200}"
            )
        if str(name) in builtin:
            raise ValueError(f"{path}: component {name!r} is a built-in component; give yours another name")
        try:
            component = Component(
                str(name), str(spec["file"]), str(spec.get("description", "")), str(spec.get("licence", "see source"))
            )
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from None
        plan.components[component.name] = component
    mixtures = data.get("mixtures") or []
    if not isinstance(mixtures, list):
        raise ValueError(f"{path}: 'mixtures' must be a list of {{name, components, seed, description}}")
    builtin, named = set(plan.mixtures), set()
    for index, spec in enumerate(mixtures):
        mixture = _mixture(path, index, spec)
        if mixture.name in builtin:
            raise ValueError(
                f"{path}: mixture {index} is named {mixture.name!r}, a released config; give yours another name"
            )
        if mixture.name in named:
            raise ValueError(f"{path}: mixture {index}: a mixture named {mixture.name!r} is already defined above")
        named.add(mixture.name)
        plan.mixtures[mixture.name] = mixture
    only = data.get("only")
    if only is not None and not (isinstance(only, list) and all(isinstance(n, str) for n in only)):
        raise ValueError(f"{path}: 'only' must be a list of config names, got {only!r:.200}")
    return only


def _mixture(path: Path, index: int, spec: object) -> Mixture:
    if not isinstance(spec, dict) or "name" not in spec:
        raise ValueError(f"{path}: mixture {index} needs a name and components; got {spec!r:.200}")
    extra = sorted(set(spec) - {"name", "components", "seed", "description"})
    if extra:
        raise ValueError(f"{path}: mixture {index} has unknown keys {extra}")
    listed = spec.get("components") or []
    if not isinstance(listed, list):
        raise ValueError(f"{path}: components of mixture {spec['name']!r} must be a list")
    parts = tuple(_part(path, spec["name"], p) for p in listed)
    seed = spec.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"{path}: seed of mixture {spec['name']!r} must be a whole number >= 0, got {seed!r}")
    try:
        return Mixture(str(spec["name"]), parts, str(spec.get("description", "")), seed)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None


def _part(path: Path, mixture: object, spec: object) -> Part:
    if not isinstance(spec, dict) or "name" not in spec or set(spec) - {"name", "fraction", "exclude_ids"}:
        raise ValueError(
            f"{path}: a component of mixture {mixture!r} needs 'name' (and may have fraction, exclude_ids); "
            f"got {spec!r:.200}"
        )
    excluded = spec.get("exclude_ids") or []
    if not isinstance(excluded, list) or not all(isinstance(i, str | int) for i in excluded):
        raise ValueError(f"{path}: exclude_ids of {spec['name']!r} in mixture {mixture!r} must be a list of row ids")
    fraction = spec.get("fraction", 1.0)
    if isinstance(fraction, bool) or not isinstance(fraction, int | float):
        raise ValueError(
            f"{path}: fraction of {spec['name']!r} in mixture {mixture!r} must be a number, got {fraction!r}"
        )
    try:
        return Part(str(spec["name"]), float(fraction), tuple(excluded))
    except ValueError as err:
        raise ValueError(f"{path}: mixture {mixture!r}: {err}") from None
