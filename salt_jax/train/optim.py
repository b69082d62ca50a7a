"""Optimizer and learning-rate schedule from config.optim (optax)."""

from __future__ import annotations

import jax
import ml_collections
import optax

from salt_jax.config import LR_SCHEDULES
from salt_jax.errors import UserError, listed


def lr_schedule(cfg: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
    """Linear warmup to cfg.learning_rate, then cosine / linear decay or constant."""
    peak, warmup = cfg.learning_rate, cfg.warmup_steps
    end = peak * cfg.final_lr_fraction
    decay_steps = max(total_steps, warmup + 1)
    if cfg.schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(0.0, peak, warmup, decay_steps, end)
    if cfg.schedule == "linear":
        return optax.join_schedules(
            [optax.linear_schedule(0.0, peak, warmup), optax.linear_schedule(peak, end, decay_steps - warmup)],
            [warmup])
    if cfg.schedule == "constant":
        return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), optax.constant_schedule(peak)],
                                    [warmup])
    raise UserError(f"config.optim.schedule={cfg.schedule!r}: use {listed(LR_SCHEDULES)}")


def _decay_mask(params):
    """Weight decay on matrices only (not norm scales or biases)."""
    def keep(path, _):
        return not any(str(getattr(k, "key", "")) in ("scale", "bias") or str(getattr(k, "key", "")).endswith("_bias")
                       for k in path)
    return jax.tree_util.tree_map_with_path(keep, params)


def make_optimizer(cfg: ml_collections.ConfigDict, total_steps: int):
    """(optax transformation, learning-rate schedule): clip by global norm, then AdamW."""
    schedule = lr_schedule(cfg, total_steps)
    parts = []
    if cfg.grad_clip > 0:
        parts.append(optax.clip_by_global_norm(cfg.grad_clip))
    parts.append(optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay,
                             mask=_decay_mask))
    return optax.chain(*parts), schedule
