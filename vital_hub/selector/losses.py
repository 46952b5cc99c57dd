"""Pairwise losses for the selector, on the scores of the chosen and the rejected item of each pair.

The paper trains with a weighted pairwise hinge, `w * max(0, margin - (s_chosen - s_rejected))` with margin 1,
averaged over the batch (its Bradley-Terry loss, `-w * log sigmoid(s_chosen - s_rejected)`, is defined but
unused). The mean is over pairs, not over the sum of weights, as the released code has it: a clinician pair of
weight w pulls w times as hard as a model pair. `center_rewards_coefficient` adds TRL's penalty
`c * mean((s_chosen + s_rejected) ** 2)` that keeps scores centred on zero.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F


def _weighted_mean(per_pair: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    if weights is not None:
        per_pair = per_pair * weights.to(per_pair.dtype)
    return per_pair.mean()


def pairwise_hinge(
    chosen: torch.Tensor, rejected: torch.Tensor, weights: torch.Tensor | None = None, margin: float = 1.0
) -> torch.Tensor:
    return _weighted_mean(torch.clamp(margin - (chosen - rejected), min=0.0), weights)


def bradley_terry(
    chosen: torch.Tensor, rejected: torch.Tensor, weights: torch.Tensor | None = None, margin: float = 0.0
) -> torch.Tensor:
    """`margin` is subtracted inside the sigmoid, as TRL's RewardTrainer does with a `margin` column."""
    return _weighted_mean(-F.logsigmoid(chosen - rejected - margin), weights)


LOSSES: dict[str, Callable[..., torch.Tensor]] = {"hinge": pairwise_hinge, "bradley_terry": bradley_terry}


def get_loss(name: str) -> Callable[..., torch.Tensor]:
    if name not in LOSSES:
        raise ValueError(f"unknown selector loss {name!r}; known: {', '.join(LOSSES)}")
    return LOSSES[name]


def effective_margin(name: str, margin: float | None) -> float:
    """The margin a loss actually uses: the given one, or the loss's own default (hinge 1, Bradley-Terry 0)."""
    import inspect

    if margin is not None:
        return float(margin)
    return float(inspect.signature(get_loss(name)).parameters["margin"].default)


def preference_loss(
    name: str,
    chosen: torch.Tensor,
    rejected: torch.Tensor,
    weights: torch.Tensor | None = None,
    margin: float | None = None,
    center_rewards_coefficient: float | None = None,
) -> torch.Tensor:
    """The configured loss plus the optional centring penalty."""
    loss_fn = get_loss(name)
    loss = loss_fn(chosen, rejected, weights) if margin is None else loss_fn(chosen, rejected, weights, margin)
    if center_rewards_coefficient:
        loss = loss + center_rewards_coefficient * torch.mean((chosen + rejected) ** 2)
    return loss
