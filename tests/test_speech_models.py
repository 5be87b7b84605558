"""Speech encoder building blocks, length limits, bf16, and the speech pipelines and CLI."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sonar_jax import audio
from sonar_jax.cli import main as cli_main
from sonar_jax.configs.architectures import speech_model_config
from sonar_jax.model_dir import load_model, write_model_dir
from sonar_jax.models.conformer import shift_relative_scores
from sonar_jax.models.speech_encoder import SpeechEncoder, stack_frames
from sonar_jax.pipelines import EmbeddingToTextModelPipeline
from sonar_jax.speech_pipelines import SpeechToEmbeddingModelPipeline, SpeechToTextModelPipeline

SAMPLE_RATE = 16000


@functools.partial(jax.jit, static_argnames="graphdef")
def _embed(graphdef, state, fbank, lengths):
    return nnx.merge(graphdef, state)(fbank, lengths).sentence_embeddings


def embed(model, fbank, lengths):
    graphdef, state = nnx.split(model)
    return np.asarray(_embed(graphdef, state, jnp.asarray(fbank), jnp.asarray(lengths)))


@pytest.fixture(scope="module")
def encoder_dir(tiny_speech_dir):
    return tiny_speech_dir


@pytest.fixture(scope="module")
def s2e(encoder_dir):
    return SpeechToEmbeddingModelPipeline(encoder_dir)


def _waves(seconds, seed=0):
    """Noisy tones: real fbank statistics without shipping audio."""
    rng = np.random.default_rng(seed)
    waves = []
    for i, s in enumerate(seconds):
        t = np.arange(int(s * SAMPLE_RATE)) / SAMPLE_RATE
        tone = 0.3 * np.sin(2 * np.pi * (220 + 110 * i) * t)
        waves.append((tone + 0.05 * rng.standard_normal(t.shape)).astype(np.float32))
    return waves


def _padded(fbanks):
    width = max(len(f) for f in fbanks)
    out = np.zeros((len(fbanks), width, fbanks[0].shape[1]), np.float32)
    for row, f in enumerate(fbanks):
        out[row, : len(f)] = f
    return out, np.array([len(f) for f in fbanks], np.int32)


def test_shift_gives_each_key_its_relative_position():
    s = 6
    bd = np.random.default_rng(0).standard_normal((2, 3, s, 2 * s - 1)).astype(np.float32)
    shifted = np.asarray(shift_relative_scores(jnp.asarray(bd)))
    i, j = np.meshgrid(np.arange(s), np.arange(s), indexing="ij")
    np.testing.assert_array_equal(shifted, bd[..., i, s - 1 - i + j])


def test_relative_position_bias_is_one_pass_over_scores_in_the_compute_dtype():
    """The position scores [.., S, 2S − 1] come out of their product in bfloat16 (not float32),
    and the shift reads them without fairseq2's padded [.., S, 2S] copy (no pad at all)."""
    from sonar_jax.models.conformer import RelativePositionAttention

    cfg = speech_model_config("speech_tiny", dtype="bfloat16", param_dtype="bfloat16")
    layer = RelativePositionAttention(cfg, nnx.Rngs(0))
    frames = 24
    x = jnp.ones((2, frames, cfg.model_dim), jnp.bfloat16)
    jaxpr = jax.make_jaxpr(lambda x, lengths: layer(x, lengths))(x, jnp.array([frames, 10]))
    eqns = jaxpr.jaxpr.eqns
    scores = [e.outvars[0].aval for e in eqns if e.primitive.name == "dot_general"
              and e.outvars[0].aval.shape[-1] == 2 * frames - 1]
    assert scores and all(aval.dtype == jnp.bfloat16 for aval in scores)
    assert not [e for e in eqns if e.primitive.name == "pad"]


def test_stacking_pairs_frames_and_drops_an_odd_last_one():
    fbank = jnp.arange(2 * 5 * 3, dtype=jnp.float32).reshape(2, 5, 3)
    stacked, lengths = stack_frames(fbank, jnp.array([5, 2]), 2)
    assert stacked.shape == (2, 2, 6)
    np.testing.assert_array_equal(stacked[0, 1], np.concatenate([fbank[0, 2], fbank[0, 3]]))
    np.testing.assert_array_equal(lengths, [2, 1])


