"""SFT throughput: vital-hub's recipe settings against TRL's stock VLM SFT, on a random-weight model at the published
shapes of one of six checkpoints (`--model`).

Both sides train the same random-weight model on the same synthetic rows shaped like the 80K mix (one figure of
256-1024 px a side, one to six rounds), in the same run, one process group per case. The models (`MODELS`; size
`full` is built by `vital_hub.training.family_models`, whose `family_shapes` checks each against the parameter
count on its model page):

|--model   |checkpoint (Hub)                    |image tokens a figure|LoRA in       |in full                        |
|----------|------------------------------------|---------------------|--------------|-------------------------------|
|llava-1.5 |llava-hf/llava-1.5-7b-hf            |576 (336 px)         |language_model|multi_modal_projector          |
|qwen2.5-vl|Qwen/Qwen2.5-VL-7B-Instruct         |64-640 (28 px each)  |language_model|merger                         |
|qwen3-vl  |Qwen/Qwen3-VL-8B-Instruct           |64-640 (32 px each)  |language_model|merger, deepstack_merger_list.N|
|gemma3    |google/gemma-3-4b-it                |256 (896 px)         |language_model|multi_modal_projector          |
|internvl3 |OpenGVLab/InternVL3-8B-hf           |256 x 1-4 tiles      |language_model|multi_modal_projector          |
|smolvlm2  |HuggingFaceTB/SmolVLM2-2.2B-Instruct|81 x up to 17 tiles  |text_model    |connector                      |

Image tokens follow each checkpoint's image processor and the pixel budget of its recipe under `recipes/` (Qwen:
64 to 640 merged patches; InternVL: up to 3 tiles and the thumbnail; SmolVLM: figures resized to 1536 px on the
longer side, tiles and the global view), so rows differ in image tokens as real PMC figures do. LoRA (r16) adapts
the q/k/v/o and MLP projections of the language model (SmolVLM calls it `text_model`); the projector trains in
full through `modules_to_save` (each of Qwen3-VL's deepstack mergers by itself, since PEFT wraps what it saves
as one module it calls); both are checked with `vital_hub.training.freeze.check_lora`, as `recipes/sft.py`
checks a recipe.

- stock: `SFTTrainer` with its defaults for VLM data: TRL's own collator (loss on every token, image tokens
  included), gradient checkpointing on, everything trainable (full) or LoRA r16 on all linear layers, data
  processed in the training process, random order.
- tuned: what a user who knows TRL runs: stock `SFTTrainer` and collator, gradient checkpointing off, and the same
  trainable parts as ours: LoRA r16 on the same language-model layers with the projector in full
  (`modules_to_save`), or, full, everything but the vision tower. Where TRL's collator cannot batch a model's
  rows, the stock and tuned cases report why in the table instead of training.
- liger: tuned, plus transformers' `use_liger_kernel` (https://github.com/linkedin/Liger-Kernel: fused RMSNorm,
  SwiGLU, RoPE and linear + cross-entropy for the model type), the fastest a stock TRL user can switch on. It needs
  CUDA and the liger-kernel package; elsewhere the table says so instead of training.
- ours: what `recipes/sft.py` does: assistant-only labels (TRL's fused LM head then scores only those positions),
  vision tower frozen, no gradient checkpointing, DataLoader workers, length-grouped batches padded to a multiple
  of 64 (few shapes, so cuDNN attention plans are reused), the caching allocator with expandable segments, LoRA
  inputs under autocast not cast to fp32 and back (`skip_redundant_adapter_casts`: bit-identical), and
  with `--compile` the MLP and RMSNorm modules compiled; LoRA r16 on the language model with the projector
  trained in full.
- packed: ours with `packing: true` (`vital_hub.training.packing`): each step's rows in one padding-free row, one
  varlen attention call per layer (PyTorch's `torch.nn.attention.varlen` where present), and Qwen's vision tower
  in one attention call per layer over every window and image.

Full fine-tunes on several GPUs run under FSDP2; on one GPU (`full-tuned-1gpu`, `full-ours-1gpu`,
`full-packed-1gpu`: one process, no FSDP, run by default for the models in `ONE_GPU_FULL`, SmolVLM2-2.2B) the
model trains as it is. `--precision mixed` is bf16 compute over fp32 master weights (16 bytes a trainable
parameter: FSDP2 upcasts the trainable weights, one process builds the model in fp32 under bf16 autocast) and
`--precision bf16` bf16 weights and optimizer states (8 bytes a parameter, as a stock bf16 run keeps them); the
memory arithmetic for one GPU is at `ONE_GPU_FULL`.

Tokens are the real (non-padding) input tokens, image tokens included, counted by TRL for every case: from the
attention mask of a padded batch, from the length of a packed one (the `tokens` of a padded and a packed case on
the same rows are equal). Model FLOPs use the 6N rule over all parameters (the usual MFU convention),
so MFU = 6 N tokens/s / peak; a frozen vision tower does less work than 6N counts, which the `trainable` column
shows. `--profile-dir` profiles one extra step per case and writes where its GPU time went (busy time by kernel
kind, the top kernels, a Chrome trace). `--size tiny` runs any model at a CPU smoke size.

    python benchmarks/sft_throughput.py                          # every case the GPUs here fit, then the table
    python benchmarks/sft_throughput.py --cases full-ours-2gpu full-stock-2gpu --precision bf16 --compile \
        --steps 30 --warmup 10
    python benchmarks/sft_throughput.py --cases full-ours-4gpu full-stock-4gpu --compile --steps 30 --warmup 10
    python benchmarks/sft_throughput.py --model qwen2.5-vl --cases lora-tuned-1gpu lora-ours-1gpu lora-packed-1gpu \
        --steps 30 --warmup 10
    python benchmarks/sft_throughput.py --model qwen3-vl --cases lora-tuned-1gpu lora-packed-1gpu --steps 30 \
        --warmup 10
    python benchmarks/sft_throughput.py --model smolvlm2 --cases full-tuned-1gpu full-packed-1gpu --precision bf16 \
        --steps 30 --warmup 10
    python benchmarks/sft_throughput.py --compare-curves one_gpu/trainer_state.json two_gpu/trainer_state.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

PEAK_BF16_FLOPS = {"H100": 989.4e12, "H200": 989.4e12, "A100": 312e12}  # dense bf16, vendor datasheets


def language_lora_targets(language_model: str) -> str:
    """LoRA on every linear layer of the language model's decoder (the recipes' `lora_target_modules`)."""
    return rf".*{language_model}.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"


@dataclass(frozen=True)
class Model:
    """A benchmarked model: its family builder (`vital_hub.training.family_models`, size "full" = the published
    shape of `checkpoint`), the LoRA targets of its language model and the projector modules trained in full
    beside LoRA (`modules_to_save`, the same for the tuned stock case and ours)."""

    family: str
    checkpoint: str
    lora_targets: str
    projector: tuple[str, ...]


MODELS = {
    "llava-1.5": Model("llava-1.5", "llava-hf/llava-1.5-7b-hf", language_lora_targets("language_model"),
                       ("multi_modal_projector",)),
    "qwen2.5-vl": Model("qwen2.5-vl", "Qwen/Qwen2.5-VL-7B-Instruct", language_lora_targets("language_model"),
                        ("merger",)),
    "qwen3-vl": Model("qwen3-vl", "Qwen/Qwen3-VL-8B-Instruct", language_lora_targets("language_model"),
                      ("merger", "deepstack_merger_list")),
    "gemma3": Model("gemma3", "google/gemma-3-4b-it", language_lora_targets("language_model"),
                    ("multi_modal_projector",)),
    "internvl3": Model("internvl", "OpenGVLab/InternVL3-8B-hf", language_lora_targets("language_model"),
                       ("multi_modal_projector",)),
    # SmolVLM (like Idefics3) calls its language model `text_model` and its projector `connector`.
    "smolvlm2": Model("smolvlm", "HuggingFaceTB/SmolVLM2-2.2B-Instruct", language_lora_targets("text_model"),
                      ("connector",)),
}  # fmt: skip
# Models whose full fine-tune fits one 80 GB GPU without FSDP (the 1-GPU full cases run by default for them).
# SmolVLM2-2.2B: 2.25B parameters, 1.83B trainable with the vision tower (0.41B) frozen. bf16 weights, gradients and
# AdamW states: 2.25B x 2 + 1.83B x (2 + 4) bytes = 15.5 GB; with fp32 masters (`--precision mixed`): 2.25B x 4 +
# 1.83B x (4 + 8) bytes = 31.0 GB, plus the bf16 weight copies autocast makes (4.5 GB). Activations without
# gradient checkpointing, ~2.6 MB a token (24 layers of width 2048 and MLP width 8192, ~110 KB a token a layer),
# are 32 GB for 8 rows of ~1,500 tokens (SmolVLM's 384 px tiles: up to 17 x 81 image tokens a figure), 43 GB when
# padded to the longest row, plus ~6 GB for the logits over 49,280 tokens: ~65 GB in bf16, over 80 GB with fp32
# masters at 8 rows. So `--precision bf16` runs 8 rows a step and `mixed` 4 (`Case.default_batch`).
ONE_GPU_FULL = ("smolvlm2",)


@dataclass(frozen=True)
class Case:
    mode: str  # "lora" or "full"
    variant: str  # "stock", "tuned", "liger" (tuned with Liger's kernels), "ours" or "packed"
    gpus: int

    def default_batch(self, precision: str, requested: int) -> int:
        """Rows per GPU. Without gradient checkpointing, a full fine-tune with fp32 master weights sharded over
        2 GPUs (16 bytes a parameter, 56 GB a GPU) leaves room for 4 rows on 80 GB; bf16 weights and optimizer
        (8 bytes a parameter) or 4 GPUs leave room for 8. On one GPU (SmolVLM2-2.2B, see ONE_GPU_FULL) the tuned
        stock case runs without gradient checkpointing too, so it gets the same rows as ours."""
        if self.mode == "full" and self.variant != "stock" and precision == "mixed" and self.gpus < 4:
            return min(requested, 4)
        return requested


CASES = {
    "lora-stock-1gpu": Case("lora", "stock", 1),
    "lora-tuned-1gpu": Case("lora", "tuned", 1),
    "lora-liger-1gpu": Case("lora", "liger", 1),
    "lora-ours-1gpu": Case("lora", "ours", 1),
    "lora-packed-1gpu": Case("lora", "packed", 1),
    "lora-ours-2gpu": Case("lora", "ours", 2),
    "full-tuned-1gpu": Case("full", "tuned", 1),
    "full-liger-1gpu": Case("full", "liger", 1),
    "full-ours-1gpu": Case("full", "ours", 1),
    "full-packed-1gpu": Case("full", "packed", 1),
    "full-stock-2gpu": Case("full", "stock", 2),
    "full-ours-2gpu": Case("full", "ours", 2),
    "full-stock-4gpu": Case("full", "stock", 4),
    "full-ours-4gpu": Case("full", "ours", 4),
}
# What recipes/sft.py sets up besides its YAML: the caching allocator with expandable segments.
OURS_ENVIRONMENT = {"PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True"}
PAD_TO_MULTIPLE_OF = 64  # as the recipe YAMLs
FSDP2_CONFIG = {
    "compute_environment": "LOCAL_MACHINE",
    "distributed_type": "FSDP",
    "mixed_precision": "bf16",
    "num_machines": 1,
    "machine_rank": 0,
    "rdzv_backend": "static",
    "same_network": True,
    "main_training_function": "main",
    "use_cpu": False,
    "fsdp_config": {
        "fsdp_version": 2,
        "fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
        "fsdp_cpu_ram_efficient_loading": False,
        "fsdp_offload_params": False,
        "fsdp_reshard_after_forward": True,
        "fsdp_state_dict_type": "SHARDED_STATE_DICT",
        # The model's repeated layers (`layer_classes`), named: LLaVA's _no_split_modules names CLIPTextEmbeddings,
        # absent from a vision-only tower, and accelerate refuses a class the model does not have.
        "fsdp_transformer_layer_cls_to_wrap": "LlamaDecoderLayer,CLIPEncoderLayer",
    },
}


################
# Worker: one case, in its own process group
################
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


def allocator_stats() -> dict:
    """Peak reserved memory and how often the caching allocator had to free its cache and retry (a sign of
    running at the memory edge, which costs far more than the allocations themselves)."""
    import torch

    if not torch.cuda.is_available():
        return {}
    stats = torch.cuda.memory_stats()
    return {"peak_reserved_gb": stats["reserved_bytes.all.peak"] / 2**30, "alloc_retries": stats["num_alloc_retries"]}


KERNEL_KINDS = (  # first match wins: name fragments of the kernels each kind launches
    ("communication", ("nccl",)),
    ("matmul", ("gemm", "nvjet", "cutlass", "sm90_xmma", "cublas")),
    ("attention", ("fmha", "flash", "attention", "efficient")),
    ("optimizer", ("multi_tensor", "foreach", "adam")),
    ("copy/cast", ("copy", "memcpy", "memset", "cast", "to_copy")),
)


def kernel_kind(name: str) -> str:
    lowered = name.lower()
    return next((kind for kind, parts in KERNEL_KINDS if any(part in lowered for part in parts)), "other")


def busy_time(intervals: list[tuple[float, float]]) -> float:
    """Length of the union of [start, end) intervals."""
    total, reach = 0.0, float("-inf")
    for start, end in sorted(intervals):
        if end > reach:
            total += end - max(start, reach)
            reach = end
    return total


def summarize_profile(profile, step_seconds: float, out_dir: Path) -> str:
    """Where one step's GPU time goes: busy time by kernel kind, compute/communication overlap, the top kernels."""
    from torch.autograd import DeviceType

    kernels = [e for e in profile.events() if e.device_type == DeviceType.CUDA]
    by_kind: dict[str, list[tuple[float, float]]] = {}
    for event in kernels:
        by_kind.setdefault(kernel_kind(event.name), []).append((event.time_range.start, event.time_range.end))
    step_us = step_seconds * 1e6
    compute = [span for kind, spans in by_kind.items() if kind != "communication" for span in spans]
    lines = [f"profiled step: {step_seconds:.3f} s wall, {len(kernels)} kernels"]
    lines.append(f"GPU busy with compute kernels: {100 * busy_time(compute) / step_us:.1f}% of the step")
    lines.append(
        f"GPU busy with any kernel: {100 * busy_time(compute + by_kind.get('communication', [])) / step_us:.1f}%"
    )
    for kind, spans in sorted(by_kind.items(), key=lambda item: -sum(e - s for s, e in item[1])):
        lines.append(f"  {kind:<14}{sum(e - s for s, e in spans) / 1e3:>10.1f} ms  ({len(spans)} kernels)")
    lines.append(
        profile.key_averages().table(sort_by="self_device_time_total", row_limit=35, max_name_column_width=70)
    )
    text = "\n".join(lines)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "summary.txt").write_text(text)
    profile.export_chrome_trace(str(out_dir / "trace.json"))
    return text


