"""Optimizer and learning-rate schedules from the `optim` config section.

AdamW (optax) with global-norm clipping; linear warmup from 0 to `lr` over `warmup_steps`, then
'inverse_sqrt' (fairseq: lr * sqrt(warmup / step)), 'cosine' (to lr * final_lr_fraction at
`decay_steps`), 'linear' (to lr * final_lr_fraction at `decay_steps`) or 'constant'. Weight decay
applies to matrices only (not to biases or LayerNorm parameters).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

SCHEDULES = ("inverse_sqrt", "cosine", "linear", "constant")


def make_schedule(optim_cfg: Any) -> optax.Schedule:
    lr = float(optim_cfg.lr)
    warmup = int(optim_cfg.get("warmup_steps", 0))
    kind = optim_cfg.get("schedule", "inverse_sqrt")
    final = float(optim_cfg.get("final_lr_fraction", 0.0))
    decay_steps = int(optim_cfg.get("decay_steps", 0) or 0)
    if kind not in SCHEDULES:
        raise ValueError(f"unknown lr schedule {kind!r}; expected one of {SCHEDULES}")
    if kind in ("cosine", "linear") and decay_steps <= 0:
        raise ValueError(f"schedule {kind!r} needs optim.decay_steps > 0 (steps after warmup)")

    if kind == "inverse_sqrt":
        base = max(warmup, 1)

        def decay(step):
            return lr * jnp.sqrt(base / (base + jnp.asarray(step, jnp.float32)))
    elif kind == "cosine":
        decay = optax.cosine_decay_schedule(lr, decay_steps, alpha=final)
    elif kind == "linear":
        decay = optax.linear_schedule(lr, lr * final, decay_steps)
    else:
        decay = optax.constant_schedule(lr)
    if warmup <= 0:
        return decay
    warm = optax.linear_schedule(0.0, lr, warmup)
    return optax.join_schedules([warm, decay], [warmup])


def decay_mask(params: Any) -> Any:
    """True for matrices (kernels, embeddings), False for vectors (biases, LayerNorm)."""
    # Stacked layers add a leading axis: a stacked bias is [L, D], a stacked kernel [L, D, F].
    def is_matrix(path, x):
        name = str(getattr(path[-1], "key", path[-1]))
        return name in ("kernel", "embedding")
    return jax.tree_util.tree_map_with_path(is_matrix, params)


def make_optimizer(optim_cfg: Any) -> tuple[optax.GradientTransformation, optax.Schedule]:
    schedule = make_schedule(optim_cfg)
    mu_dtype = optim_cfg.get("mu_dtype", None) or None
    parts = []
    clip = float(optim_cfg.get("clip_norm", 0.0) or 0.0)
    if clip > 0:
        parts.append(optax.clip_by_global_norm(clip))
    parts.append(optax.adamw(schedule, b1=float(optim_cfg.b1), b2=float(optim_cfg.b2),
                             eps=float(optim_cfg.eps),
                             weight_decay=float(optim_cfg.get("weight_decay", 0.0)),
                             mask=decay_mask, mu_dtype=mu_dtype))
    return optax.chain(*parts), schedule
