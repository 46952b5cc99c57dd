"""Reading checkpoint shards one at a time and writing safetensors shards without a second copy in memory.

A 13B LLaVA in the original format is two or three `pytorch_model-0000x-of-0000y.bin` files (or safetensors) of
up to 10 GB each. Conversion reads one source shard (memory-mapped where the format allows), renames its tensors
and writes them out before the next shard is touched, so the peak is about one source shard. The writer writes
the safetensors layout (https://github.com/huggingface/safetensors: an 8-byte little-endian header length, a JSON
header of dtype, shape and byte offsets, then the raw bytes) itself, straight from each tensor's memory: the
library's `save_file` first copies every tensor into a bytes object, which would double the peak.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

WEIGHT_LAYOUTS = (
    ("model.safetensors.index.json", "model.safetensors"),
    ("pytorch_model.bin.index.json", "pytorch_model.bin"),
)


@dataclass
class SourceWeights:
    """The weight files of a checkpoint folder and the tensor names each holds, known before any is loaded."""

    files: list[Path]
    keys: dict[Path, list[str]]

    @property
    def all_keys(self) -> list[str]:
        return [key for path in self.files for key in self.keys[path]]


def find_weights(folder: Path) -> SourceWeights:
    """The checkpoint's shards (safetensors preferred), from its index file or the single weights file."""
    for index_name, single_name in WEIGHT_LAYOUTS:
        index = folder / index_name
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            except (json.JSONDecodeError, KeyError, TypeError) as err:
                raise ValueError(f"{index}: not a weight index (a JSON object with 'weight_map'): {err}") from None
            keys: dict[Path, list[str]] = {}
            for key, name in weight_map.items():
                keys.setdefault(folder / name, []).append(key)
            for path in keys:
                if not path.is_file():
                    raise ValueError(f"{index}: shard {path.name} is listed but not in {folder}")
            return SourceWeights(sorted(keys), keys)
        single = folder / single_name
        if single.is_file():
            return SourceWeights([single], {single: list_keys(single)})
    names = ", ".join(name for pair in WEIGHT_LAYOUTS for name in pair)
    raise ValueError(f"{folder}: no weights found (expected one of {names})")


def list_keys(path: Path) -> list[str]:
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            return list(handle.keys())
    return list(load_bin(path))


def load_bin(path: Path) -> dict:
    """A `.bin` state dict, memory-mapped (zip format, torch >= 1.6) so that its pages are read on demand."""
    import torch

    try:
        try:
            state = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
        except RuntimeError as err:
            if "mmap" not in str(err):
                raise
            state = torch.load(path, map_location="cpu", weights_only=True)  # legacy format: read whole
    except Exception as err:  # a corrupt or non-checkpoint file; torch's own text for some suggests
        # weights_only=False, which is never right for a downloaded file
        kind = type(err).__name__
        reason = f"not a PyTorch checkpoint of tensors (corrupt, or holding objects not loaded for safety: {kind})"
        raise ValueError(f"{path}: cannot read this checkpoint file: {reason}") from None
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state dict (name -> tensor), got {type(state).__name__}")
    return state


def iter_tensors(path: Path) -> Iterator[tuple[str, object]]:
    """(name, tensor) of one shard; a safetensors shard yields each tensor as it is read."""
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            for key in handle.keys():
                yield key, handle.get_tensor(key)
        return
    state = load_bin(path)
    while state:  # hand each tensor over and drop the dict's reference, so written tensors can be freed
        key = next(iter(state))
        yield key, state.pop(key)


def _dtype_names() -> dict:
    import torch

    return {
        torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
        torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
        torch.bool: "BOOL",
    }  # fmt: skip


def write_safetensors(path: Path, tensors: list[tuple[str, object]], metadata: dict | None = None) -> int:
    """Write tensors as one safetensors file, each straight from its memory; returns the bytes of tensor data."""
    import torch

    names = _dtype_names()
    header: dict = {"__metadata__": {"format": "pt", **(metadata or {})}}
    flat, offset = [], 0
    for name, tensor in tensors:
        if tensor.dtype not in names:
            raise ValueError(f"{name}: dtype {tensor.dtype} cannot be written to safetensors")
        data = tensor.detach().contiguous().reshape(-1).view(torch.uint8)
        header[name] = {
            "dtype": names[tensor.dtype],
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + data.numel()],
        }
        offset += data.numel()
        flat.append(data)
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned
    with open(path, "wb") as handle:
        handle.write(struct.pack("<Q", len(raw)))
        handle.write(raw)
        for data in flat:
            handle.write(memoryview(data.numpy()))
    return offset


@dataclass
class ShardWriter:
    """Collects renamed tensors and writes a shard at every `end_shard()` (one per source shard) or when the
    collected bytes would pass `max_shard_bytes`; `finish()` names the shards `model-0000k-of-0000n` and writes the
    index transformers reads."""

    folder: Path
    max_shard_bytes: int = 5 * 1024**3
    pending: list = field(default_factory=list)
    pending_bytes: int = 0
    parts: list[tuple[Path, list[str]]] = field(default_factory=list)
    total_bytes: int = 0

    def add(self, name: str, tensor) -> None:
        size = tensor.numel() * tensor.element_size()
        if self.pending and self.pending_bytes + size > self.max_shard_bytes:
            self.end_shard()
        self.pending.append((name, tensor))
        self.pending_bytes += size

    def end_shard(self) -> None:
        if not self.pending:
            return
        path = self.folder / f"part-{len(self.parts) + 1:05d}.safetensors"
        self.total_bytes += write_safetensors(path, self.pending)
        self.parts.append((path, [name for name, _ in self.pending]))
        self.pending, self.pending_bytes = [], 0

    def finish(self) -> list[Path]:
        self.end_shard()
        count = len(self.parts)
        if count == 1:
            final = [self.folder / "model.safetensors"]
        else:
            final = [self.folder / f"model-{i:05d}-of-{count:05d}.safetensors" for i in range(1, count + 1)]
        weight_map = {}
        for (part, names), target in zip(self.parts, final, strict=True):
            part.rename(target)
            weight_map.update(dict.fromkeys(names, target.name))
        if count > 1:
            index = {"metadata": {"total_size": self.total_bytes}, "weight_map": dict(sorted(weight_map.items()))}
            (self.folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
        return final
