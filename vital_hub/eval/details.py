"""The per-sample details of `vital eval report` as a Hub dataset folder: one config per evaluation (split `test`),
a card the Hub accepts (licence, task category, pretty name, a default config so `load_dataset(repo)` works) and
the push through `vital_hub.hub`."""

from __future__ import annotations

import json
import re
from pathlib import Path

from vital_hub.io import atomic_path, download_checksums

LICENSE_FILE = "LICENSE.md"


def _rows_for_parquet(rows: list[dict]) -> list[dict]:
    """Ids as text and nested values as JSON, so every shard has one stable schema."""
    clean = []
    for row in rows:
        clean.append(
            {
                key: (
                    str(value)
                    if key == "question_id"
                    else json.dumps(value)
                    if isinstance(value, dict | list)
                    else value
                )
                for key, value in row.items()
            }
        )
    return clean


def config_name(text: str) -> str:
    """A Hub config name from a dataset or folder name."""
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_") or "results"


def detail_tables(parts: dict) -> dict[str, list[dict]]:
    """Rows per details config; two evaluations whose names make the same config name are an error."""
    tables: dict[str, list[dict]] = {}
    named = [("chat_qa50", "--chat", parts["chat"]["details"])] if parts["chat"] else []
    named += [(f"vqa_{config_name(n)}", n, part["details"]) for n, part in parts["vqa"].items()]
    named += [(f"winrate_{config_name(n)}", n, part["details"]) for n, part in parts["winrate"].items()]
    given: dict[str, str] = {}
    for config, name, rows in named:
        if config in given:
            raise ValueError(f"{name!r} and {given[config]!r} would both be details config {config!r}: rename one")
        given[config] = name
        tables[config] = rows
    return tables


def card(model_id: str, configs: list[dict], infos: list[dict], counts: dict, sources: dict, repo_id: str | None):
    """README.md and LICENSE.md texts of the details dataset."""
    import yaml

    from vital_hub.mixtures.card import size_category

    meta = {
        "pretty_name": f"Evaluation details of {model_id}",
        "license": "other",
        "license_name": "evaluation-sets-and-judge-terms",
        "license_link": LICENSE_FILE,
        "task_categories": ["visual-question-answering"],
        "language": ["en"],
        "tags": ["vital-hub", "evaluation", "medical"],
        "size_categories": [size_category(sum(counts.values()))],
        "configs": configs,
        "dataset_info": infos,
    }
    first = next(iter(counts), "chat_qa50")
    body = (
        f"# Evaluation details: {model_id}\n\nPer-sample results written by `vital eval report`: one config per "
        f"evaluation, split `test`; `{first}` is the default config.\n\n"
        + "\n".join(f"- `{name}`: {count} rows" for name, count in counts.items())
        + "\n\n```python\nfrom datasets import load_dataset\n\n"
        + f'rows = load_dataset("{repo_id or "<this repo>"}", "{first}", split="test")\n```\n\n'
        + f"## Terms\n\nSee [{LICENSE_FILE}]({LICENSE_FILE}).\n"
    )
    terms = (
        "# Terms of this dataset\n\nThe rows quote the questions and reference answers of the evaluation sets below, "
        "each under its own terms, the evaluated model's answers, and the judge model's replies, which are model "
        "output under the terms of the judge's provider.\n\n"
        + "\n".join(f"- `{config}`: {where}" for config, where in sources.items() if config in counts)
        + "\n"
    )
    return f"---\n{yaml.safe_dump(meta, sort_keys=False)}---\n\n{body}", terms


def write_details_dataset(
    parts: dict, folder: Path, model_id: str, sources: dict[str, str] | None = None, repo_id: str | None = None
) -> dict[str, int]:
    """A Hub dataset folder with one config per evaluation (split `test`, the first marked default) and a card."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    configs, infos, counts = [], [], {}
    for name, rows in detail_tables(parts).items():
        if not rows:
            continue
        relative = f"data/{name}/test-00000-of-00001.parquet"
        target = folder / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(target, suffix=".parquet") as tmp:
            pq.write_table(pa.Table.from_pylist(_rows_for_parquet(rows)), tmp)
        entry = {"config_name": name, "data_files": [{"split": "test", "path": f"data/{name}/*.parquet"}]}
        configs.append({**entry, "default": True} if not configs else entry)
        # A content-dependent field, so that datasets never serves a stale cache of an older report.
        infos.append({"config_name": name, "download_checksums": download_checksums(folder, [target])})
        counts[name] = len(rows)
    readme, terms = card(model_id, configs, infos, counts, sources or {}, repo_id)
    with atomic_path(folder / "README.md") as tmp:
        tmp.write_text(readme, encoding="utf-8")
    with atomic_path(folder / LICENSE_FILE) as tmp:
        tmp.write_text(terms, encoding="utf-8")
    return counts


def push_details(folder: Path, repo_id: str) -> str:
    """Upload the details folder as a Hub dataset through the project's one Hub module."""
    from vital_hub.hub import push_folder, repo_url

    push_folder(folder, repo_id, repo_type="dataset", commit_message="Upload evaluation details")
    return repo_url(repo_id, "dataset")
