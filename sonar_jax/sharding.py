"""Meshes, logical axis names and the rules that map them to mesh axes.

Every parameter carries logical axis names as NNX metadata (`out_sharding`, e.g. ("embed", "mlp");
stacked layers get a leading "layers"), and key activations are constrained with `constrain(x,
("batch", "length", "act_embed"))`. Rules map logical names to the mesh axes 'data', 'fsdp' and
'tensor', so one config switch (`cfg.sharding.preset`) moves between pure data parallel, FSDP and
FSDP + tensor parallel without touching the model.

Resolution follows Flax/t5x logical partitioning: rules are tried in order, a logical name may
have several; the first whose mesh axes exist, are not yet used by another dimension of the same
array, and divide the dimension's size wins; otherwise the dimension is replicated. (The released
vocabulary of 256,206 rows is not divisible by 4, for instance: with tensor=4 the embedding's vocab
dimension stays whole while its embed dimension is still sharded over 'fsdp'.) Mesh axes of size 1
are left out of the specs.

Without `activation_rules(...)` in context (inference, tests of the bare models), `constrain` is the
identity and the models never need a mesh.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
from typing import Any, Iterator, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

log = logging.getLogger(__name__)

MESH_AXES = ("data", "fsdp", "tensor")

# Logical axis names used by the models. Parameters:
PARAM_AXES = ("vocab", "embed", "heads", "mlp", "layers", "norm")
# Activations (kept apart from the parameter names, as in MaxText, so that e.g. FSDP can shard the
# parameters' embed dimension without also sharding the activations' model dimension):
ACTIVATION_AXES = ("batch", "length", "act_embed", "act_heads", "act_kv", "act_mlp", "act_vocab")

Rules = tuple[tuple[str, Any], ...]

_BATCH = (("batch", ("data", "fsdp")),)
_TENSOR_ACTIVATIONS = (("act_heads", "tensor"), ("act_mlp", "tensor"), ("act_vocab", "tensor"))

# Presets: pure data parallel (parameters replicated), FSDP (parameters sharded over 'fsdp' along
# their model dimension, gathered per layer by XLA), and FSDP + Megatron-style tensor parallel
# (heads / FFN hidden / vocabulary over 'tensor'). 'fsdp' is a batch axis in every preset.
PRESETS: dict[str, Rules] = {
    "data_parallel": _BATCH,
    "fsdp": _BATCH + (("embed", "fsdp"),),
    "tensor": _BATCH + (("embed", "fsdp"), ("heads", "tensor"), ("mlp", "tensor"),
                        ("vocab", "tensor")) + _TENSOR_ACTIVATIONS,
    "custom": (),
}


# ----------------------------------------------------------------------------------------------
# Meshes


def _resolve_sizes(sizes: Sequence[int], total: int, what: str) -> list[int]:
    sizes = [int(s) for s in sizes]
    if sum(s == -1 for s in sizes) > 1:
        raise ValueError(f"{what}: at most one axis may be -1 (the rest), got {sizes}")
    if any(s == 0 or s < -1 for s in sizes):
        raise ValueError(f"{what}: axis sizes must be positive or -1, got {sizes}")
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if total % known:
            raise ValueError(f"{what}: {total} devices are not divisible by the fixed axes "
                             f"{dict(zip(MESH_AXES, sizes))} (product {known})")
        sizes[sizes.index(-1)] = total // known
    if math.prod(sizes) != total:
        raise ValueError(f"{what}: axes {dict(zip(MESH_AXES, sizes))} make "
                         f"{math.prod(sizes)} devices, but there are {total}")
    return sizes


def make_mesh(mesh_cfg: Any, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A Mesh with axes ('data', 'fsdp', 'tensor') (AxisType.Auto) from a config section.

    mesh_cfg: fields data, fsdp, tensor (sizes within a slice / node; one may be -1 = the rest) and
    optionally dcn_data, dcn_fsdp, dcn_tensor (sizes across slices or hosts; default 1). With any
    dcn size > 1 the device grid comes from `mesh_utils.create_hybrid_device_mesh`, so the
    collectives of the axes inside a slice stay on the fast interconnect.
    """
    from jax.experimental import mesh_utils

    devices = list(jax.devices() if devices is None else devices)
    get = (mesh_cfg.get if hasattr(mesh_cfg, "get") else lambda k, d=None: getattr(mesh_cfg, k, d))
    ici = [get(axis, 1) for axis in MESH_AXES]
    dcn = [get(f"dcn_{axis}", 1) for axis in MESH_AXES]
    if any(int(d) != 1 for d in dcn):
        dcn = _resolve_sizes(dcn, _num_granules(devices), "mesh dcn_* sizes (slices or hosts)")
    else:
        dcn = [1] * len(MESH_AXES)
    num_granules = math.prod(dcn)
    if len(devices) % num_granules:
        raise ValueError(f"{len(devices)} devices cannot be split into {num_granules} slices/hosts "
                         f"(dcn sizes {dict(zip(MESH_AXES, dcn))})")
    ici = _resolve_sizes(ici, len(devices) // num_granules, "mesh sizes (data, fsdp, tensor)")
    if num_granules == 1:
        if len(devices) == 1:
            grid = np.array(devices).reshape(ici)
        else:
            try:
                grid = mesh_utils.create_device_mesh(ici, devices)
            except (ValueError, NotImplementedError, AssertionError):
                grid = np.array(devices).reshape(ici)
    else:
        grid = mesh_utils.create_hybrid_device_mesh(
            ici, dcn, devices, process_is_granule=not _by_slice(devices))
    return Mesh(grid, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


def _by_slice(devices: Sequence[jax.Device]) -> bool:
    """Multi-slice TPU (granule = slice) rather than multi-host GPU/CPU (granule = process)."""
    return len({getattr(d, "slice_index", None) for d in devices} - {None}) > 1


def _num_granules(devices: Sequence[jax.Device]) -> int:
    if _by_slice(devices):
        return len({d.slice_index for d in devices})
    return len({d.process_index for d in devices})


# ----------------------------------------------------------------------------------------------
# Rules


def rules_from_config(sharding_cfg: Any) -> Rules:
    """Effective rules: `sharding.rules` (tried first) followed by the preset's rules."""
    preset = sharding_cfg.get("preset", "fsdp")
    if preset not in PRESETS:
        raise ValueError(f"unknown sharding preset {preset!r}; expected one of {sorted(PRESETS)}")
    extra = tuple((str(name), axes) for name, axes in (sharding_cfg.get("rules", ()) or ()))
    rules = normalize_rules(extra + PRESETS[preset])
    return rules


def normalize_rules(rules: Sequence[tuple[str, Any]]) -> Rules:
    """Rules as ((logical, (mesh axes...)), ...); None / '' / () mean 'replicate'."""
    out = []
    for entry in rules:
        if len(entry) != 2:
            raise ValueError(f"a sharding rule is a (logical name, mesh axes) pair, got {entry!r}")
        name, axes = entry
        if axes is None or axes == "":
            axes = ()
        elif isinstance(axes, str):
            axes = (axes,)
        axes = tuple(axes)
        unknown = [a for a in axes if a not in MESH_AXES]
        if unknown:
            raise ValueError(f"rule {name!r} -> {axes}: unknown mesh axes {unknown}; "
                             f"the mesh has {MESH_AXES}")
        out.append((name, axes))
    return tuple(out)


def logical_to_spec(names: Sequence[str | None], shape: Sequence[int] | None, rules: Rules,
                    mesh: Mesh) -> PartitionSpec:
    """PartitionSpec of an array with logical axis `names` (see the module docstring)."""
    if shape is not None and len(names) != len(shape):
        raise ValueError(f"logical axes {tuple(names)} do not match an array of shape "
                         f"{tuple(shape)}")
    used: set[str] = set()
    spec: list[Any] = []
    for dim, name in enumerate(names):
        chosen: tuple[str, ...] = ()
        if name is not None:
            for rule_name, axes in rules:
                if rule_name != name:
                    continue
                axes = tuple(a for a in axes if mesh.shape.get(a, 1) > 1)
                if not axes:
                    chosen = ()
                    break
                if any(a not in mesh.shape or a in used for a in axes):
                    continue
                size = math.prod(mesh.shape[a] for a in axes)
                if shape is not None and shape[dim] % size:
                    continue
                chosen = axes
                break
        used.update(chosen)
        spec.append(None if not chosen else chosen[0] if len(chosen) == 1 else chosen)
    while spec and spec[-1] is None:
        spec.pop()
    return PartitionSpec(*spec)


def named_sharding(names: Sequence[str | None], shape: Sequence[int] | None, rules: Rules,
                   mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, logical_to_spec(names, shape, rules, mesh))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def batch_axes(rules: Rules, mesh: Mesh) -> tuple[str, ...]:
    """Mesh axes (of size > 1) that the 'batch' logical axis maps to."""
    spec = logical_to_spec(("batch",), None, rules, mesh)
    if not spec or spec[0] is None:
        return ()
    return spec[0] if isinstance(spec[0], tuple) else (spec[0],)


def batch_shards(rules: Rules, mesh: Mesh) -> int:
    """How many ways the batch dimension is split."""
    return math.prod(mesh.shape[a] for a in batch_axes(rules, mesh))


# ----------------------------------------------------------------------------------------------
# Activation constraints


class _Context(threading.local):
    def __init__(self):
        self.stack: list[tuple[Mesh, Rules]] = []


_CTX = _Context()


@contextlib.contextmanager
def activation_rules(mesh: Mesh, rules: Rules) -> Iterator[None]:
    """Within this block (while tracing), `constrain` applies `rules` on `mesh`."""
    _CTX.stack.append((mesh, normalize_rules(rules)))
    try:
        yield
    finally:
        _CTX.stack.pop()


def constrain(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
    """Sharding constraint by logical axis names; the identity outside `activation_rules`."""
    if not _CTX.stack:
        return x
    mesh, rules = _CTX.stack[-1]
    spec = logical_to_spec(names, x.shape, rules, mesh)
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))


# ----------------------------------------------------------------------------------------------
# Parameters


def logical_axes_of_state(state: Any) -> dict:
    """Nested dict (the pure-dict layout of `state`) of each parameter's logical axis names.

    Raises if a parameter has no names, or names outside `PARAM_AXES`: every parameter must say
    how it may be sharded, in names the rules know.
    """
    from flax import nnx

    out: dict = {}
    missing = []
    for path, var in nnx.to_flat_state(state):
        names = var.get_metadata().get("out_sharding") if isinstance(var, nnx.Variable) else None
        shape = getattr(var, "shape", None)
        if names is None:
            missing.append("/".join(map(str, path)))
            continue
        names = tuple(names)
        unknown = [n for n in names if n is not None and n not in PARAM_AXES]
        if unknown:
            raise ValueError(f"parameter {'/'.join(map(str, path))} has logical axes {names}; "
                             f"{unknown} are not among {PARAM_AXES}")
        if shape is not None and len(names) != len(shape):
            raise ValueError(f"parameter {'/'.join(map(str, path))} of shape {tuple(shape)} has "
                             f"logical axes {names}")
        node = out
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = names
    if missing:
        raise ValueError(f"parameters without logical axis names: {missing[:10]}")
    return out


def tree_shardings(abstract: Any, axes: Any, rules: Rules, mesh: Mesh) -> Any:
    """NamedShardings for a tree of ShapeDtypeStructs/arrays given a matching tree of axis names."""
    return jax.tree.map(lambda names, leaf: named_sharding(names, leaf.shape, rules, mesh),
                        axes, abstract, is_leaf=lambda x: isinstance(x, tuple))


def check_batch_divisible(rows: int, rules: Rules, mesh: Mesh, what: str = "batch",
                          accum_steps: int = 1) -> None:
    """A clear error when the global batch cannot be split over the mesh (and microbatches)."""
    shards = batch_shards(rules, mesh)
    if rows % accum_steps:
        raise ValueError(f"{what} of {rows} rows is not divisible by grad_accum_steps="
                         f"{accum_steps}")
    micro = rows // accum_steps
    if micro % shards:
        axes = {a: mesh.shape[a] for a in batch_axes(rules, mesh)}
        raise ValueError(
            f"{what}: {micro} rows per microbatch ({rows} rows / grad_accum_steps {accum_steps}) "
            f"cannot be split over the mesh's batch axes {axes} ({shards} shards); make the "
            f"global batch a multiple of {shards * accum_steps} rows")
