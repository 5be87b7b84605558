"""sonar_jax: SONAR sentence embeddings in JAX/Flax. The pipelines keep SONAR's names.

Names are imported on first use, so `import sonar_jax.convert` stays light.
"""

_EXPORTS = {
    "TextToEmbeddingModelPipeline": "sonar_jax.pipelines",
    "EmbeddingToTextModelPipeline": "sonar_jax.pipelines",
    "TextToTextModelPipeline": "sonar_jax.pipelines",
    "SpeechToEmbeddingModelPipeline": "sonar_jax.speech_pipelines",
    "SpeechToTextModelPipeline": "sonar_jax.speech_pipelines",
    "TopKSampler": "sonar_jax.generate",
    "TopPSampler": "sonar_jax.generate",
    "load_model": "sonar_jax.model_dir",
    "NllbTokenizer": "sonar_jax.tokenizer",
    "BlaserPipeline": "sonar_jax.scoring_pipelines",
    "MutoxClassifierPipeline": "sonar_jax.scoring_pipelines",
    "MutoxSpeechClassifierPipeline": "sonar_jax.scoring_pipelines",
    "load_blaser_model": "sonar_jax.scoring_pipelines",
    "load_mutox_model": "sonar_jax.scoring_pipelines",
    "similarity": "sonar_jax.cosine",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'sonar_jax' has no attribute {name!r}")
