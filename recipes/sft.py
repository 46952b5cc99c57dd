"""Instruction-tune a vision-language model (LLaVA family) on a config of the instructions repo, or a mixture.

Full fine-tune of LLaVA-1.5-7B on 8 GPUs (FSDP2; DeepSpeed ZeRO-2/3 and DDP configs sit beside it):

    accelerate launch --config_file recipes/accelerate_configs/fsdp2.yaml --num_processes 8 \
        recipes/sft.py --config recipes/llava-1.5-7b/sft/config_full.yaml

Every family in `vital_hub.training.families` trains the same way (Qwen2.5-VL, Qwen3-VL, Gemma 3, SmolVLM,
InternVL, LLaVA-OneVision, LLaVA-1.5): recipes are under `recipes/<model>/sft/`. LoRA on one GPU:

    CUDA_VISIBLE_DEVICES=0 accelerate launch --num_processes 1 recipes/sft.py \
        --config recipes/llava-1.5-7b/sft/config_lora.yaml

Every field of the YAML can be overridden on the command line (`--learning_rate 1e-5 --dataset_config 60k`).
Running the same command again after a crash or a kill resumes exactly from the last complete checkpoint in
`output_dir` (`save_steps`): weights or adapter (loaded strictly), optimizer, scheduler, RNG and data position
(`vital_hub.training.resume`). The loss is on assistant tokens only (`vital_hub.training.masking`); the vision
tower stays frozen unless `freeze_vision_tower: false`, with or without LoRA (`vital_hub.training.freeze`).
The output folder (full model or LoRA adapter; with `merged_output_dir`, also the merged model) loads with stock
`AutoModelForImageTextToText` and `AutoProcessor`. Bad input is one line `sft.py: error: ...` and exit status 1
(VITAL_DEBUG=1 shows the traceback).

`packing: true` lays each step's rows end to end in one padding-free row (`vital_hub.training.packing`; every
row keeps its own positions, attention and labels); `packing_budget: 16384` then fills each step with rows
first-fit by length up to that many real tokens (`vital_hub.training.budget`).
"""

import logging
import math
import os
import sys
from dataclasses import dataclass, field

# Batches change shape every step; without expandable segments the caching allocator fragments, and near the
# memory limit it frees its cache and retries mid-backward (a device-wide sync measured at 0.16-1.3 s on an H100).
# Set before torch starts; a value from the environment wins.
if "PYTORCH_ALLOC_CONF" not in os.environ:
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")

import datasets
import transformers
from transformers import set_seed
from trl import ModelConfig, SFTConfig, TrlParser, get_peft_config

from vital_hub.cli import run_reporting_errors
from vital_hub.training.card import (
    DatasetUsed,
    card_text,
    end_of_turn_ids,
    hyperparameters_of,
    push_folder_to_hub,
    read_eval_results,
    set_generation_eos,
    write_card,
)
from vital_hub.training.collator import VisionSFTCollator
from vital_hub.training.data import load_mixture, mixture_of, model_messages, resolved_revision
from vital_hub.training.freeze import STAGES, check_lora, set_trainable
from vital_hub.training.masking import render_with_targets
from vital_hub.training.model import (
    compile_pointwise_modules,
    load_model,
    load_processor,
    merge_adapter,
    router_logits_off,
    skip_redundant_adapter_casts,
)
from vital_hub.training.resume import ResumableSFTTrainer, last_complete_checkpoint

logger = logging.getLogger(__name__)


