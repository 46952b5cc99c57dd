"""Training the selector with TRL: a RewardTrainer that reads images, the paper's losses and metrics, the sweep.

TRL 1.16's `RewardTrainer` tokenises `chosen`/`rejected` text itself and scores a sequence classifier. Here the
rows are `preferences` pairs with a figure, so the subclass keeps the rows as they are (no tokenising pass), lets
`PreferenceCollator` build image + text batches, and replaces the loss with the configured one (weighted hinge
or Bradley-Terry, per-pair weights, TRL's `center_rewards_coefficient`). Each evaluation reports, besides TRL's
own numbers, the paper's three: held-out pairwise accuracy, clinician alignment rate (share of clinician pairs
ranked as the clinician did) and clinician AUC (chosen answers vs rejected ones, over clinician pairs).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from trl import RewardTrainer

from vital_hub.selector.data import FigureImages, PreferenceCollator, has_image
from vital_hub.selector.losses import LOSSES, preference_loss


@dataclass
class SelectorScriptArguments:
    """Data and loss of a selector run (the model and trainer settings live in their own dataclasses)."""

    dataset_name: str = field(metadata={"help": "preferences repo folder or Hub dataset id"})
    dataset_config: str = field(default="mixed", metadata={"help": "preferences config to train on"})
    dataset_revision: str | None = field(default=None, metadata={"help": "Hub revision of the preferences dataset"})
    images_dir: str | None = field(default=None, metadata={"help": "folder of <pair_id>.jpg figures"})
    figures: str | None = field(
        default=None, metadata={"help": "figures dataset (folder or Hub id) read through the figure store"}
    )
    loss_type: str = field(default="hinge", metadata={"help": f"pairwise loss: {', '.join(LOSSES)}"})
    margin: float | None = field(
        default=None, metadata={"help": "hinge margin (default 1, the paper's) or Bradley-Terry offset (default 0)"}
    )
    clinician_weight: float | None = field(
        default=None, metadata={"help": "override the weight of every clinician pair (model pairs keep 1)"}
    )
    sweep_clinician_weights: list[float] | None = field(
        default=None,
        metadata={"help": "train once per clinician weight (the paper swept 1 10 100 200 300 400) and tabulate"},
    )
    max_train_pairs: int | None = field(default=None, metadata={"help": "use only the first N training pairs"})
    max_eval_pairs: int | None = field(default=None, metadata={"help": "use only the first N held-out pairs"})
    push_to_hub_repo: str | None = field(
        default=None, metadata={"help": "model repo to push the selector folder to (through vital_hub.hub)"}
    )
    model_license: str = field(
        default="mit",
        metadata={
            "help": "Hub licence id in the selector's card (default mit: the licence of BiomedCLIP and CLIP, "
            "whose weights a selector starts from)"
        },
    )

    def __post_init__(self):
        if self.loss_type not in LOSSES:
            raise ValueError(f"unknown loss_type {self.loss_type!r}; known: {', '.join(LOSSES)}")
        if self.clinician_weight is not None and self.clinician_weight <= 0:
            raise ValueError("clinician_weight must be positive")


@dataclass
class SelectorModelArguments:
    """Which backbone, from where, and the head and preprocessing settings of a new selector."""

    backbone: str = field(default="biomedclip", metadata={"help": "dual_encoder | biomedclip | text"})
    model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "pretrained backbone: a CLIP-family id (dual_encoder), BiomedCLIP's open_clip repo or folder "
            "(biomedclip), a text model (text)"
        },
    )
    selector_path: str | None = field(default=None, metadata={"help": "start from a saved selector instead"})
    backbone_config: dict | None = field(
        default=None, metadata={"help": "build the backbone from this config (random weights, for tests/benchmarks)"}
    )
    tokenizer_name_or_path: str | None = field(default=None, metadata={"help": "tokenizer, when not beside the model"})
    head_hidden_sizes: list[int] = field(default_factory=lambda: [512, 512, 512], metadata={"help": "MLP widths"})
    output_sigmoid: bool = field(default=True, metadata={"help": "sigmoid on the score, as the paper"})
    normalize_features: bool = field(default=True, metadata={"help": "L2-normalise features, as open_clip does"})
    text_max_length: int = field(default=256, metadata={"help": "text tokens (BiomedCLIP's context is 256)"})
    truncation_side: str = field(default="right", metadata={"help": "right (the paper) or left (keep the answer)"})
    image_size: int | None = field(default=None, metadata={"help": "input size (default: the vision tower's)"})


def head_kwargs(args: SelectorModelArguments) -> dict:
    kwargs = {
        "head_hidden_sizes": args.head_hidden_sizes,
        "output_sigmoid": args.output_sigmoid,
        "normalize_features": args.normalize_features,
        "text_max_length": args.text_max_length,
        "truncation_side": args.truncation_side,
    }
    if args.image_size is not None:
        kwargs["image_size"] = args.image_size
    return kwargs


def vision_image_size(backbone_config) -> int | None:
    vision = getattr(backbone_config, "vision_config", None)
    return getattr(vision, "image_size", None)


def build_selector(args: SelectorModelArguments):
    """(SelectorModel, tokenizer) from a saved selector, a pretrained backbone or a backbone config."""
    from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification, AutoTokenizer

    from vital_hub.selector.modeling import SelectorConfig, SelectorModel, config_from_dict, get_backbone_kind

    if args.selector_path:
        return AutoModel.from_pretrained(args.selector_path), AutoTokenizer.from_pretrained(args.selector_path)
    kind = get_backbone_kind(args.backbone)
    kwargs = head_kwargs(args)
    tokenizer_source = args.tokenizer_name_or_path or args.model_name_or_path
    if args.backbone_config is not None:
        backbone_config = config_from_dict(args.backbone_config)
        if kind == "text":
            backbone_config.num_labels = 1
        kwargs.setdefault("image_size", vision_image_size(backbone_config) or 224)
        model = SelectorModel(SelectorConfig(backbone=kind, backbone_config=backbone_config, **kwargs))
    elif args.model_name_or_path is None:
        raise ValueError("give selector_path, model_name_or_path or backbone_config")
    elif kind == "biomedclip":
        from vital_hub.selector.convert import selector_from_open_clip

        folder = Path(args.model_name_or_path)
        if not folder.is_dir():
            from vital_hub.hub import download_repo

            folder = download_repo(local_or_hub_id(args.model_name_or_path, "model_name_or_path"), "model")
        model, open_clip_config = selector_from_open_clip(folder, **kwargs)
        text_cfg = open_clip_config.get("model_cfg", {}).get("text_cfg", {})
        tokenizer_source = args.tokenizer_name_or_path or text_cfg.get("hf_tokenizer_name") or str(folder)
    elif kind == "text":
        backbone = AutoModelForSequenceClassification.from_pretrained(args.model_name_or_path, num_labels=1)
        model = SelectorModel(SelectorConfig(backbone="text", backbone_config=backbone.config, **kwargs))
        model.backbone.load_state_dict(backbone.state_dict())
    else:
        backbone = AutoModel.from_pretrained(args.model_name_or_path)
        config = AutoConfig.from_pretrained(args.model_name_or_path)
        kwargs.setdefault("image_size", vision_image_size(config) or 224)
        kwargs.update(image_mean_std(args.model_name_or_path))
        model = SelectorModel(SelectorConfig(backbone=kind, backbone_config=config, **kwargs))
        model.backbone.load_state_dict(backbone.state_dict())
    if tokenizer_source is None:
        raise ValueError("a selector built from a config needs tokenizer_name_or_path")
    return model, load_tokenizer(tokenizer_source)


def local_or_hub_id(source: str, option: str) -> str:
    """`source` when it is a local path or could be a Hub id; a path that is not there is an error naming it, so
    a typo never becomes a network error that names neither."""
    if Path(source).exists():
        return source
    shaped_as_path = source.startswith((".", "/", "~")) or source.endswith("/") or source.count("/") > 1
    if shaped_as_path or "\\" in source:
        raise FileNotFoundError(f"{option} {source}: no such folder (nor is it a Hub id ORG/NAME)")
    return source


def load_tokenizer(source: str):
    """AutoTokenizer from a folder or a Hub id; a failure is one line naming the source."""
    from transformers import AutoTokenizer

    source = local_or_hub_id(str(source), "tokenizer_name_or_path")
    try:
        return AutoTokenizer.from_pretrained(source)
    except OSError as err:
        reason = next((line.strip() for line in str(err).splitlines() if line.strip()), type(err).__name__)
        where = "an existing folder" if Path(source).exists() else "a local folder, and the Hub could not provide it"
        raise OSError(f"tokenizer_name_or_path {source}: not {where} ({reason})") from None


def image_mean_std(name_or_path: str) -> dict:
    """The pretrained model's own normalisation, when it ships an image processor."""
    from transformers import AutoImageProcessor

    try:
        processor = AutoImageProcessor.from_pretrained(name_or_path)
    except (OSError, ValueError):
        return {}
    return {"image_mean": list(processor.image_mean), "image_std": list(processor.image_std)}


