"""Released SONAR text checkpoints -> parameter trees of `TextEncoder` / `TextDecoder`.

Accepts `{"model": state_dict}`, a bare state dict, and fairseq(1)-named layouts (legacy key names
and fairseq's special-token row order). Tensors are read one at a time and written straight into
preallocated, layer-stacked numpy buffers (q/k/v into the slots of the fused projection), so peak
memory is the output plus one tensor.
"""

from __future__ import annotations

import re
from typing import Any, Iterable

import ml_dtypes
import numpy as np

from sonar_jax.config import TextModelConfig
from sonar_jax.models import qkv_layout as qkv


# fairseq(1) module names inside a layer -> fairseq2 names (the reference's legacy-checkpoint map).
FAIRSEQ1_LAYER_RENAMES = [
    (r"\.encoder_attn_layer_norm\.", ".encoder_decoder_attn_layer_norm."),
    (r"\.encoder_attn\.", ".encoder_decoder_attn."),
    (r"\.final_layer_norm\.", ".ffn_layer_norm."),
    (r"\.fc1\.", ".ffn.inner_proj."),
    (r"\.fc2\.", ".ffn.output_proj."),
    (r"\.out_proj\.", ".output_proj."),
]
# Entries of fairseq(1) files that hold no weights (buffers recomputed on load, format versions).
FAIRSEQ1_IGNORED = re.compile(r"(^|\.)(embed_positions\._float_tensor|version)$")
# fairseq orders the specials BOS, PAD, EOS, UNK; fairseq2/NLLB ids are PAD, UNK, BOS, EOS.
FAIRSEQ1_SPECIAL_ROWS = [1, 3, 0, 2]

_PREFIX = {"text_encoder": "encoder", "text_decoder": "decoder"}
_LAYER_KEY = re.compile(r"^(encoder|decoder)\.layers\.(\d+)\.(.+)\.(weight|bias)$")


class ConversionError(ValueError):
    pass


def find_state_dict(root: Any, source: str) -> dict:
    """The state dict inside a loaded checkpoint: `{"model": sd}`, `{"state_dict": sd}` or bare."""
    if not isinstance(root, dict):
        raise ConversionError(f"{source}: expected a dict at the top of the checkpoint, found "
                              f"{type(root).__name__}")
    for key in ("model", "state_dict"):
        if isinstance(root.get(key), dict):
            root = root[key]
            break
    tensors = {k.removeprefix("module."): v for k, v in root.items() if hasattr(v, "shape")}
    if not tensors:
        raise ConversionError(f"{source}: found no tensors; expected a SONAR state dict "
                              f"(top-level keys: {sorted(map(str, root))[:10]})")
    return tensors


def is_fairseq1(state_dict: dict) -> bool:
    return any(k.endswith("embed_tokens.weight") for k in state_dict)


def to_fairseq2_names(state_dict: dict, kind: str) -> dict:
    """Renames fairseq(1) keys to fairseq2 ones, dropping non-weight entries.

    The reference reads standalone fairseq modules under "state_dict" with unprefixed keys
    (`layers.N.fc1.weight`, `embed_tokens.weight`, `layer_norm.*`, `output_projection.weight`);
    keys of a whole fairseq model (`encoder.`/`decoder.`-prefixed) are accepted too.
    """
    prefix = _PREFIX[kind]
    final_ln = "layer_norm." if kind == "text_encoder" else "decoder.layer_norm."
    renamed = {}
    for key, tensor in state_dict.items():
        if FAIRSEQ1_IGNORED.search(key):
            continue
        key = key.removeprefix(f"{prefix}.")
        if key.startswith("layers."):
            key = f"{prefix}.{key}"
            for pattern, replacement in FAIRSEQ1_LAYER_RENAMES:
                key = re.sub(pattern, replacement, key)
        elif key.startswith("embed_tokens."):
            key = f"{prefix}_frontend.embed." + key.removeprefix("embed_tokens.")
        elif key.startswith("output_projection."):
            key = "final_proj." + key.removeprefix("output_projection.")
        elif key.startswith("layer_norm."):
            key = final_ln + key.removeprefix("layer_norm.")
        renamed[key] = tensor
    return renamed


