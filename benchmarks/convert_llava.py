"""Peak memory of `vital convert llava-original` on a LLaVA-1.5-13B-shaped sharded checkpoint, against loading the
same checkpoint whole, in the same run.

The checkpoint has random fp16 weights in the original format (`model.layers.N...`, `model.mm_projector.0/2`,
`lm_head`; no vision tower, as LLaVA-1.5 ships) with Llama-2-13B widths (hidden 5120, MLP 13824, 40 heads,
vocabulary 32000) and, by default, 6 of its 40 layers in 3 `.bin` shards, so that it fits a 24 GiB machine and
runs in a couple of minutes; `--layers 40 --shards 3` is the real size (26 GB, three ~9.9 GB shards). The vision
tower comes from a random float32 CLIP ViT-L/14-336 folder (the real tower's shape and dtype). Each case runs in its own process
and reports its peak resident set (VmHWM from /proc, or `ru_maxrss`; both count the memory-mapped shard pages
it touches):

- convert: the command, shard by shard;
- whole: every shard and the tower loaded into one state dict (what loading the original model in full costs);
- imports: the interpreter with torch and transformers imported, the floor under both.

The target: convert's peak below 1.3x the largest shard plus the writer's buffer (the tensors of the source shard
being written, which the writer writes from the shard's own memory; the `<image>` rows make a new embedding and
output matrix, 0.3 GB each at 13B widths).

    python benchmarks/convert_llava.py                      # scaled-down default
    python benchmarks/convert_llava.py --layers 40 --format safetensors --workdir /scratch/bench
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GIB = 1024**3


def layer_shapes(args) -> dict[str, tuple[int, ...]]:
    h, m = args.hidden, args.intermediate
    shapes = {}
    for layer in range(args.layers):
        prefix = f"model.layers.{layer}."
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            shapes[prefix + f"self_attn.{name}.weight"] = (h, h)
        shapes[prefix + "mlp.gate_proj.weight"] = (m, h)
        shapes[prefix + "mlp.up_proj.weight"] = (m, h)
        shapes[prefix + "mlp.down_proj.weight"] = (h, m)
        shapes[prefix + "input_layernorm.weight"] = (h,)
        shapes[prefix + "post_attention_layernorm.weight"] = (h,)
    return shapes


def checkpoint_shapes(args) -> dict[str, tuple[int, ...]]:
    h = args.hidden
    return {
        "model.embed_tokens.weight": (args.vocab, h),
        **layer_shapes(args),
        "model.norm.weight": (h,),
        "model.mm_projector.0.weight": (h, 1024),
        "model.mm_projector.0.bias": (h,),
        "model.mm_projector.2.weight": (h, h),
        "model.mm_projector.2.bias": (h,),
        "lm_head.weight": (args.vocab, h),
    }


def build_checkpoint(args, folder: Path) -> None:
    """Write the shards one at a time, split by bytes as `save_pretrained` does."""
    import torch
    from safetensors.torch import save_file

    sys.path.insert(0, str(REPO))
    from tests.fakes.original_llava import tokenizer

    shapes = checkpoint_shapes(args)
    total = sum(2 * torch.Size(shape).numel() for shape in shapes.values())
    limit, groups, size = total / args.shards, [[]], 0
    for name, shape in shapes.items():
        if size >= limit and len(groups) < args.shards:
            groups.append([])
            size = 0
        groups[-1].append(name)
        size += 2 * torch.Size(shape).numel()
    stem, ext = ("pytorch_model", "bin") if args.format == "bin" else ("model", "safetensors")
    weight_map = {}
    generator = torch.Generator().manual_seed(0)
    for index, names in enumerate(groups, 1):
        part = {name: torch.randn(shapes[name], generator=generator, dtype=torch.float16) * 0.02 for name in names}
        file = f"{stem}-{index:05d}-of-{len(groups):05d}.{ext}"
        torch.save(part, folder / file) if args.format == "bin" else save_file(part, folder / file, {"format": "pt"})
        weight_map.update(dict.fromkeys(names, file))
        del part
    (folder / f"{stem}.{ext}.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    tok = tokenizer()  # a byte-level stand-in for Llama's tokenizer: only the weights' size matters here
    tok.save_pretrained(folder)
    config = {
        "architectures": ["LlavaLlamaForCausalLM"], "model_type": "llava", "hidden_size": args.hidden,
        "intermediate_size": args.intermediate, "num_hidden_layers": args.layers, "num_attention_heads": args.heads,
        "num_key_value_heads": args.heads, "vocab_size": args.vocab, "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-5, "torch_dtype": "float16", "mm_vision_tower": "openai/clip-vit-large-patch14-336",
        "mm_hidden_size": 1024, "mm_projector_type": "mlp2x_gelu", "mm_vision_select_layer": -2,
        "mm_vision_select_feature": "patch", "image_aspect_ratio": "pad", "mm_use_im_start_end": False,
    }  # fmt: skip
    (folder / "config.json").write_text(json.dumps(config, indent=2))


def build_clip(folder: Path) -> None:
    import torch
    from transformers import CLIPVisionConfig, CLIPVisionModel

    from vital_hub.convert.llava_original import VIT_L_14

    config = CLIPVisionConfig(**VIT_L_14, image_size=336)
    with torch.device("cpu"):  # float32, as openai/clip-vit-large-patch14-336 is stored and the tower is written
        CLIPVisionModel(config).save_pretrained(folder)


def measure(case: str, args_json: str) -> None:
    """Run one case in this process and print its peak RSS (the parent reads the last line)."""
    args = argparse.Namespace(**json.loads(args_json))
    work = Path(args.workdir)
    start = time.perf_counter()
    if case == "imports":
        import torch  # noqa: F401
        import transformers  # noqa: F401
    elif case == "whole":
        import torch

        state = {}
        for path in source_files(work, args.format):
            if path.suffix == ".bin":
                state.update(torch.load(path, map_location="cpu", weights_only=True))
            else:
                from safetensors.torch import load_file

                state.update(load_file(path))
        for tensor in state.values():  # safetensors maps the file lazily: read every page, as a loaded model has
            tensor.sum()
        assert state
    elif case == "convert":
        from vital_hub.cli import main

        out = work / "converted"
        shutil.rmtree(out, ignore_errors=True)
        argv = ["convert", "llava-original", "--model", str(work / "original"), "--out", str(out)]
        assert main([*argv, "--vision-tower", str(work / "clip")]) == 0
    print(json.dumps({"case": case, "peak_bytes": peak_rss(), "seconds": round(time.perf_counter() - start, 1)}))


def peak_rss() -> int:
    """This process's peak resident set. VmHWM belongs to the address space, which exec replaces; ru_maxrss
    survives exec on Linux and would report the parent's peak (the parent builds the checkpoint)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB; no /proc (not Linux)


