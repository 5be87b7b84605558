"""SONAR's released asset names resolve through the local model store, and a name that is not
there says exactly how to make it."""

import shlex
import shutil

import numpy as np
import pytest

from sonar_jax import cli, model_store
from sonar_jax.models import registry
from sonar_jax.pipelines import EmbeddingToTextModelPipeline, TextToEmbeddingModelPipeline
from sonar_jax.speech_pipelines import SpeechToEmbeddingModelPipeline


@pytest.fixture(scope="module")
def store(tmp_path_factory, tiny_text_dirs, tiny_speech_dir):
    """A store holding the tiny converted models under released names."""
    folder = tmp_path_factory.mktemp("store")
    shutil.copytree(tiny_text_dirs["encoder"], folder / "text_sonar_basic_encoder")
    shutil.copytree(tiny_text_dirs["decoder"], folder / "text_sonar_basic_decoder")
    shutil.copytree(tiny_speech_dir, folder / "sonar_speech_encoder_eng")
    return folder


def test_released_names_load_from_the_store(store, tiny_text_dirs, monkeypatch):
    monkeypatch.setenv(model_store.STORE_ENV, str(store))
    by_name = TextToEmbeddingModelPipeline(encoder="text_sonar_basic_encoder",
                                           tokenizer="text_sonar_basic_encoder")
    by_path = TextToEmbeddingModelPipeline(tiny_text_dirs["encoder"])
    sentences = ["Hello world.", "Bonjour."]
    embeddings = by_name.predict(sentences, "eng_Latn")
    np.testing.assert_array_equal(embeddings, by_path.predict(sentences, "eng_Latn"))
    decoded = EmbeddingToTextModelPipeline("text_sonar_basic_decoder").predict(
        embeddings, "fra_Latn", beam_size=1, max_seq_len=8)
    assert len(decoded) == 2


def test_speech_names_load_from_the_store(store, fixtures_dir, monkeypatch):
    monkeypatch.setenv(model_store.STORE_ENV, str(store))
    out = SpeechToEmbeddingModelPipeline("sonar_speech_encoder_eng").predict(
        [str(fixtures_dir / "audio" / "speech_en.wav")])
    assert out.shape == (1, 32) and np.isfinite(out).all()


def test_cli_model_store_flag(store, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv(model_store.STORE_ENV, raising=False)
    (tmp_path / "in.txt").write_text("Hello\n")
    code = cli.main(["--model-store", str(store), "encode", "--model", "text_sonar_basic_encoder",
                     "--lang", "eng_Latn", "--input", str(tmp_path / "in.txt"), "--quiet"])
    assert code == 0, capsys.readouterr().err
    assert np.load(tmp_path / "in.txt.npy").shape == (1, 64)


@pytest.mark.parametrize("name, command", [
    ("text_sonar_basic_encoder", "sonar-jax convert sonar_text_encoder.pt {store}/"
     "text_sonar_basic_encoder --model text_encoder --tokenizer sentencepiece.source.256000.model"),
    ("text_sonar_finetuned_decoder", "sonar-jax convert finetuned_decoder.pt {store}/"
     "text_sonar_finetuned_decoder --model text_decoder --tokenizer "
     "sentencepiece.source.256000.model"),
    ("sonar_speech_encoder_fra", "sonar-jax convert spenc.v3ap.fra.pt {store}/"
     "sonar_speech_encoder_fra --model speech_encoder"),
    ("sonar_speech_encoder_jpn", "sonar-jax convert spenc.v5ap.jpn.pt {store}/"
     "sonar_speech_encoder_jpn --model speech_encoder"),
    ("blaser_2_0_qe", "sonar-jax convert model.pt {store}/blaser_2_0_qe --model blaser"),
    ("sonar_mutox", "sonar-jax convert mutox.pt {store}/sonar_mutox --model mutox"),
])
def test_a_name_not_in_the_store_gives_the_convert_command(tmp_path, name, command):
    with pytest.raises(FileNotFoundError) as error:
        model_store.locate(name, store=tmp_path)
    message = str(error.value)
    assert f"{name} is not in the model store {tmp_path}" in message
    assert "nothing is downloaded" in message
    assert message.endswith(command.format(store=tmp_path))


def test_the_environment_variable_chooses_the_store(tmp_path, monkeypatch):
    monkeypatch.setenv(model_store.STORE_ENV, str(tmp_path))
    with pytest.raises(FileNotFoundError, match=f"{tmp_path}/text_sonar_basic_decoder"):
        EmbeddingToTextModelPipeline("text_sonar_basic_decoder")
    monkeypatch.delenv(model_store.STORE_ENV)
    assert model_store.store_dir() == model_store.pathlib.Path(
        model_store.DEFAULT_STORE).expanduser()


def test_every_released_name_has_a_convert_command_the_cli_accepts(tmp_path):
    parser = cli.build_parser()
    assert len(model_store.ASSETS) == 63  # 3 text, 57 speech, 2 BLASER, 1 MuTox
    for name, asset in model_store.ASSETS.items():
        assert asset.kind in registry.KINDS
        assert (asset.tokenizer is not None) == registry.kind(asset.kind).has_tokenizer
        args = parser.parse_args(shlex.split(asset.convert_command(tmp_path / name))[1:])
        assert args.model == asset.kind and args.out_dir == str(tmp_path / name)
