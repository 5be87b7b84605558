"""Released SONAR speech checkpoints -> parameter trees of `SpeechEncoder`.

Accepts fairseq2-named state dicts (`{"model": sd}` or bare) and the fairseq(1) layout of the
released `spenc.*.pt` files (`encoder.w2v_model.*` for the Conformer, `decoder.*` for the attention
pooler), whose files also carry optimizer state and configuration objects: only the model's
tensors are read, one at a time, into preallocated layer-stacked buffers.
"""

from __future__ import annotations

import re
from typing import Callable

import ml_dtypes
import numpy as np

from sonar_jax.config import SpeechModelConfig
from sonar_jax.models import qkv_layout as qkv
from sonar_jax.convert.text import (FAIRSEQ1_IGNORED, FAIRSEQ1_LAYER_RENAMES, ConversionError,
                                    _check_keys, _leaf)

KIND = "speech_encoder"
MEL_BINS = 80  # the fbank front end's channels; a stacked frame is a multiple of it

# fairseq(1) prefixes -> fairseq2 ones (sonar's `_convert_sonar_speech_checkpoint` map).
FAIRSEQ1_PREFIXES = [
    (r"^encoder\.w2v_model\.layer_norm\.", "encoder_frontend.post_extract_layer_norm."),
    (r"^encoder\.w2v_model\.post_extract_proj\.", "encoder_frontend.model_dim_proj."),
    # The Conformer's trailing LayerNorm becomes the SONAR model's own (see sonar-facts §3).
    (r"^encoder\.w2v_model\.encoder\.layer_norm\.", "layer_norm."),
    (r"^encoder\.w2v_model\.encoder\.layers\.", "encoder.layers."),
    (r"^decoder\.embed_tokens\.", "encoder_pooler.decoder_frontend.embed."),
    (r"^decoder\.embed_out$", "encoder_pooler.projection_out.weight"),
    (r"^decoder\.layers\.", "encoder_pooler.decoder.layers."),
]
# Inside a fairseq(1) Conformer block (the pooler's layers use the text decoder's renames).
FAIRSEQ1_CONFORMER_RENAMES = [
    (r"\.conv_module\.layer_norm\.", ".conv_layer_norm."),
    (r"\.conv_module\.", ".conv."),
    (r"\.ffn([12])\.layer_norm\.", r".ffn\1_layer_norm."),
    (r"\.ffn([12])\.w_1\.", r".ffn\1.inner_proj."),
    (r"\.ffn([12])\.w_2\.", r".ffn\1.output_proj."),
    (r"\.self_attn\.linear_([qkv])\.", r".self_attn.\1_proj."),
    (r"\.self_attn\.linear_out\.", ".self_attn.output_proj."),
    (r"\.self_attn\.linear_pos\.", ".self_attn.sdpa.r_proj."),
    (r"\.self_attn\.pos_bias_([uv])$", r".self_attn.sdpa.\1_bias"),
    (r"\.final_layer_norm\.", ".layer_norm."),
]
# Pretraining-only entries of spenc files, dropped as the reference drops them.
FAIRSEQ1_SPEECH_IGNORED = re.compile(r"^encoder\.w2v_model\.(mask_emb$|encoder\.pos_conv\.)")
_CONFORMER_KEY = re.compile(r"^encoder\.layers\.(\d+)\.(.+)$")
_POOLER_KEY = re.compile(r"^encoder_pooler\.decoder\.layers\.(\d+)\.(.+)$")
_BATCH_NORM = {"weight": "scale", "bias": "bias", "running_mean": "mean", "running_var": "var"}


def is_fairseq1(state_dict: dict) -> bool:
    return any(k.startswith(("encoder.w2v_model.", "decoder.")) for k in state_dict)


def to_fairseq2_names(state_dict: dict) -> dict:
    """Renames fairseq(1) keys to fairseq2 ones, dropping entries that hold no model weights."""
    renamed = {}
    for key, tensor in state_dict.items():
        if FAIRSEQ1_IGNORED.search(key) or FAIRSEQ1_SPEECH_IGNORED.search(key):
            continue
        for pattern, replacement in FAIRSEQ1_PREFIXES:
            new = re.sub(pattern, replacement, key)
            if new != key:
                key = new
                break
        rules = (FAIRSEQ1_CONFORMER_RENAMES if key.startswith("encoder.layers.") else
                 FAIRSEQ1_LAYER_RENAMES if key.startswith("encoder_pooler.decoder.layers.") else [])
        for pattern, replacement in rules:
            key = re.sub(pattern, replacement, key)
        renamed[key] = tensor
    return renamed


def _transpose(a: np.ndarray) -> np.ndarray:
    return a.T


def _pointwise(a: np.ndarray) -> np.ndarray:
    """Conv1d kernel [out, in, 1] -> Linear kernel [in, out]."""
    return a[:, :, 0].T


