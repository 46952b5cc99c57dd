"""Loading the model and processor a recipe names: a Hub id, a local checkpoint, or a config-only folder.

A config-only folder (config.json + processor files, as `python -m vital_hub.training.synthetic model` writes)
with `init_random_weights` builds the architecture with random weights: GPU smoke runs and throughput benchmarks
use that, with nothing to download.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from pathlib import Path

from vital_hub.io import read_text
from vital_hub.training.data import looks_like_path

logger = logging.getLogger(__name__)


def check_model_path(name_or_path: str) -> None:
    """A name written as a path (absolute, ./, ../, ~, or more than one /) must be a folder that exists: otherwise
    it is taken for a Hub id and fails with a network error that names neither."""
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not path.is_dir():
            raise NotADirectoryError(f"model_name_or_path {name_or_path}: not a folder")
        return
    if looks_like_path(name_or_path):
        raise FileNotFoundError(f"model_name_or_path {name_or_path}: no such folder")


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

    check_model_path(model_args.model_name_or_path)
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

    check_model_path(model_args.model_name_or_path)
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


def router_configs(model) -> list:
    """The configs (the model's and its text model's) that carry a MoE `output_router_logits` switch."""
    config = model.config
    configs = [config, config.get_text_config()] if hasattr(config, "get_text_config") else [config]
    unique = {id(c): c for c in configs}.values()
    return [c for c in unique if hasattr(c, "output_router_logits")]


@contextmanager
def router_logits_off(model):
    """Save a MoE model with `output_router_logits: false`: TRL's SFTTrainer turns it on to add the load-balancing
    loss, and a config saved with it on makes every batched `generate` of the saved model compute that loss (and
    fail on padded batches). Training goes on with the trainer's setting afterwards."""
    configs = router_configs(model)
    before = [c.output_router_logits for c in configs]
    for c in configs:
        c.output_router_logits = False
    try:
        yield
    finally:
        for c, value in zip(configs, before, strict=True):
            c.output_router_logits = value


def merge_adapter(trainer, model_args, out_dir: str | Path) -> Path:
    """Write the trained base model with the LoRA adapter merged into it (stock `AutoModelForImageTextToText`
    loads it, no PEFT needed). In one process the trained model is merged in memory; across processes (FSDP,
    DeepSpeed, whose parameters are sharded) the main process loads the base weights again and applies the
    adapter the trainer saved in `output_dir`."""
    from peft import PeftModel

    out_dir = Path(out_dir)
    accelerator = trainer.accelerator
    if accelerator.num_processes == 1:
        peft_model = accelerator.unwrap_model(trainer.model)
        merged = peft_model.merge_and_unload()
    else:
        accelerator.wait_for_everyone()
        if not accelerator.is_main_process:
            return out_dir
        merged = PeftModel.from_pretrained(load_model(model_args), trainer.args.output_dir).merge_and_unload()
    if accelerator.is_main_process:
        merged.config.use_cache = True
        with router_logits_off(merged):
            merged.save_pretrained(out_dir)
        merged.generation_config.save_pretrained(out_dir)
    return out_dir


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


def skip_redundant_adapter_casts(model) -> int:
    """Under autocast, let every LoRA layer hand its input to the adapters as it comes; returns how many layers.

    PEFT keeps adapters in fp32 and casts each adapted layer's input to fp32 before them
    (`LoraLayer._cast_input_dtype`), and autocast then casts it back to bf16 for the adapters' matrix products and
    keeps that copy for backward. For an input already in the autocast dtype both casts are round trips: skipping
    them gives bit-identical outputs and gradients, without two activation-sized copies per adapted layer and
    direction and the extra saved tensor. Outside autocast (or for an input in another dtype) PEFT's cast is kept.
    """
    import functools

    import torch

    def cast(original, x, dtype):
        if isinstance(x, torch.Tensor) and torch.is_autocast_enabled(x.device.type):
            if torch.get_autocast_dtype(x.device.type) == x.dtype:
                return x
        return original(x, dtype)

    layers = 0
    for module in model.modules():
        if hasattr(module, "lora_A") and hasattr(module, "_cast_input_dtype"):
            if not getattr(module, "_vital_uncast", False):
                module._cast_input_dtype = functools.partial(cast, module._cast_input_dtype)
                module._vital_uncast = True
            layers += 1
    return layers
