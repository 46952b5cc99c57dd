"""Loading the model and processor a recipe names: a Hub id, a local checkpoint, or a config-only folder.

A config-only folder (config.json + processor files, as `python -m vital_hub.training.synthetic model` writes)
with `init_random_weights` builds the architecture with random weights: GPU smoke runs and throughput benchmarks
use that, with nothing to download.
"""

from __future__ import annotations

from pathlib import Path

from vital_hub.io import read_text


def torch_dtype(name: str | None):
    import torch

    if name in (None, "auto"):
        return "auto"
    if not hasattr(torch, name):
        raise ValueError(f"unknown dtype {name!r} (expected auto, bfloat16, float16 or float32)")
    return getattr(torch, name)


def load_processor(model_args, chat_template_path: str | None = None, settings: dict | None = None):
    """The model's processor; a `.jinja` file given as `chat_template_path` replaces its chat template, and
    `settings` override its saved ones (the recipe's pixel budget)."""
    from vital_hub.training.processors import load_processor_from

    processor = load_processor_from(
        model_args.model_name_or_path, revision=model_args.model_revision, **(settings or {})
    )
    if chat_template_path and Path(chat_template_path).suffix in (".jinja", ".j2"):
        processor.chat_template = read_text(chat_template_path)
    if processor.tokenizer.pad_token is None:
        processor.tokenizer.pad_token = processor.tokenizer.unk_token or processor.tokenizer.eos_token
    return processor


def load_model(model_args, init_random_weights: bool = False):
    """The vision-language model, pretrained or (for smoke runs and benchmarks) built from its config."""
    from transformers import AutoConfig, AutoModelForImageTextToText

    dtype = torch_dtype(model_args.dtype)
    kwargs = {"attn_implementation": model_args.attn_implementation} if model_args.attn_implementation else {}
    if init_random_weights:
        config = AutoConfig.from_pretrained(model_args.model_name_or_path, revision=model_args.model_revision)
        model = AutoModelForImageTextToText.from_config(config, dtype=None if dtype == "auto" else dtype, **kwargs)
    else:
        model = AutoModelForImageTextToText.from_pretrained(
            model_args.model_name_or_path, revision=model_args.model_revision, dtype=dtype, **kwargs
        )
    model.config.use_cache = False
    return model


FUSED_MODULE_SUFFIXES = ("MLP", "RMSNorm")


def compile_pointwise_modules(model, backend: str = "inductor") -> list[str]:
    """Compile the forward of the language model's MLP and RMSNorm modules; returns their names.

    Eager, these are chains of elementwise kernels (casts to fp32, SiLU, products), each saving its own output
    for backward; compiled, each becomes a few fused kernels that keep less for backward (on LLaVA-1.5-7B
    about a third of the activation memory) while the matrix products stay with cuBLAS. Only `forward` is
    compiled, so the hooks that FSDP, DDP or PEFT hang on the modules still run eagerly, and every layer
    shares one compiled graph per module class. The vision side (tower and projector, found by the model's family)
    is left alone.
    """
    import torch

    from vital_hub.training.families import family_of, part_of

    family = family_of(model)
    compiled = []
    for name, module in model.named_modules():
        if part_of(name, family) != "language" or not type(module).__name__.endswith(FUSED_MODULE_SUFFIXES):
            continue
        module.forward = torch.compile(module.forward, backend=backend)
        compiled.append(name)
    return compiled
