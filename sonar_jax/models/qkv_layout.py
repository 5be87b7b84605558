"""The fused q/k/v layout: where the released files' separate projections go in our tree.

The reference (and format-1 converted directories) hold `q_proj`, `k_proj` and `v_proj` as three
Linear layers; our attention holds one `qkv_proj` with kernel [D, 3, D] and bias [3, D] (slot 0,
1, 2 = q, k, v), so that one GEMM projects all three. Converters write each released tensor into
its slot; `fuse_tree` migrates a parameter tree of the old layout.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

SLOTS = {"q_proj": 0, "k_proj": 1, "v_proj": 2}
FUSED = "qkv_proj"


def fused_path(path: tuple[str, ...]) -> tuple[tuple[str, ...], int | None]:
    """(path in the fused tree, slot or None) of a parameter path such as
    (..., "self_attn", "k_proj", "kernel")."""
    if len(path) >= 2 and path[-2] in SLOTS:
        return path[:-2] + (FUSED, path[-1]), SLOTS[path[-2]]
    return path, None


def slot_shape(shape: tuple[int, ...], slot: int | None) -> tuple[int, ...]:
    """Shape of the fused array that holds a [..., out] kernel or bias in a slot."""
    if slot is None:
        return tuple(shape)
    return (*shape[:-1], len(SLOTS), shape[-1])


def write_slot(buffer: np.ndarray, slot: int | None, value: np.ndarray) -> None:
    """buffer[..., slot, :] = value (or buffer[...] = value when there is no slot)."""
    if slot is None:
        buffer[...] = value
    else:
        buffer[..., slot, :] = value


def fuse_tree(tree: Mapping[str, Any], xp=np) -> dict:
    """A parameter tree with every {q,k,v}_proj trio replaced by its fused `qkv_proj`.

    `xp` is numpy or jax.numpy (a restored tree stays on its devices). Trees already fused are
    returned as they are.
    """
    out = {}
    for key, value in tree.items():
        if key in SLOTS:
            continue
        out[key] = fuse_tree(value, xp) if isinstance(value, Mapping) else value
    if all(name in tree for name in SLOTS):
        out[FUSED] = {leaf: xp.stack([tree[name][leaf] for name in SLOTS], axis=-2)
                      for leaf in tree["q_proj"]}
    elif any(name in tree for name in SLOTS):
        raise ValueError(f"an attention block holds only {sorted(set(SLOTS) & set(tree))} of "
                         "q_proj/k_proj/v_proj")
    return out


def needs_fusing(tree: Mapping[str, Any]) -> bool:
    """Whether a tree still holds separate q/k/v projections somewhere."""
    return any(key in SLOTS or (isinstance(value, Mapping) and needs_fusing(value))
               for key, value in tree.items())
