"""The scoring heads SONAR ships on top of its embeddings: BLASER 2.0 and MuTox (Flax NNX).

Both are small MLPs; class names and call signatures are the reference's
(`BlaserModel(src, mt, ref=None)`, `MutoxClassifier(inputs, output_prob=False)`), outputs
[N, 1]. Inference only: the reference's dropout (BLASER 0.1, MuTox 0.01) is the identity there.
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from sonar_jax.config import BlaserConfig, MutoxConfig, to_jnp_dtype
from sonar_jax.cosine import l2_normalize


class MLP(nnx.Module):
    """Linear layers through `dims` with `activation` between them (none after the last)."""

    def __init__(self, dims: Sequence[int], activation: Callable[[jax.Array], jax.Array], *,
                 dtype: str, param_dtype: str, rngs: nnx.Rngs):
        self.activation = activation
        self.layers = nnx.List([
            nnx.Linear(d_in, d_out, dtype=to_jnp_dtype(dtype),
                       param_dtype=to_jnp_dtype(param_dtype), rngs=rngs)
            for d_in, d_out in zip(dims[:-1], dims[1:])])

    def __call__(self, x: jax.Array) -> jax.Array:
        for index, layer in enumerate(self.layers):
            x = layer(self.activation(x) if index else x)
        return x


def blaser_features(input_form: str, src: jax.Array, mt: jax.Array,
                    ref: jax.Array | None) -> jax.Array:
    """The MLP's input, in the reference's order: QE [src, mt, src·mt, |mt−src|];
    COMET [ref, mt, src·mt, ref·mt, |mt−src|, |mt−ref|]."""
    if input_form == "QE":
        parts = [src, mt, src * mt, jnp.abs(mt - src)]
    else:
        parts = [ref, mt, src * mt, ref * mt, jnp.abs(mt - src), jnp.abs(mt - ref)]
    return jnp.concatenate(parts, axis=-1)


class BlaserModel(nnx.Module):
    """BLASER 2.0 translation-quality score of (source, translation[, reference]) embeddings."""

    def __init__(self, cfg: BlaserConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.mlp = MLP((cfg.input_dim, *cfg.hidden_dims, 1), jnp.tanh, dtype=cfg.dtype,
                       param_dtype=cfg.param_dtype, rngs=rngs)

    def __call__(self, src: jax.Array, mt: jax.Array, ref: jax.Array | None = None) -> jax.Array:
        """[N, D] embeddings -> scores [N, 1] (float32)."""
        if self.cfg.needs_reference != (ref is not None):
            raise ValueError("this BLASER model is reference-based: pass ref" if ref is None else
                             "this BLASER model is reference-free (QE): it takes no ref")
        inputs = [x if x is None else jnp.asarray(x, jnp.float32) for x in (src, mt, ref)]
        if self.cfg.norm_emb:
            inputs = [x if x is None else l2_normalize(x, jnp) for x in inputs]
        scores = self.mlp(blaser_features(self.cfg.input_form, *inputs))
        return scores.astype(jnp.float32)


class MutoxClassifier(nnx.Module):
    """MuTox toxicity logit of a speech or text embedding; `output_prob` applies the sigmoid."""

    def __init__(self, cfg: MutoxConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.mlp = MLP((cfg.input_size, *cfg.hidden_dims, 1), jax.nn.relu, dtype=cfg.dtype,
                       param_dtype=cfg.param_dtype, rngs=rngs)

    def __call__(self, inputs: jax.Array, output_prob: bool = False) -> jax.Array:
        """[N, D] embeddings -> [N, 1] logits, or probabilities with `output_prob` (float32)."""
        logits = self.mlp(inputs).astype(jnp.float32)
        return jax.nn.sigmoid(logits) if output_prob else logits
