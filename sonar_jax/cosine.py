"""Unit-length embeddings, cosine similarity, and the embedding pipelines' output options
(sentence-transformers' `normalize_embeddings` and output precision), so users never write their
own.

SONAR embeddings come out unnormalised (as the reference returns them); retrieval compares
directions. `l2_normalize` follows torch's `F.normalize` (norm floored at 1e-12, so an all-zero
row stays zero), which BLASER applies to its inputs; it works on numpy and jax arrays alike.
"""

from __future__ import annotations

import numpy as np

NORM_FLOOR = 1e-12  # torch.nn.functional.normalize's eps
OUTPUT_DTYPES = ("float32", "float16")


def l2_normalize(x, xp=np):
    """Rows of `x` divided by their L2 norm (at least NORM_FLOOR); `xp` is numpy or jax.numpy."""
    norm = xp.linalg.norm(x, axis=-1, keepdims=True)
    return x / xp.maximum(norm, NORM_FLOOR)


def check_output_dtype(output_dtype: str) -> None:
    if output_dtype not in OUTPUT_DTYPES:
        raise ValueError(f"output_dtype must be one of {list(OUTPUT_DTYPES)}, got {output_dtype!r}")


def as_output(embeddings: np.ndarray, *, normalize_embeddings: bool = False,
              output_dtype: str = "float32") -> np.ndarray:
    """What the embedding pipelines return: float32 rows, unit length on request, then cast."""
    check_output_dtype(output_dtype)
    if normalize_embeddings:
        embeddings = l2_normalize(np.asarray(embeddings, np.float32))
    return np.asarray(embeddings, dtype=output_dtype)


def check_embeddings(x, *, name: str = "embeddings", width: int | None = None,
                     reader: str = "") -> np.ndarray:
    """float32 [N, D] rows of `x`, or an error naming `name` (see `check_rows`)."""
    array = np.asarray(x, dtype=np.float32)
    check_rows(array, name=name, width=width, reader=reader)
    return array


# Rows scanned for NaN at a time, so a memory-mapped corpus is never read whole.
_SCAN_ROWS = 65536


def check_rows(array: np.ndarray, *, name: str, width: int | None = None,
               reader: str = "") -> None:
    """Refuses, naming `name`, an array that is not [N, D] (`width` and the `reader` that
    expects it, when given) or has rows holding NaN or inf; reads it a block at a time."""
    if array.ndim != 2 or (width is not None and array.shape[1] != width):
        wanted = f"[N, {'D' if width is None else width}]" + (f" for {reader}" if reader else "")
        raise ValueError(f"{name} must have shape {wanted}, got {list(array.shape)}")
    bad = [start + int(row) for start in range(0, len(array), _SCAN_ROWS)
           for row in np.flatnonzero(~np.isfinite(array[start:start + _SCAN_ROWS]).all(axis=1))]
    if bad:
        raise ValueError(f"{name}: NaN or inf in rows {bad[:10]}"
                         + (f" and {len(bad) - 10} more" if len(bad) > 10 else ""))


def similarity(a, b) -> np.ndarray:
    """Cosine similarity [N, M] between the rows of `a` [N, D] and `b` [M, D] (a single [D]
    vector counts as one row). A zero row has similarity 0 with everything."""
    a, b = (check_embeddings(np.atleast_2d(x), name=name) for x, name in ((a, "a"), (b, "b")))
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"a and b have different widths ({a.shape[1]} and {b.shape[1]}): "
                         "compare embeddings from the same SONAR space")
    return l2_normalize(a) @ l2_normalize(b).T
