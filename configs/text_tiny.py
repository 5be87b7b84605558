"""Tiny text architecture for unit tests; matches tests/fixtures/text/tiny_* (UDHR tokenizer vocab)."""

from sonar_jax.config import text_arch


def get_config():
    return text_arch(vocab_size=3206, model_dim=64, num_layers=2, num_heads=4, ffn_dim=128)
