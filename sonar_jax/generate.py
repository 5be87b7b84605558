"""Jitted generation from sentence embeddings: beam search identical to fairseq2's, and sampling.

Everything runs in one `jax.jit` per (batch, beam, max length) shape: a fixed-size KV cache and a
`lax.while_loop` that stops as soon as every input has finished. The rules follow fairseq2 0.5's
`BeamSearchSeq2SeqGenerator` (the SONAR reference):

- the prompt is `[eos, lang]`; its score, log p(lang | eos), starts every hypothesis' score;
- each step takes the top 2·beam candidates over beam × vocabulary of the cumulative log-probs;
  EOS candidates among the first `beam` are finished (until `beam` hypotheses exist, which ends
  that input), the first `beam` non-EOS candidates continue;
- pad is never generated, EOS is banned before the minimum length and forced at the last allowed
  position; the unk penalty is subtracted from unk's log-prob;
- a finished hypothesis scores (cumulative log-prob) / (length − 1) ** len_penalty, where length
  counts the prompt and the final EOS; the best one is returned.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from sonar_jax.compiled import inference_jit
from sonar_jax.models.text_decoder import IncrementalDecoder, TextDecoder
from sonar_jax.split import SplitModule
from sonar_jax.tokenizer import EOS, PAD, UNK

PROMPT_LEN = 2  # [eos, lang]


@dataclasses.dataclass(frozen=True)
class TopKSampler:
    """Samples among the k most likely tokens."""

    k: int


@dataclasses.dataclass(frozen=True)
class TopPSampler:
    """Nucleus sampling: samples among the smallest set of tokens whose probability reaches p."""

    p: float


@dataclasses.dataclass(frozen=True)
class GenerationConfig:
    """Static settings of one compiled generation program.

    `capacity` is the number of positions the KV cache holds (prompt included); the actual
    length limit is a traced argument ≤ capacity, so batches with different limits share a
    program. `sampler` None with `sample=False` means beam search.
    """

    capacity: int = 512
    beam_size: int = 5
    sample: bool = False
    sampler: TopKSampler | TopPSampler | None = None
    min_gen_len: int = 1
    len_penalty: float = 1.0
    normalize_scores: bool = True
    unk_penalty: float = 0.0
    temperature: float = 1.0

    def __post_init__(self):
        if self.capacity <= PROMPT_LEN:
            raise ValueError(f"max_seq_len must exceed the {PROMPT_LEN}-token prompt, "
                             f"got {self.capacity}")
        if self.min_gen_len < 1:
            raise ValueError(f"min_gen_len must be at least 1, got {self.min_gen_len}")
        if self.beam_size < 1:
            raise ValueError(f"beam_size must be at least 1, got {self.beam_size}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be positive, got {self.temperature}")


class Generation(NamedTuple):
    tokens: jax.Array  # [N, capacity - 2] generated ids (final EOS included), pad 0 after it
    lengths: jax.Array  # [N] generated tokens, EOS included
    scores: jax.Array  # [N] normalised score (beam search) or log-probability (sampling)


# Up to this k, top-k on the CPU is k passes of max: XLA:CPU implements lax.top_k as a sort of the
# whole row (27 ms a step for 32 x 3,206 candidates, most of a greedy step of the small model).
CPU_TOP_K_BY_MAX = 16


def top_k(x: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
    """`jax.lax.top_k` over the last axis: values in descending order, ties by lower index."""
    if jax.default_backend() != "cpu" or k > CPU_TOP_K_BY_MAX:
        return jax.lax.top_k(x, k)
    width = x.shape[-1]
    index = jnp.arange(width, dtype=jnp.int32)
    taken = jnp.zeros(x.shape, bool)
    values, indices = [], []
    for _ in range(k):
        candidates = jnp.where(taken, -jnp.inf, x)
        best = jnp.max(candidates, axis=-1, keepdims=True)
        first = jnp.min(jnp.where((candidates == best) & ~taken, index, width), axis=-1,
                        keepdims=True)
        taken = taken | (index == first)
        values.append(best)
        indices.append(first)
    return jnp.concatenate(values, -1), jnp.concatenate(indices, -1)


def _log_probs(logits: jax.Array, temperature: float) -> jax.Array:
    if temperature != 1.0:
        logits = logits / temperature
    return jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)


def _constrain(lprobs: jax.Array, step: jax.Array, max_seq_len: jax.Array,
               min_seq_len: jax.Array, unk_penalty: float) -> jax.Array:
    """Applies the reference's per-step rules to log-probs [..., V] for position `step`."""
    vocab = jnp.arange(lprobs.shape[-1])
    forced_eos = jnp.where(vocab == EOS, lprobs, -jnp.inf)
    lprobs = lprobs.at[..., UNK].add(-unk_penalty)
    lprobs = lprobs.at[..., PAD].set(-jnp.inf)
    lprobs = jnp.where((vocab == EOS) & (step < min_seq_len - 1), -jnp.inf, lprobs)
    return jnp.where(step == max_seq_len - 1, forced_eos, lprobs)


