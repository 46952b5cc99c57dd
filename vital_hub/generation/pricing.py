"""What requests cost, from a price table the user can replace.

Prices move; the defaults below are list prices in USD per million tokens as published when this was written.
Pass `--prices FILE` (YAML or JSON: `{model: {input_per_million: x, output_per_million: y}}`) to use your own,
e.g. for a self-hosted server (all zeros) or a negotiated rate. A model not in the table costs None (unknown),
never 0. Model names match exactly, else by the longest table entry they start with (`gpt-4o-2024-08-06` is
priced as `gpt-4o`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from vital_hub.io import read_text


@dataclass(frozen=True)
class Price:
    input_per_million: float
    output_per_million: float
    batch_discount: float = 0.5  # the Batch API bills this share of the online price

    def cost(self, prompt_tokens: int, completion_tokens: int, batch: bool = False) -> float:
        online = (prompt_tokens * self.input_per_million + completion_tokens * self.output_per_million) / 1e6
        return online * self.batch_discount if batch else online


DEFAULT_PRICES: dict[str, Price] = {
    "gpt-4o": Price(2.50, 10.00),
    "gpt-4o-mini": Price(0.15, 0.60),
    "gpt-4.1": Price(2.00, 8.00),
    "gpt-4.1-mini": Price(0.40, 1.60),
    "gpt-4.1-nano": Price(0.10, 0.40),
}


class PriceTable:
    def __init__(self, prices: dict | None = None):
        source = DEFAULT_PRICES if prices is None else prices
        self.prices = {model: as_price(model, value) for model, value in source.items()}

    def lookup(self, model: str) -> Price | None:
        if model in self.prices:
            return self.prices[model]
        prefixes = [name for name in self.prices if model.startswith(name)]
        return self.prices[max(prefixes, key=len)] if prefixes else None

    def cost(self, model: str, prompt_tokens: int, completion_tokens: int, batch: bool = False) -> float | None:
        price = self.lookup(model)
        return None if price is None else price.cost(prompt_tokens, completion_tokens, batch)


def as_price(model: str, value) -> Price:
    if isinstance(value, Price):
        return value
    if not isinstance(value, dict) or not {"input_per_million", "output_per_million"} <= set(value):
        raise ValueError(f"price of {model!r} must give input_per_million and output_per_million, got {value!r}")
    unknown = set(value) - {"input_per_million", "output_per_million", "batch_discount"}
    if unknown:
        raise ValueError(f"price of {model!r} has unknown keys {sorted(unknown)}")
    return Price(**{k: float(v) for k, v in value.items()})


def load_prices(path: str | Path) -> dict[str, Price]:
    """A price table file (YAML or JSON) merged over the defaults."""
    import yaml

    data = yaml.safe_load(read_text(path))  # JSON is YAML too
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a price table is a mapping of model name to prices")
    return {**DEFAULT_PRICES, **{model: as_price(model, value) for model, value in data.items()}}
