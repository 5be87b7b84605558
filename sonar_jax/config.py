"""Model configuration: one frozen dataclass per model family.

The dataclass is what models are built from and what a converted model directory stores as JSON;
`sonar_jax.configs.architectures` names the released and test architectures that fill it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def to_jnp_dtype(name: str):
    """Maps a config dtype name to a jnp dtype, with an error that lists the valid names."""
    try:
        return _DTYPES[name]
    except KeyError:
        raise ValueError(f"unknown dtype {name!r}; expected one of {sorted(_DTYPES)}") from None


def check_attention(name: str) -> None:
    from sonar_jax.models.attention import check_implementation

    check_implementation(name)


class _DictConfig:
    """replace / to_dict / from_dict shared by the frozen config dataclasses."""

    def replace(self, **changes: Any):
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict):
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown {cls.__name__} fields {unknown}; known: {sorted(known)}")
        for field in dataclasses.fields(cls):
            if field.name in values and not _fits(values[field.name], field.default):
                raise ValueError(f"{cls.__name__}.{field.name} is {values[field.name]!r}, not of "
                                 f"type {type(field.default).__name__}")
        return cls(**values)


def _fits(value: Any, default: Any) -> bool:
    """Whether a stored value has the type of the field's default (an int passes for a float;
    fields whose default is None or a container are not checked)."""
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(value, bool) == isinstance(default, bool) or default is None
    if isinstance(default, float):
        return isinstance(value, (int, float))
    if isinstance(default, (int, str)):
        return isinstance(value, type(default))
    return True


def _check_transformer(cfg: Any, **heads: int) -> None:
    """The checks every Transformer config shares: heads that divide model_dim (each named as
    its field), an even model_dim (sinusoidal positions), known dtypes and attention kernel."""
    for name, count in heads.items():
        if cfg.model_dim % count:
            raise ValueError(f"model_dim {cfg.model_dim} is not divisible by {name} {count}")
    if cfg.model_dim % 2:
        raise ValueError(f"model_dim {cfg.model_dim} must be even for sinusoidal positions")
    to_jnp_dtype(cfg.dtype)
    to_jnp_dtype(cfg.param_dtype)
    check_attention(cfg.attention)


@dataclasses.dataclass(frozen=True)
class TextModelConfig(_DictConfig):
    """Sizes of a SONAR text encoder or decoder (NLLB-shaped Transformer).

    `max_seq_len` counts positions the sinusoidal table covers: 514 for the released encoder
    (fairseq's 512 + pad_idx + 1), 512 for the decoder. `dtype` is the compute dtype; parameters are
    kept in `param_dtype`. `attention` picks the attention kernel: "auto" (cuDNN's flash kernel on
    GPUs where it applies, XLA elsewhere), "xla" or "cudnn" (`sonar_jax.models.attention`).
    """

    vocab_size: int = 256206
    model_dim: int = 1024
    num_layers: int = 24
    num_heads: int = 16
    ffn_dim: int = 8192
    max_seq_len: int = 514
    pad_idx: int = 0
    layer_norm_eps: float = 1e-5
    dtype: str = "float32"
    param_dtype: str = "float32"
    remat_policy: str = "none"
    attention: str = "auto"

    def __post_init__(self):
        _check_transformer(self, num_heads=self.num_heads)

    @property
    def head_dim(self) -> int:
        return self.model_dim // self.num_heads


@dataclasses.dataclass(frozen=True)
class SpeechModelConfig(_DictConfig):
    """Sizes of a SONAR speech encoder: w2v-BERT Conformer + attention pooler.

    `max_seq_len` bounds the frames after stacking `fbank_stride` fbank frames (4096 ≈ 82 s of
    audio for the released models: the reference's relative-position table has that many rows).
    The pooler is a post-LN Transformer decoder reading the Conformer output; its query is row
    `bos_idx` of a `pooler_vocab_size`-row table.
    """

    model_dim: int = 1024
    num_layers: int = 24
    num_heads: int = 16
    ffn_dim: int = 4096
    num_fbank_channels: int = 80
    fbank_stride: int = 2
    depthwise_kernel_size: int = 31
    max_seq_len: int = 4096
    pooler_layers: int = 3
    pooler_heads: int = 16
    pooler_ffn_dim: int = 4096
    pooler_vocab_size: int = 1024
    bos_idx: int = 2
    layer_norm_eps: float = 1e-5
    batch_norm_eps: float = 1e-5
    dtype: str = "float32"
    param_dtype: str = "float32"
    remat_policy: str = "none"
    attention: str = "auto"

    def __post_init__(self):
        _check_transformer(self, num_heads=self.num_heads, pooler_heads=self.pooler_heads)
        if not 0 <= self.bos_idx < self.pooler_vocab_size:
            raise ValueError(f"bos_idx {self.bos_idx} is outside the pooler's "
                             f"{self.pooler_vocab_size}-row embedding table")

    @property
    def head_dim(self) -> int:
        return self.model_dim // self.num_heads

    @property
    def feature_dim(self) -> int:
        """Width of one stacked input frame (fbank channels × stride)."""
        return self.num_fbank_channels * self.fbank_stride

    def pooler_config(self) -> TextModelConfig:
        """The pooler's decoder layers are NLLB-shaped Transformer layers of these sizes."""
        return TextModelConfig(vocab_size=self.pooler_vocab_size, model_dim=self.model_dim,
                               num_layers=self.pooler_layers, num_heads=self.pooler_heads,
                               ffn_dim=self.pooler_ffn_dim, max_seq_len=1, pad_idx=1,
                               layer_norm_eps=self.layer_norm_eps, dtype=self.dtype,
                               param_dtype=self.param_dtype, remat_policy=self.remat_policy,
                               attention=self.attention)


# BLASER 2.0's input forms, as the reference names them -> embeddings the MLP's input spans.
BLASER_INPUT_FORMS = {"QE": 4, "COMET": 6}


def _check_head_sizes(cfg: Any, width_field: str) -> None:
    """Shared checks of the scoring heads' configs; JSON lists become tuples (hashable configs)."""
    object.__setattr__(cfg, "hidden_dims", tuple(int(d) for d in cfg.hidden_dims))
    sizes = (getattr(cfg, width_field), *cfg.hidden_dims)
    if min(sizes) <= 0:
        raise ValueError(f"{type(cfg).__name__}: {width_field} and hidden_dims must be positive, "
                         f"got {sizes}")
    to_jnp_dtype(cfg.dtype)
    to_jnp_dtype(cfg.param_dtype)


@dataclasses.dataclass(frozen=True)
class BlaserConfig(_DictConfig):
    """BLASER 2.0: a tanh MLP over features of source, translation and (COMET form) reference
    embeddings, each L2-normalised first when `norm_emb` (both released models: True).

    `input_form` keeps the reference's names: "QE" (`blaser_2_0_qe`, no reference) and "COMET"
    (`blaser_2_0_ref`). The output layer has one unit (the score) and no activation.
    """

    input_form: str = "QE"
    embedding_dim: int = 1024
    hidden_dims: tuple[int, ...] = (3072, 1536)
    norm_emb: bool = True
    dtype: str = "float32"
    param_dtype: str = "float32"

    def __post_init__(self):
        if self.input_form not in BLASER_INPUT_FORMS:
            raise ValueError(f"unknown BLASER input_form {self.input_form!r}; expected one of "
                             f"{sorted(BLASER_INPUT_FORMS)}")
        _check_head_sizes(self, "embedding_dim")

    @property
    def input_dim(self) -> int:
        return self.embedding_dim * BLASER_INPUT_FORMS[self.input_form]

    @property
    def needs_reference(self) -> bool:
        return self.input_form == "COMET"


@dataclasses.dataclass(frozen=True)
class MutoxConfig(_DictConfig):
    """MuTox: a ReLU MLP from one embedding to a toxicity logit (released 1024-512-128-1)."""

    input_size: int = 1024
    hidden_dims: tuple[int, ...] = (512, 128)
    dtype: str = "float32"
    param_dtype: str = "float32"

    def __post_init__(self):
        _check_head_sizes(self, "input_size")
