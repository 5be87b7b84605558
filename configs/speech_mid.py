"""Mid-size speech architecture for tests: more heads and layers than tiny, still seconds on CPU."""

import ml_collections


def get_config():
    return ml_collections.ConfigDict(dict(model_dim=128, num_layers=3, num_heads=8, ffn_dim=512,
                                          pooler_layers=3, pooler_heads=8, pooler_ffn_dim=512,
                                          pooler_vocab_size=128))