def step_profiler(profile_step: int, out_dir: Path):
    """A Trainer callback that profiles one optimizer step (the step after `profile_step` done) on the main process."""
    import torch
    from torch.profiler import ProfilerActivity, profile
    from transformers import TrainerCallback

    class StepProfiler(TrainerCallback):
        def __init__(self):
            self.profile, self.started = None, 0.0

        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step == profile_step and state.is_world_process_zero:
                torch.cuda.synchronize()
                self.profile = profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA])
                self.profile.__enter__()
                self.started = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            if self.profile is not None:
                torch.cuda.synchronize()
                seconds = time.perf_counter() - self.started
                self.profile.__exit__(None, None, None)
                print(summarize_profile(self.profile, seconds, out_dir), flush=True)
                self.profile = None

    return StepProfiler()


def peak_flops(device_name: str) -> float | None:
    return next((flops for key, flops in PEAK_BF16_FLOPS.items() if key in device_name), None)


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


################
# Driver: every case as its own launch, then one table
################
def launch_command(case_name: str, args, result: Path, fsdp_config: Path) -> list[str]:
    case = CASES[case_name]
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(case.gpus)]
    if case.gpus > 1:
        launcher += ["--config_file", str(fsdp_config)] if case.mode == "full" else ["--multi_gpu"]
    mixed_precision = "no" if case.mode == "full" and args.precision == "bf16" else "bf16"
    launcher += ["--mixed_precision", mixed_precision, "--num_machines", "1", "--dynamo_backend", "no"]
    worker = [__file__, "--worker", case_name, "--result", str(result), "--size", args.size, "--model", args.model]
    worker += ["--steps", str(args.steps), "--warmup", str(args.warmup), "--batch-size", str(args.batch_size)]
    worker += ["--workers", str(args.workers), "--precision", args.precision]
    worker += ["--profile-dir", args.profile_dir] if args.profile_dir else []
    worker += ["--compile"] if args.compile else []
    worker += ["--packing-budget", str(args.packing_budget)] if args.packing_budget else []
    return launcher + worker


