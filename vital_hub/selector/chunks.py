"""`vital select`'s input pipeline: each batch of candidates is cut into chunks that DataLoader workers prepare,
and the main process assembles the chunks of a batch into the model's inputs.

What one candidate costs on the CPU bounds how fast a GPU can be fed, so the pipeline does each piece of work once
and in bulk:

- figures: candidates sorted by candidate_id (`{pair_id}#{sample}`) sit side by side, chunks end where a figure's
  run of candidates ends when one does, and a chunk decodes each of its figures once (`pixels` holds the distinct
  figures as decoded, (H, W, 3) uint8; `image_index` each candidate's row of them; a missing figure points at a
  zero picture and is flagged);
- texts: made from the rows in the worker, tokenised by `TextEncoder` (one call of the tokenizer's Rust backend
  per chunk) into flat ids and lengths;
- hand-over: the pixels travel as one tensor per chunk (through shared memory), the rest as small numpy arrays
  pickled into the same message (a tensor costs a shared-memory file and a round trip to the worker; a large
  array through the pipe costs the main process two more copies than shared memory does);
- main process: per batch, the chunks are copied into pinned buffers (ids padded once for the whole batch, as
  tokenising the batch in one call would), moved with one copy per tensor, and on the device the distinct
  figures are put in the model's (N, 3, H, W) layout and gathered for every candidate.

The batches themselves (which candidates, in which order) depend only on the shards and the batch size, never on
the chunks or the workers, so the scores do not either.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from vital_hub.selector.data import TextEncoder, decode_pixels, try_decode
from vital_hub.selector.text import candidate_text


@dataclass(frozen=True)
class Chunk:
    shard: int
    positions: list[int]
    ends_batch: bool
    ends_shard: bool


def plan_chunks(shards: list[tuple[int, range]], batch_size: int, chunk_size: int, figures=None) -> list[Chunk]:
    """Batches that never cross a shard boundary, cut into chunks of at most `chunk_size`, in shard order. Batch
    composition depends only on the shard, so any number of processes computes exactly the same batches.

    With `figures` (the figure of each position), a chunk that would end inside a run of candidates of one figure
    ends where that run starts instead (unless the run fills the chunk), so that a figure is decoded in one chunk,
    not in two."""
    chunks = []
    for shard, positions in shards:
        for start in range(0, len(positions), batch_size):
            pieces = _cut(list(positions[start : start + batch_size]), chunk_size, figures)
            last_batch = start + batch_size >= len(positions)
            for number, piece in enumerate(pieces):
                ends_batch = number == len(pieces) - 1
                chunks.append(Chunk(shard, piece, ends_batch, ends_batch and last_batch))
    return chunks


def _cut(batch: list[int], chunk_size: int, figures) -> list[list[int]]:
    pieces, start = [], 0
    while start < len(batch):
        end = min(start + chunk_size, len(batch))
        if figures is not None and end < len(batch):
            cut = end
            while cut > start and figures[batch[cut]] == figures[batch[cut - 1]]:
                cut -= 1
            end = cut if cut > start else end
        pieces.append(batch[start:end])
        start = end
    return pieces


class ChunkData(NamedTuple):
    """What a worker sends for one chunk, in one message (the pixels through shared memory)."""

    index: int  # the chunk's place in the plan
    ids: np.ndarray  # int32, the token ids of all the chunk's texts end to end
    lengths: np.ndarray  # int32, tokens per text
    pixels: torch.Tensor | None  # uint8 (figures, H, W, 3): each distinct figure once (None: a text-only selector)
    image_index: np.ndarray | None  # int64, each candidate's figure (row of `pixels`)
    missing: np.ndarray  # bool, the candidate's figure is missing or unreadable (its score is discarded)


class CandidateChunks:
    """Map-style dataset whose items are the chunks of a plan, as `ChunkData`. Picklable, so it runs in workers."""

    def __init__(self, rows, chunks: list[Chunk], images, tokenizer, config):
        self.rows, self.chunks, self.images, self.config = rows, chunks, images, config
        self.encoder = TextEncoder(tokenizer, config)

    def __len__(self):
        return len(self.chunks)

    def __getitem__(self, index) -> ChunkData:
        rows = [self.rows[position] for position in self.chunks[index].positions]
        ids, lengths = self.encoder.encode([candidate_text(row) for row in rows])
        if not self.config.uses_images:
            return ChunkData(index, ids, lengths, None, None, np.zeros(len(rows), dtype=bool))
        size = self.config.image_size
        pictures, row_of = [], {}
        image_index = np.empty(len(rows), dtype=np.int64)
        for slot, row in enumerate(rows):
            pair_id = row["pair_id"]
            if pair_id not in row_of:
                decoded = try_decode(self.images.get(pair_id), size, decode_pixels)
                row_of[pair_id] = -1 if decoded is None else len(pictures)
                if decoded is not None:
                    pictures.append(decoded)
            image_index[slot] = row_of[pair_id]
        missing = image_index < 0
        if missing.any():
            image_index[missing] = len(pictures)
            pictures.append(np.zeros((size, size, 3), dtype=np.uint8))
        pixels = torch.empty((len(pictures), size, size, 3), dtype=torch.uint8)
        np.stack(pictures, out=pixels.numpy())
        return ChunkData(index, ids, lengths, pixels, image_index, missing)


def as_is(item):
    """The DataLoader's `collate_fn`: a chunk travels as the worker made it (not converted to tensors)."""
    return item


