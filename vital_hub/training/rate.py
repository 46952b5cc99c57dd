"""Training speed in real tokens: `real_tokens_per_second` in every training log line.

TRL's `SFTTrainer` keeps a running count of the real (non-padding) input tokens it has trained on, image tokens
included: from the attention mask of a padded batch, from the length of a packed one (`num_tokens` in its logs).
transformers' own `include_tokens_per_second` counts `input_ids.numel()`, padding included, and only at the end.
Here each training log gets the rate since the previous one (or since training started), over every process: the
number to compare between padded and packed runs, or with another trainer's throughput.
"""

from __future__ import annotations

import time

RATE_KEY = "real_tokens_per_second"


class TokenRateMixin:
    """Trainer mixin for a trainer that counts `_total_train_tokens` (TRL's `SFTTrainer`)."""

    _rate_mark: tuple[int, float] | None = None

    def _inner_training_loop(self, *args, **kwargs):
        self._rate_mark = None  # set at the first step, after the (possibly long) resume skip
        return super()._inner_training_loop(*args, **kwargs)

    def training_step(self, *args, **kwargs):
        if self._rate_mark is None:
            self._rate_mark = (self._total_train_tokens, time.perf_counter())
        return super().training_step(*args, **kwargs)

    def log(self, logs: dict, *args, **kwargs) -> None:
        if "loss" in logs and self.model.training and self._rate_mark is not None:
            tokens, now = self._total_train_tokens, time.perf_counter()
            seen, since = self._rate_mark
            if now > since and tokens >= seen:
                logs[RATE_KEY] = round((tokens - seen) / (now - since), 1)
            self._rate_mark = (tokens, now)
        super().log(logs, *args, **kwargs)
