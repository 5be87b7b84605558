"""Audio front end: Kaldi fbank and standardisation vs the official SONAR; decoding, resampling.

Reference values come from tests/fixtures/audio/ (made by tests/reference/make_audio_fixtures.py
with fairseq2's WaveformToFbankConverter, as configured by SONAR's speech pipelines).
"""

import sys

import jax
import librosa
import numpy as np
import pytest
import soundfile

from sonar_jax import audio

# fp32 max abs error allowed on log-mel values (magnitude up to ~30) and on standardised features
# (O(1)). Measured on speech: fbank 1.1e-4 eagerly, up to 1.1e-3 in quiet low bins when the whole
# fbank is jitted (XLA fuses the pre-emphasis into an FMA; speech_features avoids that), features
# 3e-5 (9e-5 on full 3-7 s LibriVox clips). The chirp's bins 110 dB below the frame peak sit at fp32
# noise (the reference itself is 2.6e-3 off float64 there): 5.4e-4, 3.4e-3 jitted, 3.6e-4.
ATOL = {"fbank": 5e-4, "fbank_jit": 2e-3, "features": 2e-4}
CHIRP_ATOL = {"fbank": 1e-3, "fbank_jit": 5e-3, "features": 1e-3}
ARRAY_CASES = ["speech_de", "chirp_noise", "odd_length", "one_frame", "too_short", "silence"]


@pytest.fixture(scope="module")
def ref(fixtures_dir):
    with np.load(fixtures_dir / "audio" / "reference_features.npz") as z:
        return dict(z)


@pytest.fixture(scope="module")
def speech_wav(fixtures_dir):
    return fixtures_dir / "audio" / "speech_en.wav"


def _pcm(wave: np.ndarray) -> np.ndarray:
    """The float waveform the reference was fed (int16 fixtures are PCM / 32768)."""
    return wave.astype(np.float32) / 32768.0 if wave.dtype == np.int16 else wave


def _write(path, wave, rate):
    soundfile.write(path, wave, rate, subtype="FLOAT")
    return path


@pytest.mark.parametrize("case", ARRAY_CASES)
def test_fbank_matches_reference(ref, case):
    ours = np.asarray(audio.fbank(_pcm(ref[f"{case}/waveform"])))
    expected = ref[f"{case}/fbank"]
    assert ours.shape == expected.shape
    atol = (CHIRP_ATOL if case == "chirp_noise" else ATOL)["fbank"]
    np.testing.assert_allclose(ours, expected, rtol=0, atol=atol)


@pytest.mark.parametrize("case", ["speech_de", "chirp_noise", "odd_length", "too_short"])
def test_speech_features_match_reference(ref, case):
    # int16 cases go in as int16 arrays: speech_features scales PCM like the reference's decoder.
    ours = audio.speech_features(ref[f"{case}/waveform"])
    assert ours.dtype == np.float32
    atol = (CHIRP_ATOL if case == "chirp_noise" else ATOL)["features"]
    np.testing.assert_allclose(ours, ref[f"{case}/features"], rtol=0, atol=atol)


def test_speech_file_matches_reference(ref, speech_wav):
    """The whole file path: libsndfile decoding, fbank, standardisation (real LibriVox speech)."""
    np.testing.assert_allclose(np.asarray(audio.fbank(audio.load_audio(speech_wav))),
                               ref["speech_en/fbank"], rtol=0, atol=ATOL["fbank"])
    np.testing.assert_allclose(audio.speech_features(speech_wav), ref["speech_en/features"],
                               rtol=0, atol=ATOL["features"])


@pytest.mark.parametrize("case", ["one_frame", "silence"])
def test_degenerate_std_is_guarded(ref, case):
    """The reference divides by a zero std (NaN); we return finite values at 0 instead."""
    assert np.isnan(ref[f"{case}/features"]).all()
    ours = audio.speech_features(ref[f"{case}/waveform"])
    assert ours.shape == ref[f"{case}/features"].shape
    np.testing.assert_allclose(ours, 0.0, atol=1e-2)


def test_silence_and_constant_audio_are_finite():
    for wave in (np.zeros(16000, np.float32), np.full(16000, 0.25, np.float32)):
        feats = audio.speech_features(wave)
        assert feats.shape == (98, audio.NUM_MEL_BINS) and np.isfinite(feats).all()


@pytest.mark.parametrize("case", ["odd_length", "chirp_noise"])
def test_fbank_jit_matches_eager_and_reference(ref, case):
    wave = _pcm(ref[f"{case}/waveform"])
    jitted = np.asarray(jax.jit(audio.fbank)(wave))
    atol = (CHIRP_ATOL if case == "chirp_noise" else ATOL)["fbank_jit"]
    np.testing.assert_allclose(jitted, np.asarray(audio.fbank(wave)), rtol=0, atol=atol)
    np.testing.assert_allclose(jitted, ref[f"{case}/fbank"], rtol=0, atol=atol)


