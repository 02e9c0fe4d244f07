"""Learning rate as a pure function of the optimizer step: a resumed run sets the same rate without restoring a
scheduler object (and nothing depends on how often accelerate would step a wrapped scheduler per process)."""

from __future__ import annotations

import math

from cirflow.schemas.training import TrainConfig


def lr_at(step: int, cfg: TrainConfig, steps_per_epoch: int, total_steps: int) -> float:
    """The rate used for optimizer step `step` (0-based)."""
    s = cfg.schedule
    if s.kind == "step":
        factor = s.gamma ** ((step // max(steps_per_epoch, 1)) // s.step_epochs)
    elif s.kind == "cosine":
        span = max(total_steps - s.warmup_steps, 1)
        progress = min(max(step - s.warmup_steps, 0) / span, 1.0)
        factor = s.min_lr_ratio + (1 - s.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    else:
        factor = 1.0
    if step < s.warmup_steps:
        factor *= (step + 1) / s.warmup_steps
    return cfg.lr * factor