def _depthwise(a: np.ndarray) -> np.ndarray:
    """Depthwise Conv1d kernel [D, 1, K] -> [K, D]."""
    return a[:, 0, :].T


def target(key: str) -> tuple[tuple[str, ...], int | None, int | None, Callable | None]:
    """(path in our parameter tree, layer index or None, q/k/v slot or None, array transform or
    None) of a fairseq2 key; KeyError for a key the model does not have."""
    match = _CONFORMER_KEY.match(key) or _POOLER_KEY.match(key)
    if match:
        layer, rest = int(match.group(1)), match.group(2)
        root = ("layers",) if key.startswith("encoder.") else ("encoder_pooler", "layers")
        path, transform = _module_param(rest.replace("self_attn.sdpa.", "self_attn."))
        path, slot = qkv.fused_path(root + path)
        return path, layer, slot, transform
    if key == "encoder_pooler.decoder_frontend.embed.weight":
        return ("encoder_pooler", "embed"), None, None, None
    if key == "encoder_pooler.projection_out.weight":
        return ("encoder_pooler", "projection_out", "kernel"), None, None, _transpose
    for prefix in ("encoder_frontend.post_extract_layer_norm.", "encoder_frontend.model_dim_proj.",
                   "layer_norm."):
        if key.startswith(prefix):
            path, transform = _module_param(key)
            return path, None, None, transform
    raise KeyError(key)


def _module_param(key: str) -> tuple[tuple[str, ...], Callable | None]:
    *module, param = key.split(".")
    name = module[-1]
    if param in ("u_bias", "v_bias"):
        return tuple(module + [param]), None
    if name.endswith("layer_norm"):
        return tuple(module) + ({"weight": "scale", "bias": "bias"}[param],), None
    if name == "batch_norm":
        return tuple(module) + (_BATCH_NORM[param],), None
    if name == "depthwise_conv":
        return tuple(module), _depthwise
    if name.startswith("pointwise_conv"):
        return tuple(module) + ("kernel",), _pointwise
    if param == "weight":
        return tuple(module) + ("kernel",), _transpose
    return tuple(module) + (param,), None


def _layer_count(state_dict: dict, pattern: re.Pattern, what: str) -> int:
    layers = {int(m.group(1)) for m in map(pattern.match, state_dict) if m}
    if not layers:
        prefixes = sorted({k.split(".")[0] for k in state_dict})
        raise ConversionError(f"no {what} tensors found: this does not look like a SONAR speech "
                              f"encoder (keys start with {prefixes})")
    return max(layers) + 1


def infer_config(state_dict: dict, pooler_heads: int) -> SpeechModelConfig:
    """Every size from tensor shapes. The Conformer's head count is the u_bias row count; the
    pooler's cannot be inferred and is given (--num-heads)."""
    proj = state_dict.get("encoder_frontend.model_dim_proj.weight")
    if proj is None:
        raise ConversionError(
            "no encoder_frontend.model_dim_proj.weight (fairseq: encoder.w2v_model."
            "post_extract_proj.weight): this does not look like a SONAR speech encoder")
    model_dim, feature_dim = proj.shape
    if feature_dim % MEL_BINS:
        raise ConversionError(f"the input projection reads {feature_dim} features, not a multiple "
                              f"of {MEL_BINS} fbank channels")
    layer = "encoder.layers.0."
    pooler = "encoder_pooler.decoder.layers.0."
    try:
        num_heads = state_dict[layer + "self_attn.sdpa.u_bias"].shape[0]
        cfg = SpeechModelConfig(
            model_dim=model_dim, num_layers=_layer_count(state_dict, _CONFORMER_KEY, "Conformer"),
            num_heads=num_heads, ffn_dim=state_dict[layer + "ffn1.inner_proj.weight"].shape[0],
            num_fbank_channels=MEL_BINS, fbank_stride=feature_dim // MEL_BINS,
            depthwise_kernel_size=state_dict[layer + "conv.depthwise_conv.weight"].shape[-1],
            pooler_layers=_layer_count(state_dict, _POOLER_KEY, "attention pooler"),
            pooler_heads=pooler_heads,
            pooler_ffn_dim=state_dict[pooler + "ffn.inner_proj.weight"].shape[0],
            pooler_vocab_size=state_dict["encoder_pooler.decoder_frontend.embed.weight"].shape[0])
    except KeyError as missing:
        raise ConversionError(f"no {missing.args[0]}: this is not a complete SONAR speech "
                              "encoder checkpoint") from None
    except ValueError as error:  # sizes that do not fit together, e.g. --num-heads
        raise ConversionError(f"{error} (pass the right --num-heads)") from None
    return cfg


