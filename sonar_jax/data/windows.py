"""The window machinery both input pipelines (text_pipeline.py, speech_pipeline.py) share: a
per-host stream of windows of records, their batches in an order and number every host agrees
on, and an iterator state that resumes on the exact next batch.

Per host: the source is sharded (`shard_index::shard_count`, default this process of all),
shuffled (a new order every epoch), repeated, and cut into windows of `window_size` records; a
window function turns each window into batches per length bucket (buckets.py) in one grain map
step, so it runs in the grain worker processes when `num_workers > 0`.

Multi-host: when a window is loaded, the processes agree (one small all-gather) on how many
batches of each bucket it has, and a shared seed orders them, so every host yields the same
shape at every step, and the same number of batches in a finite (eval) pass: hosts with fewer
examples add all-pad batches.

Resume: the iterator state is the state of the window stream before the current window, the
window count, and the batches already taken; restoring recomputes that window (deterministic:
every random choice comes from the seed and the position in the stream) and skips those batches.
The state is JSON (grain's `grain.checkpoint.CheckpointHandler`, which sonar_jax/checkpoint.py
saves with the model, or `state_to_json` / `state_from_json`).
"""

from __future__ import annotations

import json
from typing import Any, Callable

import grain
import jax
import ml_collections
import numpy as np
from absl import flags as absl_flags
from jax.experimental import multihost_utils

from sonar_jax.data import buckets
from sonar_jax.data.noise import keyed_rng

_ORDER_STREAM = 1  # batch order; keyed apart from the text pipeline's noise (stream 0)
_MIN_SHM_BYTES = 64 << 20


def _max_over_hosts(counts: np.ndarray) -> np.ndarray:
    """Elementwise max of `counts` over all processes (every process calls this in step)."""
    if jax.process_count() == 1:
        return counts
    return np.max(multihost_utils.process_allgather(counts), axis=0)


class WindowBatchIterDataset(grain.IterDataset):
    """Yields the batches of each window, in an order and number that all hosts agree on.

    `parent` yields, per window, its batches per bucket of `plan` (`buckets.group`);
    `pad_batch(bucket)` makes an all-pad batch of a bucket. Text and speech share this.
    """

    def __init__(self, parent: grain.IterDataset, plan: buckets.BucketPlan,
                 pad_batch: Callable[[int], dict[str, np.ndarray]], seed: int):
        super().__init__(parent)
        self._plan, self._pad_batch, self._seed = plan, pad_batch, seed

    def __iter__(self) -> grain.DatasetIterator:
        return WindowBatchIterator(self._parent.__iter__(), self._plan, self._pad_batch,
                                   self._seed)


class WindowBatchIterator(grain.DatasetIterator):
    """State: the window stream's state before the current window, the number of windows
    loaded (the current one included) and the batches taken from the current one.

    Loading a window agrees with the other hosts on its batch counts (`_max_over_hosts`); a host
    whose data ran out contributes all-pad batches until every host's has. `set_state` only
    records the position; the next `next` recomputes the window, so a restore (which orbax may
    run in a background thread) never enters the collective.
    """

    def __init__(self, parent: grain.DatasetIterator, plan: buckets.BucketPlan,
                 pad_batch: Callable[[int], dict[str, np.ndarray]], seed: int):
        super().__init__(parent)
        self._plan, self._pad_batch, self._seed = plan, pad_batch, seed
        self._window_state = parent.get_state()
        self._loaded, self._batches, self._taken = 0, [], 0
        self._skip = 0  # batches of the restored window to drop once it is recomputed

    def _load(self, number: int) -> None:
        """Makes window `number` (the parent's next element) current; at the end of the data,
        raises StopIteration before changing any state."""
        window_state = self._parent.get_state()
        try:
            groups = next(self._parent)
        except StopIteration:
            groups = [[] for _ in self._plan.lengths]
        counts = _max_over_hosts(np.array([len(g) for g in groups], np.int32))
        if not counts.any():
            raise StopIteration
        rng = keyed_rng(self._seed, _ORDER_STREAM, number)
        batches = buckets.schedule(groups, counts, self._pad_batch, rng)
        self._window_state, self._batches, self._taken = window_state, batches, 0
        self._loaded = number + 1

    def __next__(self) -> dict[str, np.ndarray]:
        if self._skip:
            self._load(self._loaded - 1)
            self._taken, self._skip = self._skip, 0
        if self._taken >= len(self._batches):
            self._load(self._loaded)
        self._taken += 1
        return self._batches[self._taken - 1]

    def get_state(self) -> dict[str, Any]:
        return {"window": self._window_state, "loaded": self._loaded,
                "taken": self._skip or self._taken}

    def set_state(self, state: dict[str, Any]) -> None:
        self._parent.set_state(state["window"])
        self._window_state, self._loaded = state["window"], state["loaded"]
        self._batches, self._taken, self._skip = [], 0, state["taken"]


