"""The registry of released source files: each one's origin, path, size and published sha256, the groups
`vital sources fetch` takes, and the errors a missing or wrong file raises.

Downloading, the lock file and verifying live in `vital_hub.sources`, which re-exports these names.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

HUB_REPO = "mao1207/BioMed-VITAL-instructions"
GITHUB_REPO = "microsoft/LLaVA-Med"
GITHUB_MEDIA_BASE = f"https://media.githubusercontent.com/media/{GITHUB_REPO}/main"
GITHUB_BASE_ENV = "VITAL_GITHUB_MEDIA_BASE"


class SourceError(ValueError):
    """A source file that is missing, the wrong size or has the wrong checksum; the message names the file."""


class ChecksumMismatch(SourceError):
    def __init__(self, path: Path | str, expected: str, actual: str, where: str):
        self.path, self.expected, self.actual = Path(path), expected, actual
        super().__init__(
            f"{path}: sha256 mismatch: expected {expected} ({where}), got {actual}. "
            "The file is not the released one: delete it and fetch again, or pass --allow-unverified to use it anyway."
        )


@dataclass(frozen=True)
class SourceFile:
    """One released file. `size` and `sha256` are None where nobody has published them."""

    name: str
    origin: str  # "hub" or "github"
    path: str  # path inside the repo
    description: str
    size: int | None = None
    approx_size: str | None = None
    sha256: str | None = None

    @property
    def repo(self) -> str:
        return HUB_REPO if self.origin == "hub" else GITHUB_REPO

    def url(self, github_base: str | None = None) -> str:
        if self.origin == "hub":
            return f"hf://datasets/{HUB_REPO}/{self.path}"
        return f"{github_media_base(github_base)}/{self.path}"

    @property
    def size_text(self) -> str:
        return f"{self.size:,}" if self.size is not None else f"~{self.approx_size}"


def _hub(name: str, approx: str, description: str) -> SourceFile:
    return SourceFile(name=name, origin="hub", path=name, approx_size=approx, description=description)


def _github(path: str, size: int, sha256: str, description: str) -> SourceFile:
    return SourceFile(
        name=path.rsplit("/", 1)[-1], origin="github", path=path, size=size, sha256=sha256, description=description
    )


SOURCES: dict[str, SourceFile] = {
    source.name: source
    for source in (
        _hub("BioMed-VITAL-instructions-60K.json", "127 MB", "BioMed-VITAL 60K selection (config 60k)"),
        _hub("BioMed-VITAL-instructions-80K.json", "156 MB", "BioMed-VITAL 80K selection (config 80k)"),
        _hub("BioMed-VITAL-instructions-150K.json", "309 MB", "released 150K mixture (for vital verify)"),
        _hub("BioMed-VITAL-instructions-210K.json", "463 MB", "released 210K mixture (for vital verify)"),
        _github(
            "data/instruct/llava_med_instruct_10k.json",
            20_176_754,
            "84f75c2b83404fe7dd1631212b4ad73228a0dad77bb819ab29c511a535a279c8",
            "LLaVA-Med 10K instructions",
        ),
        _github(
            "data/instruct/llava_med_instruct_60k.json",
            88_758_916,
            "cf84c82fb58e391d6cf198e2657b6fc8584a180509b8813c3604ce46f6275c19",
            "LLaVA-Med 60K instructions",
        ),
        _github(
            "data/instruct/llava_med_instruct_60k_inline_mention.json",
            87_669_379,
            "b3649f4193a51215aee4519b44d8436a4200e182d6a78a3cb78672d97bea948a",
            "LLaVA-Med 60K instructions, in-text mention variant",
        ),
        _github(
            "data/instruct/llava_med_instruct_fig_captions.json",
            169_224_662,
            "1d58b7befd2687695cbba04e4f51fd648899b25f4f567815eb49538faf6f07fb",
            "figure captions and in-text mentions, by domain",
        ),
        _github(
            "data/llava_med_image_urls.jsonl",
            128_785_989,
            "2604441ec3d1f6324d21846cfd44f92eab29454beed1da42a98d943b41731e44",
            "PMC image URL per pair_id (legacy tarball paths)",
        ),
        _github(
            "data/eval/llava_med_eval_qa50_qa.jsonl",
            262_328,
            "48c6b680a962dbf8caf63e3ded2bef7770dccf9c2602f32e5f05f4b907266f25",
            "qa50 open visual chat questions",
        ),
    )
}

GROUPS: dict[str, tuple[str, ...]] = {
    "build": (
        "BioMed-VITAL-instructions-60K.json",
        "BioMed-VITAL-instructions-80K.json",
        "llava_med_instruct_10k.json",
        "llava_med_instruct_60k.json",
        "llava_med_instruct_60k_inline_mention.json",
    ),
    "released": ("BioMed-VITAL-instructions-150K.json", "BioMed-VITAL-instructions-210K.json"),
    "figures": ("llava_med_instruct_fig_captions.json", "llava_med_image_urls.jsonl"),
    "eval": ("llava_med_eval_qa50_qa.jsonl",),
    "all": tuple(SOURCES),
}
DEFAULT_GROUP = "build"


def get_source(name: str) -> SourceFile:
    try:
        return SOURCES[name]
    except KeyError:
        raise SourceError(f"unknown source file {name!r}; known: {', '.join(SOURCES)}") from None


def expand_names(names: list[str]) -> list[SourceFile]:
    """Source files for names and group names (build, released, figures, eval, all), in order, once each."""
    chosen: dict[str, SourceFile] = {}
    for name in names or [DEFAULT_GROUP]:
        if name in GROUPS:
            chosen.update({n: SOURCES[n] for n in GROUPS[name]})
        else:
            chosen[name] = get_source(name)
    return list(chosen.values())


def github_media_base(override: str | None = None) -> str:
    return (override or os.environ.get(GITHUB_BASE_ENV) or GITHUB_MEDIA_BASE).rstrip("/")
