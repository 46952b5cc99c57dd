"""SFT throughput on a LLaVA-1.5-7B-shaped model: vital-hub's recipe settings against TRL's stock VLM SFT.

Both sides train the same random-weight model (CLIP ViT-L/14-336 + Llama-2-7B shapes, bf16) on the same synthetic
rows shaped like the 80K mix (one figure, one to six rounds, ~860 tokens with the 576 image tokens), in the same
run, one process group per case:

- stock: `SFTTrainer` with its defaults for VLM data: TRL's own collator (loss on every token, image tokens
  included), gradient checkpointing on, everything trainable (full) or LoRA r16 on all linear layers, data
  processed in the training process, random order.
- ours: what `recipes/sft.py` does: assistant-only labels (TRL's fused LM head then scores only those positions),
  vision tower frozen, no gradient checkpointing, DataLoader workers, length-grouped batches; LoRA r16 on the
  language model with the projector trained in full.

Tokens are the non-padding input tokens (image tokens included), counted by TRL for both. Model FLOPs use the
6N rule over all parameters (as the issue's reference numbers do), so MFU = 6 N tokens/s / peak; a frozen vision
tower does less work than 6N counts, which the `trainable` column shows.

    python benchmarks/sft_throughput.py                          # every case, then the table
    python benchmarks/sft_throughput.py --cases lora-stock-1gpu lora-ours-1gpu --steps 6
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
LANGUAGE_LORA_TARGETS = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"


@dataclass(frozen=True)
class Case:
    mode: str  # "lora" or "full"
    variant: str  # "stock" or "ours"
    gpus: int
    batch: int | None = None  # per GPU, when the default does not fit


CASES = {
    "lora-stock-1gpu": Case("lora", "stock", 1),
    "lora-ours-1gpu": Case("lora", "ours", 1),
    "lora-ours-2gpu": Case("lora", "ours", 2),
    "full-stock-2gpu": Case("full", "stock", 2),
    # accelerate keeps fp32 master copies of trainable weights under FSDP2 mixed precision: without gradient
    # checkpointing, 4 rows per GPU fit on 80 GB.
    "full-ours-2gpu": Case("full", "ours", 2, batch=4),
}
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
        # LLaVA's _no_split_modules names CLIPTextEmbeddings, absent from a vision-only tower: name the layers.
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
    from datasets import Image, List

    from vital_hub.training.data import with_length_column

    return with_length_column(
        rows.select_columns(["id", "images", "messages"]).cast_column("images", List(Image(decode=False)))
    )


def build_trainer(case: Case, args, output_dir: str):
    import torch
    from peft import LoraConfig
    from transformers import AutoModelForImageTextToText
    from trl import SFTConfig, SFTTrainer

    from vital_hub.training.collator import VisionSFTCollator
    from vital_hub.training.freeze import set_trainable
    from vital_hub.training.synthetic import SIZES, build_processor, llava_config

    vision = SIZES[args.size][0]
    processor = build_processor("llava-1.5", image_size=vision[4], patch_size=vision[5])
    config = llava_config(args.size, processor)
    torch.manual_seed(0)
    device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available() else "cpu"
    with torch.device(device):
        model = AutoModelForImageTextToText.from_config(config, dtype=torch.bfloat16, attn_implementation="sdpa")
    n_params = sum(p.numel() for p in model.parameters())  # before any adapter is added
    rows = build_rows(args.steps * args.batch_size * case.gpus + 8, seed=1)
    common = dict(
        output_dir=output_dir,
        per_device_train_batch_size=args.batch_size,
        max_steps=args.steps,
        max_length=2048,
        learning_rate=1e-5,
        bf16=True,
        save_strategy="no",
        logging_steps=10_000,
        report_to="none",
        seed=0,
        use_cpu=device == "cpu",
    )
    if case.variant == "stock":
        training_args = SFTConfig(**common)  # gradient checkpointing on, TRL's collator, random order
        peft_config = LoraConfig(r=16, lora_alpha=32, target_modules="all-linear") if case.mode == "lora" else None
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
    )
    peft_config = None
    if case.mode == "lora":
        peft_config = LoraConfig(r=16, lora_alpha=32, target_modules=LANGUAGE_LORA_TARGETS,
                                 modules_to_save=["multi_modal_projector"])  # fmt: skip
    else:
        set_trainable(model, "full", freeze_vision_tower=True)
    collator = VisionSFTCollator(processor, max_length=2048, max_image_side=1024)
    trainer = SFTTrainer(model=model, args=training_args, train_dataset=our_dataset(rows), processing_class=processor,
                         data_collator=collator, peft_config=peft_config)  # fmt: skip
    return trainer, n_params


def peak_flops(device_name: str) -> float | None:
    return next((flops for key, flops in PEAK_BF16_FLOPS.items() if key in device_name), None)


def run_worker(case_name: str, args) -> None:
    import torch
    from transformers import TrainerCallback

    case = CASES[case_name]
    with tempfile.TemporaryDirectory() as output_dir:
        trainer, n_params = build_trainer(case, args, output_dir)
        marks: list[tuple[int, float, int]] = []

        class Meter(TrainerCallback):
            def on_step_end(self, _args, state, control, **kwargs):
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                marks.append((state.global_step, time.perf_counter(), trainer._total_train_tokens))

        trainer.add_callback(Meter())
        trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)  # before sharding
        trainer.train()
        if not trainer.accelerator.is_main_process:
            return
        (_, start, tokens_start), (last_step, end, tokens_end) = marks[args.warmup - 1], marks[-1]
        tokens_per_s = (tokens_end - tokens_start) / (end - start)
        per_gpu = tokens_per_s / case.gpus
        name = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
        peak = peak_flops(name)
        result = {
            "case": case_name,
            **asdict(case),
            "device": name,
            "size": args.size,
            "batch_per_gpu": args.batch_size,
            "steps_timed": last_step - args.warmup,
            "tokens_per_sample": tokens_end / (last_step * args.batch_size * case.gpus),
            "tokens_per_s": tokens_per_s,
            "tokens_per_s_per_gpu": per_gpu,
            "model_tflops_per_gpu": 6 * n_params * per_gpu / 1e12,
            "mfu": 6 * n_params * per_gpu / peak if peak else None,
            "params": n_params,
            "trainable": trainable,
            "peak_memory_gb": torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None,
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
    launcher += ["--mixed_precision", "bf16", "--num_machines", "1", "--dynamo_backend", "no"]
    worker = [__file__, "--worker", case_name, "--result", str(result), "--size", args.size]
    worker += ["--steps", str(args.steps), "--warmup", str(args.warmup), "--batch-size", str(args.batch_size)]
    worker += ["--workers", str(args.workers)]
    return launcher + worker


def run_case(case_name: str, args, batch_size: int, scratch: Path, fsdp_config: Path) -> dict:
    result = scratch / f"{case_name}.json"
    result.unlink(missing_ok=True)
    command = launch_command(
        case_name, argparse.Namespace(**{**vars(args), "batch_size": batch_size}), result, fsdp_config
    )
    env = {**os.environ, "PYTHONPATH": f"{REPO_ROOT}:{os.environ.get('PYTHONPATH', '')}", "NCCL_NVLS_ENABLE": "0"}
    if CASES[case_name].gpus == 1:
        env["CUDA_VISIBLE_DEVICES"] = env.get("CUDA_VISIBLE_DEVICES", "0").split(",")[
            0
        ]  # else Trainer picks DataParallel
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


def run_cases(args) -> list[dict]:
    import yaml

    results = []
    with tempfile.TemporaryDirectory() as scratch:
        fsdp_config = Path(scratch) / "fsdp2.yaml"
        fsdp_config.write_text(yaml.safe_dump({**FSDP2_CONFIG, "num_processes": 2}))
        for case_name in args.cases:
            batch_size = CASES[case_name].batch or args.batch_size
            while True:
                outcome = run_case(case_name, args, batch_size, Path(scratch), fsdp_config)
                if outcome.get("oom") and batch_size > 1:
                    batch_size //= 2  # the per-GPU numbers stay comparable; the table shows the batch
                    print(f"{case_name}: out of memory, again with batch {batch_size} per GPU", flush=True)
                    continue
                break
            if "error" in outcome:
                print(f"--- {case_name} failed ({outcome['error']}) ---\n{outcome.pop('log')}", flush=True)
            else:
                print(json.dumps(outcome), flush=True)
            results.append(outcome)
    return results


def print_table(results: list[dict]) -> None:
    by_name = {r["case"]: r for r in results if "error" not in r}
    header = (
        f"{'case':<17}{'device':<24}{'batch':>6}{'tok/s/GPU':>10}{'TFLOP/s':>9}{'MFU':>7}{'peak GB':>9}{'tok/smp':>8}"
    )
    print("\n" + header + "\n" + "-" * len(header))
    for r in results:
        if "error" in r:
            print(f"{r['case']:<17}failed: {r['error']}")
            continue
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] else "-"
        memory = f"{r['peak_memory_gb']:.1f}" if r["peak_memory_gb"] else "-"
        print(f"{r['case']:<17}{r['device'][:23]:<24}{r['batch_per_gpu']:>6}{r['tokens_per_s_per_gpu']:>10.0f}{r['model_tflops_per_gpu']:>9.0f}"
              f"{mfu:>7}{memory:>9}{r['tokens_per_sample']:>8.0f}")  # fmt: skip
    print()
    for mode, gpus in (("lora", 1), ("full", 2)):
        ours, stock = by_name.get(f"{mode}-ours-{gpus}gpu"), by_name.get(f"{mode}-stock-{gpus}gpu")
        if ours and stock:
            ratio = ours["tokens_per_s_per_gpu"] / stock["tokens_per_s_per_gpu"]
            print(f"{mode} on {gpus} GPU(s): ours / stock throughput = {ratio:.2f}x")
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
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--size", default="7b", help="model size from vital_hub.training.synthetic.SIZES")
    parser.add_argument("--steps", type=int, default=12, help="optimizer steps per case")
    parser.add_argument("--warmup", type=int, default=4, help="steps left out of the timing")
    parser.add_argument("--batch-size", type=int, default=8, help="per GPU (the stock reference used 8)")
    parser.add_argument("--workers", type=int, default=6, help="DataLoader workers per GPU (ours)")
    parser.add_argument("--case-timeout", type=int, default=300)
    parser.add_argument("--json", help="write all results here")
    parser.add_argument("--log-dir", help="keep the full output of failed cases here")
    parser.add_argument("--compare-curves", nargs=2, metavar="TRAINER_STATE")
    parser.add_argument("--plot", help="PNG for --compare-curves")
    parser.add_argument("--worker", choices=list(CASES), help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.compare_curves:
        compare_curves(args.compare_curves, args.plot)
        return 0
    if args.worker:
        run_worker(args.worker, args)
        return 0
    results = run_cases(args)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    print_table(results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