def target_path(key: str, kind: str) -> tuple[tuple[str, ...], int | None, int | None, bool]:
    """(path in our parameter tree, layer index or None, q/k/v slot or None, transpose?) of a
    fairseq2 key."""
    prefix = _PREFIX[kind]
    if key == embed_key(kind):
        return ("embed", "embedding"), None, None, False
    final_ln = "layer_norm." if kind == "text_encoder" else "decoder.layer_norm."
    if key.startswith(final_ln):
        return ("layer_norm", _ln_param(key.rsplit(".", 1)[1])), None, None, False
    match = _LAYER_KEY.match(key)
    if not match or match.group(1) != prefix:
        raise KeyError(key)
    _, layer, module, param = match.groups()
    module_path = tuple(module.split("."))
    if module_path[-1].endswith("layer_norm"):
        return ("layers", *module_path, _ln_param(param)), int(layer), None, False
    path, slot = qkv.fused_path(("layers", *module_path, "kernel" if param == "weight" else "bias"))
    return path, int(layer), slot, param == "weight"


def _ln_param(param: str) -> str:
    return {"weight": "scale", "bias": "bias"}[param]


def infer_config(state_dict: dict, kind: str, num_heads: int) -> TextModelConfig:
    """Every size from tensor shapes; the head count cannot be inferred and is given."""
    prefix = _PREFIX[kind]
    embed = state_dict.get(embed_key(kind))
    if embed is None:
        raise ConversionError(
            f"no {prefix}_frontend.embed.weight: this does not look like a SONAR {kind} "
            f"checkpoint (keys start with {sorted({k.split('.')[0] for k in state_dict})})")
    layers = {int(m.group(2)) for m in map(_LAYER_KEY.match, state_dict) if m}
    if not layers:
        raise ConversionError(f"no {prefix}.layers.N.* tensors found for a {kind}")
    ffn = state_dict[f"{prefix}.layers.0.ffn.inner_proj.weight"]
    vocab_size, model_dim = embed.shape
    if model_dim % num_heads:
        raise ConversionError(f"model_dim {model_dim} is not divisible by --num-heads {num_heads}")
    return TextModelConfig(vocab_size=vocab_size, model_dim=model_dim, num_layers=max(layers) + 1,
                           num_heads=num_heads, ffn_dim=ffn.shape[0],
                           max_seq_len=514 if kind == "text_encoder" else 512)


def expected_keys(cfg: TextModelConfig, kind: str) -> set[str]:
    """Every fairseq2 key a complete checkpoint of this size holds (final_proj aside)."""
    prefix = _PREFIX[kind]
    modules = ["self_attn_layer_norm", "ffn_layer_norm"]
    projections = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                   "self_attn.output_proj", "ffn.inner_proj", "ffn.output_proj"]
    if kind == "text_decoder":
        modules.append("encoder_decoder_attn_layer_norm")
        projections += [f"encoder_decoder_attn.{p}_proj" for p in ("q", "k", "v", "output")]
    final_ln = "layer_norm" if kind == "text_encoder" else "decoder.layer_norm"
    keys = {embed_key(kind), f"{final_ln}.weight", f"{final_ln}.bias"}
    for i in range(cfg.num_layers):
        for module in modules + projections:
            keys |= {f"{prefix}.layers.{i}.{module}.weight", f"{prefix}.layers.{i}.{module}.bias"}
    return keys


