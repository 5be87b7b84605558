"""One batch's loss sums and gradients, over `accum_steps` microbatches when asked: the part of
every recipe's step between its loss function and the optimizer.

Microbatch i holds rows i, i+k, i+2k... (k = accum_steps) so that each one is spread over every
batch shard (a contiguous split would put it on a few devices). Every term of a loss is divided
by its whole-batch total (`totals`, computed once over the batch), so k microbatches give the
gradient of the batch in one piece; gradients accumulate in float32, sharded as the parameters.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp

from sonar_jax import sharding
from sonar_jax.train.state import StepContext

# loss(params, batch, totals, ctx) -> (loss, sums, new model_state)
LossFn = Callable[[Any, Mapping[str, jax.Array], Mapping[str, Any], StepContext],
                  tuple[jax.Array, dict, Any]]


def microbatches(batch: Mapping[str, jax.Array], k: int) -> dict:
    """[B, ...] -> [k, B/k, ...], microbatch i holding rows i, i+k, i+2k..."""
    def split(x):
        rows = x.shape[0]
        x = jnp.swapaxes(x.reshape(rows // k, k, *x.shape[1:]), 0, 1)
        return sharding.constrain(x, (None, "batch") + (None,) * (x.ndim - 2))
    return {key: split(v) for key, v in batch.items()}


def loss_and_grads(loss: LossFn, totals: Mapping[str, Any], params: Any,
                   batch: Mapping[str, jax.Array], *, accum_steps: int, with_grads: bool,
                   frozen: Any, model_state: Any, rng: jax.Array, param_shardings: Any
                   ) -> tuple[dict, Any, Any]:
    """(sums, gradients or None, new model_state) of a whole batch."""
    def one(p, b, state, key):
        ctx = StepContext(frozen=frozen, model_state=state, rng=key, train=with_grads)
        if with_grads:
            def value(p_):
                result, sums, new_state = loss(p_, b, totals, ctx)
                return result, (sums, new_state)
            (_, (sums, new_state)), grads = jax.value_and_grad(value, has_aux=True)(p)
            return sums, grads, new_state
        _, sums, new_state = loss(p, b, totals, ctx)
        return sums, None, new_state

    if accum_steps == 1:
        return one(params, batch, model_state, rng)

    def body(carry, micro_and_index):
        acc_sums, acc_grads, state = carry
        micro, index = micro_and_index
        sums, grads, state = one(params, micro, state, jax.random.fold_in(rng, index))
        acc_sums = jax.tree.map(jnp.add, acc_sums, sums)
        if with_grads:
            acc_grads = jax.tree.map(lambda a, g: a + g.astype(a.dtype), acc_grads, grads)
        return (acc_sums, acc_grads, state), None

    micro = microbatches(batch, accum_steps)
    first = jax.tree.map(lambda x: x[0], micro)
    sums0 = jax.tree.map(jnp.zeros_like, jax.eval_shape(
        lambda: one(params, first, model_state, rng)[0]))
    grads0 = None
    if with_grads:
        grads0 = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
        grads0 = jax.tree.map(jax.lax.with_sharding_constraint, grads0, param_shardings)
    (sums, grads, model_state), _ = jax.lax.scan(
        body, (sums0, grads0, model_state), (micro, jnp.arange(accum_steps)))
    return sums, grads, model_state
