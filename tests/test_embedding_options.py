"""Retrieval conveniences (sentence-transformers' conventions): unit-length embeddings, a float16
output, and `similarity`, on the text and speech pipelines and the encode CLIs."""

import numpy as np
import pytest

from sonar_jax import similarity
from sonar_jax.cli import main as cli_main
from sonar_jax.pipelines import TextToEmbeddingModelPipeline
from sonar_jax.speech_pipelines import SpeechToEmbeddingModelPipeline

SENTENCES = ["The document could not be saved.", "Open the file.", ""]


def test_similarity_is_the_cosine_of_rows():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(3, 8)), rng.normal(size=(4, 8))
    expected = (a @ b.T) / np.outer(np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1))
    np.testing.assert_allclose(similarity(a, b), expected, atol=1e-6)
    assert similarity(a[0], b).shape == (1, 4)
    assert similarity(np.zeros(8), b).tolist() == [[0.0] * 4]  # a zero row matches nothing


@pytest.mark.parametrize("a, b, message", [
    (np.zeros((2, 8)), np.zeros((2, 4)), "different widths"),
    (np.full((2, 8), np.nan), np.zeros((2, 8)), r"a: NaN or inf in rows \[0, 1\]"),
    (np.zeros((2, 2, 8)), np.zeros((2, 8)), r"a must have shape \[N, D\], got \[2, 2, 8\]"),
])
def test_similarity_refuses_what_it_cannot_compare(a, b, message):
    with pytest.raises(ValueError, match=message):
        similarity(a, b)


@pytest.fixture(scope="module")
def text_pipeline(fixtures_dir):
    return TextToEmbeddingModelPipeline(fixtures_dir / "trained" / "main_job_tiny" / "encoder")


def test_text_embeddings_normalised_and_in_float16(text_pipeline):
    raw = text_pipeline.predict(SENTENCES, "eng_Latn")
    unit = text_pipeline.predict(SENTENCES, "eng_Latn", normalize_embeddings=True)
    np.testing.assert_allclose(np.linalg.norm(unit, axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(unit, raw / np.linalg.norm(raw, axis=1, keepdims=True), atol=1e-6)
    half = text_pipeline.predict(SENTENCES, "eng_Latn", output_dtype="float16")
    assert half.dtype == np.float16
    np.testing.assert_array_equal(half, raw.astype(np.float16))
    with pytest.raises(ValueError, match=r"output_dtype must be one of \['float32', 'float16'\]"):
        text_pipeline.predict(SENTENCES, "eng_Latn", output_dtype="int8")


def test_encode_cli_writes_unit_float16_rows(fixtures_dir, text_pipeline, tmp_path):
    source = tmp_path / "in.txt"
    source.write_text("\n".join(SENTENCES) + "\n", encoding="utf-8")
    output = tmp_path / "emb.npy"
    assert cli_main(["encode", "--model", str(fixtures_dir / "trained/main_job_tiny/encoder"),
                     "--lang", "eng_Latn", "--input", str(source), "--output", str(output),
                     "--normalize-embeddings", "--output-dtype", "float16", "--quiet"]) == 0
    written = np.load(output)
    expected = text_pipeline.predict(SENTENCES, "eng_Latn", normalize_embeddings=True)
    assert written.dtype == np.float16
    np.testing.assert_array_equal(written, expected.astype(np.float16))


def test_speech_embeddings_normalised_and_in_float16(fixtures_dir, tiny_speech_dir, tmp_path):
    encoder = tiny_speech_dir
    wav = str(fixtures_dir / "audio" / "speech_en.wav")
    pipeline = SpeechToEmbeddingModelPipeline(encoder)
    raw = pipeline.predict([wav])
    unit = pipeline.predict([wav], normalize_embeddings=True, output_dtype="float16")
    assert unit.dtype == np.float16
    np.testing.assert_array_equal(unit, (raw / np.linalg.norm(raw)).astype(np.float16))
    output = tmp_path / "speech.npy"
    assert cli_main(["speech-encode", "--model", str(encoder), "--input", wav, "--output",
                     str(output), "--normalize-embeddings", "--quiet"]) == 0
    np.testing.assert_allclose(np.load(output), raw / np.linalg.norm(raw), atol=1e-6)
