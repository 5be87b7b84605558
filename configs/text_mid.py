"""Mid-size text architecture for parity tests; matches tests/fixtures/text/mid_* (UDHR tokenizer vocab)."""

from sonar_jax.config import text_arch


def get_config():
    return text_arch(vocab_size=3206, model_dim=128, num_layers=3, num_heads=8, ffn_dim=512)
