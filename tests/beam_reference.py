"""A slow, literal, one-input-at-a-time transcription of fairseq2 0.5's beam search.

It follows `fairseq2/generation/beam_search/generator.py` step by step (Python lists, a beam
that starts at size 1, early return once `beam` hypotheses exist) with log-probs coming from our
decoder, so the vectorised jitted search can be checked against it on any random model. The
committed reference fixtures then check both against the official code itself.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

EOS, PAD, UNK = 3, 0, 1


@functools.lru_cache(maxsize=8)
def _forward(graphdef):
    return jax.jit(lambda state, emb, tokens: nnx.merge(graphdef, state)(emb, tokens))


def _next_lprobs(decoder, embedding, prefix):
    """log-softmax of the next-token logits after `prefix` (teacher-forced, float32)."""
    graphdef, state = nnx.split(decoder)
    logits = _forward(graphdef)(state, jnp.asarray(embedding)[None], jnp.asarray([prefix]))
    return np.asarray(jax.nn.log_softmax(logits[0, -1]), np.float32)


def beam_search_one(decoder, embedding, lang_id, *, beam_size, max_seq_len, min_gen_len=1,
                    len_penalty=1.0, unk_penalty=0.0):
    """Best hypothesis (generated ids incl. EOS, normalised score) for one embedding."""
    prompt = [EOS, lang_id]
    min_seq_len = min(max_seq_len, len(prompt) + min_gen_len)
    first = _next_lprobs(decoder, embedding, prompt[:1])
    beams = [(list(prompt), np.float32(first[lang_id]))]  # (tokens, cumulative score)
    finished = []
    for step in range(len(prompt), max_seq_len):
        rows = np.stack([_next_lprobs(decoder, embedding, toks) for toks, _ in beams])
        if step == max_seq_len - 1:
            forced = np.full_like(rows, -np.inf)
            forced[:, EOS] = rows[:, EOS]
            rows = forced
        else:
            rows[:, UNK] -= unk_penalty
            rows[:, PAD] = -np.inf
            if step < min_seq_len - 1:
                rows[:, EOS] = -np.inf
        cand = (rows + np.array([s for _, s in beams], np.float32)[:, None]).reshape(-1)
        order = np.argsort(-cand, kind="stable")[: min(2 * beam_size, cand.size)]
        vocab = rows.shape[1]
        candidates = [(int(i // vocab), int(i % vocab), np.float32(cand[i])) for i in order]
        terminated = False
        for src, tok, score in candidates[:beam_size]:
            if tok != EOS:
                continue
            seq_len = step + 1
            finished.append((beams[src][0][len(prompt):] + [EOS],
                             np.float32(score / (seq_len - 1) ** len_penalty)))
            if len(finished) == beam_size:
                terminated = True
                break
        if terminated:
            break
        survivors = [c for c in candidates if c[1] != EOS][:beam_size]
        beams = [(beams[src][0] + [tok], score) for src, tok, score in survivors]
    best = max(range(len(finished)), key=lambda i: (finished[i][1], -i))
    return finished[best]