def run_case(case_name: str, args, batch_size: int, scratch: Path, fsdp_config: Path) -> dict:
    result = scratch / f"{case_name}.json"
    result.unlink(missing_ok=True)
    command = launch_command(
        case_name, argparse.Namespace(**{**vars(args), "batch_size": batch_size}), result, fsdp_config
    )
    env = {**os.environ, "PYTHONPATH": f"{REPO_ROOT}:{os.environ.get('PYTHONPATH', '')}", "NCCL_NVLS_ENABLE": "0"}
    if CASES[case_name].variant in ("ours", "packed"):
        env.update(OURS_ENVIRONMENT)
    if CASES[case_name].gpus == 1:  # else Trainer picks DataParallel
        env["CUDA_VISIBLE_DEVICES"] = env.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0]
    started = time.perf_counter()
    try:
        process = subprocess.run(command, env=env, capture_output=True, text=True, timeout=args.case_timeout)
    except subprocess.TimeoutExpired as err:
        return {"case": case_name, "error": f"timed out after {args.case_timeout} s", "log": str(err.stderr)[-2500:]}
    wall = time.perf_counter() - started
    if process.returncode != 0 or not result.exists():
        everything = f"{process.stdout}\n{process.stderr}"
        if args.log_dir:
            Path(args.log_dir).mkdir(parents=True, exist_ok=True)
            (Path(args.log_dir) / f"{case_name}.log").write_text(everything)
        error = f"rc {process.returncode} after {wall:.0f} s"
        return {
            "case": case_name,
            "error": error,
            "log": everything[-2500:],
            "oom": "out of memory" in everything.lower(),
        }
    return {**json.loads(result.read_text()), "wall_s": wall}