def _prefill(decoder: IncrementalDecoder, embeddings: jax.Array, lang_ids: jax.Array,
             config: GenerationConfig, group: int):
    """Runs the prompt; returns (log-probs of the first generated position, prompt score, cache
    of the first stage's size).

    embeddings/lang_ids hold `group` consecutive copies of each input (one per hypothesis)."""
    if config.capacity > decoder.cfg.max_seq_len:
        raise ValueError(f"capacity {config.capacity} exceeds the decoder's "
                         f"{decoder.cfg.max_seq_len} positions")
    prompt = jnp.stack([jnp.full_like(lang_ids, EOS), lang_ids], axis=1)
    logits, cache = decoder.prefill(embeddings, prompt, cache_stages(config.capacity)[0], group)
    lprobs = _log_probs(logits, config.temperature)
    prompt_score = jnp.take_along_axis(lprobs[:, 0], lang_ids[:, None], axis=1)[:, 0]
    return lprobs[:, 1], prompt_score, cache


def _pure_step(decoder: IncrementalDecoder):
    """(`step(params, tokens, cache)`, params): `decoder.step` as a pure function.

    An NNX module may not be closed over inside a `lax.while_loop` body (a different trace level),
    so the loops carry the parameters as an operand and merge them inside the body.
    """
    graphdef, params = nnx.split(decoder)
    return (lambda p, tokens, cache: nnx.merge(graphdef, p).step(tokens, cache)), params


# The cache starts this small and doubles while generation goes on (see `staged_while`).
FIRST_CACHE_STAGE = 16


def cache_stages(capacity: int) -> list[int]:
    """The cache sizes generation runs through: 16, 32, ... while at most half the capacity,
    then the capacity (24 -> [24]; 66 -> [16, 32, 66]; 512 -> [16, 32, ..., 256, 512])."""
    stages, size = [], FIRST_CACHE_STAGE
    while 2 * size <= capacity:
        stages.append(size)
        size *= 2
    return stages + [capacity]


def staged_while(cond, body, state: dict, stages: list[int]) -> dict:
    """`lax.while_loop(cond, body, state)` over a state whose "cache" holds stages[0] positions,
    growing it to each next stage only when generation reaches its end; returns the final state
    without the cache.

    Every step's attention reads the whole cache, filled or not: with a cache of the full 512
    positions (the reference's default limit for 1,024-d embeddings) most of it is empty for
    typical sentences, and reading it made a beam-5 step 3.8x slower on CPU than a cache sized to
    the output. Each stage is its own loop (one more compiled body per stage), and the growth is
    one copy of the cache per stage.
    """
    size, rest = stages[0], stages[1:]
    state = jax.lax.while_loop(lambda s: cond(s) & (s["step"] < size), body, state)
    finish = lambda s: {k: v for k, v in s.items() if k != "cache"}  # noqa: E731
    if not rest:
        return finish(state)
    grow = lambda s: staged_while(cond, body, dict(s, cache=s["cache"].grow(rest[0])), rest)  # noqa: E731
    return jax.lax.cond(cond(state), grow, finish, state)


def _limits(config: GenerationConfig, max_seq_len: jax.Array | int | None):
    """(max_seq_len, min_seq_len) as traced scalars; the limit is clipped to the capacity."""
    limit = config.capacity if max_seq_len is None else max_seq_len
    max_len = jnp.clip(jnp.asarray(limit, jnp.int32), PROMPT_LEN + 1, config.capacity)
    return max_len, jnp.minimum(max_len, PROMPT_LEN + config.min_gen_len)


