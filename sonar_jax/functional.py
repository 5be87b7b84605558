"""Pure functions of parameter pytrees, for users who call SONAR inside their own jitted code.

    params = sonar_jax.model_dir.load_params("converted/encoder")
    _, cfg = sonar_jax.model_dir.read_config("converted/encoder")
    step = jax.jit(lambda p, t: encode(p, t, config=cfg).sentence_embeddings)

`params` is the nested dict that `model_dir.load_params` returns (or an `nnx.State` of the
same module; trees with the q/k/v projections apart, as format-1 directories hold them, are
fused on the fly); `config` is the model's TextModelConfig, which is hashable and therefore static.
"""

from __future__ import annotations

from typing import Any

import jax

from sonar_jax.config import TextModelConfig
from sonar_jax.generate import Generation, GenerationConfig, beam_search, sample
from sonar_jax.models import registry
from sonar_jax.models.text_decoder import TextDecoder
from sonar_jax.models.text_encoder import EncoderOutput, TextEncoder


def encode(params: Any, tokens: jax.Array, padding: jax.Array | None = None, *,
           config: TextModelConfig) -> EncoderOutput:
    """Sentence embeddings and states of right-padded `tokens` [B, T].

    padding: boolean [B, T], True at padded positions; default: positions holding the pad id.
    """
    seq_lens = None if padding is None else (~padding).sum(axis=1).astype("int32")
    return registry.bind(TextEncoder, config, params)(tokens, seq_lens)


def decode(params: Any, embeddings: jax.Array, tokens: jax.Array, *,
           config: TextModelConfig) -> jax.Array:
    """Teacher-forced next-token logits [B, T, V] (float32) for decoder inputs `[eos, lang, ...]`."""
    return registry.bind(TextDecoder, config, params)(embeddings, tokens)


def generate(params: Any, embeddings: jax.Array, lang_ids: jax.Array, *,
             config: TextModelConfig, generation: GenerationConfig,
             max_seq_len: jax.Array | int | None = None, rng: jax.Array | None = None
             ) -> Generation:
    """Beam search (or sampling, with `rng`) from embeddings [N, D] to `lang_ids` [N]."""
    decoder = registry.bind(TextDecoder, config, params)
    if generation.sample:
        if rng is None:
            raise ValueError("sampling needs an rng key")
        return sample(decoder, embeddings, lang_ids, generation, rng, max_seq_len)
    return beam_search(decoder, embeddings, lang_ids, generation, max_seq_len)
