"""Fingerprints that tie embedding shards to the model, tokenizer and bytes that made them.

A model is identified by its parameter values (not by how its directory stores them), its
architecture and its compute dtype; a tokenizer by its SentencePiece model and language list.
"""

from __future__ import annotations

import hashlib

import jax
import numpy as np
from flax import nnx

from sonar_jax.corpus.inputs import file_sha256
from sonar_jax.tokenizer import NllbTokenizer


def model_identity(model: nnx.Module, name: str) -> dict:
    """{"name", "sha256"}: a digest of every parameter (path, dtype, shape, values, read one at
    a time) and of the config; `name` is for people and is not compared."""
    digest = hashlib.sha256(repr(sorted(model.cfg.to_dict().items())).encode())
    for path, leaf in jax.tree.leaves_with_path(nnx.state(model, nnx.Param)):
        value = np.asarray(leaf)
        digest.update(f"{jax.tree_util.keystr(path)} {value.dtype} {value.shape}".encode())
        digest.update(np.ascontiguousarray(value).tobytes())
    return {"name": name, "sha256": digest.hexdigest()}


def tokenizer_identity(tokenizer: NllbTokenizer) -> dict:
    """{"languages", "sha256"}: a digest of the SentencePiece model and the language list."""
    digest = hashlib.sha256(bytes.fromhex(file_sha256(tokenizer.spm_path)))
    digest.update("\n".join(tokenizer.langs).encode())
    return {"languages": len(tokenizer.langs), "sha256": digest.hexdigest()}
