"""Train a BioMed-VITAL selector (a multimodal reward model) on the `preferences` pairs with TRL.

Usage (one GPU, or one process per GPU):

    accelerate launch recipes/reward.py --config recipes/selector/config_biomedclip.yaml
    accelerate launch --num_processes 8 recipes/reward.py --config recipes/selector/config_biomedclip.yaml \
        --dataset_name you/biomed-vital-preferences --images_dir figures/ --push_to_hub_repo you/biomed-vital-selector

Clinician-weight sweep (the paper tried 1, 10, 100, 200, 300, 400), one run per weight, tabulated at the end:

    accelerate launch recipes/reward.py --config recipes/selector/config_sweep.yaml

Any YAML key can be overridden on the command line (`--learning_rate 2e-5`). Pushing goes through
`vital_hub.hub.push_folder`; the same folder can be pushed later with `vital push DIR --to ORG/NAME --repo-type model`.
"""

from __future__ import annotations

import logging
from pathlib import Path

from trl import RewardConfig, TrlParser

from vital_hub.selector.card import write_model_card
from vital_hub.selector.data import FigureImages
from vital_hub.selector.losses import effective_margin
from vital_hub.selector.trainer import (
    SelectorModelArguments,
    SelectorRewardTrainer,
    SelectorScriptArguments,
    build_selector,
    drop_pairs_without_images,
    load_pairs,
    with_clinician_weight,
    write_sweep_table,
)

logger = logging.getLogger(__name__)
SWEEP_COLUMNS = (
    "eval_pairwise_accuracy",
    "eval_model_pair_accuracy",
    "eval_clinician_alignment",
    "eval_clinician_auc",
    "eval_loss",
)


def usable_pairs(script_args, config) -> tuple:
    """(train, test, images, dropped): the pairs, less those whose figure an image selector cannot read."""
    train, test = load_pairs(script_args)
    images = None
    dropped = 0
    if config.uses_images:
        if script_args.images_dir or script_args.figures:
            images = FigureImages(script_args.images_dir, script_args.figures)
        train, dropped_train = drop_pairs_without_images(train, images, config.image_size)
        test, dropped_test = drop_pairs_without_images(test, images, config.image_size)
        dropped = dropped_train + dropped_test
        if dropped:
            logger.warning("dropped %d pairs whose figure could not be read", dropped)
    if not any(origin == "clinician" for origin in (test["origin"] if len(test) else [])):
        logger.warning(
            "no clinician pair in the test split of %s: eval_clinician_alignment and eval_clinician_auc will not be "
            "reported; build the clinician config with held-out pairs (`vital preferences build --test-fraction 0.2`, "
            "the default)",
            script_args.dataset_name,
        )
    return train, test, images, dropped


def train_one(script_args, training_args, model_args, model, tokenizer, pairs, clinician_weight=None) -> dict:
    ################
    # Data
    ################
    train, test, images, dropped = pairs
    if clinician_weight is not None:
        train, test = with_clinician_weight(train, clinician_weight), with_clinician_weight(test, clinician_weight)

    ################
    # Training
    ################
    trainer = SelectorRewardTrainer(
        model=model,
        args=training_args,
        train_dataset=train,
        eval_dataset=test if len(test) else None,
        processing_class=tokenizer,
        images=images,
        loss_type=script_args.loss_type,
        margin=script_args.margin,
    )
    trainer.train()
    metrics = trainer.evaluate() if len(test) else {}

    ################
    # Save, card, push
    ################
    output_dir = Path(training_args.output_dir)
    trainer.save_model(str(output_dir))
    if trainer.accelerator.is_main_process:
        tokenizer.save_pretrained(output_dir)
        write_model_card(
            output_dir,
            {
                "backbone": model.config.backbone,
                "base_model": model_args.model_name_or_path or model_args.selector_path,
                "dataset": script_args.dataset_name,
                "dataset_config": script_args.dataset_config,
                "dataset_revision": script_args.dataset_revision,
                "train_pairs": len(train),
                "eval_pairs": len(test),
                "dropped_pairs": dropped,
                "clinician_weight": clinician_weight or script_args.clinician_weight,
                "loss_type": script_args.loss_type,
                "margin": effective_margin(script_args.loss_type, script_args.margin),
                "center_rewards_coefficient": training_args.center_rewards_coefficient,
                "learning_rate": training_args.learning_rate,
                "epochs": training_args.num_train_epochs,
                "max_steps": training_args.max_steps,
                "epochs_trained": trainer.state.epoch,
                "steps_trained": trainer.state.global_step,
                "image_size": model.config.image_size,
                "text_max_length": model.config.text_max_length,
                "truncation_side": model.config.truncation_side,
                "batch_size": training_args.per_device_train_batch_size,
                "metrics": metrics,
                "license": script_args.model_license,
            },
        )
        if script_args.push_to_hub_repo:
            from vital_hub.hub import push_folder

            print(push_folder(output_dir, script_args.push_to_hub_repo, repo_type="model"))
    return metrics


def main(script_args, training_args, model_args):
    if not script_args.sweep_clinician_weights:
        model, tokenizer = build_selector(model_args)
        pairs = usable_pairs(script_args, model.config)
        return train_one(script_args, training_args, model_args, model, tokenizer, pairs)
    root = Path(training_args.output_dir)
    rows, pairs = [], None
    for weight in script_args.sweep_clinician_weights:
        training_args.output_dir = str(root / f"w{weight:g}")
        model, tokenizer = build_selector(model_args)
        if pairs is None:  # which pairs have a readable figure does not depend on the weight: check them once
            pairs = usable_pairs(script_args, model.config)
        metrics = train_one(script_args, training_args, model_args, model, tokenizer, pairs, clinician_weight=weight)
        rows.append({"clinician_weight": weight, **{k: metrics[k] for k in SWEEP_COLUMNS if k in metrics}})
    table = write_sweep_table(rows, root)
    print(table.read_text())
    return rows


def device_overrides(argv: list[str]) -> list[str]:
    """`--bf16 false` when the config asks for bf16 and no GPU is there (a CPU smoke run), with a log line; an
    explicit `--bf16` on the command line is left alone."""
    import torch
    import yaml

    if torch.cuda.is_available() or any(a == "--bf16" or a.startswith("--bf16=") for a in argv):
        return []
    config = argv[argv.index("--config") + 1] if "--config" in argv[:-1] else None
    asked = yaml.safe_load(Path(config).read_text(encoding="utf-8")).get("bf16") if config else False
    if not asked:
        return []
    logger.warning("no GPU: bf16 switched off (the config's bf16: true needs one); training runs in fp32 on CPU")
    return ["--bf16", "false"]


if __name__ == "__main__":
    import os
    import sys

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    argv = sys.argv[1:]
    parser = TrlParser((SelectorScriptArguments, RewardConfig, SelectorModelArguments))
    try:
        script_args, training_args, model_args = parser.parse_args_and_config(argv + device_overrides(argv))
        main(script_args, training_args, model_args)
    except (OSError, ValueError) as err:
        if os.environ.get("VITAL_DEBUG"):
            raise
        sys.exit(f"recipes/reward.py: error: {err}")
