"""Worker: one case, in its own process group (rows, model, trainer, the timed steps, the result file)."""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from benchmarks.sft.cases import CASES, MODELS, PAD_TO_MULTIPLE_OF, Case, Model
from benchmarks.sft.profiling import allocator_stats, peak_flops, step_profiler


def build_rows(count: int, seed: int):
    from datasets import Dataset

    from vital_hub.schema import row_features
    from vital_hub.training.synthetic import synthetic_rows

    return Dataset.from_list(synthetic_rows(count, seed=seed), features=row_features())


def our_dataset(rows):
    """The rows as `recipes/sft.py` hands them to the trainer (vital_hub.training.data.load_mixture)."""
    from vital_hub.training.data import training_columns, with_length_column

    return with_length_column(training_columns(rows))


def model_parts(args):
    """(processor, config) of the benchmarked model, built offline: `--size full` is the published shape of the
    model's checkpoint (LLaVA-1.5: size 7b of `vital_hub.training.synthetic.SIZES`), `tiny` the CPU smoke size."""
    if args.model != "llava-1.5":
        from vital_hub.training.family_models import build_family

        return build_family(MODELS[args.model].family, "tiny" if args.size == "tiny" else "full")
    from vital_hub.training.synthetic import SIZES, build_processor, llava_config

    size = "7b" if args.size == "full" else args.size
    vision = SIZES[size][0]
    processor = build_processor("llava-1.5", image_size=vision[4], patch_size=vision[5])
    return processor, llava_config(size, processor)


def projector_to_save(model, names: tuple[str, ...]) -> list[str]:
    """PEFT `modules_to_save` entries for the projector modules `names`: a module list (Qwen3-VL's
    `deepstack_merger_list`) by its members, since PEFT wraps each entry as one module it calls."""
    import torch

    entries = []
    for name, module in model.named_modules():
        last = name.rsplit(".", 1)[-1]
        if last not in names:
            continue
        if isinstance(module, torch.nn.ModuleList):
            entries += [f"{last}.{index}" for index in range(len(module))]
        else:
            entries.append(last)
    return list(dict.fromkeys(entries))


def lora_config(model, spec: Model):
    """LoRA r16 on the language model, the projector in full; checked against the family's parts the way
    `recipes/sft.py` checks a recipe (a target that matches nothing, or a projector part left out, is an error)."""
    from peft import LoraConfig

    from vital_hub.training.freeze import check_lora

    to_save = projector_to_save(model, spec.projector)
    config = LoraConfig(r=16, lora_alpha=32, target_modules=spec.lora_targets, modules_to_save=list(to_save))
    check_lora(model, config)  # adds any projector module the table missed to modules_to_save
    if list(config.modules_to_save) != to_save:
        missed = sorted(set(config.modules_to_save) - set(to_save))
        raise ValueError(f"{spec.family}: the projector table leaves out {missed}")
    return config


def build_trainer(case: Case, args, output_dir: str):
    import torch
    from peft import LoraConfig
    from transformers import AutoModelForImageTextToText
    from trl import SFTConfig, SFTTrainer

    from vital_hub.training.collator import VisionSFTCollator
    from vital_hub.training.freeze import set_trainable
    from vital_hub.training.model import compile_pointwise_modules, skip_redundant_adapter_casts

    processor, config = model_parts(args)
    spec = MODELS[args.model]
    torch.manual_seed(0)
    device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available() else "cpu"
    # "bf16": weights and optimizer states in bf16 (no autocast; FSDP2 keeps the bf16 dtype); "mixed": accelerate's
    # bf16 mixed precision over fp32 master weights: FSDP2 upcasts the trainable weights itself; in one process
    # without FSDP the model is built in fp32 and autocast computes in bf16.
    pure_bf16 = case.mode == "full" and args.precision == "bf16"
    fp32_masters = case.mode == "full" and case.gpus == 1 and not pure_bf16
    dtype = torch.float32 if fp32_masters else torch.bfloat16
    with torch.device(device):
        model = AutoModelForImageTextToText.from_config(config, dtype=dtype, attn_implementation="sdpa")
    n_params = sum(p.numel() for p in model.parameters())  # before any adapter is added
    steps = args.steps + (1 if args.profile_dir else 0)
    rows = build_rows(steps * args.batch_size * case.gpus + 8, seed=1)
    common = dict(
        output_dir=output_dir,
        per_device_train_batch_size=args.batch_size,
        max_steps=steps,
        max_length=2048,
        learning_rate=1e-5,
        bf16=not pure_bf16,
        save_strategy="no",
        logging_steps=1,  # every step's loss, for the curves (both sides pay the same)
        report_to="none",
        seed=0,
        use_cpu=device == "cpu",
    )
    if case.variant == "stock":
        training_args = SFTConfig(**common)  # gradient checkpointing on, TRL's collator, random order
        peft_config = LoraConfig(r=16, lora_alpha=32, target_modules="all-linear") if case.mode == "lora" else None
        return SFTTrainer(model=model, args=training_args, train_dataset=rows, processing_class=processor,
                          peft_config=peft_config), n_params  # fmt: skip
    if case.variant in ("tuned", "liger"):
        # TRL's collator, random order; "liger": transformers' `use_liger_kernel` (Liger's fused RMSNorm, SwiGLU,
        # RoPE and linear + cross-entropy for the model type), the strongest a stock TRL user can switch on
        liger = {"use_liger_kernel": True} if case.variant == "liger" else {}
        training_args = SFTConfig(**common, gradient_checkpointing=False, **liger)
        peft_config = None
        if case.mode == "lora":
            peft_config = lora_config(model, spec)
        else:  # the same trainable parts as ours: everything but the vision tower
            set_trainable(model, "full", freeze_vision_tower=True)
        return SFTTrainer(model=model, args=training_args, train_dataset=rows, processing_class=processor,
                          peft_config=peft_config), n_params  # fmt: skip
    training_args = SFTConfig(
        **common,
        gradient_checkpointing=False,
        dataloader_num_workers=args.workers,
        dataloader_persistent_workers=args.workers > 0,
        train_sampling_strategy="group_by_length",
        remove_unused_columns=False,
        ddp_find_unused_parameters=False,
        pad_to_multiple_of=PAD_TO_MULTIPLE_OF,
    )
    peft_config = None
    if case.mode == "lora":
        peft_config = lora_config(model, spec)
    else:
        set_trainable(model, "full", freeze_vision_tower=True)
    if args.compile:
        compile_pointwise_modules(model)
    collator = VisionSFTCollator(
        processor, max_length=2048, max_image_side=1024, pad_to_multiple_of=PAD_TO_MULTIPLE_OF
    )
    if case.variant == "packed":
        from vital_hub.training.packing import enable_packing, packed_collator

        print(enable_packing(model), flush=True)
        collator = packed_collator(collator, model.config)
        if args.packing_budget:  # rows first-fit up to the budget instead of batch-size rows a step
            from vital_hub.training.budget import budget_trainer_class

            trainer = budget_trainer_class()(model=model, args=training_args, train_dataset=our_dataset(rows),
                                             processing_class=processor, data_collator=collator,
                                             peft_config=peft_config, packing_budget=args.packing_budget)  # fmt: skip
            skip_redundant_adapter_casts(trainer.model)
            return trainer, n_params
    trainer = SFTTrainer(model=model, args=training_args, train_dataset=our_dataset(rows), processing_class=processor,
                         data_collator=collator, peft_config=peft_config)  # fmt: skip
    skip_redundant_adapter_casts(trainer.model)
    return trainer, n_params


