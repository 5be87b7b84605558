"""Tiny speech architecture for unit tests; matches tests/fixtures/speech/tiny_*."""

import ml_collections


def get_config():
    return ml_collections.ConfigDict(dict(model_dim=32, num_layers=2, num_heads=4, ffn_dim=64,
                                          pooler_layers=2, pooler_heads=4, pooler_ffn_dim=64,
                                          pooler_vocab_size=32))