def beam_search(decoder: TextDecoder, embeddings: jax.Array, lang_ids: jax.Array,
                config: GenerationConfig, max_seq_len: jax.Array | int | None = None
                ) -> Generation:
    """Beam search for every row of `embeddings` [N, D] towards `lang_ids` [N] (trace-safe).

    `max_seq_len` (≤ config.capacity, prompt included) may be a traced scalar."""
    num, beam = embeddings.shape[0], config.beam_size
    max_len, min_seq_len = _limits(config, max_seq_len)
    vocab = decoder.cfg.vocab_size
    if 2 * beam > vocab:
        raise ValueError(f"beam_size {beam} needs a vocabulary of at least {2 * beam} tokens")

    incremental = decoder.incremental()
    decode_step, params = _pure_step(incremental)
    repeated = jnp.repeat(embeddings, beam, axis=0)
    first_lprobs, prompt_score, cache = _prefill(incremental, repeated,
                                                 jnp.repeat(lang_ids, beam), config, beam)
    # Only beam 0 is live after the prompt: the others start at -inf so the first step draws its
    # 2·beam candidates from one row, as the reference's beam of size 1 does.
    live = jnp.where(jnp.arange(beam) == 0, 0.0, -jnp.inf)
    scores = prompt_score.reshape(num, beam) + live[None]
    gen_len = config.capacity - PROMPT_LEN
    state = dict(
        step=jnp.asarray(PROMPT_LEN, jnp.int32), lprobs=first_lprobs, cache=cache, scores=scores,
        tokens=jnp.zeros((num, beam, gen_len), jnp.int32),
        fin_tokens=jnp.zeros((num, beam, gen_len), jnp.int32),
        fin_lengths=jnp.zeros((num, beam), jnp.int32),
        fin_scores=jnp.full((num, beam), -jnp.inf, jnp.float32),
        fin_count=jnp.zeros((num,), jnp.int32), params=params,
    )

    def cond(s):
        return (s["step"] < max_len) & jnp.any(s["fin_count"] < beam)

    def body(s):
        step, done = s["step"], s["fin_count"] >= beam
        lprobs = _constrain(s["lprobs"], step, max_len, min_seq_len, config.unk_penalty)
        cand = (s["scores"][..., None] + lprobs.reshape(num, beam, vocab)).reshape(num, -1)
        top_scores, top_idx = top_k(cand, 2 * beam)
        src_beam, token = top_idx // vocab, (top_idx % vocab).astype(jnp.int32)
        pos = step - PROMPT_LEN  # index of this token in the generated part

        # Finish EOS candidates among the first `beam`, in rank order, until `beam` exist.
        is_eos = token == EOS
        finishing = is_eos[:, :beam] & jnp.isfinite(top_scores[:, :beam]) & ~done[:, None]
        slot = s["fin_count"][:, None] + jnp.cumsum(finishing, axis=1) - 1
        finishing &= slot < beam
        hyp_tokens = jnp.take_along_axis(s["tokens"], src_beam[:, :beam, None], axis=1)
        hyp_tokens = hyp_tokens.at[:, :, pos].set(EOS)
        # Normalised by total length − 1 (prompt and EOS counted), as the reference does.
        norm = step.astype(jnp.float32) ** config.len_penalty if config.normalize_scores else 1.0
        slot = jnp.where(finishing, slot, beam)  # out of range: dropped by the scatter
        rows = jnp.arange(num)[:, None]
        fin_tokens = s["fin_tokens"].at[rows, slot].set(hyp_tokens, mode="drop")
        fin_scores = s["fin_scores"].at[rows, slot].set(top_scores[:, :beam] / norm, mode="drop")
        fin_lengths = s["fin_lengths"].at[rows, slot].set(pos + 1, mode="drop")
        fin_count = s["fin_count"] + finishing.sum(axis=1)

        # Continue with the first `beam` non-EOS candidates (stable in rank order).
        order = jnp.argsort(jnp.where(is_eos, 2 * beam, 0) + jnp.arange(2 * beam), axis=1)
        keep = order[:, :beam]
        next_beam = jnp.take_along_axis(src_beam, keep, axis=1)
        next_token = jnp.take_along_axis(token, keep, axis=1)
        tokens = jnp.take_along_axis(s["tokens"], next_beam[..., None], axis=1)
        tokens = tokens.at[:, :, pos].set(next_token)
        scores = jnp.take_along_axis(top_scores, keep, axis=1)
        cache = s["cache"].reorder(next_beam)
        logits, cache = decode_step(s["params"], next_token.reshape(-1, 1), cache)
        frozen = done[:, None]
        return dict(step=step + 1, lprobs=_log_probs(logits[:, 0], config.temperature),
                    cache=cache, scores=jnp.where(frozen, s["scores"], scores),
                    tokens=jnp.where(frozen[..., None], s["tokens"], tokens),
                    fin_tokens=fin_tokens, fin_lengths=fin_lengths, fin_scores=fin_scores,
                    fin_count=fin_count, params=s["params"])

    state = staged_while(cond, body, state, cache_stages(config.capacity))
    best = jnp.argmax(state["fin_scores"], axis=1)  # first of equals, as a stable sort keeps
    pick = lambda x: jnp.take_along_axis(x, best.reshape(num, 1, *([1] * (x.ndim - 2))), 1)[:, 0]
    return Generation(pick(state["fin_tokens"]), pick(state["fin_lengths"]),
                      pick(state["fin_scores"]))