def expected_keys(cfg: SpeechModelConfig) -> set[str]:
    """Every fairseq2 key of a complete checkpoint of this size (num_batches_tracked aside)."""
    keys = {"encoder_frontend.model_dim_proj.weight", "encoder_frontend.model_dim_proj.bias",
            "encoder_pooler.decoder_frontend.embed.weight", "encoder_pooler.projection_out.weight"}
    for norm in ("encoder_frontend.post_extract_layer_norm", "layer_norm"):
        keys |= {f"{norm}.weight", f"{norm}.bias"}
    block = [f"{m}.{p}" for m in ("ffn1_layer_norm", "self_attn_layer_norm", "conv_layer_norm",
                                  "ffn2_layer_norm", "layer_norm", "ffn1.inner_proj",
                                  "ffn1.output_proj", "ffn2.inner_proj", "ffn2.output_proj",
                                  "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                                  "self_attn.output_proj") for p in ("weight", "bias")]
    block += ["self_attn.sdpa.u_bias", "self_attn.sdpa.v_bias", "self_attn.sdpa.r_proj.weight",
              "conv.pointwise_conv1.weight", "conv.depthwise_conv.weight",
              "conv.pointwise_conv2.weight"]
    block += [f"conv.batch_norm.{p}" for p in _BATCH_NORM]
    for i in range(cfg.num_layers):
        keys |= {f"encoder.layers.{i}.{name}" for name in block}
    pooler = [f"{m}.{p}" for m in ("self_attn_layer_norm", "encoder_decoder_attn_layer_norm",
                                   "ffn_layer_norm", "ffn.inner_proj", "ffn.output_proj",
                                   *(f"{a}.{x}_proj" for a in ("self_attn", "encoder_decoder_attn")
                                     for x in ("q", "k", "v", "output")))
              for p in ("weight", "bias")]
    for j in range(cfg.pooler_layers):
        keys |= {f"encoder_pooler.decoder.layers.{j}.{name}" for name in pooler}
    return keys


def convert_state_dict(state_dict: dict, *, num_heads: int = 16, dtype: str = "float32",
                       source: str = "checkpoint") -> tuple[SpeechModelConfig, dict]:
    """(config, nested numpy parameter tree) of a speech encoder state dict.

    `state_dict` values are lazy tensors (`shape`, `load()`): every shape is checked against the
    model before the first tensor is read, then tensors are read one at a time.
    """
    state_dict = {k: v for k, v in state_dict.items() if not k.endswith(".num_batches_tracked")}
    if is_fairseq1(state_dict):
        state_dict = to_fairseq2_names(state_dict)
    cfg = infer_config(state_dict, num_heads)
    _check_keys(set(state_dict), expected_keys(cfg), source, KIND)
    plan = [(key, lazy, *target(key)) for key, lazy in state_dict.items()]
    _check_shapes(plan, cfg, source)
    out_dtype = np.dtype(ml_dtypes.bfloat16) if dtype == "bfloat16" else np.dtype(dtype)
    params: dict = {}
    for key, lazy, path, layer, slot, transform in plan:
        value = lazy.load()
        value = transform(value) if transform else value
        shape = _stacked(qkv.slot_shape(value.shape, slot), layer, path, cfg)
        buffer = _leaf(params, path, shape, out_dtype)
        qkv.write_slot(buffer if layer is None else buffer[layer], slot, value)
        del value
    return cfg.replace(dtype=dtype, param_dtype=dtype), params


def _stacked(shape: tuple, layer: int | None, path: tuple[str, ...], cfg: SpeechModelConfig):
    if layer is None:
        return tuple(shape)
    return (cfg.pooler_layers if path[0] == "encoder_pooler" else cfg.num_layers, *shape)


def _converted_shape(lazy, transform) -> tuple | None:
    """Shape after `transform`, from metadata only (the transform runs on a zero-byte view);
    None when the tensor has too few dimensions for it."""
    if transform is None:
        return tuple(lazy.shape)
    try:
        return tuple(transform(np.broadcast_to(np.empty((), np.bool_), lazy.shape)).shape)
    except IndexError:
        return None


def _check_shapes(plan: list, cfg: SpeechModelConfig, source: str) -> None:
    """Every tensor must have the shape the model built from `cfg` expects (checked before any
    tensor is read, so an inconsistent file fails fast and names the tensor)."""
    from sonar_jax.models import registry

    expected = registry.variable_shapes("speech_encoder", cfg)
    for key, lazy, path, layer, slot, transform in plan:
        shape = _converted_shape(lazy, transform)
        if shape is None or expected.get(path) != _stacked(qkv.slot_shape(shape, slot), layer,
                                                           path, cfg):
            raise ConversionError(
                f"{source}: {key} has shape {tuple(lazy.shape)}, which does not fit a speech "
                f"encoder with model_dim {cfg.model_dim}, ffn_dim {cfg.ffn_dim}, "
                f"{cfg.num_heads} heads, depthwise kernel {cfg.depthwise_kernel_size} "
                "(inferred from the other tensors)")