# ---------------------------------------------------------------- metrics


def preference_metrics(prediction) -> dict[str, float]:
    """Pairwise accuracy on all held-out pairs and on model pairs; clinician alignment rate and AUC."""
    from sklearn.metrics import roc_auc_score

    scores = np.asarray(prediction.predictions, dtype=np.float64).reshape(-1, 2)
    clinician = np.asarray(prediction.label_ids).reshape(-1).astype(bool)
    wins = scores[:, 0] > scores[:, 1]
    metrics = {"pairwise_accuracy": float(wins.mean())}
    if (~clinician).any():
        metrics["model_pair_accuracy"] = float(wins[~clinician].mean())
    if clinician.any():
        metrics["clinician_alignment"] = float(wins[clinician].mean())
        chosen, rejected = scores[clinician, 0], scores[clinician, 1]
        labels = np.r_[np.ones(len(chosen)), np.zeros(len(rejected))]
        metrics["clinician_auc"] = float(roc_auc_score(labels, np.r_[chosen, rejected]))
    return metrics


# ---------------------------------------------------------------- trainer


class SelectorRewardTrainer(RewardTrainer):
    """RewardTrainer over `preferences` rows with figures; see the module docstring."""

    _tag_names = ["trl", "reward-trainer", "vital-hub", "biomed-vital-selector"]

    def __init__(
        self,
        model,
        args,
        train_dataset,
        eval_dataset=None,
        processing_class=None,
        images: FigureImages | None = None,
        loss_type: str = "hinge",
        margin: float | None = None,
        **kwargs,
    ):
        if loss_type not in LOSSES:
            raise ValueError(f"unknown loss_type {loss_type!r}; known: {', '.join(LOSSES)}")
        self.loss_type, self.loss_margin = loss_type, margin
        args.remove_unused_columns = False  # the collator reads the raw columns
        super().__init__(
            model=model,
            args=args,
            data_collator=PreferenceCollator(processing_class, model.config, images),
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            compute_metrics=preference_metrics,
            **kwargs,
        )
        self.label_names = ["is_clinician"]  # so evaluation hands origins to `preference_metrics`

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        return dataset

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = "train" if self.model.training else "eval"
        inputs = dict(inputs)
        weights = inputs.pop("weight")
        inputs.pop("is_clinician")
        scores = model(**inputs).logits.squeeze(-1).float()
        chosen, rejected = scores.chunk(2)
        loss = preference_loss(
            self.loss_type, chosen, rejected, weights, self.loss_margin, self.args.center_rewards_coefficient
        )
        with torch.no_grad():
            gather = self.accelerator.gather_for_metrics
            self._metrics[mode]["accuracy"].append(gather((chosen > rejected).float().mean()).mean().item())
            self._metrics[mode]["margin"].append(gather((chosen - rejected).mean()).mean().item())
            self._metrics[mode]["mean_reward"].append(gather(scores.mean()).mean().item())
        if return_outputs:
            return loss, {"pair_scores": torch.stack([chosen, rejected], dim=1)}
        return loss