def layer_classes(args) -> list[str]:
    """Class names of the model's repeated layers (the members of its module lists: decoder layers, vision
    encoder layers or blocks, Qwen3-VL's deepstack mergers), which FSDP2 shards one by one; built on the meta
    device, so the driver needs no memory for it."""
    import torch
    from transformers import AutoModelForImageTextToText

    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(model_parts(args)[1])
    names = [
        type(layer).__name__
        for module in model.modules()
        if isinstance(module, torch.nn.ModuleList)
        for layer in module
        if not isinstance(layer, torch.nn.ModuleList)
    ]
    return sorted(set(names))


def default_case(case: Case, model: str) -> bool:
    """Whether a run without `--cases` includes `case`: full fine-tunes on one GPU only for the models that fit."""
    return not (case.mode == "full" and case.gpus == 1) or model in ONE_GPU_FULL


def run_cases(args) -> list[dict]:
    import yaml

    results = []
    with tempfile.TemporaryDirectory() as scratch:
        fsdp_config = Path(scratch) / "fsdp2.yaml"
        fsdp = {**FSDP2_CONFIG, "mixed_precision": "no" if args.precision == "bf16" else "bf16"}
        if any(CASES[name].mode == "full" and CASES[name].gpus > 1 for name in args.cases):
            layers = ",".join(layer_classes(args))
            fsdp["fsdp_config"] = {**fsdp["fsdp_config"], "fsdp_transformer_layer_cls_to_wrap": layers}
        fsdp_config.write_text(yaml.safe_dump(fsdp))
        for case_name in args.cases:
            batch_size = args.case_batch.get(case_name) or CASES[case_name].default_batch(
                args.precision, args.batch_size
            )
            while True:
                outcome = run_case(case_name, args, batch_size, Path(scratch), fsdp_config)
                if outcome.get("oom") and batch_size > 1:
                    batch_size //= 2  # the per-GPU numbers stay comparable; the table shows the batch
                    print(f"{case_name}: out of memory, again with batch {batch_size} per GPU", flush=True)
                    continue
                break
            if "error" in outcome:
                print(f"--- {case_name} failed ({outcome['error']}) ---\n{outcome.pop('log', '')}", flush=True)
            else:
                print(json.dumps(outcome), flush=True)
            results.append(outcome)
    return results


