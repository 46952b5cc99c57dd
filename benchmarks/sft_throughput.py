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
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

# The pieces live in benchmarks/sft/; their names stay reachable from this script (the smoke tests import it).
from benchmarks.sft.cases import (  # noqa: E402, F401
    CASES,
    FSDP2_CONFIG,
    MODELS,
    ONE_GPU_FULL,
    OURS_ENVIRONMENT,
    PAD_TO_MULTIPLE_OF,
    PEAK_BF16_FLOPS,
    SCRIPT,
    Case,
    Model,
    language_lora_targets,
)
from benchmarks.sft.driver import (  # noqa: E402, F401
    compare_curves,
    default_case,
    launch_command,
    layer_classes,
    print_table,
    run_case,
    run_cases,
)
from benchmarks.sft.profiling import (  # noqa: E402, F401
    allocator_stats,
    busy_time,
    kernel_kind,
    peak_flops,
    step_profiler,
    summarize_profile,
)
from benchmarks.sft.worker import (  # noqa: E402, F401
    build_rows,
    build_trainer,
    liger_unavailable,
    lora_config,
    model_parts,
    our_dataset,
    projector_to_save,
    run_worker,
    stock_collator_error,
)


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
