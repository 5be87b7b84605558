"""Denoising noise for the auto-encoding loss term (SONAR's L_DAE, noise as in mBART).

SONAR's paper only cites mBART for its noise, so this follows mBART's text infilling: spans with
Poisson(3.5) lengths cover 35% of the pieces and each span becomes ONE mask token. Word drop and
a local shuffle are optional extras (off by default). Only the pieces are noised: the language tag
(first token) and eos (last token) stay in place.

The NLLB vocabulary has no `<mask>` piece (sonar-facts §4: pad, unk, bos, eos, pieces, language and
data tags), so the mask token is unk (id 1), which the model already sees for unknown pieces.

Noise is a pure function of the tokens and a numpy Generator. `keyed_rng(seed, *keys)` derives
Generators from the run seed and a position in the data stream (the pipeline uses one per window
of examples), so the noise is the same whichever grain worker computes it and after a resume.
"""

from __future__ import annotations

import dataclasses
import pathlib

import numpy as np
import sentencepiece as spm

from sonar_jax.tokenizer import UNK

WORD_START = "\u2581"  # SentencePiece's "▁": the piece begins a new word


def keyed_rng(seed: int, *keys: int) -> np.random.Generator:
    """Generator for one (seed, keys) combination, independent of every other combination."""
    return np.random.default_rng([int(seed), *(int(k) for k in keys)])


def word_start_table(spm_path: str | pathlib.Path, vocab_size: int) -> np.ndarray:
    """bool[vocab_size]: True at the NLLB ids (piece i is id i + 1) of pieces starting "▁"."""
    sp = spm.SentencePieceProcessor(model_file=str(spm_path))
    table = np.zeros(vocab_size, bool)
    for piece_id in range(sp.get_piece_size()):
        table[piece_id + 1] = sp.id_to_piece(piece_id).startswith(WORD_START)
    return table


@dataclasses.dataclass(frozen=True, eq=False)  # eq=False: the word_start array has no ==
class DenoisingNoise:
    """Noise for `[lang] pieces [eos]` rows: word drop, mBART span masking, local shuffle, in
    that order (each off when its setting is 0).

    mask_ratio: share of the pieces covered by masked spans (mBART: 0.35); 0 turns masking off.
        The count is `floor(ratio * n + u)`, u ~ U[0, 1), so the expected share is exactly `ratio`.
    poisson_lambda: mean of the Poisson span-length draws. Zero-length draws are skipped (BART
        would insert a mask there), so spans average lambda / (1 - exp(-lambda)) pieces (3.61 for
        3.5), a little less because the last span is cut to hit the count.
    word_drop: probability of deleting each whole word (a word starts at a "▁" piece, or at the
        first piece). Applied before masking.
    shuffle_distance: k > 0 moves every token at most k positions (sort by i + U[0, k+1));
        applied last, so mask tokens move too.
    word_start: bool per token id, from `word_start_table`; needed only for word drop.
    """

    mask_ratio: float = 0.35
    poisson_lambda: float = 3.5
    word_drop: float = 0.0
    shuffle_distance: int = 0
    mask_id: int = UNK
    word_start: np.ndarray | None = dataclasses.field(default=None, repr=False)

    def __post_init__(self):
        if not 0.0 <= self.mask_ratio <= 1.0:
            raise ValueError(f"noise mask_ratio must be in [0, 1], got {self.mask_ratio}")
        if self.poisson_lambda <= 0:
            raise ValueError(f"noise poisson_lambda must be positive, got {self.poisson_lambda}")
        if not 0.0 <= self.word_drop < 1.0:
            raise ValueError(f"noise word_drop must be in [0, 1), got {self.word_drop}")
        if self.shuffle_distance < 0:
            raise ValueError(f"noise shuffle_distance must be >= 0, got {self.shuffle_distance}")
        if self.word_drop > 0 and self.word_start is None:
            raise ValueError("noise word_drop needs the word_start table (word_start_table())")

    def __call__(self, tokens, rng: np.random.Generator) -> np.ndarray:
        """Noised copy of `tokens` ([lang] pieces [eos], int32); the input is not modified."""
        tokens = np.asarray(tokens, np.int32)
        if len(tokens) < 3:
            return tokens.copy()
        pieces = tokens[1:-1]
        if self.word_drop > 0:
            pieces = self._drop_words(pieces, rng)
        if self.mask_ratio > 0:
            pieces = self._mask_spans(pieces, rng)
        if self.shuffle_distance > 0:
            keys = np.arange(len(pieces)) + rng.uniform(0, self.shuffle_distance + 1, len(pieces))
            pieces = pieces[np.argsort(keys, kind="stable")]
        return np.concatenate([tokens[:1], pieces, tokens[-1:]]).astype(np.int32)

    def _drop_words(self, pieces: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        starts = self.word_start[pieces]
        if len(starts):
            starts[0] = True
        word_of_piece = np.cumsum(starts) - 1
        dropped = rng.random(int(starts.sum())) < self.word_drop
        return pieces[~dropped[word_of_piece]]

    # Rows are short, so the span code works on Python lists: numpy's per-call overhead would
    # cost more than the work.
    def _mask_spans(self, pieces: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        n = len(pieces)
        to_mask = min(n, int(self.mask_ratio * n + rng.random()))
        if to_mask == 0:
            return pieces
        lengths = self._span_lengths(to_mask, rng)
        unmasked = n - to_mask
        # Spans go into distinct gaps between the unmasked pieces, so no two spans touch (each
        # stays one visible mask token). More spans than gaps: the extra ones join the last.
        if len(lengths) > unmasked + 1:
            lengths[unmasked:] = [sum(lengths[unmasked:])]
        gaps = sorted(rng.permutation(unmasked + 1)[:len(lengths)].tolist())
        source, out, position, previous = pieces.tolist(), [], 0, 0
        for gap, length in zip(gaps, lengths):
            out += source[position:position + gap - previous]
            out.append(self.mask_id)
            position, previous = position + gap - previous + length, gap
        out += source[position:]
        return np.asarray(out, np.int32)

    def _span_lengths(self, total: int, rng: np.random.Generator) -> list[int]:
        """Non-zero Poisson draws until they reach `total`; the last one is cut to fit exactly."""
        lengths, covered = [], 0
        while covered < total:
            size = int(2 * total / self.poisson_lambda) + 4
            for length in rng.poisson(self.poisson_lambda, size=size).tolist():
                if length:
                    lengths.append(min(length, total - covered))
                    covered += lengths[-1]
                    if covered == total:
                        break
        return lengths
