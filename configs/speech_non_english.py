"""The released SONAR speech architecture `non_english` (every other sonar_speech_encoder_*):
the `english` Conformer with a 6-layer pooler."""

import ml_collections


def get_config():
    return ml_collections.ConfigDict(dict(model_dim=1024, num_layers=24, num_heads=16,
                                          ffn_dim=4096, pooler_layers=6, pooler_heads=16,
                                          pooler_ffn_dim=4096))