def chunk_loader(rows, shards, images, tokenizer, config, batch_size, chunk_size, num_workers, worker_init_fn=None):
    """The DataLoader that `vital select` reads, over the chunks of `shards` ((shard, range of row positions)),
    and its dataset (`dataset.chunks` is the plan, `dataset.encoder` pads the texts)."""
    from torch.utils.data import DataLoader

    figures = [row["pair_id"] for row in rows] if config.uses_images else None
    dataset = CandidateChunks(
        rows, plan_chunks(shards, batch_size, min(chunk_size, batch_size), figures), images, tokenizer, config
    )
    loader = DataLoader(
        dataset,
        batch_size=None,
        collate_fn=as_is,
        num_workers=num_workers,
        prefetch_factor=4 if num_workers else None,
        worker_init_fn=worker_init_fn if num_workers else None,
    )
    return loader, dataset


def assemble(parts: list[ChunkData], encoder: TextEncoder, pin_memory: bool = False) -> dict[str, torch.Tensor]:
    """One batch on the CPU from its chunks, in order: `input_ids` and `attention_mask` padded to the batch's
    longest text, `pixel_values` (the distinct figures, (N, H, W, 3) uint8) and `image_index`; pinned for an
    asynchronous copy to the GPU when asked."""
    batch = encoder.pad([(part.ids, part.lengths) for part in parts], pin_memory)
    if parts[0].pixels is None:
        return batch
    counts = [len(part.pixels) for part in parts]
    pixels = torch.empty((sum(counts), *parts[0].pixels.shape[1:]), dtype=torch.uint8, pin_memory=pin_memory)
    np.concatenate([part.pixels.numpy() for part in parts], out=pixels.numpy())  # (torch.cat: 4x the CPU)
    offsets = np.cumsum([0, *counts[:-1]])
    index = torch.empty(sum(len(part.image_index) for part in parts), dtype=torch.long, pin_memory=pin_memory)
    np.concatenate([part.image_index + offset for part, offset in zip(parts, offsets, strict=True)], out=index.numpy())
    batch["pixel_values"], batch["image_index"] = pixels, index
    return batch


def model_inputs(batch: dict[str, torch.Tensor], device) -> dict[str, torch.Tensor]:
    """An assembled batch on `device`, each candidate given its figure: (N, 3, H, W) uint8 as the model takes it."""
    batch = {key: value.to(device, non_blocking=True) for key, value in batch.items()}
    index = batch.pop("image_index", None)
    if index is not None:
        batch["pixel_values"] = batch["pixel_values"].permute(0, 3, 1, 2).contiguous()[index]
    return batch
