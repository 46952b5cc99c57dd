"""Checkpoints that resume exactly: weights (or adapter), optimizer, scheduler, RNG and data position.

transformers 5 renames weights on load (`model.language_model.*` in memory for LLaVA's `language_model.model.*` on
disk; Qwen2.5-VL, Gemma 3, InternVL and LLaVA-OneVision likewise, and Qwen3-VL-MoE transposes its experts) and
`save_pretrained` writes the published names back. `Trainer` reloads a checkpoint with a plain, lenient
`load_state_dict`, so every weight came back "missing", only a warning was logged, and the resumed run went on
from the freshly initialised model. Here checkpoints keep the model's own names (the final output keeps the
published ones, which stock loaders read), and loading is strict: a checkpoint that does not fill every weight
of the model, or holds weights the model does not have, is an error naming them. A checkpoint written with the
published names (as before this fix) is still read where the names map one to one.

Loading a checkpoint draws no random numbers: the epoch's sample order comes from the global torch generator
when the data loader starts, so a resumed run must reach that point in the same random state as the uninterrupted
one (`Trainer` restores the saved RNG state only after it has skipped the batches already trained on).

A killed run can leave a half-written `checkpoint-N`; `last_complete_checkpoint` skips it (the trainer state is
written last).
"""

from __future__ import annotations

import functools
import inspect
import json
import logging
import re
from contextlib import contextmanager
from pathlib import Path

from trl import SFTTrainer

from vital_hub.training.rate import TokenRateMixin

logger = logging.getLogger(__name__)

CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
SHOWN_KEYS = 8


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded exactly into the model being trained."""


def last_complete_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest `checkpoint-N` folder whose trainer state was fully written (a killed save leaves none)."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return None
    found = []
    for path in folder.iterdir():
        if (match := CHECKPOINT.match(path.name)) and path.is_dir():
            found.append((int(match.group(1)), path))
    for step, path in sorted(found, reverse=True):
        try:
            state = json.loads((path / "trainer_state.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            logger.warning("%s: incomplete (no readable trainer_state.json), not resumed from", path)
            continue
        if state.get("global_step") == step:
            return path
        logger.warning("%s: trainer_state.json is at step %s, not resumed from", path, state.get("global_step"))
    return None


def shown(keys) -> str:
    keys = sorted(keys)
    more = f" and {len(keys) - SHOWN_KEYS} more" if len(keys) > SHOWN_KEYS else ""
    return ", ".join(keys[:SHOWN_KEYS]) + more


def weight_files(checkpoint: Path) -> list[Path]:
    index = checkpoint / "model.safetensors.index.json"
    if index.exists():
        shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        return [checkpoint / shard for shard in shards]
    single = checkpoint / "model.safetensors"
    if single.exists():
        return [single]
    raise CheckpointError(f"{checkpoint}: no model.safetensors (or index) to resume the weights from")


def published_to_own(model) -> dict[str, str]:
    """The model's weight names keyed by the names `save_pretrained` publishes them under, where one maps to one."""
    from transformers.core_model_loading import revert_weight_conversion

    own = model.state_dict()
    by_tensor = {id(tensor): name for name, tensor in own.items()}
    published = revert_weight_conversion(model, dict(own))
    return {name: by_tensor[id(tensor)] for name, tensor in published.items() if id(tensor) in by_tensor}


