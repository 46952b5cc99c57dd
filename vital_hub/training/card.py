"""What is published with a trained model: its card, its generation config, and the push.

The card names the base model, each dataset with its config and the revision that was read, the hyperparameters
that matter for reproducing the run, and evaluation results when there are any (from the trainer's own eval split
or a results JSON written by `vital eval`). It never holds tokens or environment values.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import yaml

from vital_hub.io import FALLBACK_LICENCE_NAME, atomic_path, inherited_licence, licence_fields, read_card, read_json

log = logging.getLogger(__name__)

# Trainer bookkeeping that is not part of the model repo.
STAGING_SKIP = {"training_args.bin", "trainer_state.json"}
HYPERPARAMETERS = (
    "learning_rate",
    "num_train_epochs",
    "max_steps",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "lr_scheduler_type",
    "warmup_ratio",
    "weight_decay",
    "max_length",
    "bf16",
    "gradient_checkpointing",
    "seed",
    "optim",
)


@dataclass
class DatasetUsed:
    id: str
    config: str | None
    split: str
    revision: str | None
    weight: float
    rows: int | None = None


def hyperparameters_of(training_args, world_size: int, extra: dict | None = None) -> dict:
    """The knobs worth printing, plus the global batch size they add up to."""
    values = {name: getattr(training_args, name) for name in HYPERPARAMETERS if hasattr(training_args, name)}
    values["lr_scheduler_type"] = str(values.get("lr_scheduler_type", "")).split(".")[-1].lower()
    values["optim"] = str(values.get("optim", "")).split(".")[-1].lower()
    values["world_size"] = world_size
    values["global_batch_size"] = (
        training_args.per_device_train_batch_size * training_args.gradient_accumulation_steps * world_size
    )
    return {**values, **(extra or {})}


HUB_MODEL_ID = re.compile(r"(?:[A-Za-z0-9][\w.-]*/)?[A-Za-z0-9][\w.-]*")
CACHE_FOLDER = re.compile(r"models--([A-Za-z0-9][\w.-]*)--([A-Za-z0-9][\w.-]*)")


def hub_base_model(name_or_path: str) -> str | None:
    """The Hub id a model came from, for the card's `base_model` (the Hub refuses a local path there): the name
    itself when it is one; for a local folder, the Hub cache folder it lies in (`models--ORG--NAME/snapshots/...`)
    or the `base_model` of the card a previous run wrote into it (stage 2 starts from stage 1's output); else None."""
    path = Path(name_or_path)
    if not path.exists():
        ok = HUB_MODEL_ID.fullmatch(name_or_path) and ".." not in name_or_path and "--" not in name_or_path
        return name_or_path if ok else None
    for part in reversed(path.resolve().parts):
        if match := CACHE_FOLDER.fullmatch(part):
            return f"{match.group(1)}/{match.group(2)}"
    try:
        meta, _ = read_card(path / "README.md")
    except (yaml.YAMLError, OSError, UnicodeDecodeError):
        return None
    base = meta.get("base_model") if isinstance(meta, dict) else None
    return base if isinstance(base, str) and not Path(base).exists() and hub_base_model(base) == base else None


def base_licence(base_model: str, base_id: str | None) -> dict:
    """A fine-tune is bound by its base model's licence: the licence fields of the base's card (a local folder's
    README.md, else the base's card on the Hub, e.g. Gemma's `gemma` or Llama's `llama3.2` with its name and link),
    else a link to the base on the Hub. Offline or on a Hub error the link is kept and one line logged."""
    local = Path(base_model)
    fields = inherited_licence(local / "README.md" if local.is_dir() else None, base_id)
    if base_id is None or fields.get("license_name") != FALLBACK_LICENCE_NAME:
        return fields  # the local card's own fields, or nothing to look up
    from vital_hub.hub import HubError, model_card_data

    try:
        meta, commit = model_card_data(base_id)
    except HubError as err:
        log.warning("base model licence: %s; the card links to the base model instead", err)
        return fields
    found = licence_fields(meta, base_id, commit)
    if "license" not in found:
        return fields
    # `other` must come with a name and a link (the Hub refuses it without): the base's own, else the fallback's
    return {**fields, **found} if found["license"] == "other" else found


def card_text(
    model_name: str,
    base_model: str,
    datasets: list[DatasetUsed],
    hyperparameters: dict,
    eval_results: dict | None = None,
    method: str = "full",
    notes: list[str] | None = None,
) -> str:
    """README.md of the trained model: Hub metadata in YAML, then the facts a reader needs to trust and rerun it.
    `notes` are sentences a user of the model must know (a chat template replaced for training, for instance)."""
    hub_datasets = sorted({d.id for d in datasets if not Path(d.id).is_dir()})
    base_id = hub_base_model(base_model)
    metadata = {"library_name": "peft" if method == "lora" else "transformers"}
    metadata.update(base_licence(base_model, base_id))
    if base_id is not None:
        metadata["base_model"] = base_id
    metadata.update(
        {
            "pipeline_tag": "image-text-to-text",
            "tags": ["vital-hub", "biomed-vital", "llava", "sft", "medical", method],
        }
    )
    base_shown = f"`{base_id}`" if base_id else f"A local checkpoint (`{Path(base_model).name}`)"
    if hub_datasets:
        metadata["datasets"] = hub_datasets
    lines = [
        "---",
        yaml.safe_dump(metadata, sort_keys=False).rstrip(),
        "---",
        "",
        f"# {model_name}",
        "",
        f"{base_shown} instruction-tuned ({method}) with vital-hub's `recipes/sft.py` on biomedical visual "
        "instruction data (BioMed-VITAL). The loss is on assistant tokens only; the vision tower stays frozen "
        "unless the hyperparameters below say otherwise.",
        "",
        "## Data",
        "",
        "| dataset | config | split | revision | fraction kept | rows |",
        "|---|---|---|---|---|---|",
    ]
    for d in datasets:
        rows = "" if d.rows is None else f"{d.rows:,}"
        lines.append(
            f"| `{d.id}` | {d.config or ''} | {d.split} | `{d.revision or 'unknown'}` | {d.weight:g} | {rows} |"
        )
    lines += ["", "## Hyperparameters", "", "| name | value |", "|---|---|"]
    lines += [f"| {name} | {value} |" for name, value in hyperparameters.items()]
    if notes:
        lines += ["", "## Notes", ""] + [f"- {note}" for note in notes]
    if eval_results:
        lines += ["", "## Evaluation", "", "| metric | value |", "|---|---|"]
        lines += [f"| {name} | {format_metric(value)} |" for name, value in sorted(eval_results.items())]
    lines += [
        "",
        "## Use",
        "",
        "```python",
        "from transformers import AutoModelForImageTextToText, AutoProcessor",
        "",
        f'model = AutoModelForImageTextToText.from_pretrained("{model_name}")',
        f'processor = AutoProcessor.from_pretrained("{model_name}")',
        "```",
        "",
    ]
    return "\n".join(lines)


def format_metric(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def read_eval_results(path: str | Path | None) -> dict:
    """Flat metrics from a results JSON (`vital eval` output or the trainer's eval_results.json); {} when absent."""
    if path is None or not Path(path).exists():
        return {}
    results = read_json(path)
    return {key: value for key, value in flatten(results).items() if isinstance(value, int | float)}


def flatten(values: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}/"))
        else:
            flat[name] = value
    return flat


def write_card(out_dir: str | Path, text: str) -> Path:
    path = Path(out_dir) / "README.md"
    with atomic_path(path) as temporary:
        Path(temporary).write_text(text, encoding="utf-8")
    return path


def end_of_turn_ids(processor, end_tokens: set[str]) -> list[int]:
    """Token ids that end an answer: the ones closing assistant turns in training, then the tokenizer's eos."""
    tokenizer = processor.tokenizer
    ids = [tokenizer.convert_tokens_to_ids(token) for token in sorted(end_tokens)]
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    return list(dict.fromkeys(ids))


def set_generation_eos(model, eos_ids: list[int], pad_id: int | None) -> None:
    """Make `generate` stop where training taught the model to stop."""
    config = model.generation_config
    config.eos_token_id = eos_ids[0] if len(eos_ids) == 1 else eos_ids
    if pad_id is not None:
        config.pad_token_id = pad_id


def push_folder_to_hub(folder: str | Path, repo_id: str, private: bool | None, message: str) -> str:
    """Upload the trained model (the top-level files of the output folder, not its checkpoints) through
    `vital_hub.hub`, the project's one Hub client. The files are hard-linked into a staging folder beside the
    output, so nothing large is copied."""
    from vital_hub.hub import push_folder

    folder = Path(folder)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-push-", dir=folder.parent))
    try:
        for path in folder.iterdir():
            if path.is_file() and not path.name.startswith(".") and path.name not in STAGING_SKIP:
                link_or_copy(path, staging / path.name)
        return push_folder(staging, repo_id, repo_type="model", private=bool(private), commit_message=message)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:  # another filesystem, or links not allowed
        shutil.copy2(source, target)