def test_input_longer_than_the_position_table_is_refused():
    cfg = speech_model_config("speech_tiny", max_seq_len=16)
    model = nnx.eval_shape(lambda: SpeechEncoder(cfg, rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError, match=r"34 fbank frames .* limit of 16 stacked frames.*split"):
        model.encode(jnp.zeros((1, 34, 80)), jnp.array([34]))
    model.check_length(33)  # 16 stacked frames (the odd last frame is dropped) fit


@pytest.mark.parametrize("name, count", [
    # model.parameters() of the reference's full-size models (the `english` one built by
    # make_speech_fixtures.py --arch english, the `non_english` one by the key-list probe).
    ("speech_english", 658_084_160), ("speech_non_english", 708_474_176)])
def test_released_architectures_have_the_reference_parameter_count(name, count):
    model = nnx.eval_shape(lambda: SpeechEncoder(speech_model_config(name), rngs=nnx.Rngs(0)))
    sizes = [leaf.size for leaf in jax.tree.leaves(nnx.state(model, nnx.Param))]
    assert sum(sizes) == count


@pytest.mark.slow
def test_remat_changes_memory_not_results():
    """Training path: gradients through the scanned, rematerialised Conformer equal plain ones."""
    fbank = jax.random.normal(jax.random.key(0), (2, 40, 80))
    lengths = jnp.array([40, 23])

    def grads(policy):
        cfg = speech_model_config("speech_mid", remat_policy=policy)
        graphdef, state = nnx.split(SpeechEncoder(cfg, rngs=nnx.Rngs(0)))

        def loss(state):
            out = nnx.merge(graphdef, state)(fbank, lengths).sentence_embeddings
            return jnp.sum(out**2)

        return jax.jit(jax.grad(loss))(state)

    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5),
                 grads("none"), grads("full"))


def test_bfloat16_compute_stays_close_to_float32(encoder_dir, fixtures_dir):
    io = np.load(fixtures_dir / "speech" / "tiny_speech_encoder_io.npz")
    out = embed(load_model(encoder_dir, dtype="bfloat16"), io["fbank"], io["fbank_lens"])
    ref = io["sentence_embeddings"]
    rel = np.linalg.norm(out - ref, axis=1) / np.linalg.norm(ref, axis=1)
    assert rel.max() < 2e-2, rel


def test_pipeline_embeds_files_and_waveforms_in_input_order(s2e, tmp_path):
    import soundfile

    waves = _waves([0.6, 0.3, 0.45])  # 58, 28 and 43 fbank frames: one 64-frame shape bucket
    path = tmp_path / "clip.wav"
    soundfile.write(path, waves[1], SAMPLE_RATE, subtype="FLOAT")  # lossless
    inputs = [waves[0], str(path), waves[2]]
    result = s2e.predict(inputs, batch_size=2)
    fbanks = [audio.speech_features(w) for w in waves]
    expected = embed(s2e.model, *_padded(fbanks))
    assert result.shape == (3, 32) and result.dtype == np.float32
    np.testing.assert_allclose(result, expected, atol=1e-5, rtol=0)
    np.testing.assert_allclose(s2e.predict(inputs, batch_size=None, batch_max_frames=100),
                               result, atol=1e-5, rtol=0)


def test_pipeline_refuses_bad_input(s2e, encoder_dir):
    with pytest.raises(TypeError, match="wrap a single one in a list"):
        s2e.predict("clip.wav")
    with pytest.raises(ValueError, match=r"input\[1\] gives 0 fbank frames"):
        s2e.predict(_waves([0.2]) + [np.zeros(300, np.float32)])
    short_limit = SpeechToEmbeddingModelPipeline(load_model(encoder_dir, max_seq_len=20))
    with pytest.raises(ValueError, match=r"input\[0\]: audio of 98 fbank frames.*split"):
        short_limit.predict(_waves([1.0]))


