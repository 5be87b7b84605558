"""The PyTorch peers of the benchmarks: HF `transformers` models filled with our parameters.

SONAR's text encoder is an NLLB/M2M100 encoder followed by a mean over the non-pad positions, and
its decoder is an M2M100 decoder whose output projection is tied to the embedding table and whose
"encoder output" is the sentence embedding as a sequence of length 1. So HF's `M2M100Encoder` and
`M2M100ForConditionalGeneration`, loaded with the same weights, compute the same functions and give
a well-optimised, widely used PyTorch baseline without fairseq2.

Two differences are bridged here:

- Special tokens: SONAR/fairseq2 number them pad 0, unk 1, bos 2, eos 3; fairseq/HF bos 0, pad 1,
  eos 2, unk 3. HF derives position ids from `padding_idx` (positions start at pad + 1 = 2, which
  is SONAR's offset), so the peer is fed ids in HF's order (`to_hf_ids`) and the first four rows
  of the embedding table are permuted to match (`permute_special_rows`). Other ids are unchanged.
- Parameter layout: our kernels are [in, out] and stacked over layers; torch Linear weights are
  [out, in], one module per layer (`hf_state_dict`).

The speech encoder's Conformer is HF's `SeamlessM4TSpeechEncoder` (its feature projection and
encoder; HF has no equivalent of SONAR's attention pooler, which the speech workload states).

torch and transformers are imported only inside this module, and only when it is used; they are
never dependencies of sonar_jax. Install them in a separate environment:

    python -m venv --system-site-packages BENCHVENV
    BENCHVENV/bin/pip install torch transformers
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np

from sonar_jax.config import SpeechModelConfig, TextModelConfig

# Everything is built locally; never let transformers reach for the Hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

# Our special ids 0..3 (pad, unk, bos, eos) -> HF's ids for the same tokens.
SPECIAL_TO_HF = np.array([1, 3, 0, 2])
HF_BOS, HF_PAD, HF_EOS, HF_UNK = 0, 1, 2, 3
NUM_SPECIALS = 4

# Our per-layer module names -> HF's (M2M100 keeps fairseq(1)'s names).
LAYER_RENAMES = {
    "self_attn.qkv_proj": "self_attn.{}_proj",
    "self_attn.output_proj": "self_attn.out_proj",
    "self_attn_layer_norm": "self_attn_layer_norm",
    "encoder_decoder_attn.qkv_proj": "encoder_attn.{}_proj",
    "encoder_decoder_attn.output_proj": "encoder_attn.out_proj",
    "encoder_decoder_attn_layer_norm": "encoder_attn_layer_norm",
    "ffn.inner_proj": "fc1",
    "ffn.output_proj": "fc2",
    "ffn_layer_norm": "final_layer_norm",
}
# Leaf names: Linear kernel/bias, LayerNorm scale/bias -> torch's weight/bias.
LEAF_RENAMES = {"kernel": "weight", "scale": "weight", "bias": "bias"}


# ---------------------------------------------------------------------------------------------
# Token ids


def to_hf_ids(ids: np.ndarray) -> np.ndarray:
    """Our token ids (any shape) -> HF's: the four specials are renumbered, the rest kept."""
    ids = np.asarray(ids)
    return np.where(ids < NUM_SPECIALS, SPECIAL_TO_HF[np.minimum(ids, NUM_SPECIALS - 1)], ids)


def from_hf_ids(ids: np.ndarray) -> np.ndarray:
    """HF token ids -> ours (the inverse of `to_hf_ids`)."""
    ids = np.asarray(ids)
    inverse = np.argsort(SPECIAL_TO_HF)
    return np.where(ids < NUM_SPECIALS, inverse[np.minimum(ids, NUM_SPECIALS - 1)], ids)


def permute_special_rows(table: np.ndarray) -> np.ndarray:
    """Embedding table [V, D] in our id order -> the same table in HF's id order."""
    out = np.array(table, copy=True)
    out[SPECIAL_TO_HF] = table[:NUM_SPECIALS]
    return out


def hf_logits_to_ours(logits: np.ndarray) -> np.ndarray:
    """Logits [..., V] over HF ids -> over our ids (columns of the specials permuted back)."""
    out = np.array(logits, copy=True)
    out[..., :NUM_SPECIALS] = logits[..., SPECIAL_TO_HF]
    return out


