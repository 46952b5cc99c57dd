"""`vital fetch figures` and `vital build figures`: parse options, call the library, report.

vital fetch figures --urls llava_med_image_urls.jsonl --out figures/ --concurrency 32 --shard 0/4
vital build figures --index figures/ --out hub/figures-repo --captions llava_med_instruct_fig_captions.json
"""

from __future__ import annotations

from vital_hub.config import parse_config


def load_fetch_config(argv: list[str]):
    """Defaults, then the YAML file, then the flags; unknown YAML keys are an error, not a silent no-op."""
    from vital_hub.figures.options import FetchConfig

    description = "Download PMC figures (2026 bucket layout, legacy tarballs as fallback) as <pair_id>.jpg + index."
    return parse_config(FetchConfig, argv, "vital fetch figures", description)


def fetch_main(argv: list[str]) -> int:
    config = load_fetch_config(argv)  # --help and a bad flag end here, before aiohttp and pyarrow are imported
    from vital_hub.figures.pipeline import run_fetch, summary_table

    stats = run_fetch(config)  # a bad record or file is the `vital` entry point's one-line error, exit 1
    print(summary_table(stats))
    return 0


def build_main(argv: list[str]) -> int:
    from vital_hub.figures.options import BuildOptions

    description = "Turn a fetch folder into the Hub dataset config `figures`."
    options = parse_config(BuildOptions, argv, "vital build figures", description)
    from vital_hub.figures.dataset import build_figures  # pyarrow: only once the options are good

    print(build_figures(options))
    return 0