@pytest.fixture(scope="module")
def s2t_dirs(tmp_path_factory, tiny_text_dirs):
    """A random-init speech encoder as wide as the tiny text decoder (64), and that decoder."""
    out = tmp_path_factory.mktemp("s2t")
    cfg = speech_model_config("speech_tiny", model_dim=64, pooler_vocab_size=64)
    model = SpeechEncoder(cfg, rngs=nnx.Rngs(3))
    enc = write_model_dir(out / "enc", "speech_encoder", cfg,
                          nnx.to_pure_dict(nnx.state(model)), None)
    return enc, tiny_text_dirs["decoder"]


def test_speech_to_text_generates_from_the_speech_embeddings(s2t_dirs, monkeypatch):
    """S2T hands the speech embeddings to the text decoder's generation in fixed input-order
    batches, each limited like the reference: 2 prompt tokens + its longest input in fbank
    frames + 128 new tokens, at most 512 in all."""
    enc, dec = s2t_dirs
    s2t = SpeechToTextModelPipeline(enc, dec)
    waves = _waves([0.4, 0.7, 4.5])
    calls = {}

    def fake_generate(embeddings, batches, lang_id, config, limits, seed, progress_bar):
        calls.update(embeddings=embeddings, batches=[b.indices.tolist() for b in batches],
                     lang_id=lang_id, limits=limits, beam=config.beam_size)
        return [[3 + i] for i in range(len(embeddings))]

    monkeypatch.setattr(s2t.embedding_to_text, "generate_batches", fake_generate)
    texts = s2t.predict(waves, target_lang="fra_Latn", batch_size=2, beam_size=2)
    tokenizer = s2t.embedding_to_text.tokenizer
    assert texts == [tokenizer.decode([3 + i]) for i in range(3)]
    frames = [len(audio.speech_features(w)) for w in waves]
    assert calls["batches"] == [[0, 1], [2]] and calls["beam"] == 2
    assert calls["limits"] == [2 + frames[1] + 128, 512]
    assert calls["lang_id"] == tokenizer.lang_id("fra_Latn")
    np.testing.assert_allclose(calls["embeddings"],
                               SpeechToEmbeddingModelPipeline(enc).predict(waves), atol=1e-6)
    with pytest.raises(ValueError, match="unknown language code 'xyz_Latn'"):
        s2t.predict(waves, target_lang="xyz_Latn")


@pytest.mark.slow
def test_speech_to_text_equals_embedding_to_text_end_to_end(s2t_dirs):
    enc, dec = s2t_dirs
    waves = _waves([0.4, 0.7])
    texts = SpeechToTextModelPipeline(enc, dec).predict(waves, target_lang="fra_Latn",
                                                        beam_size=2, max_seq_len=10)
    embeddings = SpeechToEmbeddingModelPipeline(enc).predict(waves)
    expected = EmbeddingToTextModelPipeline(dec).predict(embeddings, target_lang="fra_Latn",
                                                         beam_size=2, max_seq_len=10)
    assert texts == expected and len(texts) == 2


def test_cli_speech_encode_reads_lists_and_files(tmp_path, s2e, encoder_dir):
    import soundfile

    waves = _waves([0.5, 0.3])
    for i, w in enumerate(waves):
        soundfile.write(tmp_path / f"{i}.wav", w, SAMPLE_RATE, subtype="FLOAT")
    (tmp_path / "clips.txt").write_text("0.wav\n\n# a comment\n")
    out = tmp_path / "emb.npy"
    code = cli_main(["speech-encode", "--model", str(encoder_dir), "--input",
                     str(tmp_path / "clips.txt"), str(tmp_path / "1.wav"), "--output", str(out),
                     "--quiet"])
    assert code == 0
    np.testing.assert_allclose(np.load(out), s2e.predict(waves), atol=1e-5, rtol=0)
    code = cli_main(["speech-encode", "--model", str(encoder_dir), "--input",
                     str(tmp_path / "1.wav"), "--output", str(out), "--quiet"])
    assert code == 2  # an existing output is kept without --overwrite
