"""The released SONAR text architecture `basic` (text_sonar_basic_encoder / _decoder)."""

from sonar_jax.config import text_arch


def get_config():
    return text_arch(vocab_size=256206, model_dim=1024, num_layers=24, num_heads=16, ffn_dim=8192)
