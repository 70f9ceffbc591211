"""Learning-rate schedule: a multiplier of the base learning rate for each step.

The default is WSD, warmup-stable-decay (Hu et al., 2024, MiniCPM, arXiv 2404.06395): a linear
warmup, a long flat stretch at the full rate, then a short linear decay. Unlike cosine, the flat
stretch does not depend on the run's length, so a run can be extended from any stable-phase
checkpoint. "cosine" and "constant" are there for comparison.

Steps count from 0. During warmup step s gives (s + 1) / warmup_steps, so the first step
already moves the weights and step warmup_steps - 1 reaches 1.
"""

from __future__ import annotations

import math

from ..errors import ConfigError

SCHEDULE_TYPES = ("wsd", "cosine", "constant")


def lr_multiplier(
    step: int,
    total_steps: int,
    warmup_steps: int,
    schedule_type: str = "wsd",
    stable_ratio: float = 0.8,
    min_lr_ratio: float = 0.1,
) -> float:
    """The factor applied to every group's base learning rate at `step` (0-based)."""
    if schedule_type not in SCHEDULE_TYPES:
        raise ConfigError(f"'training.schedule_type' must be one of {', '.join(SCHEDULE_TYPES)} (got {schedule_type!r})")
    if total_steps <= 0:
        raise ConfigError(f"'training.total_steps' must be positive (got {total_steps})")
    if warmup_steps < 0:
        raise ConfigError(f"'training.warmup_steps' must not be negative (got {warmup_steps})")
    if not 0.0 <= stable_ratio <= 1.0:
        raise ConfigError(f"'training.stable_ratio' must be in [0, 1] (got {stable_ratio})")
    if not 0.0 <= min_lr_ratio <= 1.0:
        raise ConfigError(f"'training.min_lr_ratio' must be in [0, 1] (got {min_lr_ratio})")
    if step < 0:
        raise ValueError(f"lr_multiplier: step must be >= 0 (got {step})")

    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule_type == "constant":
        return 1.0
    if schedule_type == "cosine":
        # Cosine from 1 at the end of warmup to min_lr_ratio at total_steps.
        decay_start, decay_end = warmup_steps, total_steps
        if step >= decay_end:
            return min_lr_ratio
        progress = (step - decay_start) / (decay_end - decay_start)
        return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
    # WSD: flat until stable_ratio of the run (never before warmup ends), then linear decay.
    decay_start = max(warmup_steps, int(round(stable_ratio * total_steps)))
    if step < decay_start:
        return 1.0
    if step >= total_steps:
        return min_lr_ratio
    progress = (step - decay_start) / (total_steps - decay_start)
    return 1.0 - (1.0 - min_lr_ratio) * progress
