"""xsim and xsim++: how often a sentence fails to retrieve its translation, as LASER defines it.

Source i of a parallel set must retrieve target i. Embeddings are L2-normalised; each source's
k nearest targets by cosine are rescored with a margin (ratio, distance, or absolute: the plain
nearest neighbour; see `margin`) and the best one is the prediction. Only the k cosine-nearest
targets compete under a margin, as in LASER.

xsim++ appends hard negatives (augmented sentences) to the targets; they join every neighbour
search (including the targets' averages) while the gold index stays i. An error is a prediction
other than i, or, when target texts are given, a prediction whose text differs from target i's
(LASER's default in its eval script, which forgives duplicate sentences).
"""

from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

import numpy as np

from sonar_jax.evaluate.margin import MARGINS, check_margin, margin_scores
from sonar_jax.evaluate.neighbors import (DEFAULT_CANDIDATE_CHUNK, DEFAULT_QUERY_CHUNK,
                                          Neighbors, knn, l2_normalize)

__all__ = ["MARGINS", "XsimResult", "error_types", "margin_predictions", "xsim",
           "xsim_both_directions"]
MISALIGNED = "Misaligned"


@dataclasses.dataclass(frozen=True)
class XsimResult:
    """One retrieval direction: the prediction for every query and which of them are wrong."""

    predictions: np.ndarray  # [N] row of the candidate set (targets, then any augmented ones)
    mistakes: np.ndarray     # query rows counted as errors

    @property
    def total(self) -> int:
        return len(self.predictions)

    @property
    def errors(self) -> int:
        return len(self.mistakes)

    @property
    def error_rate(self) -> float:
        """Errors in percent of the queries."""
        return 100.0 * self.errors / self.total if self.total else 0.0

    def to_dict(self) -> dict:
        return {"errors": self.errors, "total": self.total, "error_rate": self.error_rate}


def margin_predictions(forward: Neighbors, reverse: Neighbors | None, margin: str) -> np.ndarray:
    """Best candidate for each query from its k nearest (`forward`), rescored with the margin.

    `reverse` holds each candidate's k nearest queries (for the candidates' averages); it is
    unused by the absolute margin. Equal margins go to the cosine-nearer candidate.
    """
    if margin == "absolute":
        return forward.indices[:, 0]
    best = margin_scores(forward, reverse, margin).argmax(axis=1)
    return forward.indices[np.arange(len(best)), best]


def _mistakes(predictions: np.ndarray, target_texts: Sequence[str] | None) -> np.ndarray:
    if target_texts is None:
        return np.flatnonzero(predictions != np.arange(len(predictions)))
    return np.array([i for i, p in enumerate(predictions) if target_texts[p] != target_texts[i]],
                    dtype=np.int64)


def _stack(gold, extra, side: str) -> tuple[np.ndarray, int]:
    gold = l2_normalize(gold)
    if extra is None:
        return gold, len(gold)
    extra = l2_normalize(extra)
    if extra.shape[1] != gold.shape[1]:
        raise ValueError(f"augmented {side} embeddings have width {extra.shape[1]}, the "
                         f"{side} embeddings {gold.shape[1]}")
    return np.concatenate([gold, extra]), len(gold)


def _check_parallel(num_sources: int, num_targets: int) -> None:
    if num_sources != num_targets:
        raise ValueError(f"a parallel set needs as many sources as targets, got {num_sources} "
                         f"sources and {num_targets} targets")


def _check_texts(texts, expected: int, name: str) -> None:
    if texts is not None and len(texts) != expected:
        raise ValueError(f"{name} has {len(texts)} lines for {expected} candidates "
                         "(the gold targets followed by any augmented ones)")


