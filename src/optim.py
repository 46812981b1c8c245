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


def train_steps(params, steps: int, loss_fn, *, lr: float, weight_decay: float = 0.0, warmup: float = 0.0,
                clip_grad: float | None = None, seed: int = 0, log=print, log_every: int = 50,
                label: str = "train") -> list[float]:
    """A plain training loop for the small models the synthetic demos build outside Lightning (their tiny
    base VLM / point LLM / encoder): AdamW on ``params``; per-step LR multiplier ``min(1, (s + 1) / W) *
    0.5 (1 + cos(pi s / steps))`` with ``W = warmup * steps`` (``warmup = 0``: the cosine alone); optional
    gradient-norm clipping; a non-finite loss stops with a message. ``loss_fn(rng)`` returns the loss of
    one batch (``rng = random.Random(seed)``, for drawing the batch). Returns the loss of every step."""
    import random
    import time

    params = list(params)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    warm = max(1, int(warmup * steps)) if warmup > 0 else 0

    def multiplier(s: int) -> float:
        cosine = 0.5 * (1.0 + math.cos(math.pi * min(s, steps) / max(1, steps)))
        return cosine * min(1.0, (s + 1) / warm) if warm else cosine

    sched = torch.optim.lr_scheduler.LambdaLR(opt, multiplier)
    rng = random.Random(seed)
    losses: list[float] = []
    t0 = time.perf_counter()
    for step in range(steps):
        loss = loss_fn(rng)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{label}: loss is {loss.item()} at step {step}; lower the learning rate")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if clip_grad:
            torch.nn.utils.clip_grad_norm_(params, clip_grad)
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        if log is not None and ((step + 1) % log_every == 0 or step + 1 == steps):
            recent = losses[-log_every:]
            log(f"  {label} step {step + 1}/{steps}: loss {sum(recent) / len(recent):.3f} "
                f"({time.perf_counter() - t0:.0f} s)")
    return losses
