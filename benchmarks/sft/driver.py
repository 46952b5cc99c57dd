"""Driver: every case as its own launch, then one table; and the loss-curve comparison."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.sft.cases import CASES, FSDP2_CONFIG, ONE_GPU_FULL, OURS_ENVIRONMENT, REPO_ROOT, SCRIPT, Case
from benchmarks.sft.worker import model_parts


def launch_command(case_name: str, args, result: Path, fsdp_config: Path) -> list[str]:
    case = CASES[case_name]
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(case.gpus)]
    if case.gpus > 1:
        launcher += ["--config_file", str(fsdp_config)] if case.mode == "full" else ["--multi_gpu"]
    mixed_precision = "no" if case.mode == "full" and args.precision == "bf16" else "bf16"
    launcher += ["--mixed_precision", mixed_precision, "--num_machines", "1", "--dynamo_backend", "no"]
    worker = [str(SCRIPT), "--worker", case_name, "--result", str(result), "--size", args.size, "--model", args.model]
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
