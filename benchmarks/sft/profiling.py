"""Profiling: allocator statistics, one profiled step summarised by kernel kind, and peak FLOPs."""

from __future__ import annotations

import time
from pathlib import Path

from benchmarks.sft.cases import PEAK_BF16_FLOPS


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