def print_table(results: list[dict]) -> None:
    by_name = {r["case"]: r for r in results if "error" not in r}
    header = f"{'case':<17}{'model':<12}{'device':<24}{'batch':>6}{'tok/s/GPU':>10}{'TFLOP/s':>9}{'MFU':>7}{'peak GB':>9}{'tok/smp':>8}"
    print("\n" + header + "\n" + "-" * len(header))
    for r in results:
        if "error" in r:
            print(f"{r['case']:<17}failed: {r['error']}")
            continue
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] else "-"
        memory = f"{r['peak_memory_gb']:.1f}" if r["peak_memory_gb"] else "-"
        print(f"{r['case']:<17}{r['model']:<12}{r['device'][:23]:<24}{r['batch_per_gpu']:>6}{r['tokens_per_s_per_gpu']:>10.0f}{r['model_tflops_per_gpu']:>9.0f}"
              f"{mfu:>7}{memory:>9}{r['tokens_per_sample']:>8.0f}")  # fmt: skip
    print()
    for mode, gpus in (("lora", 1), ("full", 1), ("full", 2), ("full", 4)):
        for baseline in ("stock", "tuned", "liger"):
            base = by_name.get(f"{mode}-{baseline}-{gpus}gpu")
            for variant in ("ours", "packed"):
                mine = by_name.get(f"{mode}-{variant}-{gpus}gpu")
                if mine and base:
                    ratio = mine["tokens_per_s_per_gpu"] / base["tokens_per_s_per_gpu"]
                    print(f"{mode} on {gpus} GPU(s): {variant} / {baseline} throughput = {ratio:.2f}x")
    for mode in ("lora", "full"):
        ours, packed = by_name.get(f"{mode}-ours-1gpu"), by_name.get(f"{mode}-packed-1gpu")
        if ours and packed and ours.get("losses") and packed.get("losses"):  # same rows, same order, same seed
            gaps = [abs(a - b) for a, b in zip(ours["losses"], packed["losses"], strict=False)]
            print(f"packed vs padded loss curve ({mode}, 1 GPU): max |difference| {max(gaps):.4f} over {len(gaps)} "
                  f"steps; real tokens {packed['tokens']:,} packed, {ours['tokens']:,} padded")  # fmt: skip
    for r in results:
        if "error" not in r and r.get("losses"):
            print(f"{r['case']}: loss {r['losses'][0]:.3f} -> {r['losses'][-1]:.3f} over {len(r['losses'])} steps")
    one, two = by_name.get("lora-ours-1gpu"), by_name.get("lora-ours-2gpu")
    if one and two:
        efficiency = two["tokens_per_s"] / (2 * one["tokens_per_s"])
        print(f"scaling 1 -> 2 GPUs (LoRA, DDP): {100 * efficiency:.1f}% efficiency")