def convert_state_dict(state_dict: dict, kind: str, *, num_heads: int = 16,
                       dtype: str = "float32", source: str = "checkpoint",
                       vocab_size: int | None = None) -> tuple[TextModelConfig, dict]:
    """(config, nested numpy parameter tree) of a text encoder/decoder state dict.

    `state_dict` values are lazy tensors (`shape`, `load()`), read one at a time. `vocab_size`,
    when given, is the tokenizer's: a mismatch is reported before any tensor is read.
    """
    if kind not in _PREFIX:
        raise ConversionError(f"unknown text model kind {kind!r}; expected one of "
                              f"{list(_PREFIX)}")
    state_dict = dict(state_dict)
    fairseq1 = is_fairseq1(state_dict)
    if fairseq1:
        state_dict = to_fairseq2_names(state_dict, kind)
    cfg = infer_config(state_dict, kind, num_heads)
    if vocab_size is not None and vocab_size != cfg.vocab_size:
        raise ConversionError(
            f"{source} has {cfg.vocab_size} embedding rows but the tokenizer has {vocab_size} "
            "ids; pass the SentencePiece model (--tokenizer) and language list (--langs) this "
            "checkpoint was trained with")
    tied = state_dict.pop("final_proj.weight", None)
    _check_keys(set(state_dict), expected_keys(cfg, kind), source, kind)

    plan = [(key, lazy, *target_path(key, kind)) for key, lazy in state_dict.items()]
    _check_shapes(plan, cfg, kind, source)
    out_dtype = np.dtype(ml_dtypes.bfloat16) if dtype == "bfloat16" else np.dtype(dtype)
    params: dict = {}
    for key, lazy, path, layer, slot, transpose in plan:
        shape = _target_shape(lazy, layer, slot, transpose, cfg)
        buffer = _leaf(params, path, shape, out_dtype)
        value = lazy.load()
        qkv.write_slot(buffer if layer is None else buffer[layer], slot,
                       value.T if transpose else value)
        if path == ("embed", "embedding") and fairseq1:
            buffer[:4] = value[FAIRSEQ1_SPECIAL_ROWS]
        del value
    if tied is not None and not _same_storage(tied, state_dict[embed_key(kind)]):
        _check_tied(tied, params["embed"]["embedding"], fairseq1, source)
    cfg = cfg.replace(param_dtype=dtype, dtype=dtype)
    return cfg, params


def _target_shape(lazy, layer: int | None, slot: int | None, transpose: bool,
                  cfg: TextModelConfig) -> tuple:
    shape = qkv.slot_shape(tuple(reversed(lazy.shape)) if transpose else tuple(lazy.shape), slot)
    return shape if layer is None else (cfg.num_layers, *shape)


def _check_shapes(plan: list, cfg: TextModelConfig, kind: str, source: str) -> None:
    """Every tensor must have the shape the model built from `cfg` expects (checked before any
    tensor is read, so an inconsistent file fails fast and names the tensor)."""
    from flax import nnx

    from sonar_jax.models import registry

    expected = registry.variable_shapes(kind, cfg, nnx.Param)
    for key, lazy, path, layer, slot, transpose in plan:
        shape = _target_shape(lazy, layer, slot, transpose, cfg)
        if expected.get(path) != shape:
            raise ConversionError(
                f"{source}: {key} has shape {tuple(lazy.shape)}, which does not fit a {kind} "
                f"with model_dim {cfg.model_dim}, ffn_dim {cfg.ffn_dim}, "
                f"vocab_size {cfg.vocab_size} (inferred from the other tensors)")


def _leaf(tree: dict, path: Iterable[str], shape: tuple, dtype: np.dtype) -> np.ndarray:
    """The buffer at `path`, allocated (uninitialised) on first use."""
    *parents, name = path
    for part in parents:
        tree = tree.setdefault(part, {})
    if name not in tree:
        tree[name] = np.empty(shape, dtype)
    return tree[name]


def _check_keys(found: set, expected: set, source: str, kind: str) -> None:
    missing, unexpected = sorted(expected - found), sorted(found - expected)
    if missing or unexpected:
        raise ConversionError(
            f"{source} does not match a SONAR {kind}: "
            f"{len(missing)} missing keys {missing[:5]}, {len(unexpected)} unexpected keys "
            f"{unexpected[:5]}. Is --model right, and is this a complete checkpoint?")


def embed_key(kind: str) -> str:
    return f"{_PREFIX[kind]}_frontend.embed.weight"


def _same_storage(a: Any, b: Any) -> bool:
    """Whether two lazy tensors are views of the same bytes (a tie torch.save kept)."""
    fields = ("key", "offset", "shape", "stride", "dtype")
    return all(hasattr(t, f) for t in (a, b) for f in fields) and all(
        getattr(a, f) == getattr(b, f) for f in fields)


def _check_tied(final_proj, embedding: np.ndarray, fairseq1: bool, source: str) -> None:
    """The decoder's output projection must equal the embedding table (stored once here).

    Only needed when the file holds two copies; a shared storage is tied by construction.
    """
    value = final_proj.load()
    if fairseq1:
        value[:4] = value[FAIRSEQ1_SPECIAL_ROWS]
    same = value.shape == embedding.shape and np.array_equal(
        value.astype(embedding.dtype, copy=False), embedding)
    if not same:
        raise ConversionError(f"{source}: final_proj.weight differs from the embedding table, but "
                              "SONAR ties them; this checkpoint is not a SONAR text decoder")
