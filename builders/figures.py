"""Build and publish the `figures` dataset: every PMC figure of the image list, fetched from PMC's 2026 layout.

    python builders/figures.py --config builders/figures.yaml
    python builders/figures.py --config builders/figures.yaml --shard 3/16     # one job of a Slurm array
    python builders/figures.py --config builders/figures.yaml --push-to biomed-vital/figures

Re-running the same command resumes the fetch (finished figures are skipped; `--retry-failed` retries failures),
then rebuilds the `figures` config from the index. With `--shard`, the config is built (and pushed) only by the
run that finds every shard of the split finished; the other runs fetch their shard, say which shards are still
unfinished, and exit 0.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path

from vital_hub.config import help_field, parse_config
from vital_hub.figures.options import FetchConfig


@dataclass
class FiguresArtifact(FetchConfig):
    """The options of `vital fetch figures`, plus building the Hub config and publishing it."""

    repo: str = help_field("dataset repo folder that receives the `figures` config", default="figures-repo")
    captions: str | None = help_field("llava_med_instruct_fig_captions.json, for captions and mentions", default=None)
    push_to: str | None = help_field("Hub dataset repo id to upload to (HF_TOKEN from the environment)", default=None)
    private: bool = help_field("create the Hub repo private", default=False)


def main(argv: list[str] | None = None) -> int:
    artifact = parse_config(
        FiguresArtifact, sys.argv[1:] if argv is None else argv, "builders/figures.py", __doc__.splitlines()[0]
    )

    # ---------------------------------------------------------------- fetch
    from vital_hub.figures.pipeline import run_fetch, summary_table

    fetch = FetchConfig(**{f.name: getattr(artifact, f.name) for f in dataclasses.fields(FetchConfig)})
    print(summary_table(run_fetch(fetch)))

    # ---------------------------------------------------------------- build the config
    from vital_hub.figures.dataset import BuildOptions, build_figures, unfinished_shards

    unfinished = unfinished_shards(Path(artifact.out))
    if unfinished:
        names = ", ".join(unfinished[:10]) + (", ..." if len(unfinished) > 10 else "")
        print(
            f"figures config of {artifact.repo} not built yet: {len(unfinished)} fetch shard(s) unfinished "
            f"({names}); the run that finishes the last of them builds (and pushes) it"
        )
        return 0
    print(build_figures(BuildOptions(index=artifact.out, out=artifact.repo, captions=artifact.captions)))

    # ---------------------------------------------------------------- publish
    if artifact.push_to:
        from vital_hub.hub import push_folder

        print(push_folder(artifact.repo, artifact.push_to, repo_type="dataset", private=artifact.private))
    return 0


if __name__ == "__main__":
    sys.exit(main())