class _Searcher:
    """Runs the neighbour searches of one xsim direction with shared chunk settings."""

    def __init__(self, margin: str, k: int, query_chunk: int, candidate_chunk: int):
        check_margin(margin)
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        self.margin, self.k = margin, k
        self.chunks = dict(query_chunk=query_chunk, candidate_chunk=candidate_chunk)

    def __call__(self, queries: np.ndarray, candidates: np.ndarray) -> Neighbors:
        k = 1 if self.margin == "absolute" else self.k
        if len(candidates) < k:
            raise ValueError(f"k={k} nearest neighbours need at least {k} sentences on each "
                             f"side, got {len(candidates)}")
        return knn(queries, candidates, k, **self.chunks)

    def direction(self, queries, candidates, forward=None, reverse=None) -> np.ndarray:
        forward = forward if forward is not None else self(queries, candidates)
        if self.margin != "absolute" and reverse is None:
            reverse = self(candidates, queries)
        return margin_predictions(forward, reverse, self.margin)


def xsim(x, y, y_extra=None, margin: str = "ratio", k: int = 4, *,
         target_texts: Sequence[str] | None = None, query_chunk: int = DEFAULT_QUERY_CHUNK,
         candidate_chunk: int = DEFAULT_CANDIDATE_CHUNK) -> XsimResult:
    """xsim (or xsim++ with `y_extra`) of sources x [N, D] retrieving targets y [N, D].

    `target_texts` (N lines, plus one per augmented row) switches to text comparison.
    """
    x = l2_normalize(x)
    candidates, num_gold = _stack(y, y_extra, "target")
    _check_parallel(len(x), num_gold)
    _check_texts(target_texts, len(candidates), "target_texts")
    searcher = _Searcher(margin, k, query_chunk, candidate_chunk)
    predictions = searcher.direction(x, candidates)
    return XsimResult(predictions, _mistakes(predictions, target_texts))


def xsim_both_directions(x, y, *, x_extra=None, y_extra=None, margin: str = "ratio", k: int = 4,
                         x_texts: Sequence[str] | None = None,
                         y_texts: Sequence[str] | None = None,
                         query_chunk: int = DEFAULT_QUERY_CHUNK,
                         candidate_chunk: int = DEFAULT_CANDIDATE_CHUNK
                         ) -> tuple[XsimResult, XsimResult]:
    """(x -> y, y -> x) results; each side's augmented rows serve only as its candidates.

    Without augmented rows the two directions share their two neighbour searches.
    """
    xs, num_x = _stack(x, x_extra, "source")
    ys, num_y = _stack(y, y_extra, "target")
    _check_parallel(num_x, num_y)
    _check_texts(y_texts, len(ys), "y_texts")
    _check_texts(x_texts, len(xs), "x_texts")
    searcher = _Searcher(margin, k, query_chunk, candidate_chunk)
    x_to_y = searcher(xs[:num_x], ys)
    y_to_x = searcher(ys[:num_y], xs)
    if x_extra is None and y_extra is None:
        forward = searcher.direction(xs, ys, x_to_y, y_to_x)
        backward = searcher.direction(ys, xs, y_to_x, x_to_y)
    else:
        forward = searcher.direction(xs[:num_x], ys, forward=x_to_y)
        backward = searcher.direction(ys[:num_y], xs, forward=y_to_x)
    return (XsimResult(forward, _mistakes(forward, y_texts)),
            XsimResult(backward, _mistakes(backward, x_texts)))


def error_types(result: XsimResult, target_texts: Sequence[str],
                errtypes: Mapping[str, Mapping[str, str]]) -> dict[str, int]:
    """Errors by kind, as LASER's xsim++ report: a prediction that is an augmented sentence made
    from the gold one counts under its `errtype`, any other error as 'Misaligned'.

    `errtypes` is LASER's `<lang>_errtype.<split>.json`: augmented sentence ->
    {"src": the sentence it was made from, "errtype": the kind of change}.
    """
    counts: dict[str, int] = {}
    for row in result.mistakes:
        entry = errtypes.get(target_texts[result.predictions[row]].strip())
        made_from_gold = entry is not None and entry.get("src") == target_texts[row].strip()
        kind = entry["errtype"] if made_from_gold else MISALIGNED
        counts[kind] = counts.get(kind, 0) + 1
    return counts
