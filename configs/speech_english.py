"""The released SONAR speech architecture `english` (sonar_speech_encoder_eng): 3 pooler layers."""

import ml_collections


def get_config():
    return ml_collections.ConfigDict(dict(model_dim=1024, num_layers=24, num_heads=16,
                                          ffn_dim=4096, pooler_layers=3, pooler_heads=16,
                                          pooler_ffn_dim=4096))