def test_standardize_ignores_padding_rows():
    x = np.random.default_rng(2).normal(size=(64, 80)).astype(np.float32)
    padded = np.concatenate([x, np.full((36, 80), 1e4, np.float32)])
    np.testing.assert_allclose(np.asarray(jax.jit(audio.standardize)(padded, 64))[:64],
                               np.asarray(audio.standardize(x)), rtol=0, atol=1e-6)


@pytest.mark.parametrize("num_samples", [0, 399, 400, 401, 559, 560, 4321])
def test_frame_count(num_samples):
    expected = 0 if num_samples < 400 else 1 + (num_samples - 400) // 160
    assert audio.num_frames(num_samples) == expected
    shape = jax.eval_shape(audio.fbank, jax.ShapeDtypeStruct((num_samples,), np.float32)).shape
    assert shape == (expected, audio.NUM_MEL_BINS)


def test_standardize_uses_unbiased_std():
    x = np.random.default_rng(0).normal(3.0, 2.0, size=(37, 80)).astype(np.float32)
    expected = (x - x.mean(0)) / x.std(0, ddof=1)
    np.testing.assert_allclose(np.asarray(audio.standardize(x)), expected, rtol=1e-5, atol=1e-5)


def test_load_audio_stereo_takes_first_channel(tmp_path):
    rng = np.random.default_rng(1)
    stereo = (0.1 * rng.standard_normal((3000, 2))).astype(np.float32)
    path = _write(tmp_path / "stereo.wav", stereo, audio.SAMPLE_RATE)
    with pytest.warns(UserWarning, match=r"stereo\.wav has 2 channels"):
        mono = audio.load_audio(path)
    np.testing.assert_array_equal(mono, stereo[:, 0])


@pytest.mark.parametrize("rate", [44100, 8000])
def test_load_audio_resamples(tmp_path, ref, rate):
    wave = librosa.resample(_pcm(ref["speech_de/waveform"]), orig_sr=16000, target_sr=rate)
    path = _write(tmp_path / f"speech_{rate}.wav", wave, rate)
    loaded = audio.load_audio(path)
    expected = librosa.resample(wave, orig_sr=rate, target_sr=audio.SAMPLE_RATE)
    assert loaded.dtype == np.float32
    np.testing.assert_allclose(loaded, expected, rtol=0, atol=1e-6)
    np.testing.assert_allclose(audio.speech_features(wave, sample_rate=rate),
                               audio.speech_features(expected), rtol=0, atol=1e-5)


def test_integer_pcm_and_2d_mono_inputs(ref):
    pcm = ref["odd_length/waveform"]
    expected = audio.speech_features(_pcm(pcm))
    np.testing.assert_array_equal(audio.speech_features(pcm), expected)
    np.testing.assert_array_equal(audio.speech_features(_pcm(pcm)[None, :]), expected)
    with pytest.raises(ValueError, match="mono waveform"):
        audio.speech_features(np.zeros((2, 4000), np.float32))


def test_sample_rate_with_path_is_rejected(speech_wav):
    with pytest.raises(ValueError, match="sample_rate"):
        audio.speech_features(speech_wav, sample_rate=16000)


def test_undecodable_and_missing_files(tmp_path):
    garbage = tmp_path / "garbage.wav"
    garbage.write_bytes(b"this is not audio" * 64)
    with pytest.raises(audio.AudioDecodeError, match="garbage.wav"):
        audio.load_audio(garbage)
    with pytest.raises(FileNotFoundError, match="missing.flac"):
        audio.load_audio(tmp_path / "missing.flac")


@pytest.mark.parametrize("fmt,subtype",
                         [("FLAC", "PCM_16"), ("OGG", "VORBIS"), ("MP3", "MPEG_LAYER_III")])
def test_compressed_formats(tmp_path, speech_wav, fmt, subtype):
    if fmt not in soundfile.available_formats():
        pytest.skip(f"this libsndfile cannot write {fmt}")
    wave = audio.load_audio(speech_wav)
    path = tmp_path / f"speech.{fmt.lower()}"
    soundfile.write(path, wave, audio.SAMPLE_RATE, format=fmt, subtype=subtype)
    decoded = audio.load_audio(path)
    assert decoded.dtype == np.float32 and decoded.ndim == 1
    if fmt == "FLAC":  # lossless: bit-exact
        np.testing.assert_array_equal(decoded, wave)
    else:  # lossy: same duration (codec delay aside) and similar loudness
        assert abs(decoded.size - wave.size) <= 2 * 1152
        assert np.std(decoded) == pytest.approx(np.std(wave), rel=0.2)


def test_missing_audio_extra_is_explained(monkeypatch, speech_wav):
    monkeypatch.setitem(sys.modules, "soundfile", None)
    with pytest.raises(ImportError, match=r"sonar_jax\[audio\]"):
        audio.load_audio(speech_wav)