def liger_unavailable() -> str | None:
    """Why the Liger case cannot run here (its Triton kernels need CUDA and the liger-kernel package), or None."""
    import importlib.util

    import torch

    if not torch.cuda.is_available():
        return "Liger's kernels need CUDA"
    if importlib.util.find_spec("liger_kernel") is None:
        return "liger-kernel is not installed (pip install liger-kernel)"
    return None


def stock_collator_error(trainer, model: str) -> str | None:
    """Why TRL's own collator cannot batch this model's rows (the stock and tuned cases use it), or None."""
    rows = [trainer.train_dataset[index] for index in range(2)]
    try:
        trainer.data_collator(rows)
    except Exception as err:  # any failure of TRL's collator is the finding, reported in the table
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        return f"TRL's collator cannot batch {model} rows: {type(err).__name__}: {reason[:300]}"
    return None


def run_worker(case_name: str, args) -> None:
    import torch
    from transformers import TrainerCallback

    case = CASES[case_name]
    if case.variant == "liger" and (error := liger_unavailable()):
        Path(args.result).write_text(json.dumps({"case": case_name, "model": args.model, "error": error}))
        return
    with tempfile.TemporaryDirectory() as output_dir:
        trainer, n_params = build_trainer(case, args, output_dir)
        if case.variant in ("stock", "tuned", "liger") and (error := stock_collator_error(trainer, args.model)):
            if trainer.accelerator.is_main_process:
                Path(args.result).write_text(json.dumps({"case": case_name, "model": args.model, "error": error}))
            return
        marks: list[tuple[int, float, int]] = []

        class Meter(TrainerCallback):
            def on_step_end(self, _args, state, control, **kwargs):
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                marks.append((state.global_step, time.perf_counter(), trainer._total_train_tokens))

        trainer.add_callback(Meter())
        profiler = None
        if args.profile_dir:
            profiler = step_profiler(args.steps, Path(args.profile_dir) / case_name)
            trainer.add_callback(profiler)
        trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)  # before sharding
        trainer.train()
        if not trainer.accelerator.is_main_process:
            return
        if profiler:
            marks = marks[:-1]  # the profiled extra step is not timed
        (_, start, tokens_start), (last_step, end, tokens_end) = marks[args.warmup - 1], marks[-1]
        tokens_per_s = (tokens_end - tokens_start) / (end - start)
        per_gpu = tokens_per_s / case.gpus
        name = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
        peak = peak_flops(name)
        result = {
            "case": case_name,
            **asdict(case),
            "model": args.model,
            "losses": [entry["loss"] for entry in trainer.state.log_history if "loss" in entry][: args.steps],
            "device": name,
            "size": args.size,
            "batch_per_gpu": args.batch_size,
            "steps_timed": last_step - args.warmup,
            "tokens": tokens_end,  # real tokens of every step, warm-up included
            "tokens_per_sample": tokens_end / (last_step * args.batch_size * case.gpus),
            "tokens_per_s": tokens_per_s,
            "tokens_per_s_per_gpu": per_gpu,
            "model_tflops_per_gpu": 6 * n_params * per_gpu / 1e12,
            "mfu": 6 * n_params * per_gpu / peak if peak else None,
            "params": n_params,
            "trainable": trainable,
            "peak_memory_gb": torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None,
            "step_seconds": [round(b[1] - a[1], 3) for a, b in zip(marks, marks[1:], strict=False)],
            **allocator_stats(),
        }
        with open(args.result, "w", encoding="utf-8") as handle:
            json.dump(result, handle)
