"""Training data: parallel-text sources, denoising noise, bucketed batches, grain pipelines."""

from sonar_jax.data.noise import DenoisingNoise, keyed_rng, word_start_table
from sonar_jax.data.pipeline import (make_text_eval_iterator, make_text_train_iterator,
                                     state_from_json, state_to_json, text_data_config)
from sonar_jax.data.text import FloresSource, TfdsSource, TsvSource

__all__ = ["DenoisingNoise", "FloresSource", "TfdsSource", "TsvSource", "keyed_rng",
           "make_text_eval_iterator", "make_text_train_iterator", "state_from_json",
           "state_to_json", "text_data_config", "word_start_table"]
