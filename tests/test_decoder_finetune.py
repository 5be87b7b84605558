"""Decoder fine-tuning on random interpolations: starting from the main job's trained tiny model
(tests/fixtures/trained), the decoder's auto-encoding chrF++ improves on real held-out sentences
while the frozen encoder stays bit-identical and only the decoder is in the state; the
interpolation weights follow the configured distribution."""

import pathlib

import jax
import numpy as np
import pytest
from flax import nnx

from sonar_jax import sharding
from sonar_jax.configs import get_config
from sonar_jax.data import make_iterator
from sonar_jax.evaluate.translation import translation_scores
from sonar_jax.model_dir import load_model, load_tokenizer
from sonar_jax.models.text_decoder import TextDecoder
from sonar_jax.models.text_encoder import TextEncoder
from sonar_jax.pipelines import TextToTextModelPipeline
from sonar_jax.train.decoder_finetune import DecoderFinetuneTrainer, interpolation_weights
from sonar_jax.train.runs import host_module

REPO = pathlib.Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data/sample/libreoffice"
TRAINED = REPO / "tests/fixtures/trained/main_job_tiny"
FAST_CPU_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def _config():
    cfg = get_config("decoder_finetune", "tiny")
    cfg.train.compiler_options = FAST_CPU_COMPILE
    cfg.data.split = "train"
    cfg.data.length_buckets = (64,)
    cfg.data.max_len = 64
    cfg.optim.lr, cfg.optim.warmup_steps, cfg.optim.decay_steps = 5e-4, 5, 60
    return cfg


def _autoencode_chrf(trainer, state, tokenizer, sentences) -> float:
    encoder = host_module(TextEncoder, trainer.enc_cfg, trainer.frozen["encoder"])
    decoder = host_module(TextDecoder, trainer.dec_cfg, trainer.export_params(state)["decoder"])
    pipeline = TextToTextModelPipeline(encoder, decoder, tokenizer)
    outputs = pipeline.predict(sentences, source_lang="eng_Latn", target_lang="eng_Latn",
                               batch_size=64, beam_size=1)
    return translation_scores(outputs, sentences, "eng_Latn")["chrf++"]


def _trainer_on_the_trained_model():
    """(config, tokenizer, trainer with the trained encoder frozen, initial state, a copy of the
    encoder's parameters as given)."""
    cfg = _config()
    tokenizer = load_tokenizer(TRAINED / "encoder")
    trainer = DecoderFinetuneTrainer(cfg, sharding.make_mesh(dict(data=1, fsdp=-1, tensor=1),
                                                             devices=jax.devices()[:1]))
    encoder = load_model(TRAINED / "encoder")
    original = jax.tree.map(np.array, nnx.to_pure_dict(nnx.state(encoder, nnx.Param)))
    trainer.set_frozen({"encoder": encoder})
    state = trainer.init(0, init_params={"decoder": load_model(TRAINED / "decoder")})
    return cfg, tokenizer, trainer, state, original


def _assert_encoder_untouched(trainer, state, original):
    assert set(state.params) == {"decoder"}  # the encoder is neither optimised nor saved
    # Bit-identical: the frozen encoder the trainer holds equals the one it was given.
    jax.tree.map(np.testing.assert_array_equal, original,
                 jax.tree.map(np.asarray, trainer.frozen["encoder"]))


def test_steps_train_only_the_decoder():
    cfg, tokenizer, trainer, state, original = _trainer_on_the_trained_model()
    before = jax.tree.map(np.array, state.params["decoder"])
    batches = make_iterator(cfg.data, tokenizer, "text", training=True, rows_multiple=1, seed=0)
    for _ in range(2):
        state, metrics = trainer.train_step(state, trainer.shard_batch(next(batches)))
    assert np.isfinite(float(metrics["interp_loss"]))
    changed = jax.tree.map(lambda a, b: bool((np.asarray(a) != b).any()),
                           state.params["decoder"], before)
    assert any(jax.tree.leaves(changed))  # the decoder is trained
    _assert_encoder_untouched(trainer, state, original)


@pytest.mark.slow
def test_decoder_learns_while_the_encoder_stays_frozen():
    cfg, tokenizer, trainer, state, original = _trainer_on_the_trained_model()
    sentences = (SAMPLE / "dev/eng_Latn.dev").read_text(encoding="utf-8").splitlines()[:64]
    chrf_before = _autoencode_chrf(trainer, state, tokenizer, sentences)
    batches = make_iterator(cfg.data, tokenizer, "text", training=True, rows_multiple=1, seed=0)
    losses = []
    for _ in range(60):
        state, metrics = trainer.train_step(state, trainer.shard_batch(next(batches)))
        losses.append(float(metrics["interp_loss"]))
    chrf_after = _autoencode_chrf(trainer, state, tokenizer, sentences)
    print(f"interpolation CE {np.mean(losses[:5]):.3f} -> {np.mean(losses[-5:]):.3f}; "
          f"auto-encoding chrF++ on held-out English {chrf_before:.2f} -> {chrf_after:.2f}")
    assert np.mean(losses[-5:]) < np.mean(losses[:5])
    assert chrf_after > chrf_before + 1.0
    _assert_encoder_untouched(trainer, state, original)


@pytest.mark.parametrize("distribution,low,high", [("uniform", 0.0, 1.0), ("uniform", 0.2, 0.4),
                                                   ("beta", 0.0, 1.0)])
def test_interpolation_weights(distribution, low, high):
    cfg = get_config("decoder_finetune", "tiny").interpolation
    cfg.distribution, cfg.low, cfg.high, cfg.alpha, cfg.beta = distribution, low, high, 2.0, 5.0
    a = np.asarray(interpolation_weights(jax.random.key(0), 20000, cfg))
    assert low <= a.min() and a.max() <= high
    expected = (low + high) / 2 if distribution == "uniform" else 2.0 / 7.0
    assert abs(a.mean() - expected) < 0.01


def test_bad_interpolation_is_refused():
    cfg = _config()
    cfg.interpolation.distribution = "gaussian"
    with pytest.raises(ValueError, match="uniform"):
        DecoderFinetuneTrainer(cfg, sharding.make_mesh(dict(data=1, fsdp=-1, tensor=1)))
