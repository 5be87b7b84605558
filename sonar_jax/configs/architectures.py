"""Model architectures by name: the released SONAR shapes and the small ones tests and CPU
recipes use. Each name gives the sizes of a `TextModelConfig` (an encoder and a decoder) or a
`SpeechModelConfig`; everything not listed keeps the dataclass default.
"""

from __future__ import annotations

from typing import Any

from sonar_jax.config import SpeechModelConfig, TextModelConfig

# Text: the sizes an encoder and a decoder share. The released pair differs only in the position
# table: the encoder card sets `_from_fairseq=True`, which adds pad_idx + 1 to fairseq's 512
# positions (514); the decoder does not.
TEXT = {
    # text_sonar_basic_encoder / text_sonar_basic_decoder
    "text_basic": dict(vocab_size=256206, model_dim=1024, num_layers=24, num_heads=16,
                       ffn_dim=8192),
    # parity tests: tests/fixtures/text/mid_* (the UDHR tokenizer's vocabulary)
    "text_mid": dict(vocab_size=3206, model_dim=128, num_layers=3, num_heads=8, ffn_dim=512),
    # unit tests and the CPU recipes: tests/fixtures/text/tiny_*
    "text_tiny": dict(vocab_size=3206, model_dim=64, num_layers=2, num_heads=4, ffn_dim=128),
}
TEXT_POSITIONS = {"encoder": 514, "decoder": 512}

SPEECH = {
    # sonar_speech_encoder_eng: 3 pooler layers
    "speech_english": dict(model_dim=1024, num_layers=24, num_heads=16, ffn_dim=4096,
                           pooler_layers=3, pooler_heads=16, pooler_ffn_dim=4096),
    # every other sonar_speech_encoder_*: the same Conformer, a 6-layer pooler
    "speech_non_english": dict(model_dim=1024, num_layers=24, num_heads=16, ffn_dim=4096,
                               pooler_layers=6, pooler_heads=16, pooler_ffn_dim=4096),
    # tests: more heads and layers than tiny, still seconds on a CPU
    "speech_mid": dict(model_dim=128, num_layers=3, num_heads=8, ffn_dim=512, pooler_layers=3,
                       pooler_heads=8, pooler_ffn_dim=512, pooler_vocab_size=128),
    # unit tests: tests/fixtures/speech/tiny_*
    "speech_tiny": dict(model_dim=32, num_layers=2, num_heads=4, ffn_dim=64, pooler_layers=2,
                        pooler_heads=4, pooler_ffn_dim=64, pooler_vocab_size=32),
    # the CPU distillation recipe's student: 64-d, the width of text_tiny (its teacher)
    "speech_student_tiny": dict(model_dim=64, num_layers=2, num_heads=4, ffn_dim=128,
                                depthwise_kernel_size=15, pooler_layers=1, pooler_heads=4,
                                pooler_ffn_dim=128, pooler_vocab_size=8),
}


def _lookup(table: dict, name: str) -> dict:
    if name not in table:
        raise KeyError(f"unknown architecture {name!r}; known: {sorted(table)}")
    return dict(table[name])


def text_model_config(name: str, part: str, **overrides: Any) -> TextModelConfig:
    """The TextModelConfig of architecture `name` for `part` ("encoder" or "decoder"), plus
    overrides (dtype, remat_policy, ...)."""
    if part not in TEXT_POSITIONS:
        raise ValueError(f"part must be one of {sorted(TEXT_POSITIONS)}, got {part!r}")
    values = _lookup(TEXT, name)
    values["max_seq_len"] = TEXT_POSITIONS[part]
    values.update(overrides)
    return TextModelConfig.from_dict(values)


def speech_model_config(name: str, **overrides: Any) -> SpeechModelConfig:
    """The SpeechModelConfig of architecture `name`, plus overrides."""
    values = _lookup(SPEECH, name)
    values.update(overrides)
    return SpeechModelConfig.from_dict(values)
