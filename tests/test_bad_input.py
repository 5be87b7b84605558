"""Bad input across the API and the CLI, as a new user meets it: every case asserts the exit
status (CLI: 2 usage, 1 failure) or the exception type, and that the message names the problem
(the file, flag, language or shape) so the user knows what to fix."""

import json
import logging
import shutil
import zipfile

import numpy as np
import pytest

from sonar_jax import audio, cli
from sonar_jax.errors import UsageError
from sonar_jax.pipelines import EmbeddingToTextModelPipeline, TextToEmbeddingModelPipeline
from sonar_jax.speech_pipelines import SpeechToEmbeddingModelPipeline
from sonar_jax.tokenizer import NllbTokenizer, UnknownLanguageError


@pytest.fixture(scope="module")
def encoder(tiny_text_dirs):
    return tiny_text_dirs["encoder"]


@pytest.fixture(scope="module")
def decoder(tiny_text_dirs):
    return tiny_text_dirs["decoder"]


@pytest.fixture(scope="module")
def t2e(encoder):
    return TextToEmbeddingModelPipeline(encoder)


@pytest.fixture(scope="module")
def embeddings(t2e):
    return t2e.predict(["Hello world.", "A second sentence."], "eng_Latn")


def run(capsys, *argv) -> tuple[int, str]:
    """(exit status, standard error) of `sonar-jax ARGV` run in this process."""
    code = cli.main([str(arg) for arg in argv])
    return code, capsys.readouterr().err


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if ": error: " in line]
    assert len(lines) == 1, err
    return lines[0]


# --- language codes ---------------------------------------------------------------------------

def test_unknown_language_names_the_code(t2e):
    with pytest.raises(UnknownLanguageError, match="unknown language code 'xx_Yyyy'"):
        t2e.predict(["hi"], "xx_Yyyy")


def test_miscased_language_suggests_the_right_case(t2e):
    with pytest.raises(UsageError, match="did you mean eng_Latn.*case-sensitive"):
        t2e.predict(["hi"], "eng_latn")


def test_cli_unknown_language_is_a_usage_error_with_suggestions(capsys, encoder, tmp_path):
    (tmp_path / "in.txt").write_text("Hello\n")
    code, err = run(capsys, "encode", "--model", encoder, "--lang", "fra_Lat",
                    "--input", tmp_path / "in.txt", "--quiet")
    assert code == 2 and "'fra_Lat'" in one_error_line(err) and "fra_Latn" in err
    assert not (tmp_path / "in.txt.npy").exists()


def test_cli_decode_miscased_target_language(capsys, decoder, embeddings, tmp_path):
    np.save(tmp_path / "e.npy", embeddings)
    code, err = run(capsys, "decode", "--model", decoder, "--lang", "FRA_LATN",
                    "--input", tmp_path / "e.npy", "--quiet")
    assert code == 2 and "did you mean fra_Latn" in one_error_line(err)


def test_cli_translate_unknown_target_language(capsys, encoder, decoder, tmp_path):
    (tmp_path / "in.txt").write_text("Hello\n")
    code, err = run(capsys, "translate", "--encoder", encoder, "--decoder", decoder,
                    "--src", "eng_Latn", "--tgt", "klingon", "--input", tmp_path / "in.txt",
                    "--output", tmp_path / "out.txt", "--quiet")
    assert code == 2 and "'klingon'" in one_error_line(err)
    assert not (tmp_path / "out.txt").exists()


# --- text input -------------------------------------------------------------------------------