# ---------------------------------------------------------------- data


def load_pairs(script_args: SelectorScriptArguments):
    """(train, test) datasets of the chosen config, with image cells left encoded and weights overridden."""
    from datasets import Image, concatenate_datasets, load_dataset

    loaded = load_dataset(script_args.dataset_name, script_args.dataset_config, revision=script_args.dataset_revision)
    pairs = concatenate_datasets(list(loaded.values()))
    if "image" in pairs.column_names:
        pairs = pairs.cast_column("image", Image(decode=False))
    if script_args.clinician_weight is not None:
        pairs = with_clinician_weight(pairs, script_args.clinician_weight)
    train = pairs.filter(lambda row: row["split"] == "train")
    test = pairs.filter(lambda row: row["split"] == "test")
    if script_args.max_train_pairs is not None:
        train = train.select(range(min(len(train), script_args.max_train_pairs)))
    if script_args.max_eval_pairs is not None:
        test = test.select(range(min(len(test), script_args.max_eval_pairs)))
    return train, test


def with_clinician_weight(pairs, weight: float):
    """The pairs with every clinician pair weighted `weight` (model pairs keep theirs)."""
    return pairs.map(lambda row: {"weight": weight if row["origin"] == "clinician" else row["weight"]})


def drop_pairs_without_images(dataset, images: FigureImages | None, size: int):
    """Pairs whose figure cannot be read cannot train an image model: drop them, and say how many."""
    kept = dataset.filter(lambda row: has_image(row, images, size))
    return kept, len(dataset) - len(kept)


# ---------------------------------------------------------------- sweep and card


def write_sweep_table(rows: list[dict], out: Path) -> Path:
    """sweep.csv, sweep.md and sweep.png (metrics against the clinician weight)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    keys = ["clinician_weight"] + sorted({k for row in rows for k in row if k != "clinician_weight"})
    with open(out / "sweep.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(k)) for k in keys) + " |")
    (out / "sweep.md").write_text("\n".join(lines) + "\n")
    figure, axis = plt.subplots(figsize=(6, 4))
    weights = [row["clinician_weight"] for row in rows]
    for key in keys[1:]:
        if key.endswith(("accuracy", "alignment", "auc")):
            axis.plot(weights, [row.get(key, np.nan) for row in rows], marker="o", label=key.replace("eval_", ""))
    axis.set_xscale("symlog")
    axis.set_xlabel("clinician pair weight w")
    axis.set_ylabel("held-out metric")
    axis.legend()
    figure.tight_layout()
    figure.savefig(out / "sweep.png", dpi=120)
    plt.close(figure)
    return out / "sweep.md"


def _cell(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else ("" if value is None else str(value))
