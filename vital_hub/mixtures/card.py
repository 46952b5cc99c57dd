"""The dataset card (README.md) of the instructions repo: the YAML that `load_dataset` reads, and the prose people read."""

from __future__ import annotations

from pathlib import Path

import yaml

from vital_hub.io import atomic_path
from vital_hub.schema import DOMAINS, row_features

CITATION = """@inproceedings{cui2024biomedical,
  title     = {Biomedical Visual Instruction Tuning with Clinician Preference Alignment},
  author    = {Cui, Hejie and Mao, Lingjun and Liang, Xin and Zhang, Jieyu and Ren, Hui and Li, Quanzheng and
               Li, Xiang and Yang, Carl},
  booktitle = {Advances in Neural Information Processing Systems (Datasets and Benchmarks Track)},
  year      = {2024}
}
@inproceedings{li2023llavamed,
  title     = {LLaVA-Med: Training a Large Language-and-Vision Assistant for Biomedicine in One Day},
  author    = {Li, Chunyuan and Wong, Cliff and Zhang, Sheng and Usuyama, Naoto and Liu, Haotian and Yang, Jianwei
               and Naumann, Tristan and Poon, Hoifung and Gao, Jianfeng},
  booktitle = {Advances in Neural Information Processing Systems (Datasets and Benchmarks Track)},
  year      = {2023}
}"""


