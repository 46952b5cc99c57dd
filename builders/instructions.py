"""Build and publish the `biomed-vital/instructions` dataset: the released 60k/80k/150k/210k mixtures.

    python builders/instructions.py --config builders/instructions.yaml
    python builders/instructions.py --config builders/instructions.yaml --push-to biomed-vital/instructions

Re-running the same command resumes: verified sources are not fetched again, finished components are reused,
and an interrupted upload continues.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from vital_hub.config import help_field, parse_config
from vital_hub.mixtures.cli import InstructionsBuildConfig


@dataclass
class InstructionsArtifact(InstructionsBuildConfig):
    """The options of `vital build instructions`, plus fetching the sources first and publishing the result."""

    fetch_sources: bool = help_field("download missing sources with `vital sources fetch` first", default=True)
    push_to: str | None = help_field("Hub dataset repo id to upload to (HF_TOKEN from the environment)", default=None)
    private: bool = help_field("create the Hub repo private", default=False)


def main(argv: list[str] | None = None) -> int:
    artifact = parse_config(
        InstructionsArtifact,
        sys.argv[1:] if argv is None else argv,
        "builders/instructions.py",
        __doc__.splitlines()[0],
    )

    from vital_hub import sources
    from vital_hub.mixtures.cli import print_summary

    plan = artifact.plan()
    folder = Path(artifact.sources)

    # ---------------------------------------------------------------- sources
    if artifact.fetch_sources:
        wanted = [plan.components[name].file_name for name in plan.used_components()]
        folder.mkdir(parents=True, exist_ok=True)
        for name in wanted:
            if name in sources.SOURCES:  # user components are local files, not released ones
                sources.fetch_source(
                    sources.get_source(name), folder, folder / sources.LOCK_NAME, artifact.allow_unverified
                )

    # ---------------------------------------------------------------- build
    print_summary(artifact.build(plan))

    # ---------------------------------------------------------------- publish
    if artifact.push_to:
        from vital_hub.hub import push_folder

        print(push_folder(artifact.out, artifact.push_to, repo_type="dataset", private=artifact.private))
    return 0


if __name__ == "__main__":
    sys.exit(main())
