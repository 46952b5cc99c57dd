"""The `preferences` dataset repo folder: configs `clinician`, `model` and `mixed`, plus annotation statistics.

Layout (ready for `vital push`)::

    README.md                                  YAML `configs:` for every config present, and a short card
    data/<config>/<split>-00000-of-00001.parquet   split = train | test (also a `split` column in every row)
    stats/clinician_outcomes.jsonl             every judged item's outcome (pairs, ties, both unacceptable...)
    stats/annotators.json                      per-annotator counts, per-item agreement, Cohen's kappa
    stats/judge_agreement.json                 written by `vital preferences agreement`

Each config is rewritten whole (temp names, then renamed), so re-running a command is safe. The YAML carries each
shard's size and sha256 under `dataset_info.download_checksums`: datasets 5 keys its cache of a local folder on
that YAML, so a rebuilt config can never be served stale from the cache.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from vital_hub.io import atomic_path, download_checksums, write_json_atomic

CONFIGS = ("clinician", "model", "mixed")
SPLITS = ("train", "test")


def pair_features():
    """Features of a pair row (the contract's columns, then provenance and the rejected side's own context;
    clinician rows add the annotators' comments and whether the figure was shown)."""
    from datasets import Features, Image, Value

    text = Value("string")
    return Features(
        {
            "pair_key": text,
            "pair_id": text,
            "image": Image(),
            "caption": text,
            "mention": text,
            "question": text,
            "chosen": text,
            "rejected": text,
            "weight": Value("float64"),
            "origin": text,
            "split": text,
            "chosen_id": text,
            "rejected_id": text,
            "rejected_pair_id": text,
            "rejected_caption": text,
            "rejected_mention": text,
            "rejected_question": text,
            "chosen_score": Value("float64"),
            "rejected_score": Value("float64"),
            "annotators": text,
            "comments": text,
            "figure_status": text,
        }
    )


def shard_path(repo: Path, config: str, split: str) -> Path:
    return repo / "data" / config / f"{split}-00000-of-00001.parquet"


def write_config(repo: str | Path, config: str, rows: list[dict]) -> dict[str, int]:
    """Write one config's rows by split, drop shards of splits that are now empty, refresh the card."""
    if config not in CONFIGS:
        raise ValueError(f"unknown preferences config {config!r}; known: {list(CONFIGS)}")
    from datasets import Dataset

    repo = Path(repo)
    features = pair_features()
    counts = {}
    for split in SPLITS:
        part = [row for row in rows if row["split"] == split]
        final = shard_path(repo, config, split)
        if not part:
            final.unlink(missing_ok=True)
            continue
        with atomic_path(final, suffix=".parquet") as tmp:
            complete = [{name: row.get(name) for name in features} for row in part]
            Dataset.from_list(complete, features=features).to_parquet(str(tmp))
        counts[split] = len(part)
    write_card(repo)
    return counts


def read_config(repo: str | Path, config: str) -> list[dict]:
    """All rows of a config (every split) as dicts, straight from the parquet shards."""
    import pyarrow.parquet as pq

    rows = []
    for split in SPLITS:
        path = shard_path(Path(repo), config, split)
        if path.exists():
            rows += pq.read_table(path).to_pylist()
    return rows


def has_config(repo: str | Path, config: str) -> bool:
    return any(shard_path(Path(repo), config, split).exists() for split in SPLITS)


def write_card(repo: Path) -> None:
    """README.md with the configs present now and what each holds."""
    configs, infos, lines = [], [], []
    for config in CONFIGS:
        shards = [(split, shard_path(repo, config, split)) for split in SPLITS]
        shards = [(split, path) for split, path in shards if path.exists()]
        if not shards:
            continue
        configs.append(
            {
                "config_name": config,
                "data_files": [
                    {"split": split, "path": str(path.relative_to(repo).parent / f"{split}-*.parquet")}
                    for split, path in shards
                ],
            }
        )
        infos.append(
            {
                "config_name": config,
                "download_checksums": download_checksums(repo, [path for _, path in shards]),
            }
        )
        lines.append(f"- `{config}`: {CONFIG_DESCRIPTIONS[config]}")
    if configs:  # `load_dataset(repo)` loads the selector's training set, or what there is so far
        default = next((c for c in configs if c["config_name"] == "mixed"), configs[0])
        default["default"] = True
    meta = {
        "pretty_name": "BioMed-VITAL preference pairs",
        "license": "other",
        "license_name": "model-output-and-study-terms",
        "license_link": TERMS_FILE,
        "language": ["en"],
        "task_categories": ["visual-question-answering", "image-text-to-text"],
        "tags": ["biomedical", "medical", "preference", "reward-modeling", "vital-hub"],
        "configs": configs,
        "dataset_info": infos,
    }
    front = yaml.safe_dump(meta, sort_keys=False)
    body = CARD_BODY.format(config_lines="\n".join(lines))
    with atomic_path(repo / "README.md") as tmp:
        tmp.write_text(f"---\n{front}---\n{body}", encoding="utf-8")
    with atomic_path(repo / TERMS_FILE) as tmp:
        tmp.write_text(TERMS, encoding="utf-8")


def write_stats(repo: str | Path, name: str, data) -> Path:
    path = Path(repo) / "stats" / name
    if name.endswith(".jsonl"):
        with atomic_path(path) as tmp:
            tmp.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in data), encoding="utf-8")
    else:
        write_json_atomic(path, data)
    return path


TERMS_FILE = "LICENSE.md"
TERMS = """# Terms of this dataset

The questions and answers are the output of the vision LLM that generated the candidates, under the terms of
that model's provider. The clinician judgements (config `clinician` and the clinician rows of `mixed`) are the
study's; the rubric-judge scores (config `model`) are output of the judge model, under its provider's terms.
Figures, when embedded, are PubMed Central Open Access figures, each under its article's licence
(https://pmc.ncbi.nlm.nih.gov/tools/openftlist/).
"""

CONFIG_DESCRIPTIONS = {
    "clinician": "pairs from clinician judgements (one answer acceptable, the other not); `origin` = clinician",
    "model": "pairs of items from two different rubric-judge score levels (80/20 train/test per level)",
    "mixed": "clinician pairs (weight w) and model pairs (weight 1) together: the selector's training set",
}

CARD_BODY = """
# Preference pairs (BioMed-VITAL stage 2)

Configs:
{config_lines}

Columns: `pair_key`, `pair_id` (figure of the chosen side), `image` (embedded only on request), `caption`,
`mention`, `question`, `chosen`, `rejected`, `weight`, `origin` (clinician | model), `split` (train | test),
provenance (`chosen_id`, `rejected_id`, `chosen_score`, `rejected_score`, `annotators`) and the rejected side's
own context (`rejected_pair_id`, `rejected_caption`, `rejected_mention`, `rejected_question`), which differs from
the chosen side's for model pairs.

`mixed` is the default config. Terms of use: [LICENSE.md](LICENSE.md).

`stats/` holds every judged item's outcome (ties and both-unacceptable included) and annotator agreement.
Built with `vital preferences` (vital-hub).
"""
