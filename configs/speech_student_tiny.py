"""Tiny speech student for CPU distillation recipes: its 64-d output matches configs/text_tiny.py,
the teacher's embedding width (a student's model_dim must equal its teacher's)."""

import ml_collections


def get_config():
    return ml_collections.ConfigDict(dict(model_dim=64, num_layers=2, num_heads=4, ffn_dim=128,
                                          depthwise_kernel_size=15, pooler_layers=1,
                                          pooler_heads=4, pooler_ffn_dim=128, pooler_vocab_size=8))
