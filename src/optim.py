"""Learning-rate schedules used by the tasks (stepped once per optimizer step)."""

from __future__ import annotations

import math

import torch


def warmup_cosine_lambda(
    *, warmup_steps: int, total_steps: int, base_lr: float, min_lr: float = 0.0, warmup_start_lr: float = 0.0
):
    """Return ``f(step) -> lr multiplier`` for linear warmup then cosine decay to ``min_lr``.

    The multiplier is relative to ``base_lr`` (what ``LambdaLR`` expects). During warmup the LR goes
    linearly from ``warmup_start_lr`` to ``base_lr``; afterwards it follows a half cosine from
    ``base_lr`` down to ``min_lr`` at ``total_steps`` and stays there.
    """
    warmup_steps = max(0, int(warmup_steps))
    total_steps = max(warmup_steps + 1, int(total_steps))
    if base_lr <= 0:
        raise ValueError(f"base_lr must be > 0, got {base_lr}")

    def fn(step: int) -> float:
        if warmup_steps > 0 and step < warmup_steps:
            lr = warmup_start_lr + (base_lr - warmup_start_lr) * step / warmup_steps
        else:
            progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
            lr = min_lr + 0.5 * (base_lr - min_lr) * (1.0 + math.cos(math.pi * progress))
        return lr / base_lr

    return fn


def build_warmup_cosine(
    optimizer: torch.optim.Optimizer,
    *,
    warmup_steps: int,
    total_steps: int,
    min_lr: float = 0.0,
    warmup_start_lr: float = 0.0,
) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-step ``LambdaLR`` with one warmup+cosine lambda per parameter group."""
    lambdas = [
        warmup_cosine_lambda(
            warmup_steps=warmup_steps,
            total_steps=total_steps,
            base_lr=group["lr"],
            min_lr=min_lr,
            warmup_start_lr=warmup_start_lr,
        )
        for group in optimizer.param_groups
    ]
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambdas)
