"""Bitext mining by margin, as LASER's `mine_bitexts.py` defines it, over embeddings of any size.

Both sides are L2-normalised; each source's k nearest targets and each target's k nearest
sources are found by exact search (`neighbors.knn_blocks`: candidates streamed in blocks, the
queries split over the processes of a job and over each process's devices). A pair's score is
its margin (`margin`: ratio, distance or absolute). Among its k nearest, each source's best
target is its forward pair and each target's best source its backward pair; the retrieval mode
keeps

    forward       every forward pair
    backward      every backward pair
    intersection  the forward pairs that are also backward pairs
    max           forward and backward pairs by descending score, each kept unless its source
                  or its target is already in a kept pair (LASER's greedy 'max')

and then drops pairs scoring at or below `threshold` (LASER applies its threshold, default 0, in
max mode only; here it applies in every mode and defaults to none). Given the texts, identical
sentences on a side are searched once (LASER's --unify), so no sentence pair comes out twice;
a unified sentence is reported at its first row. Pairs are sorted by descending score (ties by
source row, then target row).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Protocol, Sequence, runtime_checkable

import jax
import numpy as np

from sonar_jax import multihost
from sonar_jax.errors import UsageError
from sonar_jax.evaluate.margin import check_margin, margin_scores
from sonar_jax.evaluate.neighbors import (DEFAULT_CANDIDATE_CHUNK, DEFAULT_QUERY_CHUNK,
                                          Neighbors, knn_blocks, l2_normalize)

RETRIEVALS = ("forward", "backward", "max", "intersection")
DEFAULT_BLOCK_ROWS = 262_144  # rows read from disk at a time (1 GiB of float32 at D = 1024)


@runtime_checkable
class Rows(Protocol):
    """Embeddings readable by row: an `EmbeddingCorpus`, or an array through `ArrayRows`."""

    name: str  # for messages
    dim: int

    def __len__(self) -> int: ...

    def take(self, rows: np.ndarray) -> np.ndarray: ...


class ArrayRows:
    def __init__(self, array, name: str):
        self.name = name
        self.array = np.asarray(array)
        if self.array.ndim != 2:
            raise ValueError(f"{name} embeddings must be [N, D], got shape "
                             f"{list(self.array.shape)}")
        self.dim = self.array.shape[1]

    def __len__(self) -> int:
        return len(self.array)

    def take(self, rows: np.ndarray) -> np.ndarray:
        return np.asarray(self.array[rows], np.float32)


@dataclasses.dataclass(frozen=True)
class MinedPairs:
    """Mined pairs by descending score: rows of the source and target sets."""

    scores: np.ndarray   # [P] float64
    sources: np.ndarray  # [P] int64
    targets: np.ndarray  # [P] int64

    def __len__(self) -> int:
        return len(self.scores)


def _check_widths(xs: Rows, ys: Rows) -> None:
    if xs.dim != ys.dim:
        raise ValueError(f"{xs.name} have width {xs.dim} but {ys.name} {ys.dim}: they come from "
                         "different models; embed both sides with the same encoder")


def first_occurrences(texts: Sequence[str] | None, size: int) -> np.ndarray:
    """Rows whose text has not appeared before (all rows when `texts` is None), ascending."""
    if texts is None:
        return np.arange(size, dtype=np.int64)
    if len(texts) != size:
        raise ValueError(f"{len(texts)} texts for {size} embeddings; give one text per row")
    first: dict[str, int] = {}
    for row, text in enumerate(texts):
        first.setdefault(text, row)
    return np.fromiter(first.values(), np.int64, len(first))


def _blocks(rows: Rows, which: np.ndarray, block_rows: int):
    for start in range(0, len(which), block_rows):
        yield l2_normalize(rows.take(which[start:start + block_rows]))


def _search(queries: Rows, query_rows: np.ndarray, candidates: Rows,
            candidate_rows: np.ndarray, k: int, block_rows: int, knn_options: dict) -> Neighbors:
    """k nearest of `candidate_rows` (as positions in it) for every row of `query_rows`: each
    process searches its share of the queries, then all shares are gathered on every process."""
    local = query_rows[multihost.process_slice(len(query_rows))]
    found = [knn_blocks(block, _blocks(candidates, candidate_rows, block_rows), k, **knn_options)
             for block in _blocks(queries, local, block_rows)]
    scores = np.concatenate([f.scores for f in found]) if found else np.zeros((0, k), np.float32)
    indices = np.concatenate([f.indices for f in found]) if found else np.zeros((0, k), np.int32)
    return Neighbors(multihost.gather_rows(scores, len(query_rows)),
                     multihost.gather_rows(indices, len(query_rows)))


def _best(forward: Neighbors, reverse: Neighbors, margin: str) -> tuple[np.ndarray, np.ndarray]:
    """(best candidate, its margin score) per query; equal margins go to the nearer one."""
    scores = margin_scores(forward, reverse, margin)
    best = scores.argmax(axis=1)
    rows = np.arange(len(best))
    return forward.indices[rows, best].astype(np.int64), scores[rows, best]


def _retrieve(retrieval: str, fwd_target, fwd_score, bwd_source, bwd_score):
    """(sources, targets, scores) that the retrieval mode keeps, in positions of each side."""
    sources, targets = np.arange(len(fwd_target)), np.arange(len(bwd_source))
    if retrieval == "forward":
        return sources, fwd_target, fwd_score
    if retrieval == "backward":
        return bwd_source, targets, bwd_score
    if retrieval == "intersection":
        mutual = bwd_source[fwd_target] == sources
        return sources[mutual], fwd_target[mutual], fwd_score[mutual]
    candidates_src = np.concatenate([sources, bwd_source])
    candidates_tgt = np.concatenate([fwd_target, targets])
    candidates_score = np.concatenate([fwd_score, bwd_score])
    taken_src, taken_tgt, kept = set(), set(), []
    for i in np.argsort(-candidates_score, kind="stable"):
        src, tgt = int(candidates_src[i]), int(candidates_tgt[i])
        if src not in taken_src and tgt not in taken_tgt:
            taken_src.add(src)
            taken_tgt.add(tgt)
            kept.append(i)
    kept = np.array(kept, np.int64)
    return candidates_src[kept], candidates_tgt[kept], candidates_score[kept]


def mine(x, y, *, margin: str = "ratio", k: int = 4, retrieval: str = "max",
         threshold: float | None = None, x_texts: Sequence[str] | None = None,
         y_texts: Sequence[str] | None = None, block_rows: int = DEFAULT_BLOCK_ROWS,
         devices: Sequence[jax.Device] | None = None, query_chunk: int = DEFAULT_QUERY_CHUNK,
         candidate_chunk: int = DEFAULT_CANDIDATE_CHUNK) -> MinedPairs:
    """Mines pairs of sources x and targets y: [N, D] / [M, D] arrays or `EmbeddingCorpus`es.

    x_texts, y_texts: the sentences; given, identical ones are searched once (LASER --unify).
    Call it on every process of a job (each searches a share of the queries) or in one process;
    `devices` (default: all of this process's) share each query chunk.
    """
    check_margin(margin)
    if retrieval not in RETRIEVALS:
        raise UsageError(f"unknown retrieval {retrieval!r}; choose one of "
                         f"{', '.join(RETRIEVALS)}")
    if k < 1 or block_rows < 1:
        raise UsageError(f"k and block_rows must be positive, got {k} and {block_rows}")
    xs = x if isinstance(x, Rows) else ArrayRows(x, "the source embeddings")
    ys = y if isinstance(y, Rows) else ArrayRows(y, "the target embeddings")
    _check_widths(xs, ys)
    x_rows = first_occurrences(x_texts, len(xs))
    y_rows = first_occurrences(y_texts, len(ys))
    if not (len(x_rows) and len(y_rows)):
        empty = np.zeros(0, np.int64)
        return MinedPairs(np.zeros(0), empty, empty)
    options = dict(query_chunk=query_chunk, candidate_chunk=candidate_chunk,
                   devices=devices if devices is not None else jax.local_devices())
    x2y = _search(xs, x_rows, ys, y_rows, min(k, len(y_rows)), block_rows, options)
    y2x = _search(ys, y_rows, xs, x_rows, min(k, len(x_rows)), block_rows, options)
    fwd_target, fwd_score = _best(x2y, y2x, margin)
    bwd_source, bwd_score = _best(y2x, x2y, margin)
    src, tgt, score = _retrieve(retrieval, fwd_target, fwd_score, bwd_source, bwd_score)
    if threshold is not None:
        keep = score > threshold
        src, tgt, score = src[keep], tgt[keep], score[keep]
    src, tgt = x_rows[src], y_rows[tgt]
    order = np.lexsort((tgt, src, -score))
    return MinedPairs(score[order], src[order], tgt[order])


def write_pairs(path: str | os.PathLike, pairs: MinedPairs, x_texts: Sequence[str],
                y_texts: Sequence[str]) -> None:
    """`score<TAB>source<TAB>target` lines, best first (what LASER writes, sorted), atomically."""
    from sonar_jax.outputs import atomic_text

    with atomic_text(path) as out:
        for score, src, tgt in zip(pairs.scores, pairs.sources, pairs.targets):
            out.write(f"{score:.6f}\t{x_texts[src]}\t{y_texts[tgt]}\n")


def _texts(corpus, lang: str | None, flag: str) -> list[str]:
    """Every text of `corpus` in row order, checking its languages against `lang`."""
    texts, langs = [], set()
    for chunk, chunk_langs in corpus.texts():
        texts += chunk
        langs.update(chunk_langs)
    if lang is not None and langs - {lang}:
        raise ValueError(f"{corpus.folder} holds {', '.join(sorted(langs))} sentences but "
                         f"{flag} says {lang}; pass the right folder or language code")
    return texts


def mine_corpora(src: str | os.PathLike, tgt: str | os.PathLike, output: str | os.PathLike, *,
                 src_lang: str | None = None, tgt_lang: str | None = None, unify: bool = True,
                 **options) -> MinedPairs:
    """Mines two `sonar-jax embed` outputs into the TSV `output` (written by process 0).
    Options as for `mine`; the texts come from the embedded inputs, which must be unchanged."""
    from sonar_jax.corpus.shards import EmbeddingCorpus

    x, y = EmbeddingCorpus(src), EmbeddingCorpus(tgt)
    _check_widths(x, y)
    for part in ("model", "tokenizer"):
        if x.manifest[part]["sha256"] != y.manifest[part]["sha256"]:
            raise ValueError(f"{x.folder} and {y.folder} were embedded with different "
                             f"{part}s ({x.manifest[part]} and {y.manifest[part]}), whose "
                             "spaces do not compare; embed both with the same encoder")
    x_texts, y_texts = _texts(x, src_lang, "--src-lang"), _texts(y, tgt_lang, "--tgt-lang")
    pairs = mine(x, y, x_texts=x_texts if unify else None, y_texts=y_texts if unify else None,
                 **options)
    if jax.process_index() == 0:
        write_pairs(output, pairs, x_texts, y_texts)
    return pairs