def load_weights_strictly(model, checkpoint: str | Path) -> None:
    """Load a checkpoint's full weights into `model`; anything missing, unexpected or mis-shaped is an error."""
    from safetensors.torch import load_file

    checkpoint = Path(checkpoint)
    own = model.state_dict()
    renames: dict[str, str] | None = None
    loaded, unexpected = set(), set()
    for path in weight_files(checkpoint):
        weights = load_file(str(path), device="cpu")
        if any(name not in own for name in weights):
            renames = published_to_own(model) if renames is None else renames
            weights = {renames.get(name, name): tensor for name, tensor in weights.items()}
        unexpected |= {name for name in weights if name not in own}
        weights = {name: tensor for name, tensor in weights.items() if name in own}
        try:
            model.load_state_dict(weights, strict=False)
        except RuntimeError as err:  # shape mismatches
            raise CheckpointError(f"{path}: does not fit the model: {err}") from err
        loaded |= set(weights)
    storage = {own[name].data_ptr() for name in loaded}
    ignored = set(getattr(model, "_keys_to_ignore_on_save", None) or ())
    # a weight tied to a loaded one (lm_head to the embeddings) is not saved twice
    missing = {
        name for name in own if name not in loaded and name not in ignored and own[name].data_ptr() not in storage
    }
    if missing or unexpected:
        raise CheckpointError(
            f"{checkpoint}: cannot resume the model's weights exactly: "
            + "; ".join(
                f"{what} ({len(keys)}): {shown(keys)}"
                for what, keys in (("missing from the checkpoint", missing), ("not in the model", unexpected))
                if keys
            )
        )
    logger.info("%s: all %d weights loaded", checkpoint, len(loaded))


def load_adapter_strictly(peft_model, checkpoint: str | Path) -> None:
    """Load a checkpoint's adapter (LoRA weights and modules_to_save) into the active adapter of `peft_model`."""
    from peft.utils import load_peft_weights, set_peft_model_state_dict

    checkpoint = Path(checkpoint)
    if not (checkpoint / "adapter_model.safetensors").exists():
        raise CheckpointError(f"{checkpoint}: no adapter_model.safetensors to resume the adapter from")
    adapter = peft_model.active_adapters[0]
    weights = load_peft_weights(str(checkpoint), device="cpu")
    try:
        result = set_peft_model_state_dict(peft_model, weights, adapter_name=adapter)
    except RuntimeError as err:  # shapes that differ: another rank, other target modules
        raise CheckpointError(f"{checkpoint}: the adapter does not fit the model: {err}") from err
    marker = f".{adapter}."
    missing = {name for name in result.missing_keys if marker in name}
    unexpected = set(result.unexpected_keys)
    expected = {name for name, _ in peft_model.named_parameters() if marker in name}
    if missing or unexpected or not expected:
        raise CheckpointError(
            f"{checkpoint}: cannot resume the adapter {adapter!r} exactly: missing from the checkpoint "
            f"({len(missing)}): {shown(missing) or '-'}; not in the model ({len(unexpected)}): {shown(unexpected) or '-'}"
        )
    logger.info("%s: adapter %r loaded (%d tensors)", checkpoint, adapter, len(weights))


@contextmanager
def own_names_on_save(model):
    """Make `model.save_pretrained` keep the in-memory weight names (for checkpoints, which only this module reads)."""
    save = getattr(type(model), "save_pretrained", None)
    if save is None or "save_original_format" not in inspect.signature(save).parameters:  # a PEFT model: adapters
        yield
        return
    model.save_pretrained = functools.partial(type(model).save_pretrained, model, save_original_format=False)
    try:
        yield
    finally:
        del model.save_pretrained


class ExactResumeMixin:
    """Trainer overrides: checkpoints in the model's own names, strict reload, no random draws while reloading."""

    def _save_checkpoint(self, model, trial):
        from vital_hub.training.model import router_logits_off

        unwrapped = self.accelerator.unwrap_model(self.model, keep_torch_compile=False)
        with own_names_on_save(unwrapped), router_logits_off(unwrapped):
            return super()._save_checkpoint(model, trial)

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        import torch
        from peft import PeftModel

        if self.is_fsdp_enabled or self.is_deepspeed_enabled:  # their own checkpoint formats, loaded by accelerate
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        model = self.model if model is None else model
        with torch.random.fork_rng(devices=[]):
            if isinstance(model, PeftModel):
                load_adapter_strictly(model, resume_from_checkpoint)
            else:
                load_weights_strictly(model, resume_from_checkpoint)


class ResumableSFTTrainer(ExactResumeMixin, TokenRateMixin, SFTTrainer):
    """TRL's SFTTrainer with exact, strict resume, logging its speed in real tokens a second."""
