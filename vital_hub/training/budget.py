"""Steps of a fixed token budget: rows packed first-fit by length, so every packed row holds about as many real
tokens as the budget allows, whatever the mix of short and long conversations and small and large figures.

The token count of every row is measured once, exactly, by the training collator itself (chat template, image
tokens, truncation), in DataLoader workers. Rows are then placed longest first, each into the first step that
still has room (first-fit decreasing: a few percent over the fewest possible steps), ties broken by row index,
so the plan is the same on every run and every process. The steps' order is shuffled with the seed, differently
each epoch; the plan itself stays. A row longer than the budget gets a step of its own (logged).

`budget_trainer_class()` is `SFTTrainer` with this batch sampler for training (evaluation is unchanged).
"""

from __future__ import annotations

import logging
import random
import time

logger = logging.getLogger(__name__)


def first_fit_bins(lengths: list[int], budget: int) -> list[list[int]]:
    """Indices of `lengths` (> 0) grouped first-fit decreasing into bins of at most `budget` (see module doc).

    A max-tree over the bins' free room finds the first bin with room in O(log n), so 80K rows plan in a second.
    Rows of length 0 (dropped by the collator) are left out.
    """
    order = sorted((i for i, n in enumerate(lengths) if n > 0), key=lambda i: (-lengths[i], i))
    size = 1
    while size < max(len(order), 1):
        size *= 2
    room = [0] * (2 * size)  # leaves: free room of bin k at size + k; unopened bins have the full budget
    for leaf in range(size, 2 * size):
        room[leaf] = budget
    for node in range(size - 1, 0, -1):
        room[node] = max(room[2 * node], room[2 * node + 1])
    bins: list[list[int]] = []
    for index in order:
        need = min(lengths[index], budget)  # an over-long row fills an empty bin on its own
        node = 1
        while node < size:
            node = 2 * node if room[2 * node] >= need else 2 * node + 1
        slot = node - size
        if slot == len(bins):
            bins.append([])
        bins[slot].append(index)
        room[node] = room[node] - need if lengths[index] <= budget else 0
        node //= 2
        while node:
            room[node] = max(room[2 * node], room[2 * node + 1])
            node //= 2
    return [sorted(items) for items in bins]


class TokenBudgetBatchSampler:
    """Batches of row indices, one packed row each, from `first_fit_bins`; shuffled per epoch with the seed."""

    def __init__(self, lengths: list[int], budget: int, seed: int = 0):
        self.bins = first_fit_bins(lengths, budget)
        self.seed, self.epoch = seed, 0
        over = sum(1 for n in lengths if n > budget)
        if over:
            logger.warning("%d rows are longer than the packing budget of %d tokens: each trains alone", over, budget)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.bins)

    def __iter__(self):
        order = list(range(len(self.bins)))
        random.Random(self.seed * 1_000_003 + self.epoch).shuffle(order)
        for position in order:
            yield list(self.bins[position])


class _RowLengths:
    """Collate function of the measuring pass: the token count of each row as the training collator sees it."""

    def __init__(self, collator):
        self.collator = collator

    def __call__(self, rows: list[dict]) -> list[int]:
        from vital_hub.training.collator import encode_batch

        lengths = []
        for row in rows:
            item = self.collator.prepare_row(row)
            if item is None:
                lengths.append(0)
                continue
            batch = encode_batch(self.collator.processor, [item[0]], [item[1]])
            length = int(batch["attention_mask"].sum())
            lengths.append(min(length, self.collator.max_length) if self.collator.max_length else length)
        return lengths


def measure_lengths(dataset, collator, workers: int = 0, rows_per_task: int = 16) -> list[int]:
    """Real tokens of every row of `dataset` under `collator` (0 for a row the collator drops)."""
    from torch.utils.data import DataLoader

    started = time.perf_counter()
    loader = DataLoader(dataset, batch_size=rows_per_task, collate_fn=_RowLengths(collator), num_workers=workers)
    lengths = [n for chunk in loader for n in chunk]
    logger.info("measured the tokens of %d rows in %.1f s", len(lengths), time.perf_counter() - started)
    return lengths


def budget_trainer_class(base=None):
    """`base` (default: `SFTTrainer`) whose training batches come from a `TokenBudgetBatchSampler`
    (`packing_budget` tokens)."""
    from functools import partial

    from torch.utils.data import DataLoader
    from transformers.trainer_utils import seed_worker

    if base is None:
        from trl import SFTTrainer as base

    class BudgetSFTTrainer(base):
        def __init__(self, *args, packing_budget: int, **kwargs):
            super().__init__(*args, **kwargs)
            self.packing_budget = packing_budget
            self._budget_sampler = None

        def budget_sampler(self) -> TokenBudgetBatchSampler:
            if self._budget_sampler is None:
                workers = self.args.dataloader_num_workers
                lengths = measure_lengths(self.train_dataset, self.data_collator, workers)
                self._budget_sampler = TokenBudgetBatchSampler(lengths, self.packing_budget, self.args.seed)
                logger.info(
                    "packing budget %d tokens: %d rows (%d tokens) in %d steps, %.1f%% of the budget filled on average",
                    self.packing_budget, sum(1 for n in lengths if n), sum(lengths), len(self._budget_sampler),
                    100 * sum(lengths) / (self.packing_budget * max(len(self._budget_sampler), 1)),
                )  # fmt: skip
            return self._budget_sampler

        def get_train_dataloader(self):
            args = self.args
            params = {
                "batch_sampler": self.budget_sampler(),
                "collate_fn": self.data_collator,
                "num_workers": args.dataloader_num_workers,
                "pin_memory": args.dataloader_pin_memory,
                "persistent_workers": args.dataloader_persistent_workers and args.dataloader_num_workers > 0,
                "worker_init_fn": partial(
                    seed_worker, num_workers=args.dataloader_num_workers, rank=args.process_index
                ),
            }
            if args.dataloader_num_workers > 0 and args.dataloader_prefetch_factor is not None:
                params["prefetch_factor"] = args.dataloader_prefetch_factor
            return self.accelerator.prepare(DataLoader(self.train_dataset, **params))

    return BudgetSFTTrainer