def resolve_shard(shard_index: int | None, shard_count: int | None) -> tuple[int, int]:
    """(shard_index, shard_count), by default this process of all; checked."""
    shard_index = jax.process_index() if shard_index is None else shard_index
    shard_count = jax.process_count() if shard_count is None else shard_count
    if not 0 <= shard_index < shard_count:
        raise ValueError(f"shard_index {shard_index} is not in [0, {shard_count})")
    return shard_index, shard_count


def window_dataset(source, window_fn: Callable[[int, list], Any], cfg: ml_collections.ConfigDict,
                   *, seed: int, shuffle: bool, num_epochs: int | None, shard_index: int,
                   shard_count: int) -> grain.IterDataset:
    """The per-host stream of windows: `window_fn(window number, records)` of consecutive
    `cfg.window_size` records of this shard, shuffled per epoch and repeated; run by
    `cfg.read_threads` threads, in `cfg.num_workers` grain worker processes when > 0."""
    if seed < 0:
        raise ValueError(f"the data seed must be >= 0, got {seed}")
    ds = grain.MapDataset.source(source)[shard_index::shard_count]
    if len(ds) == 0:
        raise ValueError(f"shard {shard_index} of {shard_count} is empty: the data has only "
                         f"{len(source)} records")
    if shuffle:
        ds = ds.shuffle(seed=seed % 2**32)
    ds = ds.repeat(num_epochs)
    ds = ds.batch(cfg.window_size, batch_fn=list).map_with_index(window_fn)
    windows = ds.to_iter_dataset(grain.ReadOptions(num_threads=cfg.read_threads,
                                                   prefetch_buffer_size=cfg.worker_buffer_size))
    if cfg.num_workers > 0:
        # grain 0.2.18 reads an absl flag when starting workers and fails if the program never
        # parsed flags (google/grain#1355, fixed upstream): use the flag defaults then.
        if not absl_flags.FLAGS.is_parsed():
            absl_flags.FLAGS.mark_as_parsed()
        # Batches are small: pickle them instead of leaving one shared-memory block per array
        # (containers often get a 64 MB /dev/shm; buffered blocks leak when a worker restarts).
        windows = grain.experimental.WithOptionsIterDataset(
            windows, grain.experimental.DatasetOptions(min_shm_size=_MIN_SHM_BYTES))
        windows = windows.mp_prefetch(grain.MultiprocessingOptions(
            num_workers=cfg.num_workers, per_worker_buffer_size=cfg.worker_buffer_size))
    return windows


def state_to_json(iterator: grain.DatasetIterator) -> bytes:
    """The iterator's position as JSON bytes (to store next to a checkpoint)."""
    return json.dumps(iterator.get_state()).encode()


def state_from_json(iterator: grain.DatasetIterator, data: bytes) -> None:
    """Moves `iterator` (built with the same config, seed and shard) to a saved position."""
    iterator.set_state(json.loads(data))
