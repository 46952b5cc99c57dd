"""Evaluation results for people and for the Hub: a JSON summary, a per-sample details dataset folder (pushed as
a Hub dataset), model-index metadata and a card section with a plot of the per-domain scores.

    vital eval report --out results/ --model-id org/model --chat runs/qa50 --vqa runs/vqa-rad.json \
        --winrate runs/winrate-vqa-rad --card path/to/model/README.md --push-details org/model-eval-details
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

from vital_hub.eval.details import config_name, push_details, write_details_dataset
from vital_hub.eval.plot import plot_scores
from vital_hub.io import atomic_path, iter_json_records, read_json, write_json_atomic
from vital_hub.schema import RecordError

SECTION_START = "<!-- vital-eval:start -->"
SECTION_END = "<!-- vital-eval:end -->"
PLOT_NAME = "eval_scores.png"
QA50_DATASET = ("llava-med-qa50", "LLaVA-Med qa50 open visual chat")
# Public Hub copies of the VQA test sets, for the model-index `dataset.type` (a Hub dataset id, so the Hub links it).
HUB_DATASETS = {
    "vqa_rad": "flaviagiammarino/vqa-rad",
    "vqarad": "flaviagiammarino/vqa-rad",
    "slake": "BoKelvin/SLAKE",
    "pathvqa": "flaviagiammarino/path-vqa",
    "path_vqa": "flaviagiammarino/path-vqa",
}
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
    dataset_id: list[str] = field(
        default_factory=list,
        metadata={
            "help": "NAME=ORG/REPO: the Hub dataset id of an evaluation set, for the model-index (repeatable; "
            "VQA-RAD, SLAKE and PathVQA are known; otherwise the pushed details repo is named)"
        },
    )


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


def unique_names(paths: list[str], option: str) -> list[str]:
    """Names for result folders given on the command line: the shortest trailing part of each path that tells
    it from the others (`vqa-rad/winrate`, `slake/winrate`), so no result silently replaces another."""
    resolved = [Path(os.path.realpath(p)) for p in paths]  # realpath: a symlink loop is not an exception
    for i, path in enumerate(resolved):
        if path in resolved[:i]:
            raise ValueError(f"{paths[i]}: given twice to {option}")
    parts = [path.parts for path in resolved]
    names = []
    for own in parts:
        depth = 1
        while depth < len(own) and sum(other[-depth:] == own[-depth:] for other in parts) > 1:
            depth += 1
        names.append("/".join(own[-depth:]))
    return names


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
        name = result.get("dataset") or Path(path).stem
        if name in parts["vqa"]:
            raise ValueError(
                f"{path}: a second --vqa result for dataset {name!r} ({parts['vqa'][name]['path']} is the first); "
                "pass one result per dataset, or re-run `vital eval vqa-prepare` with a distinct --name"
            )
        parts["vqa"][name] = {"summary": result, "details": details, "path": str(path)}
    for name, folder in zip(unique_names(config.winrate, "--winrate"), config.winrate, strict=True):
        folder = Path(folder)
        parts["winrate"][name] = {
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


def hub_dataset_ids(pairs: list[str]) -> dict[str, str]:
    """`--dataset-id NAME=ORG/REPO` entries, keyed by config name."""
    from vital_hub.hub import check_repo_id

    ids = {}
    for pair in pairs:
        name, sep, repo_id = pair.partition("=")
        if not sep or not name:
            raise ValueError(f"--dataset-id {pair!r}: expected NAME=ORG/REPO, e.g. vqa-rad=flaviagiammarino/vqa-rad")
        ids[config_name(name)] = check_repo_id(repo_id)
    return ids


def sources(parts: dict, ids: dict[str, str]) -> dict[str, str]:
    """Where each evaluation set comes from, for the details card's terms: a Hub dataset page or the qa50 file."""
    from vital_hub.hub import repo_url

    found = {}
    if parts["chat"]:
        found["chat_qa50"] = "https://github.com/microsoft/LLaVA-Med (llava_med_eval_qa50_qa.jsonl)"
    for name in parts["vqa"]:
        repo_id = ids.get(config_name(name)) or HUB_DATASETS.get(config_name(name))
        found[f"vqa_{config_name(name)}"] = repo_url(repo_id, "dataset", "https://huggingface.co") if repo_id else name
    return found