@dataclass
class SFTScriptArguments:
    dataset_name: str | None = field(
        default=None, metadata={"help": "Instructions repo: a Hub dataset id or a local folder with README configs."}
    )
    dataset_config: str | None = field(default=None, metadata={"help": "Config of the repo, e.g. 80k or 60k."})
    dataset_split: str = field(default="train", metadata={"help": "Split to train on."})
    dataset_revision: str | None = field(default=None, metadata={"help": "Hub revision (branch, tag or commit)."})
    dataset_mixture: str | None = field(
        default=None,
        metadata={
            "help": "Path of a mixture YAML ({datasets: [{id, config, split, revision, weight}], seed, "
            "test_split_size}); in a recipe YAML it may be written inline. Replaces dataset_name."
        },
    )
    missing_images: str = field(
        default="skip",
        metadata={"help": "Rows whose image is null: 'skip' them, train them as 'text' only, or 'error'."},
    )
    image_processor_kwargs: dict | None = field(
        default=None,
        metadata={
            "help": "Processor settings that override the checkpoint's, as a YAML mapping: the pixel budget "
            "(Qwen max_pixels/min_pixels, SmolVLM size, InternVL max_patches, LLaVA-OneVision image_grid_pinpoints)."
        },
    )
    max_image_side: int = field(
        default=1024, metadata={"help": "Decode images at most this many pixels on the longer side (CPU cost cap)."}
    )
    stage: str = field(
        default="full",
        metadata={"help": "'full': projector + language model train; 'projector': projector only (alignment)."},
    )
    freeze_vision_tower: bool = field(default=True, metadata={"help": "Keep the vision tower frozen (LLaVA)."})
    compile_pointwise_modules: bool = field(
        default=False,
        metadata={
            "help": "torch.compile the language model's MLP and RMSNorm modules: fused elementwise kernels and "
            "less activation memory (GPU with Triton)."
        },
    )
    init_random_weights: bool = field(
        default=False,
        metadata={"help": "Build the model from its config with random weights (smoke runs and benchmarks)."},
    )
    eval_results_file: str | None = field(
        default=None, metadata={"help": "JSON of evaluation results (e.g. from `vital eval`) to put in the card."}
    )
    dataset_cache_dir: str | None = field(default=None, metadata={"help": "datasets cache folder."})
    packing_budget: int | None = field(
        default=None,
        metadata={
            "help": "With packing: true, real tokens per packed row: rows are packed first-fit by length up to it "
            "(their tokens measured once, before training) instead of per_device_train_batch_size rows a step."
        },
    )
    merged_output_dir: str | None = field(
        default=None,
        metadata={
            "help": "LoRA runs: also write the base model with the adapter merged into it here (a plain "
            "transformers folder with processor, generation config and card)."
        },
    )


def check_arguments(script_args: SFTScriptArguments, training_args: SFTConfig, model_args: ModelConfig) -> None:
    """Refuse before any data or model loads what would fail (or be silently ignored) later."""
    from pathlib import Path

    from vital_hub.training.data import MISSING_IMAGE_POLICIES

    if script_args.stage not in STAGES:
        raise ValueError(f"stage: {script_args.stage!r} is not one of {list(STAGES)}")
    if script_args.missing_images not in MISSING_IMAGE_POLICIES:
        raise ValueError(
            f"missing_images: {script_args.missing_images!r} is not one of {list(MISSING_IMAGE_POLICIES)}"
        )
    if script_args.max_image_side <= 0:
        raise ValueError(f"max_image_side: {script_args.max_image_side} must be a positive number of pixels")
    for option, low in (("learning_rate", 0.0), ("num_train_epochs", 0.0), ("weight_decay", None)):
        value = getattr(training_args, option)
        if not math.isfinite(value) or (low is not None and value <= low) or value < 0:
            raise ValueError(
                f"{option}: {value} must be a finite number" + (f" above {low:g}" if low is not None else "")
            )
    for option in ("per_device_train_batch_size", "gradient_accumulation_steps", "max_length"):
        value = getattr(training_args, option)
        if value is not None and value < 1:
            raise ValueError(f"{option}: {value} must be at least 1")
    if not model_args.model_name_or_path:
        raise ValueError("model_name_or_path: not given (a Hub id or a local model folder)")
    template = training_args.chat_template_path
    if template and Path(template).suffix in (".jinja", ".j2") and not Path(template).is_file():
        raise FileNotFoundError(f"chat_template_path {template}: no such file")
    if script_args.eval_results_file and not Path(script_args.eval_results_file).is_file():
        raise FileNotFoundError(f"eval_results_file {script_args.eval_results_file}: no such file")
    if training_args.push_to_hub and not training_args.hub_model_id:
        raise ValueError("push_to_hub: true needs hub_model_id (the repo to push to)")
    if script_args.merged_output_dir and not model_args.use_peft:
        raise ValueError("merged_output_dir: only a LoRA run (use_peft: true) has an adapter to merge")
    if script_args.merged_output_dir and script_args.init_random_weights and int(os.environ.get("WORLD_SIZE", 1)) > 1:
        raise ValueError(
            "merged_output_dir with init_random_weights: across processes the merge reloads the base weights, "
            "which a randomly initialised base does not have on disk; merge in a one-process run"
        )


