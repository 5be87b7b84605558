"""BLASER 2.0 and MuTox checkpoints -> parameter trees of `BlaserModel` / `MutoxClassifier`.

Both are torch `nn.Sequential` MLPs, so a Linear's key is its position in the sequence:
`mlp.{1,4,7}.weight` for BLASER (its dropout and tanh modules hold positions too; `mlp.{0,2,4}`
for a model built without dropout) and `model_all.{0,1,2}.1.weight` for MuTox's nested blocks. The
Linear layers are taken in position order and every size comes from their shapes. Only BLASER's
embedding width needs a choice: the input spans 4 (QE) or 6 (COMET) embeddings, and 6144 =
6·1024 = 4·1536 fits both; see `blaser_input_form`.

As the reference loads them: BLASER strictly (any other key is an error), MuTox after keeping
only its `model_all.` keys.
"""

from __future__ import annotations

import re

import ml_dtypes
import numpy as np

from sonar_jax.config import BLASER_INPUT_FORMS, BlaserConfig, MutoxConfig
from sonar_jax.convert.text import ConversionError

PREFIXES = {"blaser": "mlp", "mutox": "model_all"}
SONAR_WIDTH = 1024  # the released embedding width, preferred when the input width fits both forms
# Key prefixes that identify a model family (first match wins), to name a wrong --model.
FAMILY_HINTS = [("mlp.", "blaser"), ("model_all.", "mutox"),
                ("encoder_pooler.", "speech_encoder"), ("encoder.w2v_model.", "speech_encoder"),
                ("encoder_frontend.embed.", "text_encoder"),
                ("decoder_frontend.embed.", "text_decoder")]


def family_hint(keys) -> str | None:
    """The model family a checkpoint's keys point to, if any is recognisable."""
    for prefix, family in FAMILY_HINTS:
        if any(key.startswith(prefix) for key in keys):
            return family
    return None


def linear_stack(state_dict: dict, kind: str, source: str) -> list[tuple]:
    """[(key prefix, weight, bias)] of the Linear layers in sequence order, shapes checked."""
    prefix = PREFIXES[kind]
    pattern = re.compile(rf"^{prefix}((?:\.\d+)+)\.(weight|bias)$")
    own = {k: v for k, v in state_dict.items() if k.startswith(prefix + ".")}
    if not own:
        found = sorted({k.split(".")[0] for k in state_dict})
        family = family_hint(state_dict)
        hint = f" It looks like a {family} checkpoint (--model {family})." if family else ""
        raise ConversionError(f"{source} has no {prefix}.N.weight tensors, so it is not a "
                              f"{kind} checkpoint (its keys start with {found[:8]}).{hint} Is "
                              "--model right?")
    others = sorted(set(state_dict) - set(own))
    if kind == "blaser" and others:
        raise ConversionError(f"{source}: unexpected keys for a BLASER model {others[:5]}")
    layers: dict[tuple[int, ...], dict] = {}
    for key, tensor in own.items():
        match = pattern.match(key)
        if not match:
            raise ConversionError(f"{source}: {key} is not a Linear weight or bias of a {kind} "
                                  "model")
        position = tuple(int(i) for i in match.group(1).strip(".").split("."))
        layers.setdefault(position, {})[match.group(2)] = tensor
    stack = []
    for position in sorted(layers):
        name = f"{prefix}.{'.'.join(map(str, position))}"
        parts = layers[position]
        if set(parts) != {"weight", "bias"}:
            raise ConversionError(f"{source}: {name} has only {sorted(parts)}; a Linear layer "
                                  "needs weight and bias")
        weight, bias = parts["weight"], parts["bias"]
        if len(weight.shape) != 2 or tuple(bias.shape) != (weight.shape[0],):
            raise ConversionError(f"{source}: {name}.weight {tuple(weight.shape)} and .bias "
                                  f"{tuple(bias.shape)} are not the shapes of a Linear layer")
        if stack and stack[-1][1].shape[0] != weight.shape[1]:
            raise ConversionError(f"{source}: {name}.weight takes {weight.shape[1]} inputs but "
                                  f"the layer before gives {stack[-1][1].shape[0]}")
        stack.append((name, weight, bias))
    if stack[-1][1].shape[0] != 1:
        raise ConversionError(f"{source}: the last layer ({stack[-1][0]}) has "
                              f"{stack[-1][1].shape[0]} outputs; a {kind} model scores with one")
    return stack


def blaser_input_form(input_width: int, embedding_dim: int | None, source: str
                      ) -> tuple[str, int]:
    """(input form, embedding width) of a BLASER MLP that reads `input_width` features.

    A given `embedding_dim` decides; otherwise the one form that divides the width, and when both
    do (every reference-based model: 6·d = 4·1.5d), the one with SONAR's released width 1024.
    """
    fits = {form: input_width // n for form, n in BLASER_INPUT_FORMS.items()
            if input_width % n == 0}
    choices = ", ".join(f"{form} with {dim}-d embeddings" for form, dim in fits.items())
    if embedding_dim is not None:
        for form, dim in fits.items():
            if dim == embedding_dim:
                return form, dim
        raise ConversionError(f"{source}: the first layer reads {input_width} features, which "
                              f"is not 4 or 6 embeddings of width {embedding_dim} (it fits: "
                              f"{choices or 'neither form'})")
    if len(fits) == 1:
        return next(iter(fits.items()))
    for form, dim in fits.items():
        if dim == SONAR_WIDTH:
            return form, dim
    if not fits:
        raise ConversionError(f"{source}: the first layer reads {input_width} features, not a "
                              "multiple of 4 (QE) or 6 (COMET) embeddings: not a BLASER model")
    raise ConversionError(f"{source}: the first layer reads {input_width} features, which fits "
                          f"{choices}; pass --embedding-dim (the width of your SONAR "
                          "embeddings) to choose")


def convert_state_dict(state_dict: dict, kind: str, *, embedding_dim: int | None = None,
                       dtype: str = "float32", source: str = "checkpoint"
                       ) -> tuple[BlaserConfig | MutoxConfig, dict]:
    """(config, numpy parameter tree) of a BLASER or MuTox state dict of lazy tensors;
    `embedding_dim` is read by BLASER only (MuTox's input width is its first layer's)."""
    if kind not in PREFIXES:
        raise ConversionError(f"unknown head {kind!r}; expected one of {sorted(PREFIXES)}")
    stack = linear_stack(state_dict, kind, source)
    input_width = stack[0][1].shape[1]
    hidden_dims = tuple(weight.shape[0] for _, weight, _ in stack[:-1])
    if kind == "blaser":
        form, dim = blaser_input_form(input_width, embedding_dim, source)
        cfg = BlaserConfig(input_form=form, embedding_dim=dim, hidden_dims=hidden_dims,
                           dtype=dtype, param_dtype=dtype)
    else:
        cfg = MutoxConfig(input_size=input_width, hidden_dims=hidden_dims, dtype=dtype,
                          param_dtype=dtype)
    out_dtype = np.dtype(ml_dtypes.bfloat16) if dtype == "bfloat16" else np.dtype(dtype)
    layers = {str(i): {"kernel": np.ascontiguousarray(weight.load().T, dtype=out_dtype),
                       "bias": np.asarray(bias.load(), dtype=out_dtype)}
              for i, (_, weight, bias) in enumerate(stack)}
    return cfg, {"mlp": {"layers": layers}}
