"""LASER's margin scores of candidate pairs, from k-nearest-neighbour lists in both directions.

    ratio     cos(x, y) / ((avg_x + avg_y) / 2)
    distance  cos(x, y) - (avg_x + avg_y) / 2
    absolute  cos(x, y)

avg_x is the mean cosine of x's k nearest candidates, avg_y the mean cosine of y's k nearest
queries; the margin discounts "hubs", sentences close to everything. xsim and bitext mining
both score this way.
"""

from __future__ import annotations

import numpy as np

from sonar_jax.evaluate.neighbors import Neighbors

MARGINS = ("ratio", "distance", "absolute")


def check_margin(margin: str) -> None:
    if margin not in MARGINS:
        raise ValueError(f"unknown margin {margin!r}; choose one of {', '.join(MARGINS)}")


def margin_scores(forward: Neighbors, reverse: Neighbors | None, margin: str) -> np.ndarray:
    """[N, k] float64 margin of each query with each of its k nearest candidates (`forward`).

    `reverse` holds each candidate's k nearest queries, for the candidates' averages; the
    absolute margin does not use it.
    """
    check_margin(margin)
    cosines = forward.scores.astype(np.float64)
    if margin == "absolute":
        return cosines
    query_avg = cosines.mean(axis=1, keepdims=True)
    candidate_avg = reverse.scores.astype(np.float64).mean(axis=1)[forward.indices]
    mean_avg = (query_avg + candidate_avg) / 2
    return cosines / mean_avg if margin == "ratio" else cosines - mean_avg
