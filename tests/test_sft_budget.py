"""Token-budget packing: the first-fit plan, its sampler, and a recipe run that trains every row once."""

import json
import random
import re

import pytest

from tests.sft_support import run_sft, tiny_recipe
from vital_hub.training.budget import TokenBudgetBatchSampler, first_fit_bins
from vital_hub.training.family_models import write_family_folder
from vital_hub.training.synthetic import synthetic_rows, write_instructions_repo


def plain_first_fit(lengths, budget):
    """First-fit decreasing the slow, obvious way: scan every open bin."""
    bins, room = [], []
    for index in sorted((i for i, n in enumerate(lengths) if n > 0), key=lambda i: (-lengths[i], i)):
        need = lengths[index]
        slot = next((k for k, free in enumerate(room) if free >= need), None) if need <= budget else None
        if slot is None:
            bins.append([]), room.append(budget - need if need <= budget else 0)
            slot = len(bins) - 1
        else:
            room[slot] -= need
        bins[slot].append(index)
    return [sorted(items) for items in bins]


@pytest.mark.parametrize("seed", range(5))
def test_first_fit_plan_is_first_fit_decreasing_and_keeps_every_row_once(seed):
    rng = random.Random(seed)
    lengths = [
        rng.choice([0, rng.randint(1, 300), rng.randint(300, 2500), rng.randint(2500, 5000)]) for _ in range(700)
    ]
    budget = 4096
    bins = first_fit_bins(lengths, budget)
    assert bins == plain_first_fit(lengths, budget)
    placed = sorted(index for items in bins for index in items)
    assert placed == [i for i, n in enumerate(lengths) if n > 0]
    for items in bins:
        assert sum(lengths[i] for i in items) <= budget or len(items) == 1
    assert first_fit_bins(lengths, budget) == bins  # deterministic


def test_sampler_shuffles_steps_per_epoch_but_keeps_the_plan():
    lengths = [random.Random(1).randint(1, 900) for _ in range(200)]
    sampler = TokenBudgetBatchSampler(lengths, 2048, seed=7)
    first = list(sampler)
    assert len(first) == len(sampler) and list(TokenBudgetBatchSampler(lengths, 2048, seed=7)) == first
    sampler.set_epoch(1)
    second = list(sampler)
    assert second != first and sorted(map(tuple, second)) == sorted(map(tuple, first))


@pytest.mark.slow
def test_recipe_with_a_budget_trains_every_row_once_within_the_budget(tmp_path):
    rows = synthetic_rows(10, seed=2, image_sides=(96, 400))
    repo = write_instructions_repo(tmp_path / "repo", {"80k": rows})
    budget = 600
    overrides = {"num_train_epochs": 1, "max_steps": -1, "packing": True, "packing_budget": budget,
                 "max_image_side": 400, "save_strategy": "no", "max_length": 4096, "log_level": "info"}  # fmt: skip
    model = write_family_folder(tmp_path / "model", "qwen2.5-vl")
    recipe = tiny_recipe(tmp_path / "recipe.yaml", model, repo, tmp_path / "run", **overrides)
    result = run_sft(recipe, tmp_path / "hf")
    history = json.loads((tmp_path / "run" / "trainer_state.json").read_text())["log_history"]
    counts = [entry["num_tokens"] for entry in history if "loss" in entry]
    steps = [after - before for before, after in zip([0, *counts], counts, strict=False)]
    assert len(steps) >= 2 and all(0 < n <= budget for n in steps), steps
    tokens, planned = map(int, re.search(r"10 rows \((\d+) tokens\) in (\d+) steps", result.stderr).groups())
    assert len(steps) == planned and counts[-1] == tokens  # every row trained once, in the planned steps