def source_files(work: Path, fmt: str) -> list[Path]:
    """The checkpoint's shards and the tower's weights file: conversion reads each of them in turn."""
    return [*sorted((work / "original").glob(f"*.{fmt}")), work / "clip" / "model.safetensors"]


def run_case(case: str, args) -> dict:
    command = [sys.executable, __file__, "--measure", case, json.dumps(vars(args))]
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO, env={"PYTHONPATH": str(REPO), **_env()})
    if done.returncode != 0:
        raise SystemExit(f"{case} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _env() -> dict:
    import os

    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"HF_HUB_OFFLINE": "1"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=6, help="language model layers (13B has 40)")
    parser.add_argument("--shards", type=int, default=3, help="source shards (LLaVA-1.5-13B has 3)")
    parser.add_argument("--hidden", type=int, default=5120)
    parser.add_argument("--intermediate", type=int, default=13824)
    parser.add_argument("--heads", type=int, default=40)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--format", choices=("bin", "safetensors"), default="bin")
    parser.add_argument("--workdir", help="where the checkpoint goes (default: a temporary folder, removed after)")
    parser.add_argument("--measure", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        return measure(*args.measure)
    temporary = args.workdir is None
    work = Path(args.workdir or tempfile.mkdtemp(prefix="convert-bench-"))
    args.workdir = str(work)
    try:
        (work / "original").mkdir(parents=True, exist_ok=True)
        (work / "clip").mkdir(exist_ok=True)
        build_checkpoint(args, work / "original")
        build_clip(work / "clip")
        shards = source_files(work, args.format)
        largest = max(path.stat().st_size for path in shards)
        results = {case: run_case(case, args) for case in ("imports", "whole", "convert")}
        floor = results["imports"]["peak_bytes"]
        report = {
            "shape": {k: getattr(args, k) for k in ("layers", "hidden", "intermediate", "vocab", "format")},
            "source_files_gib": [round(path.stat().st_size / GIB, 3) for path in shards],
            "largest_shard_gib": round(largest / GIB, 3),
            "imports_gib": round(floor / GIB, 3),
            **{f"{case}_peak_gib": round(results[case]["peak_bytes"] / GIB, 3) for case in ("whole", "convert")},
            "convert_seconds": results["convert"]["seconds"],
            "convert_over_largest_shard": round(results["convert"]["peak_bytes"] / largest, 3),
            "convert_minus_imports_over_largest_shard": round((results["convert"]["peak_bytes"] - floor) / largest, 3),
            "whole_over_convert": round(results["whole"]["peak_bytes"] / results["convert"]["peak_bytes"], 2),
        }
        print(json.dumps(report, indent=2))
    finally:
        if temporary:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
