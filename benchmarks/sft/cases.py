"""The benchmark's models and cases: published shapes, recipe settings, and the FSDP2 launch config."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPT = REPO_ROOT / "benchmarks" / "sft_throughput.py"  # what each case launches with `--worker`

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
