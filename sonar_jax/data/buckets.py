"""Token-budget batches from a small fixed set of shapes: length buckets, rows per bucket.

A batch of bucket L has rows(L) rows padded to length L, rows(L) the largest multiple of
`rows_multiple` with rows(L) * L <= batch_max_tokens. A length counts tokens for text (every
array [rows(L), L]) and fbank frames for speech (speech.py). Training therefore compiles one
program per bucket, and every batch splits evenly over devices and gradient-accumulation steps.

`group` batches one window of examples per bucket; `schedule` orders a window's batches. Hosts of
a multi-host run agree on how many batches of each bucket a window has (the most any host needs,
the others add all-pad batches) and on the order, so at every step all hosts hold the same shape
and a global array can be formed from the host batches.
"""

from __future__ import annotations

import bisect
import collections
import dataclasses
from typing import Callable, Sequence

import numpy as np

from sonar_jax.batching import length_bucket


@dataclasses.dataclass(frozen=True)
class BucketPlan:
    lengths: tuple[int, ...]  # padded lengths, increasing
    rows: tuple[int, ...]  # rows of a batch of each bucket

    @classmethod
    def build(cls, *, max_len: int, batch_max_tokens: int, rows_multiple: int,
              lengths: Sequence[int] = ()) -> "BucketPlan":
        """`lengths` empty: powers of two from 8 up to max_len (sonar_jax.batching.length_bucket),
        with max_len itself as the last bucket."""
        if rows_multiple <= 0:
            raise ValueError(f"rows_multiple must be positive, got {rows_multiple}")
        if lengths:
            lengths = tuple(int(n) for n in lengths)
            if list(lengths) != sorted(set(lengths)) or lengths[0] <= 0:
                raise ValueError(f"length_buckets {lengths} must be positive and increasing")
            if lengths[-1] < max_len:
                raise ValueError(f"the longest length bucket {lengths[-1]} is shorter than "
                                 f"max_len {max_len}; add a bucket >= max_len or lower max_len")
        else:
            lengths = tuple(sorted({length_bucket(n, max_len) for n in range(1, max_len + 1)}))
        rows = tuple(batch_max_tokens // n // rows_multiple * rows_multiple for n in lengths)
        if rows[-1] == 0:
            raise ValueError(
                f"batch_max_tokens {batch_max_tokens} cannot hold {rows_multiple} rows (the "
                f"rows multiple) of the longest bucket {lengths[-1]}; raise batch_max_tokens to "
                f">= {rows_multiple * lengths[-1]} or lower max_len")
        return cls(lengths, rows)

    def bucket(self, length: int) -> int:
        """Index of the shortest bucket that holds `length` tokens."""
        index = bisect.bisect_left(self.lengths, length)
        if index == len(self.lengths):
            raise ValueError(f"a sequence of {length} tokens is longer than the longest bucket "
                             f"{self.lengths[-1]}")
        return index

    @property
    def shapes(self) -> list[tuple[int, int]]:
        return list(zip(self.rows, self.lengths))


def _longest_array(example: dict[str, np.ndarray]) -> int:
    return max(len(a) for a in example.values())


def collate_tokens(chunk: Sequence[dict[str, np.ndarray]], rows: int, width: int,
                   keys: Sequence[str] = ()) -> dict[str, np.ndarray]:
    """[rows, width] int32 arrays of the chunk's token arrays, right-padded with 0; an empty
    chunk gives the all-pad batch of `keys`."""
    batch = {key: np.zeros((rows, width), np.int32) for key in (chunk[0] if chunk else keys)}
    for row, example in enumerate(chunk):
        for key, tokens in example.items():
            batch[key][row, :len(tokens)] = tokens
    return batch


def group(examples: Sequence[dict], plan: BucketPlan, *,
          length: Callable[[dict], int] = _longest_array,
          collate: Callable[[Sequence[dict], int, int], dict] = collate_tokens
          ) -> list[list[dict[str, np.ndarray]]]:
    """Batches of `examples`, one list per bucket.

    An example goes to the bucket that holds `length(example)` (default: its longest array);
    `collate(chunk, rows, width)` makes a batch of a bucket's shape (default: token arrays
    padded with 0). The last batch of a bucket is filled up with all-pad rows, so each example
    lands in exactly one batch and no example waits for a later call.
    """
    by_bucket = collections.defaultdict(list)
    for example in examples:
        by_bucket[plan.bucket(length(example))].append(example)
    groups = []
    for bucket, (rows, width) in enumerate(plan.shapes):
        items = by_bucket[bucket]
        groups.append([collate(items[start:start + rows], rows, width)
                       for start in range(0, len(items), rows)])
    return groups


def schedule(groups: Sequence[Sequence[dict[str, np.ndarray]]], counts: Sequence[int],
             pad_batch: Callable[[int], dict[str, np.ndarray]], rng: np.random.Generator
             ) -> list[dict[str, np.ndarray]]:
    """`counts[b]` batches of each bucket b, this host's first and then all-pad ones
    (`pad_batch(b)`), in an order drawn from `rng`: hosts that agree on `counts` and `rng` yield
    the same shapes in turn."""
    batches = []
    for bucket, (own, count) in enumerate(zip(groups, counts)):
        if len(own) > count:
            raise ValueError(f"bucket {bucket} has {len(own)} batches, more than the agreed "
                             f"{count}")
        batches += own
        batches += [pad_batch(bucket) for _ in range(count - len(own))]
    return [batches[i] for i in rng.permutation(len(batches))]
