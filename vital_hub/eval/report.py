"""Evaluation results for people and for the Hub: a JSON summary, a per-sample details dataset folder (pushed as
a Hub dataset), model-index metadata and a card section with a plot of the per-domain scores.

    vital eval report --out results/ --model-id org/model --chat runs/qa50 --vqa runs/vqa-rad.json \
        --winrate runs/winrate-vqa-rad --card path/to/model/README.md --push-details org/model-eval-details
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from vital_hub.io import atomic_path, download_checksums, iter_json_records, read_json, write_json_atomic
from vital_hub.schema import RecordError

SECTION_START = "<!-- vital-eval:start -->"
SECTION_END = "<!-- vital-eval:end -->"
PLOT_NAME = "eval_scores.png"
QA50_DATASET = ("llava-med-qa50", "LLaVA-Med qa50 open visual chat")
VQA_TASK = ("visual-question-answering", "Medical visual question answering")
CHAT_TASK = ("visual-question-answering", "Open visual chat")


@dataclass
class ReportConfig:
    out: str = field(metadata={"help": "report folder (summary.json, plot, card section, details/)"})
    model_id: str = field(metadata={"help": "the evaluated model's name or Hub id"})
    chat: str | None = field(default=None, metadata={"help": "folder written by `vital eval chat`"})
    vqa: list[str] = field(default_factory=list, metadata={"help": "result JSON files of `vital eval vqa-score`"})
    winrate: list[str] = field(default_factory=list, metadata={"help": "folders written by `vital eval winrate`"})
    card: str | None = field(default=None, metadata={"help": "model card README.md to update in place"})
    push_details: str | None = field(default=None, metadata={"help": "Hub dataset repo id for the details"})
    details_url: str | None = field(default=None, metadata={"help": "link to the details dataset in the card"})


def config_name(text: str) -> str:
    """A Hub config name from a dataset or folder name."""
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_") or "results"


# What each input must hold, by the command that writes it: checked on reading, so that a file from another tool
# or another version is an error naming it, not a KeyError halfway through the report.
CHAT_KEYS = ("overall", "by_type", "by_domain")
VQA_KEYS = ("compat", "open_recall", "closed_accuracy", "counts", "variants")
WINRATE_KEYS = ("model_a", "model_b", "judgements", "questions")


def _read_json(path: Path, keys: tuple[str, ...] | None = None, writer: str = ""):
    """A summary (a JSON object holding `keys`) or, without keys, a details file (a JSON array)."""
    data = read_json(path)
    if keys is None:
        if not isinstance(data, list):
            raise RecordError(f"expected a JSON array of details, got {type(data).__name__}", file=str(path))
        return data
    if not isinstance(data, dict):
        raise RecordError(f"expected the JSON object {writer} writes, got {type(data).__name__}", file=str(path))
    missing = [key for key in keys if key not in data]
    if missing:
        raise RecordError(f"lacks {missing}: is this a result of {writer}?", file=str(path))
    return data


def load_parts(config: ReportConfig) -> dict:
    """Summaries and detail rows of every evaluation named in the config."""
    parts: dict = {"chat": None, "vqa": {}, "winrate": {}}
    if config.chat:
        folder = Path(config.chat)
        parts["chat"] = {
            "summary": _read_json(folder / "chat_summary.json", CHAT_KEYS, "`vital eval chat`"),
            "details": _read_json(folder / "chat_details.json"),
        }
    for path in config.vqa:
        result = _read_json(path, VQA_KEYS, "`vital eval vqa-score`")
        details_file = result.get("details_file")
        details = []
        if details_file and Path(details_file).exists():
            details = [record for _, record in iter_json_records(details_file)]
        parts["vqa"][result.get("dataset") or Path(path).stem] = {"summary": result, "details": details}
    for folder in config.winrate:
        folder = Path(folder)
        parts["winrate"][folder.name] = {
            "summary": _read_json(folder / "winrate_summary.json", WINRATE_KEYS, "`vital eval winrate`"),
            "details": _read_json(folder / "winrate_details.json"),
        }
    if not parts["chat"] and not parts["vqa"] and not parts["winrate"]:
        raise ValueError("nothing to report: pass --chat, --vqa or --winrate")
    return parts


# ---------------------------------------------------------------- summary and model-index


def summary_of(parts: dict, model_id: str) -> dict:
    summary: dict = {"model_id": model_id}
    if parts["chat"]:
        chat = parts["chat"]["summary"]
        summary["open_visual_chat"] = {
            key: chat[key]
            for key in ("overall", "by_type", "by_domain", "headline_view", "image_status_counts", "judge")
            if key in chat
        }
        if "position_bias" in chat:
            summary["open_visual_chat"]["position_bias"] = chat["position_bias"]
    if parts["vqa"]:
        summary["medical_vqa"] = {
            name: {
                key: part["summary"][key] for key in ("compat", "open_recall", "closed_accuracy", "counts", "variants")
            }
            for name, part in parts["vqa"].items()
        }
    if parts["winrate"]:
        summary["win_rate"] = {
            name: {key: part["summary"][key] for key in ("model_a", "model_b", "judgements", "questions")}
            for name, part in parts["winrate"].items()
        }
    return summary


def eval_results(summary: dict) -> list:
    """huggingface_hub EvalResult entries for the card's model-index."""
    from huggingface_hub import EvalResult

    results = []
    chat = summary.get("open_visual_chat")
    if chat and chat["overall"]["relative_score"] is not None:
        results.append(
            EvalResult(
                task_type=CHAT_TASK[0],
                task_name=CHAT_TASK[1],
                dataset_type=QA50_DATASET[0],
                dataset_name=QA50_DATASET[1],
                dataset_split="test",
                metric_type="relative_score",
                metric_name="Relative score vs reference (x100)",
                metric_value=round(chat["overall"]["relative_score"], 2),
            )
        )
    for name, vqa in summary.get("medical_vqa", {}).items():
        for metric in ("open_recall", "closed_accuracy"):
            if vqa[metric] is None:
                continue
            results.append(
                EvalResult(
                    task_type=VQA_TASK[0],
                    task_name=VQA_TASK[1],
                    dataset_type=name,
                    dataset_name=name,
                    dataset_split="test",
                    metric_type=metric,
                    metric_name=f"{metric.replace('_', ' ')} ({vqa['compat']})",
                    metric_config=vqa["compat"],
                    metric_value=round(vqa[metric], 2),
                )
            )
    for name, rates in summary.get("win_rate", {}).items():
        value = rates["questions"]["win_rate_excluding_ties"]
        if value is not None:
            results.append(
                EvalResult(
                    task_type=VQA_TASK[0],
                    task_name=f"Win rate vs {rates['model_b']}",
                    dataset_type=name,
                    dataset_name=name,
                    metric_type="win_rate",
                    metric_name="wins / (wins + losses), both orders",
                    metric_value=round(value, 2),
                )
            )
    return results


