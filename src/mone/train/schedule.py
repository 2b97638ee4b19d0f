"""Learning-rate schedule: linear warm-up, then cosine decay (a pure function of the step)."""

from __future__ import annotations

import math

__all__ = ["warmup_cosine_lr"]


def warmup_cosine_lr(step: int, total_steps: int, lr: float, warmup_steps: int = 0, min_lr: float = 0.0) -> float:
    """Learning rate for optimiser step ``step`` (0-based) of ``total_steps``.

    Steps ``0 .. warmup_steps-1`` ramp linearly up to ``lr`` (``lr * (step + 1) / warmup_steps``); the rest follow
    half a cosine from ``lr`` down to ``min_lr``, reached at the last step.
    """
    if not 0 <= step < total_steps:
        raise ValueError(f"step must be in [0, {total_steps}), got {step}")
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    decay_steps = total_steps - warmup_steps
    progress = (step - warmup_steps) / max(decay_steps - 1, 1)  # 0 at the first decay step, 1 at the last
    return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * progress))