def dataset_ref(name: str, config: str, ids: dict[str, str], details_repo: str | None) -> tuple[str, str | None]:
    """The model-index `dataset.type` (a Hub dataset id) and `dataset.config` of one evaluation: the id given or
    known for it, else the pushed details dataset and the config holding its rows; ("", None) when neither."""
    key = config_name(name)
    if key in ids or key in HUB_DATASETS:
        return ids.get(key) or HUB_DATASETS[key], None
    return (details_repo, config) if details_repo else ("", None)


def eval_results(summary: dict, ids: dict[str, str] | None = None, details_repo: str | None = None) -> list:
    """huggingface_hub EvalResult entries for the card's model-index. `dataset.type` is always a Hub dataset id
    (`--dataset-id`, a known public copy, or the pushed details repo); an evaluation with none is left out of the
    model-index (its table in the card section stays) and named in `summary["model_index_skipped"]`."""
    from huggingface_hub import EvalResult

    ids = ids or {}
    results, skipped = [], []

    def add(name: str, config: str, **fields) -> None:
        dataset_type, dataset_config = dataset_ref(name, config, ids, details_repo)
        if not dataset_type:
            skipped.append(name)
            return
        results.append(EvalResult(dataset_type=dataset_type, dataset_config=dataset_config, **fields))

    chat = summary.get("open_visual_chat")
    if chat and chat["overall"]["relative_score"] is not None:
        add(
            QA50_DATASET[0],
            "chat_qa50",
            task_type=CHAT_TASK[0],
            task_name=CHAT_TASK[1],
            dataset_name=QA50_DATASET[1],
            dataset_split="test",
            metric_type="relative_score",
            metric_name="Relative score vs reference (x100)",
            metric_value=round(chat["overall"]["relative_score"], 2),
        )
    for name, vqa in summary.get("medical_vqa", {}).items():
        for metric in ("open_recall", "closed_accuracy"):
            if vqa[metric] is None:
                continue
            add(
                name,
                f"vqa_{config_name(name)}",
                task_type=VQA_TASK[0],
                task_name=VQA_TASK[1],
                dataset_name=name,
                dataset_split="test",
                metric_type=metric,
                metric_name=f"{metric.replace('_', ' ')} ({vqa['compat']})",
                metric_config=vqa["compat"],
                metric_value=round(vqa[metric], 2),
            )
    for name, rates in summary.get("win_rate", {}).items():
        value = rates["questions"]["win_rate_excluding_ties"]
        if value is not None:
            add(
                name,
                f"winrate_{config_name(name)}",
                task_type=VQA_TASK[0],
                task_name=f"Win rate vs {rates['model_b']}",
                dataset_name=name,
                metric_type="win_rate",
                metric_name="wins / (wins + losses), both orders",
                metric_value=round(value, 2),
            )
    if skipped:
        summary["model_index_skipped"] = sorted(set(skipped))
    return results


# ---------------------------------------------------------------- plot and card section


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


def build_report(config: ReportConfig) -> dict:
    """Write summary.json, the plot, the card section and the details dataset; optionally update a card and
    push the details. Returns the summary."""
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    parts = load_parts(config)
    ids = hub_dataset_ids(config.dataset_id)
    summary = summary_of(parts, config.model_id)
    plot = (
        plot_scores(summary, out / PLOT_NAME)
        if (summary.get("open_visual_chat") or summary.get("medical_vqa"))
        else None
    )
    summary["details_configs"] = write_details_dataset(
        parts, out / "details", config.model_id, sources(parts, ids), config.push_details
    )
    details_url = config.details_url
    if config.push_details:
        details_url = push_details(out / "details", config.push_details)
        summary["details_pushed_to"] = details_url
    section = card_section(summary, plot.name if plot else None, details_url)
    (out / "card_section.md").write_text(section, encoding="utf-8")
    results = eval_results(summary, ids, config.push_details)
    summary["model_index"] = [
        {"task": r.task_type, "dataset": r.dataset_type, "metric": r.metric_type, "value": r.metric_value}
        for r in results
    ]
    if summary.get("model_index_skipped"):
        print(
            f"note: {', '.join(summary['model_index_skipped'])} left out of the model-index: no Hub dataset id "
            "(pass --dataset-id NAME=ORG/REPO or --push-details ORG/NAME)",
            file=sys.stderr,
        )
    if config.card:
        update_model_card(Path(config.card), section, results, config.model_id, plot)
    write_json_atomic(out / "summary.json", summary)
    return summary
