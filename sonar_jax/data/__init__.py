"""Training data: parallel-text sources, denoising noise, bucketed batches, grain pipelines.

Names are imported on first use, so importing a light submodule (e.g. `sonar_jax.data.noise`)
does not import grain. The config sections these pipelines read are `sonar_jax.configs.sections`.
"""

_EXPORTS = {
    "DenoisingNoise": "sonar_jax.data.noise",
    "keyed_rng": "sonar_jax.data.noise",
    "word_start_table": "sonar_jax.data.noise",
    "FloresSource": "sonar_jax.data.text",
    "TfdsSource": "sonar_jax.data.text",
    "TsvSource": "sonar_jax.data.text",
    "make_text_eval_iterator": "sonar_jax.data.pipeline",
    "make_text_train_iterator": "sonar_jax.data.pipeline",
    "state_from_json": "sonar_jax.data.pipeline",
    "state_to_json": "sonar_jax.data.pipeline",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'sonar_jax.data' has no attribute {name!r}")
