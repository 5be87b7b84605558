"""Orbax behind one small interface: save and restore parameter trees.

Parameters are nested dicts of arrays (the pure-dict form of an NNX state). Saving accepts numpy or
jax arrays (numpy is written as is, so a converter never has to copy everything onto a device);
restoring returns jax arrays, optionally cast and placed on given shardings, so a checkpoint
written on one mesh restores onto another. Training checkpoints (CheckpointManager) build on this.
"""

from __future__ import annotations

import pathlib
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from sonar_jax.config import to_jnp_dtype

Sharding = jax.sharding.Sharding


def _no_copy_handler() -> ocp.PyTreeCheckpointHandler:
    """A pytree handler that writes numpy leaves without holding a second copy of them.

    Orbax deep-copies host arrays by default (so an async save may outlive the caller's buffers)
    and keeps zstd-compressed chunks in memory until the checkpoint commits. Our saves are
    synchronous, and trained weights compress by only ~8%, so both would just double the peak
    memory of converting a 3 GB checkpoint.
    """
    handlers = ocp.type_handlers
    registry = handlers.create_type_handler_registry(
        (np.ndarray, handlers.NumpyHandler(deepcopy_host_arrays=False)),
        (jax.Array, handlers.ArrayHandler()),
    )
    return ocp.PyTreeCheckpointHandler(type_handler_registry=registry, use_compression=False)


def save_params(path: str | pathlib.Path, params: Any) -> None:
    """Writes `params` (a pytree of numpy or fully addressable jax arrays) to a new orbax
    directory `path`.

    Synchronous, and numpy leaves are written without a copy: peak memory stays at the size of
    `params` (converting a 3 GB checkpoint must not need twice that).
    """
    path = pathlib.Path(path).absolute()
    if path.exists():
        raise FileExistsError(f"refusing to overwrite existing checkpoint directory {path}")
    # A local write by the calling process alone: in a multi-process job, exports and
    # conversions run on one process, and orbax would otherwise wait for the others.
    with ocp.Checkpointer(_no_copy_handler(),
                          multiprocessing_options=_this_process_only()) as checkpointer:
        checkpointer.save(path, args=ocp.args.PyTreeSave(params))


def _this_process_only() -> ocp.options.MultiprocessingOptions:
    return ocp.options.MultiprocessingOptions(primary_host=jax.process_index(),
                                              active_processes={jax.process_index()})


def param_metadata(path: str | pathlib.Path) -> Any:
    """Pytree of jax.ShapeDtypeStruct describing what `path` holds (reads no array data)."""
    path = _existing(path)
    with ocp.StandardCheckpointer() as checkpointer:
        tree = checkpointer.metadata(path)
    # orbax versions differ in how many wrappers sit around the tree of per-leaf metadata.
    for wrapper in ("item_metadata", "tree"):
        tree = getattr(tree, wrapper, tree)
    return jax.tree.map(lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype), tree,
                        is_leaf=lambda m: hasattr(m, "shape") and hasattr(m, "dtype"))


def restore_params(path: str | pathlib.Path, *, dtype: str | None = None,
                   sharding: Sharding | Any | Callable[[jax.ShapeDtypeStruct], Sharding] | None = None
                   ) -> Any:
    """Restores a parameter tree saved by `save_params`.

    dtype: cast every floating-point leaf to it while reading (e.g. 'bfloat16' for inference).
    sharding: one Sharding for every leaf, a pytree of Shardings matching the params, or a function
      of each leaf's ShapeDtypeStruct (how logical-axis rules are applied); default: this
      process's first device, read by this process alone (in a multi-process job each process
      loads its own copy, e.g. for inference, without waiting for the others).
    """
    path = _existing(path)
    abstract = param_metadata(path)
    options = ocp.options.MultiprocessingOptions()
    if sharding is None:
        sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        options = _this_process_only()

    def target(leaf: jax.ShapeDtypeStruct, leaf_sharding) -> jax.ShapeDtypeStruct:
        leaf_dtype = leaf.dtype
        if dtype is not None and jnp.issubdtype(leaf.dtype, jnp.floating):
            leaf_dtype = to_jnp_dtype(dtype)
        if callable(leaf_sharding):
            leaf_sharding = leaf_sharding(leaf)
        return jax.ShapeDtypeStruct(leaf.shape, leaf_dtype, sharding=leaf_sharding)

    if isinstance(sharding, Sharding) or callable(sharding):
        targets = jax.tree.map(lambda leaf: target(leaf, sharding), abstract)
    else:
        targets = jax.tree.map(target, abstract, sharding)
    with ocp.StandardCheckpointer(multiprocessing_options=options) as checkpointer:
        return checkpointer.restore(path, targets)


def to_numpy(params: Any) -> Any:
    """Host copy of a parameter tree (for comparisons and exports)."""
    return jax.tree.map(np.asarray, params)


def _existing(path: str | pathlib.Path) -> pathlib.Path:
    path = pathlib.Path(path).absolute()
    if not path.is_dir():
        raise FileNotFoundError(f"no orbax checkpoint directory at {path}")
    return path


class TrainCheckpoints:
    """Training checkpoints: the train state and the data-iterator state saved as one step.

    Saves are asynchronous (the step blocks only for the device-to-host copy), the newest
    `keep` steps are kept, and restoring places every array on the shardings of an abstract
    state, so a run may resume on a different mesh. The data iterator is saved by grain's
    handler, one file per process, so every host resumes its own shard on the exact next batch.
    """

    def __init__(self, directory: str | pathlib.Path, *, keep: int = 3,
                 async_save: bool = True):
        import grain

        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, enable_async_checkpointing=async_save)
        self._grain = grain
        self.directory = pathlib.Path(directory).absolute()
        self._manager = ocp.CheckpointManager(
            self.directory, item_names=("state", "data"), options=options,
            item_handlers={"state": ocp.StandardCheckpointHandler(),
                           "data": grain.checkpoint.CheckpointHandler()})

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def save(self, step: int, state: Any, data_iterator: Any) -> None:
        """Starts saving `state` and the iterator's position as `step` (forced, whatever the
        cadence: the caller decides when to save)."""
        args = ocp.args.Composite(state=ocp.args.StandardSave(state),
                                  data=self._grain.checkpoint.CheckpointSave(data_iterator))
        self._manager.save(step, args=args, force=True)

    def restore(self, step: int, abstract_state: Any, data_iterator: Any = None) -> Any:
        """The state saved at `step`, placed as `abstract_state`'s shardings say (any mesh and
        process count). With `data_iterator`, it is also moved (in place) to the position it had
        then; that needs the same process count, since every process resumes its own shard."""
        items = {"state": ocp.args.StandardRestore(abstract_state)}
        if data_iterator is not None:
            items["data"] = self._grain.checkpoint.CheckpointRestore(data_iterator)
        return self._manager.restore(step, args=ocp.args.Composite(**items)).state

    def wait(self) -> None:
        """Blocks until a pending asynchronous save is on disk."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.close()