def pad_batch(tokens: Sequence[Sequence[int]], width: int | None = None
              ) -> tuple[np.ndarray, np.ndarray]:
    """Right-pads our id lists to the longest (or `width`) with HF's pad; returns (HF ids, mask)."""
    width = max(map(len, tokens)) if width is None else width
    ids = np.full((len(tokens), width), HF_PAD, np.int64)
    mask = np.zeros((len(tokens), width), np.int64)
    for row, seq in enumerate(tokens):
        ids[row, :len(seq)] = to_hf_ids(np.asarray(seq, np.int64))
        mask[row, :len(seq)] = 1
    return ids, mask


# ---------------------------------------------------------------------------------------------
# Weights


def _flatten(tree: dict, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], np.ndarray]:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, prefix + (str(key),)))
        else:
            flat[prefix + (str(key),)] = np.asarray(value, np.float32)
    return flat


def hf_state_dict(params: dict, cfg: TextModelConfig, prefix: str) -> dict[str, np.ndarray]:
    """Our parameter tree -> HF names (under `prefix`, e.g. "model.decoder.") and layouts.

    Layers are unstacked, the fused q/k/v projections split, kernels transposed to torch's
    [out, in], LayerNorm scale -> weight, and
    the embedding's special rows put in HF's order. The shared table is returned as
    `prefix + "embed_tokens.weight"`; the caller ties it to the output projection.
    """
    out: dict[str, np.ndarray] = {}
    for path, value in _flatten(params).items():
        if path == ("embed", "embedding"):
            out[prefix + "embed_tokens.weight"] = permute_special_rows(value)
        elif path[0] == "layer_norm":
            out[f"{prefix}layer_norm.{LEAF_RENAMES[path[-1]]}"] = value
        elif path[0] == "layers":
            module, leaf = LAYER_RENAMES[".".join(path[1:-1])], LEAF_RENAMES[path[-1]]
            for layer in range(cfg.num_layers):
                # The fused q/k/v projection holds q, k, v in slots of its second-last axis.
                parts = ([(module.format(n), value[layer][..., i, :]) for i, n in enumerate("qkv")]
                         if "{}" in module else [(module, value[layer])])
                for name, tensor in parts:
                    tensor = tensor.T if path[-1] == "kernel" else tensor
                    out[f"{prefix}layers.{layer}.{name}.{leaf}"] = np.ascontiguousarray(tensor)
        else:
            raise KeyError(f"unexpected parameter {'/'.join(path)}")
    return out


def _m2m100_config(cfg: TextModelConfig, *, num_encoder_layers: int, num_decoder_layers: int,
                   attn_implementation: str):
    """An M2M100Config with SONAR's sizes, no dropout, ReLU, scaled embeddings, HF's specials."""
    from transformers import M2M100Config

    config = M2M100Config(
        vocab_size=cfg.vocab_size, d_model=cfg.model_dim,
        encoder_layers=num_encoder_layers, decoder_layers=num_decoder_layers,
        encoder_attention_heads=cfg.num_heads, decoder_attention_heads=cfg.num_heads,
        encoder_ffn_dim=cfg.ffn_dim, decoder_ffn_dim=cfg.ffn_dim,
        max_position_embeddings=cfg.max_seq_len, activation_function="relu",
        dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
        encoder_layerdrop=0.0, decoder_layerdrop=0.0, scale_embedding=True,
        pad_token_id=HF_PAD, bos_token_id=HF_BOS, eos_token_id=HF_EOS,
        decoder_start_token_id=HF_EOS, tie_word_embeddings=True)
    config._attn_implementation = attn_implementation
    return config


def _load_exact(module, weights: dict[str, np.ndarray], unused: str | None = None,
                buffers: dict[str, np.ndarray] | None = None) -> None:
    """Copies `weights` into `module`'s parameters (and `buffers` into its buffers); every
    parameter must be covered exactly once (tied parameters count once), and shapes must agree.
    Parameters under the prefix `unused` (a submodule that is never run) are left as
    initialised."""
    import torch

    params = {name: p for name, p in module.named_parameters()  # tied parameters appear once
              if unused is None or not name.startswith(unused)}
    named_buffers = dict(module.named_buffers())
    for name, value in (buffers or {}).items():
        with torch.no_grad():
            named_buffers[name].copy_(torch.from_numpy(np.array(value)))
    missing = sorted(set(params) - set(weights))
    unknown = sorted(set(weights) - set(params))
    if missing or unknown:
        raise KeyError(f"HF parameters without a source: {missing[:5]}; "
                       f"sources without an HF parameter: {unknown[:5]}")
    with torch.no_grad():
        for name, value in weights.items():
            target = params[name]
            if tuple(target.shape) != value.shape:
                raise ValueError(f"{name}: HF shape {tuple(target.shape)}, ours {value.shape}")
            target.copy_(torch.from_numpy(np.array(value)))