def main(script_args: SFTScriptArguments, training_args: SFTConfig, model_args: ModelConfig):
    ################
    # Set up
    ################
    check_arguments(script_args, training_args, model_args)
    set_seed(training_args.seed)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", handlers=[logging.StreamHandler()])
    log_level = training_args.get_process_log_level()
    for library_logger in (logger, logging.getLogger("vital_hub")):
        library_logger.setLevel(log_level)
    datasets.utils.logging.set_verbosity(log_level)
    transformers.utils.logging.set_verbosity(log_level)
    push_to_hub, training_args.push_to_hub = training_args.push_to_hub, False  # pushed once, at the end, below
    last_checkpoint = None
    if training_args.resume_from_checkpoint is None:
        last_checkpoint = last_complete_checkpoint(training_args.output_dir)
    if last_checkpoint is not None:
        logger.info("Resuming from %s", last_checkpoint)

    ################
    # Load data
    ################
    mixture = mixture_of(
        script_args.dataset_name,
        script_args.dataset_config,
        script_args.dataset_split,
        script_args.dataset_revision,
        script_args.dataset_mixture,
        seed=training_args.seed,
    )
    revisions = [resolved_revision(source) for source in mixture.datasets]
    splits, rows_per_source = load_mixture(mixture, script_args.missing_images, script_args.dataset_cache_dir)

    ################
    # Load model and processor
    ################
    processor = load_processor(model_args, training_args.chat_template_path, script_args.image_processor_kwargs)
    model = load_model(model_args, script_args.init_random_weights)
    peft_config = get_peft_config(model_args)
    if peft_config is None:
        for part, counts in set_trainable(model, script_args.stage, script_args.freeze_vision_tower).items():
            logger.info("%s: %s", part, counts)
    else:  # the same rules for LoRA: family, stage, vision tower; targets checked against the family's parts
        plan = check_lora(model, peft_config, script_args.stage, script_args.freeze_vision_tower)
        logger.info("LoRA on %d modules; trained in full: %s", len(plan["lora"]), plan["modules_to_save"])
    if script_args.compile_pointwise_modules:
        logger.info("Compiling %d MLP and RMSNorm modules", len(compile_pointwise_modules(model)))

    ################
    # Train
    ################
    collator = VisionSFTCollator(
        processor,
        max_length=training_args.max_length,
        max_image_side=script_args.max_image_side,
        missing_images=script_args.missing_images,
        pad_to_multiple_of=training_args.pad_to_multiple_of,
        correct_template=not training_args.chat_template_path,  # a template the user names is used as it is
    )
    trainer_class, budget = ResumableSFTTrainer, {}
    if training_args.packing:  # vital-hub's packing of image rows (vital_hub.training.packing), not TRL's
        from vital_hub.training.budget import budget_trainer_class
        from vital_hub.training.packing import enable_packing, packed_collator

        training_args.packing = False  # TRL's own packing refuses vision datasets
        logger.info(enable_packing(model))
        collator = packed_collator(collator, model.config)
        if script_args.packing_budget:
            trainer_class, budget = (
                budget_trainer_class(ResumableSFTTrainer),
                {"packing_budget": script_args.packing_budget},
            )
    trainer = trainer_class(
        **budget,
        model=model,
        args=training_args,
        train_dataset=splits["train"],
        eval_dataset=splits.get("test"),
        processing_class=processor,
        data_collator=collator,
        peft_config=peft_config,
    )
    if peft_config is not None:  # exact under autocast: see skip_redundant_adapter_casts
        logger.info("LoRA layers taking autocast inputs as they come: %d", skip_redundant_adapter_casts(trainer.model))
    resume = training_args.resume_from_checkpoint or (str(last_checkpoint) if last_checkpoint else None)
    train_result = trainer.train(resume_from_checkpoint=resume)
    metrics = {**train_result.metrics, "train_samples": len(splits["train"])}
    trainer.log_metrics("train", metrics)
    trainer.save_metrics("train", metrics)
    trainer.save_state()

    ################
    # Evaluate
    ################
    eval_results = read_eval_results(script_args.eval_results_file)
    if "test" in splits:
        eval_metrics = trainer.evaluate()
        trainer.log_metrics("eval", eval_metrics)
        trainer.save_metrics("eval", eval_metrics)
        eval_results.update(eval_metrics)

    ################
    # Save model, generation config and card (every rank saves: sharded weights are gathered first)
    ################
    sample = model_messages(splits["train"][0]["messages"], has_image=script_args.missing_images != "text")
    end_tokens = set(render_with_targets(processor, sample).end_tokens)
    set_generation_eos(trainer.model, end_of_turn_ids(processor, end_tokens), processor.tokenizer.pad_token_id)
    with router_logits_off(trainer.model):  # a MoE config saved with them on breaks batched generate
        trainer.save_model(training_args.output_dir)
    correction = getattr(collator, "template_correction", None)
    card_notes = [correction.card_line()] if correction is not None else []
    if trainer.accelerator.is_main_process:
        processor.save_pretrained(training_args.output_dir)
        trainer.model.generation_config.save_pretrained(training_args.output_dir)
        used = [
            DatasetUsed(s.id, s.config, s.split, revision, s.weight, rows)
            for s, revision, rows in zip(mixture.datasets, revisions, rows_per_source, strict=True)
        ]
        extra = {"stage": script_args.stage, "freeze_vision_tower": script_args.freeze_vision_tower}
        # the card names where the model will be found: the repo it is pushed to, else the folder
        name = training_args.hub_model_id if push_to_hub else training_args.output_dir
        text = card_text(
            name,
            model_args.model_name_or_path,
            used,
            hyperparameters_of(training_args, trainer.accelerator.num_processes, extra),
            eval_results,
            method="lora" if peft_config is not None else script_args.stage,
            notes=card_notes,
        )
        write_card(training_args.output_dir, text)
        logger.info("Model, processor and card saved to %s", training_args.output_dir)
    if script_args.merged_output_dir:
        merged = merge_adapter(trainer, model_args, script_args.merged_output_dir)
        if trainer.accelerator.is_main_process:
            processor.save_pretrained(merged)
            merged_card = card_text(
                str(merged),
                model_args.model_name_or_path,
                used,
                hyperparameters_of(training_args, trainer.accelerator.num_processes, extra),
                eval_results,
                method="lora-merged",
                notes=card_notes,
            )
            write_card(merged, merged_card)
            logger.info("Merged model saved to %s", merged)

    ################
    # Push
    ################
    trainer.accelerator.wait_for_everyone()
    if push_to_hub and trainer.accelerator.is_main_process:
        revision = push_folder_to_hub(
            training_args.output_dir, training_args.hub_model_id, training_args.hub_private_repo, "vital-hub sft"
        )
        logger.info("Pushed to %s at %s", training_args.hub_model_id, revision)


class OptionError(ValueError):
    """A bad option value or an unknown flag (from the command line or the YAML); the message names the option."""


def refuse(message: str):
    raise OptionError(message)


def parse(argv: list[str] | None = None):
    import yaml

    argv = list(sys.argv[1:] if argv is None else argv)
    config = argv[argv.index("--config") + 1] if "--config" in argv[:-1] else None
    try:
        parser = TrlParser((SFTScriptArguments, SFTConfig, ModelConfig))
        parser.error = refuse  # bad option values and unknown flags: one error line, not argparse's usage + exit 2
        return parser.parse_args_and_config(argv)
    except FileNotFoundError as err:
        raise FileNotFoundError(f"--config {err.filename}: no such file") from err
    except OptionError:
        raise
    except (yaml.YAMLError, ValueError, TypeError) as err:
        where = f"--config {config}: " if config else ""
        raise ValueError(f"{where}{str(err).splitlines()[0] if str(err) else type(err).__name__}") from err


if __name__ == "__main__":
    sys.exit(run_reporting_errors("sft.py", lambda: main(*parse())))