# ---------------------------------------------------------------- plot and card section


def plot_scores(summary: dict, path: Path) -> Path:
    """Per-domain (and per-type) relative scores with 95% intervals, and VQA scores when present."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = []
    chat = summary.get("open_visual_chat")
    if chat:
        panels += [
            ("qa50 relative score by domain", chat["by_domain"]),
            ("qa50 relative score by type", chat["by_type"]),
        ]
    vqa = summary.get("medical_vqa", {})
    fig, axes = plt.subplots(1, len(panels) + bool(vqa), figsize=(5.5 * (len(panels) + bool(vqa)), 4), squeeze=False)
    for axis, (title, groups) in zip(axes[0], panels, strict=False):
        names = list(groups)
        values = [groups[n]["relative_score"] or 0.0 for n in names]
        errors = [
            [max(v - (groups[n]["ci95"] or [v, v])[0], 0) for n, v in zip(names, values, strict=True)],
            [max((groups[n]["ci95"] or [v, v])[1] - v, 0) for n, v in zip(names, values, strict=True)],
        ]
        bars = axis.bar(names, values, yerr=errors, capsize=4, color="#4C72B0")
        for bar, name in zip(bars, names, strict=True):
            axis.annotate(
                f"n={groups[name]['n_scored']}",
                (bar.get_x() + bar.get_width() / 2, 0),
                ha="center",
                va="bottom",
                fontsize=8,
                color="white",
            )
        axis.axhline(100, color="grey", linestyle="--", linewidth=1)
        axis.set_title(title)
        axis.set_ylabel("model / reference x 100")
        axis.tick_params(axis="x", rotation=30)
    if vqa:
        axis = axes[0][-1]
        labels, width = list(vqa), 0.2
        for offset, (mode, metric) in enumerate(
            [(m, k) for m in ("llava-med", "strict") for k in ("open_recall", "closed_accuracy")]
        ):
            values = [vqa[name]["variants"][mode][metric] or 0.0 for name in labels]
            positions = [i + (offset - 1.5) * width for i in range(len(labels))]
            axis.bar(positions, values, width, label=f"{metric.replace('_', ' ')} ({mode})")
        axis.set_xticks(range(len(labels)), labels)
        axis.set_ylim(0, 100)
        axis.set_title("medical VQA (x100)")
        axis.legend(fontsize=7)
    fig.suptitle(summary["model_id"])
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    return path


def _fmt(value, digits: int = 1) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _ci(interval) -> str:
    return "–" if not interval else f"[{interval[0]:.1f}, {interval[1]:.1f}]"


def card_section(summary: dict, plot_name: str | None, details_url: str | None) -> str:
    lines = [SECTION_START, "## Evaluation", ""]
    if plot_name:
        lines += [f"![Evaluation scores per domain]({plot_name})", ""]
    chat = summary.get("open_visual_chat")
    if chat:
        judge = chat.get("judge", {})
        lines += [
            "### Open visual chat (LLaVA-Med qa50)",
            "",
            f"Relative score = mean over questions of (model score / reference score) x 100, judge "
            f"`{judge.get('model', '?')}`{' with position-swapped judgements' if judge.get('swap') else ''}.",
            "",
            "| group | relative score | 95% CI | scored / questions |",
            "|---|---:|---:|---:|",
        ]
        rows = [("overall", chat["overall"])] + list(chat["by_type"].items()) + list(chat["by_domain"].items())
        for name, group in rows:
            lines.append(
                f"| {name} | {_fmt(group['relative_score'])} | {_ci(group['ci95'])} | "
                f"{group['n_scored']} / {group['n_questions']} |"
            )
        counts = chat["overall"]["status_counts"]
        not_scored = {k: v for k, v in counts.items() if k != "ok"}
        images = chat.get("image_status_counts", {})
        lines += ["", f"Not scored: {not_scored or 'none'}. Image status of the answered questions: {images}.", ""]
        if "position_bias" in chat:
            bias = chat["position_bias"]
            lines += [
                f"Second-slot advantage of the judge: {_fmt(bias['second_slot_advantage'], 2)} points "
                f"({bias['preference_flips']} of {bias['n_pairs']} preferences flip with the order).",
                "",
            ]
    vqa = summary.get("medical_vqa")
    if vqa:
        lines += [
            "### Medical VQA",
            "",
            "| dataset | open recall | closed accuracy | open recall (strict) | closed accuracy (strict) | open / closed |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for name, result in vqa.items():
            compat, strict = result["variants"]["llava-med"], result["variants"]["strict"]
            lines.append(
                f"| {name} | {_fmt(compat['open_recall'])} | {_fmt(compat['closed_accuracy'])} | "
                f"{_fmt(strict['open_recall'])} | {_fmt(strict['closed_accuracy'])} | "
                f"{result['counts']['open']} / {result['counts']['closed']} |"
            )
        lines += [
            "",
            "First two columns: LLaVA-Med's scoring rules, quirks included; strict: whole-word matching.",
            "",
        ]
    win = summary.get("win_rate")
    if win:
        lines += [
            "### Win rate (pairwise judge, both orders)",
            "",
            "| comparison | wins / (wins + losses) | wins / all | ties | position consistency |",
            "|---|---:|---:|---:|---:|",
        ]
        for name, rates in win.items():
            q = rates["questions"]
            lines.append(
                f"| {name}: {rates['model_a']} vs {rates['model_b']} | {_fmt(q['win_rate_excluding_ties'])} | "
                f"{_fmt(q['win_rate_over_all'])} | {q['ties']} | {_fmt(q['position_consistency'])} |"
            )
        lines.append("")
    if details_url:
        lines += [f"Per-sample details: {details_url}", ""]
    lines.append(SECTION_END)
    return "\n".join(lines) + "\n"


def update_model_card(card_path: Path, section: str, results: list, model_id: str, plot: Path | None) -> None:
    """Put the section between its markers (replacing an older one) and merge model-index entries."""
    from huggingface_hub import ModelCard, ModelCardData

    card = ModelCard.load(card_path) if card_path.exists() else ModelCard(f"---\n---\n\n# {model_id}\n")
    data = card.data if card.data is not None else ModelCardData()
    ours = {(r.dataset_type, r.metric_type, r.metric_config) for r in results}
    kept = [r for r in (data.eval_results or []) if (r.dataset_type, r.metric_type, r.metric_config) not in ours]
    data.eval_results = kept + results
    data.model_name = data.model_name or model_id
    card.data = data
    text = card.text
    pattern = re.compile(re.escape(SECTION_START) + r".*?" + re.escape(SECTION_END) + r"\n?", re.DOTALL)
    text = pattern.sub(lambda _: section, text) if pattern.search(text) else text.rstrip("\n") + "\n\n" + section
    card.text = text
    card_path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(card_path, suffix=".md") as tmp:
        card.save(tmp)
    if plot is not None and plot.resolve() != (card_path.parent / plot.name).resolve():
        shutil.copyfile(plot, card_path.parent / plot.name)


# ---------------------------------------------------------------- details dataset


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


def write_details_dataset(parts: dict, folder: Path, model_id: str) -> dict[str, int]:
    """A Hub dataset folder with one config per evaluation (split `test`) and a README declaring them."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import yaml

    tables: dict[str, list[dict]] = {}
    if parts["chat"]:
        tables["chat_qa50"] = parts["chat"]["details"]
    for name, part in parts["vqa"].items():
        tables[f"vqa_{config_name(name)}"] = part["details"]
    for name, part in parts["winrate"].items():
        tables[f"winrate_{config_name(name)}"] = part["details"]
    configs, infos, counts = [], [], {}
    for name, rows in tables.items():
        if not rows:
            continue
        relative = f"data/{name}/test-00000-of-00001.parquet"
        target = folder / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(target, suffix=".parquet") as tmp:
            pq.write_table(pa.Table.from_pylist(_rows_for_parquet(rows)), tmp)
        configs.append({"config_name": name, "data_files": [{"split": "test", "path": f"data/{name}/*.parquet"}]})
        # A content-dependent field, so that datasets never serves a stale cache of an older report.
        infos.append({"config_name": name, "download_checksums": download_checksums(folder, [target])})
        counts[name] = len(rows)
    header = yaml.safe_dump({"configs": configs, "dataset_info": infos}, sort_keys=False)
    body = (
        f"# Evaluation details: {model_id}\n\nPer-sample results written by `vital eval report`: one config per "
        "evaluation, split `test`.\n\n"
        + "\n".join(f"- `{name}`: {count} rows" for name, count in counts.items())
        + "\n\n```python\nfrom datasets import load_dataset\n\n"
        + f'rows = load_dataset("<this repo>", "{next(iter(counts), "chat_qa50")}", split="test")\n```\n'
    )
    with atomic_path(folder / "README.md") as tmp:
        tmp.write_text(f"---\n{header}---\n\n{body}", encoding="utf-8")
    return counts