# The Hub's size buckets (https://huggingface.co/docs/hub/datasets-cards): (upper bound, label).
SIZE_CATEGORIES = (
    (1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
    (10**7, "1M<n<10M"), (10**8, "10M<n<100M"), (10**9, "100M<n<1B"), (10**10, "1B<n<10B"),
    (10**11, "10B<n<100B"), (10**12, "100B<n<1T"),
)  # fmt: skip
LICENSE_NAME = "pmc-open-access-per-article"  # `license: other` needs an id and a link on the Hub
LICENSE_LINK = "https://pmc.ncbi.nlm.nih.gov/tools/openftlist/"


def size_category(rows: int) -> str:
    """The Hub's size bucket of a row count."""
    return next((label for bound, label in SIZE_CATEGORIES if rows < bound), "n>1T")


def card_metadata(manifest: dict) -> dict:
    """README YAML: `configs` (shards per config) and `dataset_info` (features, sizes, per-shard checksums).

    The checksums matter beyond integrity: datasets 5 keys its cache of a local folder on this YAML, so a content
    hash here is what stops a rebuilt folder from loading stale rows.
    """
    features = row_features()._to_yaml_list()
    configs, infos = [], []
    for name, config in manifest["configs"].items():
        configs.append({"config_name": name, "data_files": [{"split": "train", "path": config["shards"]}]})
        infos.append(
            {
                "config_name": name,
                "features": features,
                "splits": [
                    {"name": "train", "num_bytes": config["uncompressed_bytes"], "num_examples": config["rows"]}
                ],
                "download_size": config["num_bytes"],
                "dataset_size": config["uncompressed_bytes"],
                "download_checksums": config["checksums"],
            }
        )
    default = "80k" if "80k" in manifest["configs"] else next(iter(manifest["configs"]), None)
    for entry in configs:  # `load_dataset(repo)` without a config name loads this one
        if entry["config_name"] == default:
            entry["default"] = True
    unique_rows = sum(component["rows"] for component in manifest["components"].values())  # each stored once
    return {
        "license": "other",
        "license_name": LICENSE_NAME,
        "license_link": LICENSE_LINK,
        "language": ["en"],
        "task_categories": ["image-text-to-text", "visual-question-answering"],
        "tags": ["biomedical", "medical", "instruction-tuning", "llava", "biomed-vital", "pmc"],
        "pretty_name": "BioMed-VITAL instructions",
        "size_categories": [size_category(unique_rows)],
        "configs": configs,
        "dataset_info": infos,
    }


def figure_less_text(manifest: dict) -> list[str]:
    """What the card says about rows without a figure: how many per config, why, and what they are."""
    lines = ["| config | rows | text-only rows |", "|---|---:|---:|"]
    for name, config in manifest["configs"].items():
        lines.append(f"| `{name}` | {config['rows']:,} | {text_only_rows(manifest, name)} |")
    return [
        "Rows without a figure are stored text-only: `images` is `[]` and `messages` has no image part, so they are "
        "valid TRL rows and train as text conversations. A figure is missing when it was not in the images folder, "
        "empty or did not decode at build time (each listed with its reason in `data/<component>/missing_images.jsonl`;"
        " `--require-images` makes that an error). Drop them with `ds.filter(lambda row: len(row['images']) > 0)`.",
        "",
        *lines,
    ]


def text_only_rows(manifest: dict, config: str) -> str:
    """Text-only rows of a config: exact for whole components, the sampled ones' share estimated."""
    entry = manifest["configs"][config]
    total = 0.0
    for part in entry["components"]:
        component = manifest["components"][part["name"]]
        images = component["images"]
        absent = component["rows"] - (0 if images is None else images["present"])
        total += absent * part["fraction"]
    exact = all(part["fraction"] == 1.0 for part in entry["components"])
    return f"{round(total):,}" if exact else f"about {round(total):,}"


RELEASED_REPO = "biomed-vital/instructions"


def load_example(manifest: dict) -> tuple[str, str, list[str]]:
    """(repo id, config, note lines) of the card's load example: the repo the folder is pushed to (`--repo-id`),
    the released repo when every config is a released one, else ORG/NAME with a note to replace it."""
    from vital_hub.mixtures.spec import builtin_mixtures

    configs = list(manifest["configs"])
    config = "80k" if "80k" in configs else configs[0]
    if manifest.get("repo_id"):
        return manifest["repo_id"], config, []
    if set(configs) <= set(builtin_mixtures()):
        return RELEASED_REPO, config, []
    note = "`ORG/NAME` is the repo this folder is pushed to (`vital build instructions --repo-id` writes it here)."
    return "ORG/NAME", config, ["", note]


def card_text(manifest: dict, report: list[str] | None = None) -> str:
    components = manifest["components"]
    repo_id, example, note = load_example(manifest)
    lines = [
        "# BioMed-VITAL instruction mixtures",
        "",
        "Biomedical visual instruction data about PubMed Central figures, selected to match clinician preferences "
        "(BioMed-VITAL), mixed with LLaVA-Med's instruction data into the released 60K/80K/150K/210K sets. "
        "Built by vital-hub (`vital build instructions`) from the released source files; every component is stored once "
        "and configs list its shards, so the larger configs add no bytes.",
        "",
        "## Load",
        "",
        "```python",
        "from datasets import load_dataset",
        "",
        f'ds = load_dataset("{repo_id}", "{example}", split="train")',
        "row = ds[0]  # images: [PIL image], or [] for a text-only row; messages: TRL chat format",
        "```",
        *note,
        "",
        "Train with `accelerate launch recipes/sft.py --config recipes/...yaml`; get the original LLaVA JSON back with "
        f"`vital export llava --repo <this folder> --config {example} --out {example}.json`.",
        "",
        "## Configs",
        "",
        "| config | rows | components | description |",
        "|---|---:|---|---|",
    ]
    for name, config in manifest["configs"].items():
        parts = ", ".join(
            c["name"] if c["fraction"] == 1.0 else f"{c['name']} ({c['fraction']:g})" for c in config["components"]
        )
        lines.append(f"| `{name}` | {config['rows']:,} | {parts} | {config['description']} |")
    lines += [
        "",
        "## Components",
        "",
        "| component | rows | source file | sha256 | rows with their figure | text-only rows |",
        "|---|---:|---|---|---:|---:|",
    ]
    for name, component in components.items():
        source = component["source"]
        images = component["images"]
        present = 0 if images is None else images["present"]
        shown = "not embedded" if images is None else f"{present:,}"
        lines.append(
            f"| `{name}` | {component['rows']:,} | `{source['file']}` | `{source['sha256'][:16]}…` | {shown} "
            f"| {component['rows'] - present:,} |"
        )
    lines += ["", *figure_less_text(manifest)]
    retracted = sum((c["images"] or {}).get("retracted_left_out", 0) for c in components.values())
    if retracted:
        lines += [
            "",
            f"{retracted:,} source records were left out because PMC marks their figure's article retracted "
            "(newest version's metadata, from the fetch index); `--include-retracted` keeps them.",
        ]
    lines += report or []
    lines += [
        "",
        "## Fields",
        "",
        "- `id`, `image_id` (the PMC pair id `<PMID>_<figure id>`), `image_file` (the released `image` field)",
        "- `domain`: the five modality flags (chest_xray, mri, ct_scan, histology, gross), null when the source has none",
        "- `source`: the component a row comes from; `extra`: any other released field, as JSON",
        "- `images`: the figure as a one-entry list, or `[]` when the row is text-only",
        "- `messages`: the conversation in TRL format; the image part stands exactly where `<image>` stood, and "
        "only when the row has its figure",
        "- `image_position`: where the source put `<image>` (index of the image part in the first turn), kept for "
        "text-only rows too so that the export gives the source record back; null when the source had none",
        "- `image_phash`: 64-bit DCT perceptual hashes (imagehash's pHash of the greyscale figure, 16 hex digits "
        "each, comma-separated): the whole figure first, then its trimmed content and the panels found at its "
        "gutters; null without a figure; `vital audit contamination` searches near-duplicate figures with them",
        "",
        "## Provenance",
        "",
        "Sources are the files released by the BioMed-VITAL authors (`mao1207/BioMed-VITAL-instructions`) and by "
        "LLaVA-Med (`microsoft/LLaVA-Med`). `manifest.json` records each source's size and sha256, the sha256 of "
        "every component's canonical rows and of every shard, and the builder version. Which LLaVA-Med 60K file the "
        "released 150K used is not published; `vital verify` compares a released file with a config record by record.",
        "",
        "## Licence",
        "",
    ]
    for name, component in components.items():
        lines.append(f"- `{name}`: {component['licence']}")
    lines += [
        "",
        f"Figures come from the PMC Open Access subset under per-article licences ({LICENSE_LINK}). For research "
        "use; not for clinical decisions.",
        "",
        "## Citation",
        "",
        "```bibtex",
        CITATION,
        "```",
        "",
    ]
    return "\n".join(lines)


class _NoAliasDumper(yaml.SafeDumper):
    """Writes repeated values (every config's features) in full: the Hub's YAML reader wants no anchors."""

    def ignore_aliases(self, data):
        return True


def data_report_section(out: Path, manifest: dict, facts: dict[str, tuple[str, str]] | None = None) -> list[str]:
    """The card's "Data report": a table per config and the PNG plots written beside the card; licences and
    retractions come from `facts`, the fetch index of the images folder when it has one (see figure_facts)."""
    from vital_hub.mixtures.report import config_reports, licence_lines, summary_rows, write_plots
    from vital_hub.mixtures.selection import selection_lines
    from vital_hub.mixtures.spec import builtin_components

    reports = config_reports(out, manifest, facts)
    columns = [
        "config",
        "rows",
        *DOMAINS,
        "multi-label",
        "no flag true",
        "no domain",
        "rounds (mean)",
        "answer words (median)",
        "figures present / missing",
    ]
    lines = [
        "",
        "## Data report",
        "",
        "Rows by domain count each true flag (a multi-label row counts under each of its flags and once under "
        "multi-label).",
        "",
        "| " + " | ".join(columns) + " |",
        "|---|" + "---:|" * (len(columns) - 1),
        *summary_rows(reports),
        "",
        *licence_lines(reports, manifest, facts is not None),
    ]
    plots, selection_plots = write_plots(out, reports, manifest)
    for name, path in plots.items():
        lines += ["", f"![data report of {name}]({path})"]
    return lines + selection_lines(manifest, selection_plots, set(builtin_components()))


def write_readme(out: Path, manifest: dict, facts: dict[str, tuple[str, str]] | None = None) -> None:
    header = yaml.dump(card_metadata(manifest), Dumper=_NoAliasDumper, sort_keys=False, allow_unicode=True, width=1000)
    text = card_text(manifest, data_report_section(out, manifest, facts))
    with atomic_path(out / "README.md") as tmp:
        tmp.write_text(f"---\n{header}---\n\n{text}", encoding="utf-8")
