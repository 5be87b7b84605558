"""Splitting work over the processes of one job (`jax.distributed`) and meeting again.

Every helper is trivial with one process, so the same code runs on a laptop and on a pod. Work
is split by position only, so every process computes the same split without talking.
"""

from __future__ import annotations

import jax
import numpy as np


def process_slices(size: int) -> list[slice]:
    """Contiguous shares of `size` items, one per process in process order (the first
    processes get one more item when the count does not divide)."""
    count = jax.process_count()
    base, extra = divmod(size, count)
    starts = [i * base + min(i, extra) for i in range(count + 1)]
    return [slice(a, b) for a, b in zip(starts, starts[1:])]


def process_slice(size: int) -> slice:
    """This process's share of `size` items."""
    return process_slices(size)[jax.process_index()]


def barrier(name: str) -> None:
    """Waits until every process has reached the barrier of this name."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def gather_rows(local: np.ndarray, total: int) -> np.ndarray:
    """Every process's `local` rows (its `process_slice(total)`), concatenated in process order,
    on every process. 32-bit dtypes only (JAX narrows 64-bit ones)."""
    if jax.process_count() == 1:
        return local
    from jax.experimental import multihost_utils

    slices = process_slices(total)
    width = max(s.stop - s.start for s in slices)
    padded = np.zeros((width,) + local.shape[1:], local.dtype)
    padded[: len(local)] = local
    gathered = np.asarray(multihost_utils.process_allgather(padded, tiled=False))
    return np.concatenate([part[: s.stop - s.start] for part, s in zip(gathered, slices)])