def build_report(config: ReportConfig) -> dict:
    """Write summary.json, the plot, the card section and the details dataset; optionally update a card and
    push the details. Returns the summary."""
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    parts = load_parts(config)
    summary = summary_of(parts, config.model_id)
    plot = (
        plot_scores(summary, out / PLOT_NAME)
        if (summary.get("open_visual_chat") or summary.get("medical_vqa"))
        else None
    )
    summary["details_configs"] = write_details_dataset(parts, out / "details", config.model_id)
    details_url = config.details_url
    if config.push_details:
        details_url = push_details(out / "details", config.push_details)
        summary["details_pushed_to"] = details_url
    section = card_section(summary, plot.name if plot else None, details_url)
    (out / "card_section.md").write_text(section, encoding="utf-8")
    results = eval_results(summary)
    summary["model_index"] = [
        {"task": r.task_type, "dataset": r.dataset_type, "metric": r.metric_type, "value": r.metric_value}
        for r in results
    ]
    if config.card:
        update_model_card(Path(config.card), section, results, config.model_id, plot)
    write_json_atomic(out / "summary.json", summary)
    return summary


def push_details(folder: Path, repo_id: str) -> str:
    """Upload the details folder as a Hub dataset through the project's one Hub module."""
    from vital_hub.hub import push_folder, repo_url

    push_folder(folder, repo_id, repo_type="dataset", commit_message="Upload evaluation details")
    return repo_url(repo_id, "dataset")