def sample(decoder: TextDecoder, embeddings: jax.Array, lang_ids: jax.Array,
           config: GenerationConfig, rng: jax.Array, max_seq_len: jax.Array | int | None = None
           ) -> Generation:
    """One sampled continuation per row; reproducible for a given `rng`."""
    num = embeddings.shape[0]
    max_len, min_seq_len = _limits(config, max_seq_len)
    incremental = decoder.incremental()
    decode_step, params = _pure_step(incremental)
    lprobs, prompt_score, cache = _prefill(incremental, embeddings, lang_ids, config, 1)
    gen_len = config.capacity - PROMPT_LEN
    state = dict(step=jnp.asarray(PROMPT_LEN, jnp.int32), lprobs=lprobs, cache=cache,
                 tokens=jnp.zeros((num, gen_len), jnp.int32), scores=prompt_score,
                 lengths=jnp.zeros((num,), jnp.int32), rng=rng, params=params)

    def cond(s):
        return (s["step"] < max_len) & jnp.any(s["lengths"] == 0)

    def body(s):
        step, done = s["step"], s["lengths"] > 0
        lprobs = _constrain(s["lprobs"], step, max_len, min_seq_len, config.unk_penalty)
        rng, key = jax.random.split(s["rng"])
        token = jax.random.categorical(key, _truncate(lprobs, config.sampler)).astype(jnp.int32)
        token = jnp.where(done, PAD, token)
        pos = step - PROMPT_LEN
        gained = jnp.take_along_axis(lprobs, token[:, None], axis=1)[:, 0]
        scores = jnp.where(done, s["scores"], s["scores"] + gained)
        lengths = jnp.where(~done & (token == EOS), pos + 1, s["lengths"])
        logits, cache = decode_step(s["params"], token[:, None], s["cache"])
        return dict(step=step + 1, lprobs=_log_probs(logits[:, 0], config.temperature),
                    cache=cache, tokens=s["tokens"].at[:, pos].set(token), scores=scores,
                    lengths=lengths, rng=rng, params=s["params"])

    state = staged_while(cond, body, state, cache_stages(config.capacity))
    return Generation(state["tokens"], state["lengths"], state["scores"])


def _truncate(lprobs: jax.Array, sampler: TopKSampler | TopPSampler | None) -> jax.Array:
    """Log-probs with everything outside the sampler's support set to -inf."""
    if sampler is None:
        return lprobs
    if isinstance(sampler, TopKSampler):
        kth = top_k(lprobs, sampler.k)[0][:, -1:]
        return jnp.where(lprobs >= kth, lprobs, -jnp.inf)
    sorted_lp = jnp.sort(lprobs, axis=-1)[:, ::-1]
    mass_before = jnp.cumsum(jnp.exp(sorted_lp), axis=-1) - jnp.exp(sorted_lp)
    # The smallest prefix whose mass reaches p: keep tokens whose preceding mass is below p.
    cutoff = jnp.min(jnp.where(mass_before < sampler.p, sorted_lp, jnp.inf), axis=-1,
                     keepdims=True)
    return jnp.where(lprobs >= cutoff, lprobs, -jnp.inf)


@functools.partial(inference_jit, static_argnames="config")
def _generate_jit(split_decoder: SplitModule, embeddings, lang_ids, max_seq_len, rng, config):
    decoder = split_decoder()
    if config.sample:
        return sample(decoder, embeddings, lang_ids, config, rng, max_seq_len)
    return beam_search(decoder, embeddings, lang_ids, config, max_seq_len)


def generate(decoder: TextDecoder | SplitModule, embeddings: jax.Array, lang_ids: jax.Array,
             config: GenerationConfig, max_seq_len: int | None = None,
             rng: jax.Array | None = None) -> Generation:
    """Compiled beam search or sampling: one program per (input shapes, config). A caller that
    generates batch after batch passes the decoder split once (`SplitModule.of`)."""
    if config.sample and rng is None:
        raise ValueError("sampling needs an rng key (jax.random.key(seed))")
    if not isinstance(decoder, SplitModule):
        decoder = SplitModule.of(decoder)
    limit = jnp.asarray(config.capacity if max_seq_len is None else max_seq_len, jnp.int32)
    rng = jax.random.key(0) if rng is None else rng
    return _generate_jit(decoder, embeddings, lang_ids, limit, rng, config)
