"""The model kinds of sonar_jax, and the two ways every caller builds a module of one.

A kind is the name a converted directory's config.json, `sonar-jax convert --model` and the
training exports use for a model family: its module class, its config class, whether it carries
a tokenizer, and the folder name a training export gives it. Conversion, loading, the functional
API and training all build modules through `abstract` (no weights allocated: shapes, for
checks, shardings and restores) and `bind` (a module over given parameters, also on tracers).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from sonar_jax.config import BlaserConfig, MutoxConfig, SpeechModelConfig, TextModelConfig
from sonar_jax.models import qkv_layout
from sonar_jax.models.heads import BlaserModel, MutoxClassifier
from sonar_jax.models.speech_encoder import SpeechEncoder
from sonar_jax.models.text_decoder import TextDecoder
from sonar_jax.models.text_encoder import TextEncoder


@dataclasses.dataclass(frozen=True)
class ModelKind:
    name: str
    module: type
    config: type
    has_tokenizer: bool  # text models carry their SentencePiece model and language list
    export_folder: str  # its folder in a training run's export/step_N/


KINDS = {kind.name: kind for kind in (
    ModelKind("text_encoder", TextEncoder, TextModelConfig, True, "encoder"),
    ModelKind("text_decoder", TextDecoder, TextModelConfig, True, "decoder"),
    ModelKind("speech_encoder", SpeechEncoder, SpeechModelConfig, False, "speech_encoder"),
    ModelKind("blaser", BlaserModel, BlaserConfig, False, "blaser"),
    ModelKind("mutox", MutoxClassifier, MutoxConfig, False, "mutox"),
)}


def kind(name_or_module: str | type) -> ModelKind:
    """The kind of a name ("text_encoder") or of a module class (TextEncoder)."""
    if isinstance(name_or_module, str):
        if name_or_module not in KINDS:
            raise ValueError(f"unknown model kind {name_or_module!r}; expected one of "
                             f"{list(KINDS)}")
        return KINDS[name_or_module]
    for candidate in KINDS.values():
        if candidate.module is name_or_module:
            return candidate
    raise ValueError(f"{name_or_module.__name__} is not a sonar_jax model kind")


@functools.lru_cache(maxsize=64)
def abstract(module: str | type, config: Any) -> tuple[nnx.GraphDef, nnx.State]:
    """(graphdef, state of ShapeDtypeStructs) of the module of `config`, built once per
    (kind, config) without allocating a weight. Do not modify the state (it is cached)."""
    module_cls = kind(module).module if isinstance(module, str) else module
    return nnx.split(nnx.eval_shape(lambda: module_cls(config, rngs=nnx.Rngs(0))))


def bind(module: str | type, config: Any, params: Any) -> nnx.Module:
    """The module of `config` holding `params`: a pure-dict tree (as model directories store it,
    q/k/v projections fused or, as format-1 directories hold them, apart) or an nnx.State.
    Works on tracers (inside jit), so a step can bind the parameters it is given."""
    graphdef, state = abstract(module, config)
    if isinstance(params, nnx.State):
        return nnx.merge(graphdef, params)
    state = jax.tree.map(lambda x: x, state)  # a fresh copy to fill
    if qkv_layout.needs_fusing(params):
        params = qkv_layout.fuse_tree(params, jnp)
    nnx.replace_by_pure_dict(state, params)
    return nnx.merge(graphdef, state)


def variable_shapes(module: str | type, config: Any, variables: Any = ...) -> dict:
    """{path tuple of str: shape} of the module's variables (all, or one nnx variable type such
    as nnx.Param): what a converter checks a checkpoint's tensors against."""
    _, state = abstract(module, config)
    if variables is not ...:
        state = nnx.filter_state(state, variables)
    return {tuple(str(k) for k in path): tuple(leaf.shape)
            for path, leaf in nnx.to_flat_state(state)}