def place(module, device: str, dtype: str):
    """`module` in eval mode on `device` in `dtype` ("float32" | "bfloat16")."""
    import torch

    return module.to(device=device, dtype=getattr(torch, dtype)).eval()


# ---------------------------------------------------------------------------------------------
# The peer models


class HFEncoder:
    """HF `M2M100Encoder` + SONAR's masked mean pooling: our ids -> sentence embeddings.

    cfg/params: our encoder's config and parameter tree (numpy or jax arrays)."""

    def __init__(self, cfg: TextModelConfig, params: dict, *, attn_implementation: str = "sdpa",
                 device: str = "cpu", dtype: str = "float32"):
        from transformers.models.m2m_100.modeling_m2m_100 import M2M100Encoder

        self.cfg, self.device = cfg, device
        config = _m2m100_config(cfg, num_encoder_layers=cfg.num_layers, num_decoder_layers=0,
                                attn_implementation=attn_implementation)
        self.model = M2M100Encoder(config)
        _load_exact(self.model, hf_state_dict(params, cfg, prefix=""))
        self.model = place(self.model, device, dtype)

    def embed_hf(self, ids, mask):
        """HF ids and mask (torch [B, T]) -> sentence embeddings (torch [B, D]).

        SONAR's pooling: the sum of the non-pad states times 1 / (length + 1e-7).
        """
        states = self.model(input_ids=ids, attention_mask=mask).last_hidden_state
        weights = mask.to(states.dtype)
        total = (states * weights[..., None]).sum(dim=1)
        return total * (1.0 / (weights.sum(dim=1) + 1e-7))[:, None]

    def embed(self, tokens: Sequence[Sequence[int]]) -> np.ndarray:
        """Our id lists -> embeddings [B, D] (one padded batch; numpy, float32)."""
        import torch

        ids, mask = pad_batch(tokens)
        with torch.inference_mode():
            out = self.embed_hf(torch.from_numpy(ids).to(self.device),
                                torch.from_numpy(mask).to(self.device))
            return out.float().cpu().numpy()