def compare_curves(paths: list[str], plot: str | None) -> None:
    """Loss per step of runs that should match (1 GPU vs 2 GPUs, same global batch), side by side."""
    curves = {}
    for path in paths:
        history = json.loads(Path(path).read_text())["log_history"]
        curves[path] = {entry["step"]: entry["loss"] for entry in history if "loss" in entry}
    steps = sorted(set.intersection(*(set(curve) for curve in curves.values())))
    names = list(curves)
    print("step  " + "  ".join(f"{Path(n).parent.name:>12}" for n in names))
    for step in steps:
        print(f"{step:>4}  " + "  ".join(f"{curves[n][step]:>12.4f}" for n in names))
    gaps = [abs(curves[names[0]][s] - curves[names[1]][s]) for s in steps]
    first, last = curves[names[0]][steps[0]], curves[names[0]][steps[-1]]
    print(f"max |difference| {max(gaps):.4f}, mean {sum(gaps) / len(gaps):.4f}; loss fell {first:.3f} -> {last:.3f}")
    if plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        figure, axis = plt.subplots(figsize=(6, 4))
        for name in names:
            axis.plot(steps, [curves[name][s] for s in steps], label=Path(name).parent.name)
        axis.set_xlabel("step")
        axis.set_ylabel("training loss")
        axis.legend()
        figure.tight_layout()
        figure.savefig(plot, dpi=120)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", nargs="+", choices=list(CASES), help="default: every case this machine's GPUs fit")
    parser.add_argument("--model", choices=list(MODELS), default="llava-1.5", help="the model shape to benchmark")
    parser.add_argument(
        "--size",
        default="full",
        help="full: the published shape of the model's checkpoint; tiny: the CPU smoke size (LLaVA: any size of "
        "vital_hub.training.synthetic.SIZES)",
    )
    parser.add_argument("--steps", type=int, default=12, help="optimizer steps per case")
    parser.add_argument("--warmup", type=int, default=4, help="steps left out of the timing")
    parser.add_argument("--batch-size", type=int, default=8, help="per GPU (the stock reference used 8)")
    parser.add_argument("--workers", type=int, default=6, help="DataLoader workers per GPU (ours)")
    parser.add_argument(
        "--precision",
        choices=["mixed", "bf16"],
        default="mixed",
        help="full fine-tunes: bf16 compute over fp32 master weights, or bf16 weights and optimizer",
    )
    parser.add_argument("--compile", action="store_true", help="ours: compile the MLP and RMSNorm modules")
    parser.add_argument(
        "--packing-budget", type=int, help="packed cases: real tokens a step, rows first-fit by length"
    )
    parser.add_argument("--case-batch", nargs="*", default=[], metavar="CASE=N", help="per-GPU batch of one case")
    parser.add_argument("--profile-dir", help="profile one extra step per case; summaries and traces go here")
    parser.add_argument("--case-timeout", type=int, default=300)
    parser.add_argument("--json", help="write all results here")
    parser.add_argument("--log-dir", help="keep the full output of failed cases here")
    parser.add_argument("--compare-curves", nargs=2, metavar="TRAINER_STATE")
    parser.add_argument("--plot", help="PNG for --compare-curves")
    parser.add_argument("--worker", choices=list(CASES), help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.case_batch = {name: int(size) for name, size in (item.split("=") for item in args.case_batch)}
    if args.model != "llava-1.5" and args.size not in ("tiny", "full", "7b"):
        parser.error(f"--size {args.size} is not built for {args.model}: tiny or full")
    if args.compare_curves:
        compare_curves(args.compare_curves, args.plot)
        return 0
    if args.worker:
        run_worker(args.worker, args)
        return 0
    if not args.cases:
        import torch

        gpus = max(torch.cuda.device_count(), 1)
        args.cases = [name for name, case in CASES.items() if case.gpus <= gpus and default_case(case, args.model)]
    results = run_cases(args)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    print_table(results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
