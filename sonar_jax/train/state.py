"""The training state and the tree helpers the trainers share: TrainState (what a checkpoint
holds), StepContext (what a loss gets besides the trained parameters and the batch), abstract
variables with their logical axes, and pure-dict conversions.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import flax
import jax
from flax import nnx

from sonar_jax import sharding
from sonar_jax.models import registry


@flax.struct.dataclass
class TrainState:
    """step: [] int32; params: {part: pure-dict tree} of the trained parts; opt_state: optax state;
    model_state: {part: pure-dict tree} of non-trained variables (BatchNorm statistics), or {}."""

    step: jax.Array
    params: Any
    opt_state: Any
    model_state: Any = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class StepContext:
    """What a loss needs besides the trained parameters and the batch."""

    frozen: Any  # {part: params} of the frozen parts
    model_state: Any  # {part: variables} (BatchNorm statistics), {} if none
    rng: jax.Array  # a key for this step and microbatch (noise, SpecAugment, interpolation)
    train: bool  # training step (True) or evaluation (False)


def abstract_variables(model_cls, model_cfg, kind=nnx.Param) -> tuple[Any, Any]:
    """(pure-dict tree of ShapeDtypeStructs, matching tree of logical axis names) of one
    variable kind of a module, built without allocating."""
    state = nnx.filter_state(registry.abstract(model_cls, model_cfg)[1], kind)
    return nnx.to_pure_dict(state), sharding.logical_axes_of_state(state)


def pure_params(tree: Any, kind=nnx.Param) -> Any:
    """A tree as a pure dict, from an nnx Module (its `kind` variables), an nnx.State or a dict."""
    if isinstance(tree, nnx.Module):
        tree = nnx.state(tree, kind)
    if isinstance(tree, nnx.State):
        tree = nnx.to_pure_dict(tree)
    return tree


def merge_trees(a: Mapping, b: Mapping) -> dict:
    """Nested dict union (params and BatchNorm statistics of one module)."""
    out = dict(a)
    for key, value in b.items():
        out[key] = merge_trees(out[key], value) if isinstance(value, Mapping) and key in out else value
    return out