class HFDecoder:
    """HF `M2M100ForConditionalGeneration` with 0 encoder layers: the sentence embedding is fed as
    a length-1 encoder output, the LM head is tied to the decoder's embedding table."""

    def __init__(self, cfg: TextModelConfig, params: dict, *, attn_implementation: str = "sdpa",
                 device: str = "cpu", dtype: str = "float32"):
        from transformers import M2M100ForConditionalGeneration

        self.cfg, self.device, self.dtype = cfg, device, dtype
        config = _m2m100_config(cfg, num_encoder_layers=0, num_decoder_layers=cfg.num_layers,
                                attn_implementation=attn_implementation)
        self.model = M2M100ForConditionalGeneration(config)
        weights = hf_state_dict(params, cfg, prefix="model.decoder.")
        shared = weights.pop("model.decoder.embed_tokens.weight")
        self._check_tied()
        weights["model.shared.weight"] = shared
        # The 0-layer encoder keeps a final LayerNorm; it is never run (we pass encoder_outputs).
        _load_exact(self.model, weights, unused="model.encoder.")
        self.model = place(self.model, device, dtype)

    def _check_tied(self) -> None:
        """The encoder's and decoder's embeddings and the LM head must be one tensor, so that
        loading `model.shared.weight` sets all of them (SONAR's tied output projection)."""
        shared = self.model.model.shared.weight
        tied = [self.model.lm_head.weight, self.model.model.decoder.embed_tokens.weight]
        if any(t.data_ptr() != shared.data_ptr() for t in tied):
            raise RuntimeError("HF did not tie lm_head / decoder.embed_tokens to model.shared; "
                               "this transformers version needs another way to tie them")

    def encoder_outputs(self, embeddings: np.ndarray):
        """Sentence embeddings [N, D] -> HF's encoder output of length 1 ([N, 1, D])."""
        import torch
        from transformers.modeling_outputs import BaseModelOutput

        emb = torch.from_numpy(np.array(embeddings, np.float32))  # a writable copy
        emb = emb.to(device=self.device, dtype=getattr(torch, self.dtype))
        return BaseModelOutput(last_hidden_state=emb[:, None, :])

    def logits(self, embeddings: np.ndarray, tokens: np.ndarray) -> np.ndarray:
        """Teacher-forced logits [N, T, V] over our ids for our target ids [N, T] (unpadded)."""
        import torch

        hf_tokens = torch.from_numpy(to_hf_ids(np.asarray(tokens, np.int64))).to(self.device)
        with torch.inference_mode():
            out = self.model(decoder_input_ids=hf_tokens,
                             encoder_outputs=self.encoder_outputs(embeddings), use_cache=False)
        return hf_logits_to_ours(out.logits.float().cpu().numpy())

    def generation_config(self, *, beam_size: int, new_tokens: int):
        """Exactly `new_tokens` tokens, ending in EOS, as ours does with min_gen_len = new_tokens
        and max_seq_len = prompt + new_tokens: EOS is banned for the first new_tokens − 1 tokens
        and forced at the last; pad is never generated (the reference's rule, and HF would treat
        a generated pad as padding when computing positions)."""
        from transformers import GenerationConfig

        return GenerationConfig(
            max_new_tokens=new_tokens, min_new_tokens=new_tokens - 1,
            forced_eos_token_id=HF_EOS, suppress_tokens=[HF_PAD], num_beams=beam_size,
            num_return_sequences=1, do_sample=False, length_penalty=1.0, early_stopping=False,
            use_cache=True, bos_token_id=HF_BOS, pad_token_id=HF_PAD, eos_token_id=HF_EOS,
            decoder_start_token_id=HF_EOS)

    def generate(self, embeddings: np.ndarray, lang_id: int, config) -> np.ndarray:
        """Greedy or beam search from embeddings [N, D] with the prompt [eos, lang] (our lang id;
        language ids are the same in both numberings). Returns our ids [N, 2 + new tokens]."""
        import torch

        num = len(embeddings)
        prompt = torch.tensor(to_hf_ids(np.array([[3, lang_id]] * num, np.int64)),
                              device=self.device)
        with torch.inference_mode():
            out = self.model.generate(encoder_outputs=self.encoder_outputs(embeddings),
                                      decoder_input_ids=prompt, generation_config=config)
        return from_hf_ids(out.cpu().numpy())


# Our Conformer's module names -> HF SeamlessM4T's, inside one layer.
CONFORMER_RENAMES = {
    "ffn1_layer_norm": "ffn1_layer_norm", "ffn1.inner_proj": "ffn1.intermediate_dense",
    "ffn1.output_proj": "ffn1.output_dense", "self_attn_layer_norm": "self_attn_layer_norm",
    "self_attn.qkv_proj": "self_attn.linear_{}", "self_attn.output_proj": "self_attn.linear_out",
    "self_attn.r_proj": "self_attn.linear_pos", "self_attn.u_bias": "self_attn.pos_bias_u",
    "self_attn.v_bias": "self_attn.pos_bias_v", "conv_layer_norm": "conv_module.layer_norm",
    "conv.pointwise_conv1": "conv_module.pointwise_conv1",
    "conv.depthwise_conv": "conv_module.depthwise_conv", "conv.batch_norm": "conv_module.batch_norm",
    "conv.pointwise_conv2": "conv_module.pointwise_conv2", "ffn2_layer_norm": "ffn2_layer_norm",
    "ffn2.inner_proj": "ffn2.intermediate_dense", "ffn2.output_proj": "ffn2.output_dense",
    "layer_norm": "final_layer_norm",
}
BATCH_NORM_BUFFERS = {"mean": "running_mean", "var": "running_var"}


