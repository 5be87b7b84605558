"""Batching for inference: length-sorted packing under a token budget, shape buckets, and
data-parallel placement over all local devices.

Shapes are bucketed (batch rows to a power of two that is a multiple of the device count,
lengths to a power of two from 8 up to the model's limit), so a run over mixed lengths compiles
a handful of programs instead of one per batch.
"""

from __future__ import annotations

import dataclasses
from typing import Iterator, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MIN_LENGTH_BUCKET = 8


def next_power_of_two(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def length_bucket(length: int, limit: int) -> int:
    """Padded length for a batch whose longest sequence has `length` tokens."""
    return min(limit, max(MIN_LENGTH_BUCKET, next_power_of_two(length)))


def rows_bucket(rows: int, multiple: int) -> int:
    """Padded row count: a power of two, and a multiple of the device count."""
    padded = next_power_of_two(rows)
    return -(-padded // multiple) * multiple


@dataclasses.dataclass(frozen=True)
class Batch:
    indices: np.ndarray  # positions of these items in the caller's input
    lengths: np.ndarray  # token counts


def pack_by_length(lengths: Sequence[int], *, batch_size: int | None,
                   max_tokens: int | None) -> list[Batch]:
    """Sorts items by length and packs consecutive ones into batches.

    A batch holds at most `batch_size` items and at most `max_tokens` tokens counted as
    rows × longest row (what the padded array costs); an item longer than the budget gets a
    batch of its own. The caller restores input order with `Batch.indices`.
    """
    if batch_size is None and max_tokens is None:
        raise ValueError("give batch_size, batch_max_tokens, or both")
    if batch_size is not None and batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if max_tokens is not None and max_tokens <= 0:
        raise ValueError(f"batch_max_tokens must be positive, got {max_tokens}")
    lengths = np.asarray(lengths, dtype=np.int64)
    order = np.argsort(lengths, kind="stable")
    batches, current = [], []
    for index in order:
        candidate = current + [index]
        too_many = batch_size is not None and len(candidate) > batch_size
        too_big = max_tokens is not None and len(candidate) * lengths[index] > max_tokens
        if current and (too_many or too_big):
            batches.append(current)
            candidate = [index]
        current = candidate
    if current:
        batches.append(current)
    return [Batch(np.array(b), lengths[b]) for b in batches]


def in_order(items: Sequence, batch_size: int) -> Iterator[Batch]:
    """Fixed-size batches in input order (what the reference's translation pipeline does)."""
    for start in range(0, len(items), batch_size):
        indices = np.arange(start, min(start + batch_size, len(items)))
        yield Batch(indices, np.zeros(len(indices), np.int64))


class DataParallel:
    """Places batches on all local devices along a 'data' axis, parameters replicated."""

    def __init__(self, devices: Sequence[jax.Device] | None = None):
        self.devices = list(devices if devices is not None else jax.local_devices())
        self.mesh = Mesh(np.array(self.devices), ("data",))
        self.batch_sharding = NamedSharding(self.mesh, P("data"))
        self.replicated = NamedSharding(self.mesh, P())

    @property
    def size(self) -> int:
        return len(self.devices)

    def replicate(self, tree):
        return jax.device_put(tree, self.replicated)

    def shard_rows(self, *arrays: np.ndarray):
        return tuple(jax.device_put(a, self.batch_sharding) for a in arrays)


def pad_rows(tokens: Sequence[Sequence[int]], rows: int, width: int, pad_idx: int,
             filler: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """[rows, width] int32 token array (right-padded) and lengths; missing rows get `filler`
    (a short valid sequence, so padding rows never produce NaN) and are dropped by the caller."""
    out = np.full((rows, width), pad_idx, np.int32)
    lengths = np.zeros(rows, np.int32)
    for row in range(rows):
        seq = tokens[row] if row < len(tokens) else filler
        out[row, :len(seq)] = seq
        lengths[row] = len(seq)
    return out, lengths
