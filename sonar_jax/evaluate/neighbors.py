"""Exact k-nearest-neighbour search by inner product, chunked so it never holds an N x M matrix.

Queries go through in fixed-size chunks (the last one padded) and each chunk scans the candidates
chunk by chunk, merging a running top-k, so one compiled program serves a set of any size and the
device holds at most `query_chunk x (k + candidate_chunk)` scores at a time. Ties are broken
towards the lower candidate index, the same order `jax.lax.top_k` gives on a single row.

Given several devices, each query chunk is split over them (candidates replicated). Candidate
sets larger than memory go through `knn_blocks`, one block at a time, merged on the host.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from sonar_jax.batching import DataParallel

DEFAULT_QUERY_CHUNK = 1024
DEFAULT_CANDIDATE_CHUNK = 8192


@dataclasses.dataclass(frozen=True)
class Neighbors:
    """For each query, its k best candidates: scores descending, ties by lower index first."""

    scores: np.ndarray   # [N, k] float32
    indices: np.ndarray  # [N, k] int32, rows of the candidate matrix


def l2_normalize(x) -> np.ndarray:
    """Rows scaled to unit length (float32), so inner products are cosines; zero rows stay zero."""
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"embeddings must be a 2-D array [N, D], got shape {list(x.shape)}")
    bad = np.flatnonzero(~np.isfinite(x).all(axis=1))
    if bad.size:
        raise ValueError(f"embeddings contain NaN or inf in rows {bad[:10].tolist()}")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, np.finfo(np.float32).tiny)


@functools.partial(jax.jit, static_argnames="k")
def _chunk_top_k(queries, candidate_chunks, num_candidates, k: int):
    """Top-k of one query chunk [Q, D] over candidates [C, B, D] whose first
    `num_candidates` rows (in C-major order) are real and the rest padding."""
    q = queries.shape[0]
    width = candidate_chunks.shape[1]

    def merge(best, chunk_and_offset):
        chunk, offset = chunk_and_offset
        scores = jnp.dot(queries, chunk.T, precision=jax.lax.Precision.HIGHEST,
                         preferred_element_type=jnp.float32)
        index = offset + jnp.arange(width, dtype=jnp.int32)
        scores = jnp.where(index < num_candidates, scores, -jnp.inf)
        # Running entries come first and have lower indices, so stable top_k keeps the
        # lower index on ties.
        merged_scores = jnp.concatenate([best[0], scores], axis=1)
        merged_index = jnp.concatenate([best[1], jnp.broadcast_to(index, (q, width))], axis=1)
        top, position = jax.lax.top_k(merged_scores, k)
        return (top, jnp.take_along_axis(merged_index, position, axis=1)), None

    start = (jnp.full((q, k), -jnp.inf, jnp.float32), jnp.full((q, k), -1, jnp.int32))
    offsets = jnp.arange(candidate_chunks.shape[0], dtype=jnp.int32) * width
    (scores, indices), _ = jax.lax.scan(merge, start, (candidate_chunks, offsets))
    return scores, indices


def _chunk_size(size: int, limit: int, multiple: int = 128) -> int:
    """Rows per chunk: at most `limit`, as few chunks as that allows, split evenly and (within
    the limit) rounded up to `multiple`, so padding stays small and nearby sizes share one
    compiled program."""
    even = -(-size // -(-size // limit))
    rounded = -(-even // multiple) * multiple
    return rounded if rounded <= limit else even


def _pad_rows(x: np.ndarray, rows: int) -> np.ndarray:
    if len(x) == rows:
        return x
    return np.concatenate([x, np.zeros((rows - len(x), x.shape[1]), x.dtype)])


def knn(queries, candidates, k: int, *, query_chunk: int = DEFAULT_QUERY_CHUNK,
        candidate_chunk: int = DEFAULT_CANDIDATE_CHUNK,
        devices: Sequence[jax.Device] | None = None) -> Neighbors:
    """The k candidates with the largest inner product for each query (exact search).

    Pass L2-normalised rows (see `l2_normalize`) for cosine similarity. The chunk sizes are
    upper bounds: a set is split into as few chunks as they allow, of equal padded size.
    `devices` (default: this process's first) share each query chunk.
    """
    queries = np.asarray(queries, dtype=np.float32)
    candidates = np.asarray(candidates, dtype=np.float32)
    if queries.ndim != 2 or candidates.ndim != 2 or queries.shape[1] != candidates.shape[1]:
        raise ValueError(f"queries and candidates must be [N, D] and [M, D] with the same D, got "
                         f"{list(queries.shape)} and {list(candidates.shape)}")
    num_queries, num_candidates = len(queries), len(candidates)
    if not 1 <= k <= num_candidates:
        raise ValueError(f"k={k} needs 1 <= k <= the number of candidates ({num_candidates})")
    if query_chunk < 1 or candidate_chunk < 1:
        raise ValueError("query_chunk and candidate_chunk must be positive")
    if num_queries == 0:
        return Neighbors(np.zeros((0, k), np.float32), np.zeros((0, k), np.int32))

    parallel = DataParallel(devices if devices is not None else jax.local_devices()[:1])
    query_chunk = -(-_chunk_size(num_queries, query_chunk) // parallel.size) * parallel.size
    candidate_chunk = _chunk_size(num_candidates, candidate_chunk)
    num_chunks = -(-num_candidates // candidate_chunk)
    device_candidates = parallel.replicate(_pad_rows(candidates, num_chunks * candidate_chunk)
                                           .reshape(num_chunks, candidate_chunk, -1))
    valid = jnp.int32(num_candidates)
    results = []
    for start in range(0, num_queries, query_chunk):
        (chunk,) = parallel.shard_rows(_pad_rows(queries[start:start + query_chunk], query_chunk))
        results.append(_chunk_top_k(chunk, device_candidates, valid, k))
    scores = np.concatenate([np.asarray(s) for s, _ in results])[:num_queries]
    indices = np.concatenate([np.asarray(i) for _, i in results])[:num_queries]
    return Neighbors(scores, indices)


def _merge(a: Neighbors, b: Neighbors, k: int) -> Neighbors:
    """The k best of two neighbour lists of the same queries; `a`'s entries (lower candidate
    indices) win ties, as one search over both would order them."""
    scores = np.concatenate([a.scores, b.scores], axis=1)
    indices = np.concatenate([a.indices, b.indices], axis=1)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return Neighbors(np.take_along_axis(scores, order, axis=1),
                     np.take_along_axis(indices, order, axis=1))


def knn_blocks(queries, candidate_blocks: Iterable[np.ndarray], k: int, **options) -> Neighbors:
    """`knn` over candidates that arrive in consecutive blocks (e.g. read from disk), so only
    one block is in memory; indices count rows across all blocks. Options as for `knn`."""
    best, offset = None, 0
    for block in candidate_blocks:
        found = knn(queries, block, min(k, len(block)), **options)
        found = Neighbors(found.scores, found.indices + np.int32(offset))
        best = found if best is None else _merge(best, found, k)
        offset += len(block)
    if offset < k:
        raise ValueError(f"k={k} needs 1 <= k <= the number of candidates ({offset})")
    return best