def test_empty_input_file(capsys, encoder, tmp_path):
    (tmp_path / "empty.txt").write_text("")
    code, err = run(capsys, "encode", "--model", encoder, "--lang", "eng_Latn",
                    "--input", tmp_path / "empty.txt", "--quiet")
    assert code == 1 and "empty.txt is empty" in one_error_line(err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.txt"]


def test_blank_lines_keep_one_row_each_with_a_warning(capsys, caplog, encoder, tmp_path):
    (tmp_path / "in.txt").write_text("Hello\n\nWorld\n   \n")
    with caplog.at_level(logging.WARNING):
        code, err = run(capsys, "encode", "--model", encoder, "--lang", "eng_Latn",
                        "--input", tmp_path / "in.txt", "--quiet")
    assert code == 0, err
    assert np.load(tmp_path / "in.txt.npy").shape[0] == 4
    warned = [r.getMessage() for r in caplog.records if "blank line" in r.getMessage()]
    assert len(warned) == 1 and "2 blank line(s) (line 2, 4)" in warned[0]


def test_non_utf8_bytes_name_the_line(capsys, encoder, tmp_path):
    (tmp_path / "latin1.txt").write_bytes("ok\ncaf\xe9\n".encode("latin-1"))
    code, err = run(capsys, "encode", "--model", encoder, "--lang", "eng_Latn",
                    "--input", tmp_path / "latin1.txt", "--quiet")
    line = one_error_line(err)
    assert code == 1 and "latin1.txt line 2 is not UTF-8" in line and "0xe9" in line
    assert not (tmp_path / "latin1.txt.npy").exists()


def test_a_very_long_line_is_truncated_with_one_warning(capsys, caplog, encoder, tmp_path):
    (tmp_path / "long.txt").write_text("word " * 10_000 + "\nshort\n" + "more " * 10_000 + "\n")
    with caplog.at_level(logging.WARNING):
        code, err = run(capsys, "encode", "--model", encoder, "--lang", "eng_Latn",
                        "--input", tmp_path / "long.txt", "--quiet")
    assert code == 0, err
    warned = [r.getMessage() for r in caplog.records if "truncated" in r.getMessage()]
    assert len(warned) == 1 and warned[0].startswith("2 of 3 sentences are longer than")


def test_translating_long_lines_warns_once_per_file(capsys, caplog, encoder, decoder,
                                                    monkeypatch, tmp_path):
    from sonar_jax import streaming

    real = streaming.translate_file
    monkeypatch.setattr(streaming, "translate_file",
                        lambda *args, **kwargs: real(*args, **{**kwargs, "chunk": 1}))
    (tmp_path / "long.txt").write_text("word " * 10_000 + "\nshort\n" + "more " * 10_000 + "\n")
    with caplog.at_level(logging.WARNING):
        code, err = run(capsys, "translate", "--encoder", encoder, "--decoder", decoder,
                        "--src", "eng_Latn", "--tgt", "fra_Latn", "--input", tmp_path / "long.txt",
                        "--output", tmp_path / "out.txt", "--beam-size", "1",
                        "--max-seq-len", "4", "--quiet")
    assert code == 0, err
    assert len((tmp_path / "out.txt").read_text().splitlines()) == 3
    warned = [r.getMessage() for r in caplog.records if "truncated" in r.getMessage()]
    assert len(warned) == 1 and warned[0].startswith("2 of 3 sentences are longer than")


def test_missing_input_file(capsys, encoder, tmp_path):
    code, err = run(capsys, "encode", "--model", encoder, "--lang", "eng_Latn",
                    "--input", tmp_path / "nope.txt", "--quiet")
    assert code == 1 and "nope.txt does not exist" in one_error_line(err)


def test_a_non_string_sentence_is_named(t2e):
    with pytest.raises(TypeError, match=r"input\[1\] is a int"):
        t2e.predict(["fine", 3], "eng_Latn")


# --- embeddings files -------------------------------------------------------------------------

@pytest.mark.parametrize("make, message", [
    (lambda e: e[:, :10], "must have shape [N, 64], got [2, 10]"),
    (lambda e: e[0], "must have shape [N, 64], got [64]"),
    (lambda e: np.where(np.arange(2)[:, None] == 1, np.nan, e), "NaN or inf in rows [1]"),
    (lambda e: e.astype(np.int64), "holds int64 values; embeddings are floating point"),
], ids=["wrong-width", "one-dimensional", "nan-row", "integer-dtype"])
def test_bad_embeddings_npy(capsys, decoder, embeddings, tmp_path, make, message):
    np.save(tmp_path / "e.npy", make(embeddings))
    code, err = run(capsys, "decode", "--model", decoder, "--lang", "fra_Latn",
                    "--input", tmp_path / "e.npy", "--output", tmp_path / "out.txt", "--quiet")
    line = one_error_line(err)
    assert code == 1 and "--input" in line and "e.npy" in line and message in line
    assert not (tmp_path / "out.txt").exists()


def test_embeddings_that_are_not_npy(capsys, decoder, tmp_path):
    (tmp_path / "e.npy").write_text("these are words\n")
    code, err = run(capsys, "decode", "--model", decoder, "--lang", "fra_Latn",
                    "--input", tmp_path / "e.npy", "--quiet")
    assert code == 1 and "e.npy is not a .npy array of embeddings" in one_error_line(err)


def test_api_embeddings_of_the_wrong_width(decoder):
    with pytest.raises(ValueError, match=r"shape \[N, 64\].*got \[3, 8\]"):
        EmbeddingToTextModelPipeline(decoder).predict(np.zeros((3, 8), np.float32), "fra_Latn")


# --- converted model directories --------------------------------------------------------------

def _damaged_copy(source, tmp_path, damage):
    copy = tmp_path / "model"
    shutil.copytree(source, copy)
    damage(copy)
    return copy


def _largest_params_file(model):
    return max((p for p in (model / "params").rglob("*") if p.is_file()),
               key=lambda p: p.stat().st_size)


def _truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _edit_config(model, **changes):
    config = json.loads((model / "config.json").read_text())
    config["model"].update(changes)
    (model / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize("damage, error, message", [
    (lambda m: _largest_params_file(m).unlink(), FileNotFoundError,
     r"params/.* is missing; the directory is incomplete or damaged; convert the model again"),
    (lambda m: _truncate(_largest_params_file(m)), ValueError,
     r"params/.* has \d+ bytes, not the \d+ it was written with"),
    (lambda m: (m / "config.json").write_text(""), ValueError, r"config.json is not valid JSON"),
    (lambda m: (m / "tokenizer.model").write_bytes(b""), ValueError,
     r"tokenizer.model has 0 bytes, not the \d+"),
    (lambda m: _edit_config(m, model_dimm=64), ValueError,
     r"not a valid TextModelConfig \(unknown TextModelConfig fields \['model_dimm'\]"),
    (lambda m: _edit_config(m, num_layers="two"), ValueError,
     r"TextModelConfig.num_layers is 'two', not of type int"),
    (lambda m: (m / "config.json").write_text('{"format": 2, "kind": "vision_encoder"}'),
     ValueError, r"unknown model kind 'vision_encoder'"),
    (lambda m: (m / "config.json").unlink(), FileNotFoundError,
     r"is not a converted sonar_jax model directory \(no config.json\)"),
], ids=["missing-file", "truncated-file", "zero-byte-config", "zero-byte-tokenizer",
        "unknown-config-field", "wrong-config-type", "unknown-kind", "no-config"])
def test_damaged_model_directory(encoder, tmp_path, damage, error, message):
    model = _damaged_copy(encoder, tmp_path, damage)
    with pytest.raises(error, match=message):
        TextToEmbeddingModelPipeline(model)


def test_cli_damaged_model_is_one_line_exit_1(capsys, encoder, tmp_path):
    model = _damaged_copy(encoder, tmp_path, lambda m: _truncate(_largest_params_file(m)))
    (tmp_path / "in.txt").write_text("Hello\n")
    code, err = run(capsys, "encode", "--model", model, "--lang", "eng_Latn",
                    "--input", tmp_path / "in.txt", "--quiet")
    assert code == 1 and "convert the model again" in one_error_line(err)
    assert len(err.strip().splitlines()) == 1


def test_a_tokenizer_that_does_not_fit_the_vocabulary(encoder, fixtures_dir):
    two_languages = NllbTokenizer(fixtures_dir / "spm" / "udhr.spm.model", ["eng_Latn", "fra_Latn"])
    with pytest.raises(ValueError, match=r"has \d+ ids but the model .* has \d+ embedding rows"):
        TextToEmbeddingModelPipeline(encoder, tokenizer=two_languages)


def test_the_directory_of_another_model_kind(capsys, decoder, tiny_speech_dir, tmp_path):
    with pytest.raises(ValueError, match="holds a text_decoder, but a text_encoder was asked for"):
        TextToEmbeddingModelPipeline(decoder)
    (tmp_path / "in.txt").write_text("Hello\n")
    code, err = run(capsys, "encode", "--model", tiny_speech_dir, "--lang", "eng_Latn",
                    "--input", tmp_path / "in.txt", "--quiet")
    assert code == 1 and "holds a speech_encoder" in one_error_line(err)


def test_a_model_that_is_neither_a_directory_nor_a_released_name(capsys, tmp_path):
    (tmp_path / "in.txt").write_text("Hello\n")
    code, err = run(capsys, "encode", "--model", "text_sonar_basic_encodr", "--lang", "eng_Latn",
                    "--input", tmp_path / "in.txt", "--quiet")
    line = one_error_line(err)
    assert code == 1 and "neither a converted model directory nor a released SONAR" in line
    assert "text_sonar_basic_encoder" in line  # the suggestion


# --- conversion ---------------------------------------------------------------------------------

@pytest.fixture
def spm(fixtures_dir):
    return fixtures_dir / "spm" / "udhr.spm.model"


def test_convert_a_file_that_is_not_a_checkpoint(capsys, spm, tmp_path):
    (tmp_path / "notes.pt").write_text("hello")
    code, err = run(capsys, "convert", tmp_path / "notes.pt", tmp_path / "out",
                    "--model", "text_encoder", "--tokenizer", spm)
    assert code == 1 and "notes.pt: not a zip archive" in one_error_line(err)
    assert not (tmp_path / "out").exists()


def test_convert_a_truncated_checkpoint(capsys, fixtures_dir, spm, tmp_path):
    data = (fixtures_dir / "text" / "tiny_text_encoder.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 3])
    code, err = run(capsys, "convert", tmp_path / "cut.pt", tmp_path / "out",
                    "--model", "text_encoder", "--tokenizer", spm, "--num-heads", "4")
    assert code == 1 and "cut.pt: truncated or corrupt" in one_error_line(err)
    assert not (tmp_path / "out").exists()


def test_convert_a_pickle_that_calls_code_runs_nothing(capsys, fixtures_dir, spm, tmp_path):
    marker = tmp_path / "ran"
    payload = f"cbuiltins\nexec\n(S'open({str(marker)!r}, \"w\")'\ntR.".encode()
    with zipfile.ZipFile(fixtures_dir / "text" / "tiny_text_encoder.pt") as src, \
            zipfile.ZipFile(tmp_path / "evil.pt", "w") as dst:
        for item in src.infolist():
            dst.writestr(item, payload if item.filename.endswith("data.pkl") else src.read(item))
    code, err = run(capsys, "convert", tmp_path / "evil.pt", tmp_path / "out",
                    "--model", "text_encoder", "--tokenizer", spm)
    assert code == 1 and "builtins.exec" in one_error_line(err)
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_convert_refuses_an_existing_output_without_overwrite(capsys, fixtures_dir, spm,
                                                              tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "mine.txt").write_text("keep")
    argv = ["convert", fixtures_dir / "text" / "tiny_text_encoder.pt", tmp_path / "out",
            "--model", "text_encoder", "--tokenizer", spm, "--num-heads", "4"]
    code, err = run(capsys, *argv)
    assert code == 2 and "out already exists; pass --overwrite" in one_error_line(err)
    assert (tmp_path / "out" / "mine.txt").read_text() == "keep"
    assert run(capsys, *argv, "--overwrite")[0] == 0
    assert (tmp_path / "out" / "config.json").is_file()
    assert not (tmp_path / "out" / "mine.txt").exists() and _files_of(tmp_path) == ["out"]


def _files_of(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_convert_creates_a_missing_parent_folder(capsys, fixtures_dir, spm, tmp_path):
    """A model store starts empty: the output's missing parents are made, not refused."""
    out = tmp_path / "store" / "text_sonar_basic_encoder"
    code, err = run(capsys, "convert", fixtures_dir / "text" / "tiny_text_encoder.pt", out,
                    "--model", "text_encoder", "--tokenizer", spm, "--num-heads", "4")
    assert code == 0 and (out / "config.json").is_file(), err


def test_convert_a_text_model_without_its_tokenizer(capsys, fixtures_dir, tmp_path):
    code, err = run(capsys, "convert", fixtures_dir / "text" / "tiny_text_encoder.pt",
                    tmp_path / "out", "--model", "text_encoder")
    assert code == 2 and "pass --tokenizer" in one_error_line(err)


def test_convert_with_a_tokenizer_that_is_not_sentencepiece(capsys, fixtures_dir, tmp_path):
    (tmp_path / "vocab.txt").write_text("not a model\n")
    code, err = run(capsys, "convert", fixtures_dir / "text" / "tiny_text_encoder.pt",
                    tmp_path / "out", "--model", "text_encoder", "--tokenizer",
                    tmp_path / "vocab.txt")
    assert code == 1 and "vocab.txt is not a readable SentencePiece model" in one_error_line(err)


# --- audio --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def s2e(tiny_speech_dir):
    return SpeechToEmbeddingModelPipeline(tiny_speech_dir)


def _wav(path, samples, rate=16000):
    import soundfile

    soundfile.write(path, samples, rate)
    return str(path)


def _noise(seconds, rate=16000, channels=1):
    shape = (int(seconds * rate),) if channels == 1 else (int(seconds * rate), channels)
    return np.random.default_rng(0).normal(0, 0.1, shape).astype(np.float32)


def test_silent_audio_is_embedded_with_a_warning(s2e, caplog, tmp_path):
    with caplog.at_level(logging.WARNING):
        out = s2e.predict([_wav(tmp_path / "quiet.wav", np.zeros(32000, np.float32))])
    assert np.isfinite(out).all()
    assert any("quiet.wav) is silent" in r.getMessage() for r in caplog.records)


def test_8khz_audio_is_resampled_with_a_warning(s2e, monkeypatch, tmp_path):
    monkeypatch.setattr(audio, "_RESAMPLED_RATES", set())
    with pytest.warns(UserWarning, match=r"phone.wav is sampled at 8000 Hz; it is resampled"):
        out = s2e.predict([_wav(tmp_path / "phone.wav", _noise(2, 8000), 8000)])
    assert out.shape == (1, s2e.model.cfg.model_dim)


def test_stereo_audio_uses_the_first_channel_with_a_warning(s2e, tmp_path):
    with pytest.warns(UserWarning, match=r"stereo.wav has 2 channels; using only the first"):
        s2e.predict([_wav(tmp_path / "stereo.wav", _noise(2, channels=2))])


def test_audio_longer_than_the_encoder_takes(s2e, tmp_path):
    with pytest.raises(ValueError, match=r"long.wav\): audio of \d+ fbank frames \(100.0 s\) is "
                                         r"longer than the speech encoder's limit"):
        s2e.predict([_wav(tmp_path / "long.wav", _noise(100))])


def test_zero_length_audio(s2e, tmp_path):
    with pytest.raises(ValueError, match=r"empty.wav\) gives 0 fbank frames"):
        s2e.predict([_wav(tmp_path / "empty.wav", np.zeros(0, np.float32))])


def test_a_text_file_named_wav(capsys, tiny_speech_dir, tmp_path):
    (tmp_path / "notes.wav").write_text("this is not audio\n")
    code, err = run(capsys, "speech-encode", "--model", tiny_speech_dir,
                    "--input", tmp_path / "notes.wav", "--quiet")
    assert code == 1 and "Cannot decode audio file" in one_error_line(err) and "notes.wav" in err
    assert not (tmp_path / "notes.wav.npy").exists()


# --- evaluate -----------------------------------------------------------------------------------

@pytest.fixture
def flores(tmp_path):
    (tmp_path / "dev").mkdir()
    (tmp_path / "dev" / "eng_Latn.dev").write_text("one\ntwo\nthree\nfour\nfive\n")
    (tmp_path / "dev" / "fra_Latn.dev").write_text("un\ndeux\ntrois\nquatre\ncinq\n")
    return tmp_path


def test_evaluate_with_mismatched_line_counts(capsys, encoder, flores):
    (flores / "dev" / "fra_Latn.dev").write_text("un\ndeux\n")
    code, err = run(capsys, "evaluate", "--data", flores, "--split", "dev",
                    "--encoder", encoder, "--quiet")
    assert code == 1 and "fra_Latn has 2 sentences but the pivot eng_Latn has 5" in err


def test_evaluate_languages_missing_from_the_folder(capsys, encoder, flores):
    code, err = run(capsys, "evaluate", "--data", flores, "--split", "dev",
                    "--encoder", encoder, "--langs", "fra_Latn,deu_Latn", "--quiet")
    line = one_error_line(err)
    assert code == 1 and "no sentences for deu_Latn" in line and "eng_Latn, fra_Latn" in line


def test_evaluate_with_nothing_to_evaluate_is_a_usage_error(capsys, flores):
    code, err = run(capsys, "evaluate", "--data", flores, "--split", "dev", "--quiet")
    assert code == 2 and "nothing to evaluate" in one_error_line(err)


# --- train --------------------------------------------------------------------------------------

def test_train_unknown_config_field_lists_the_fields(capsys, tmp_path):
    code, err = run(capsys, "train", "--config=text:tiny", f"--workdir={tmp_path / 'w'}",
                    "--config.optim.learning_rate=0.1")
    line = one_error_line(err)
    assert code == 2 and "--config.optim.learning_rate" in line and "lr" in line
    assert not (tmp_path / "w").exists()


def test_train_value_of_the_wrong_type(capsys, tmp_path):
    code, err = run(capsys, "train", "--config=text:tiny", f"--workdir={tmp_path / 'w'}",
                    "--config.optim.warmup_steps=1.5")
    assert code == 2 and "--config.optim.warmup_steps=1.5" in one_error_line(err)


def test_train_mesh_that_does_not_fit_the_devices(capsys, tmp_path):
    code, err = run(capsys, "train", "--config=text:tiny", f"--workdir={tmp_path / 'w'}",
                    "--config.mesh.fsdp=3")
    assert code == 1 and "make 3 devices, but there are 8" in one_error_line(err)
    assert not (tmp_path / "w").exists()


def test_a_batch_the_mesh_cannot_divide():
    from sonar_jax.train import aot

    with pytest.raises(ValueError, match=r"6 rows per microbatch .* cannot be split over the "
                                         r"mesh's batch axes \{'fsdp': 4\}"):
        aot.main(["aot_compile", "--config=text:tiny", "--topology=v5litepod-4",
                  "--batch_rows=6"])


def test_train_data_path_that_does_not_exist(capsys, tmp_path):
    code, err = run(capsys, "train", "--config=text:tiny", f"--workdir={tmp_path / 'w'}",
                    f"--config.data.path={tmp_path / 'nowhere'}")
    assert code == 1 and "nowhere/train does not exist" in one_error_line(err)


def test_train_without_a_workdir(capsys):
    code, err = run(capsys, "train", "--config=text:tiny")
    assert code == 2 and "--workdir required" in one_error_line(err)


# --- the command line itself ----------------------------------------------------------------------

def test_an_unknown_subcommand_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["embedd"])
    assert exit_.value.code == 2 and "invalid choice: 'embedd'" in capsys.readouterr().err


def test_a_batch_size_of_zero(capsys, encoder):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["encode", "--model", str(encoder), "--lang", "eng_Latn", "--batch-size", "0"])
    assert exit_.value.code == 2 and "--batch-size: 0 must be at least 1" in capsys.readouterr().err


def test_an_output_in_a_missing_folder(capsys, encoder, tmp_path):
    (tmp_path / "in.txt").write_text("Hello\n")
    code, err = run(capsys, "encode", "--model", encoder, "--lang", "eng_Latn",
                    "--input", tmp_path / "in.txt", "--output", tmp_path / "no" / "out.npy")
    assert code == 2 and f"the folder {tmp_path / 'no'} does not exist" in one_error_line(err)


def test_an_existing_output_needs_overwrite(capsys, encoder, tmp_path):
    (tmp_path / "in.txt").write_text("Hello\n")
    (tmp_path / "out.npy").write_bytes(b"keep me")
    code, err = run(capsys, "encode", "--model", encoder, "--lang", "eng_Latn",
                    "--input", tmp_path / "in.txt", "--output", tmp_path / "out.npy")
    assert code == 2 and "out.npy exists; pass --overwrite" in one_error_line(err)
    assert (tmp_path / "out.npy").read_bytes() == b"keep me"


def test_an_unexpected_error_is_one_line_and_debug_shows_it(capsys, encoder, monkeypatch,
                                                            tmp_path):
    def broken(*args, **kwargs):
        raise RuntimeError("the device went away\nwith a long story")

    monkeypatch.setattr("sonar_jax.streaming.encode_file", broken)
    (tmp_path / "in.txt").write_text("Hello\n")
    argv = ["encode", "--model", encoder, "--lang", "eng_Latn", "--input", tmp_path / "in.txt",
            "--quiet"]
    code, err = run(capsys, *argv)
    line = one_error_line(err)
    assert code == 1 and "RuntimeError: the device went away with a long story" in line
    assert "--debug" in line and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "in.txt.npy").exists() and not (tmp_path / "in.txt.npy.partial").exists()
    with pytest.raises(RuntimeError, match="the device went away"):
        cli.main([str(a) for a in argv] + ["--debug"])