def speech_state_dict(params: dict, cfg: SpeechModelConfig) -> tuple[dict, dict]:
    """(parameters, buffers) of HF's SeamlessM4TSpeechEncoder from our speech encoder's tree
    (the pooler is left out: HF has none)."""
    weights, buffers = {}, {}
    for path, value in _flatten(params).items():
        if path[0] == "encoder_pooler":
            continue
        leaf = path[-1]
        if path[0] == "encoder_frontend":
            name = {"post_extract_layer_norm": "feature_projection.layer_norm",
                    "model_dim_proj": "feature_projection.projection"}[path[1]]
            weights[f"{name}.{LEAF_RENAMES[leaf]}"] = value.T if leaf == "kernel" else value
            continue
        if path[0] == "layer_norm":
            weights[f"encoder.layer_norm.{LEAF_RENAMES[leaf]}"] = value
            continue
        module = ".".join(path[1:-1])
        if leaf in ("u_bias", "v_bias", "depthwise_conv"):
            module = ".".join(path[1:])
        for layer in range(cfg.num_layers):
            prefix = f"encoder.layers.{layer}."
            tensor = value[layer]
            if module in ("self_attn.u_bias", "self_attn.v_bias"):
                weights[prefix + CONFORMER_RENAMES[module]] = tensor
            elif module == "conv.depthwise_conv":  # ours [K, D] -> torch Conv1d [D, 1, K]
                weights[prefix + CONFORMER_RENAMES[module] + ".weight"] = tensor.T[:, None, :]
            elif module.startswith("conv.pointwise_conv"):  # ours [in, out] -> [out, in, 1]
                weights[prefix + CONFORMER_RENAMES[module] + ".weight"] = tensor.T[:, :, None]
            elif module == "conv.batch_norm" and leaf in BATCH_NORM_BUFFERS:
                buffers[prefix + "conv_module.batch_norm." + BATCH_NORM_BUFFERS[leaf]] = tensor
            elif module == "self_attn.qkv_proj":
                for slot, name in enumerate("qkv"):
                    part = tensor[..., slot, :]
                    weights[prefix + CONFORMER_RENAMES[module].format(name) + "."
                            + LEAF_RENAMES[leaf]] = part.T if leaf == "kernel" else part
            else:
                weights[prefix + CONFORMER_RENAMES[module] + "." + LEAF_RENAMES[leaf]] = (
                    tensor.T if leaf == "kernel" else tensor)
    return ({k: np.ascontiguousarray(v) for k, v in weights.items()},
            {k: np.ascontiguousarray(v) for k, v in buffers.items()})


class HFSpeechEncoder:
    """HF `SeamlessM4TSpeechEncoder`'s feature projection and Conformer with our weights:
    stacked fbank frames [B, S, 160] -> the Conformer's final states [B, S, D]."""

    def __init__(self, cfg: SpeechModelConfig, params: dict, *, device: str = "cpu",
                 dtype: str = "float32"):
        from transformers import SeamlessM4TConfig
        from transformers.models.seamless_m4t.modeling_seamless_m4t import (
            SeamlessM4TSpeechEncoder)

        config = SeamlessM4TConfig(
            hidden_size=cfg.model_dim, speech_encoder_layers=cfg.num_layers,
            speech_encoder_attention_heads=cfg.num_heads,
            speech_encoder_intermediate_size=cfg.ffn_dim,
            conv_depthwise_kernel_size=cfg.depthwise_kernel_size,
            position_embeddings_type="relative", feature_projection_input_dim=cfg.feature_dim,
            speech_encoder_dropout=0.0, dropout=0.0, attention_dropout=0.0,
            activation_dropout=0.0, speech_encoder_layerdrop=0.0, add_adapter=False,
            layer_norm_eps=cfg.layer_norm_eps, max_source_positions=cfg.max_seq_len)
        self.model = SeamlessM4TSpeechEncoder(config)
        weights, buffers = speech_state_dict(params, cfg)
        _load_exact(self.model, weights, unused=("intermediate_ffn", "inner_layer_norm"),
                    buffers=buffers)
        self.model = place(self.model, device, dtype)
        self.device, self.dtype = device, dtype

    def encode(self, frames, mask):
        """Stacked frames and mask (torch [B, S, F], [B, S]) -> states (torch [B, S, D])."""
        hidden = _first(self.model.feature_projection(frames))
        return _first(self.model.encoder(hidden, attention_mask=mask))


def _first(output):
    """The main tensor of an HF module's output (a tensor, a tuple or a ModelOutput)."""
    if isinstance(output, (tuple, list)):
        return output[0]
    return getattr(output, "last_hidden_state", output)


def torch_info() -> dict[str, Any]:
    """Versions and threading of the peer, for the benchmark record."""
    import torch
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__,
            "torch_num_threads": torch.get_num_threads(),
            "torch_num_interop_threads": torch.get_num_interop_threads(),
            "mkldnn_enabled": torch.backends.mkldnn.is_available()}
