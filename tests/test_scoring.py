"""The BLASER / MuTox pipelines and CLI: inputs checked with errors that name the problem, text
and speech routed through the existing encoders, one score per line from `sonar-jax`.
Parity with the reference is tests/test_heads.py's job; here scores are compared with the
same models run from Python."""

import numpy as np
import pytest

from sonar_jax.cli import main as cli_main
from sonar_jax.convert import convert_checkpoint
from sonar_jax.scoring_pipelines import (BlaserPipeline, MutoxClassifierPipeline,
                                         MutoxSpeechClassifierPipeline, load_blaser_model,
                                         load_mutox_model)

TRAINED_ENCODER = "trained/main_job_tiny/encoder"  # 64-d, languages of the LibreOffice sample


@pytest.fixture(scope="module")
def heads(fixtures_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("heads")
    source = fixtures_dir / "heads"
    return {"qe": convert_checkpoint(source / "blaser_qe.pt", out / "qe", "blaser"),
            "ref": convert_checkpoint(source / "blaser_ref.pt", out / "ref", "blaser",
                                      embedding_dim=64),
            "mutox": convert_checkpoint(source / "mutox.pt", out / "mutox", "mutox"),
            "mutox_speech": convert_checkpoint(source / "mutox_speech.pt", out / "mutox_speech",
                                               "mutox")}


@pytest.fixture(scope="module")
def io(fixtures_dir):
    return dict(np.load(fixtures_dir / "heads" / "heads_io.npz"))


@pytest.fixture(scope="module")
def qe(heads):
    return BlaserPipeline(heads["qe"])


@pytest.fixture(scope="module")
def ref(heads):
    return BlaserPipeline(heads["ref"])


def test_scores_do_not_depend_on_batching(qe, io):
    whole = qe.score(io["src"], io["mt"])
    assert whole.shape == (8,) and whole.dtype == np.float32
    np.testing.assert_array_equal(qe.score(io["src"][:1], io["mt"][:1]), whole[:1])
    np.testing.assert_allclose(qe.score(io["src"], io["mt"], batch_size=3), whole, atol=1e-6)
    assert qe.score(io["src"][:0], io["mt"][:0]).shape == (0,)


def test_the_modules_keep_the_reference_call(heads, io):
    blaser, mutox = load_blaser_model(heads["ref"]), load_mutox_model(heads["mutox"])
    assert blaser(io["src"], io["mt"], io["ref"]).shape == (8, 1)
    probs = np.asarray(mutox(io["mutox_inputs"], output_prob=True))
    assert probs.shape == (8, 1) and ((probs > 0) & (probs < 1)).all()
    with pytest.raises(ValueError, match="holds a mutox, but a blaser was asked for"):
        load_blaser_model(heads["mutox"])


@pytest.mark.parametrize("change, message", [
    (dict(src=np.zeros((8, 32))), r"src embeddings must have shape \[N, 64\].*got \[8, 32\]"),
    (dict(mt=np.zeros(64)), r"mt embeddings must have shape \[N, 64\]"),
    (dict(mt=np.full((8, 64), np.nan)), r"mt embeddings: NaN or inf in rows \[0, 1, 2"),
    (dict(src=np.zeros((7, 64))), r"row counts differ \(src 7, mt 8\)"),
])
def test_bad_embeddings_are_named(qe, io, change, message):
    arrays = {"src": io["src"], "mt": io["mt"], **change}
    with pytest.raises(ValueError, match=message):
        qe.score(**arrays)


def test_the_reference_goes_with_the_reference_based_model_only(qe, ref, io):
    with pytest.raises(ValueError, match="reference-free.*drop ref"):
        qe.score(io["src"], io["mt"], io["ref"])
    with pytest.raises(ValueError, match="reference-based.*pass the reference"):
        ref.score(io["src"], io["mt"])
    with pytest.raises(ValueError, match=r"row counts differ \(src 8, mt 8, ref 3\)"):
        ref.score(io["src"], io["mt"], io["ref"][:3])


@pytest.fixture(scope="module")
def encoder(fixtures_dir):
    return fixtures_dir / TRAINED_ENCODER


SRC = ["The document could not be saved.", "Open the file.", "Close the window."]
MT = ["Le document n'a pas pu être enregistré.", "Ouvrir le fichier.", "Fermer la fenêtre."]


def test_text_pairs_are_scored_in_one_call(heads, encoder):
    pipeline = BlaserPipeline(heads["ref"], encoder=encoder)
    embed = pipeline.text_to_embedding.predict
    expected = pipeline.score(embed(SRC, "eng_Latn"), embed(MT, "fra_Latn"),
                              embed(MT[::-1], "fra_Latn"))
    scores = pipeline.predict(SRC, MT, "eng_Latn", "fra_Latn", ref=MT[::-1])
    np.testing.assert_allclose(scores, expected, atol=1e-6)
    with pytest.raises(ValueError, match=r"line counts differ \(src 3, mt 2, ref 3\)"):
        pipeline.predict(SRC, MT[:2], "eng_Latn", "fra_Latn", ref=MT)
    with pytest.raises(ValueError, match="unknown language code 'fr_Latn'"):
        pipeline.predict(SRC, MT, "eng_Latn", "fr_Latn", ref=MT)
    with pytest.raises(ValueError, match="needs a text encoder"):
        BlaserPipeline(heads["ref"]).predict(SRC, MT, "eng_Latn", "fra_Latn", ref=MT)


def test_models_of_different_widths_are_not_paired(heads, speech_encoder):
    with pytest.raises(ValueError, match="32-d embeddings but this MuTox model reads 64-d"):
        MutoxSpeechClassifierPipeline(heads["mutox"], speech_encoder)


@pytest.fixture(scope="module")
def speech_encoder(tiny_speech_dir):
    return tiny_speech_dir


def run(capsys, *argv) -> tuple[int, str, str]:
    code = cli_main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def scores_of(text: str) -> np.ndarray:
    return np.array([float(line) for line in text.splitlines()], np.float32)


def test_cli_converts_and_scores_embedding_files(fixtures_dir, tmp_path, io, capsys):
    for name in ("src", "mt", "ref"):
        np.save(tmp_path / f"{name}.npy", io[name])
    code, _, err = run(capsys, "convert", fixtures_dir / "heads" / "blaser_ref.pt",
                       tmp_path / "ref", "--model", "blaser")
    assert code == 1 and "pass --embedding-dim" in err
    assert run(capsys, "convert", fixtures_dir / "heads" / "blaser_ref.pt", tmp_path / "ref",
               "--model", "blaser", "--embedding-dim", "64")[0] == 0
    code, out, err = run(capsys, "blaser", "--model", tmp_path / "ref", "--src",
                         tmp_path / "src.npy", "--mt", tmp_path / "mt.npy", "--ref",
                         tmp_path / "ref.npy")
    assert code == 0 and "8/8" in err  # the progress bar
    np.testing.assert_allclose(scores_of(out), io["blaser_ref_scores"][:, 0], atol=1e-5)
    code, _, err = run(capsys, "blaser", "--model", tmp_path / "ref", "--src",
                       tmp_path / "src.npy", "--mt", tmp_path / "mt.npy")
    assert code == 2 and "pass the reference translations" in err
    code, _, err = run(capsys, "blaser", "--model", tmp_path / "ref", "--src",
                       tmp_path / "src.npy", "--mt", tmp_path / "missing.npy", "--ref",
                       tmp_path / "ref.npy")
    assert code == 1 and "--mt" in err and "does not exist" in err


def test_cli_scores_text_files_with_an_encoder(heads, encoder, tmp_path, capsys):
    (tmp_path / "src.txt").write_text("\n".join(SRC) + "\n", encoding="utf-8")
    (tmp_path / "mt.txt").write_text("\n".join(MT) + "\n", encoding="utf-8")
    (tmp_path / "short.txt").write_text(MT[0] + "\n", encoding="utf-8")
    common = ["blaser", "--model", heads["qe"], "--encoder", encoder, "--src-lang", "eng_Latn",
              "--mt-lang", "fra_Latn", "--src", tmp_path / "src.txt", "--quiet"]
    out_file = tmp_path / "scores.txt"
    assert run(capsys, *common, "--mt", tmp_path / "mt.txt", "--output", out_file)[0] == 0
    expected = BlaserPipeline(heads["qe"], encoder=encoder).predict(SRC, MT, "eng_Latn",
                                                                    "fra_Latn")
    np.testing.assert_allclose(scores_of(out_file.read_text()), expected, atol=1e-5)
    code, _, err = run(capsys, *common, "--mt", tmp_path / "short.txt")
    assert code == 1 and "line counts differ (src 3, mt 1)" in err
    code, _, err = run(capsys, *common, "--mt", tmp_path / "mt.txt", "--ref",
                       tmp_path / "mt.txt")
    assert code == 2 and "reference-free" in err
    code, _, err = run(capsys, "blaser", "--model", heads["qe"], "--src", tmp_path / "src.txt",
                       "--mt", tmp_path / "mt.txt", "--src-lang", "eng_Latn")
    assert code == 2 and "--src-lang" in err and "need --encoder" in err
    code, _, err = run(capsys, "blaser", "--model", heads["qe"], "--src", tmp_path / "src.txt",
                       "--mt", tmp_path / "mt.txt")
    assert code == 1 and "not a .npy array" in err


def test_cli_classifies_embeddings_and_text(heads, encoder, io, tmp_path, capsys):
    np.save(tmp_path / "emb.npy", io["mutox_inputs"])
    code, out, _ = run(capsys, "mutox", "--model", heads["mutox"], "--embeddings",
                       tmp_path / "emb.npy", "--output-prob", "--quiet")
    assert code == 0
    np.testing.assert_allclose(scores_of(out), io["mutox_probs"][:, 0], atol=1e-6)
    (tmp_path / "in.txt").write_text("\n".join(SRC) + "\n", encoding="utf-8")
    code, out, _ = run(capsys, "mutox", "--model", heads["mutox"], "--text", tmp_path / "in.txt",
                       "--lang", "eng_Latn", "--encoder", encoder, "--quiet")
    expected = MutoxClassifierPipeline(heads["mutox"], encoder=encoder).predict(SRC, "eng_Latn")
    assert code == 0
    np.testing.assert_allclose(scores_of(out), expected, atol=1e-5)
    code, _, err = run(capsys, "mutox", "--model", heads["mutox"], "--text", tmp_path / "in.txt",
                       "--encoder", encoder)
    assert code == 2 and "--text needs --lang" in err
    np.save(tmp_path / "bad.npy", np.zeros((2, 1024), np.float32))
    code, _, err = run(capsys, "mutox", "--model", heads["mutox"], "--embeddings",
                       tmp_path / "bad.npy")
    assert code == 1 and "must have shape [N, 64]" in err


def test_cli_classifies_a_speech_manifest(heads, speech_encoder, fixtures_dir, tmp_path, capsys):
    wav = fixtures_dir / "audio" / "speech_en.wav"
    (tmp_path / "clips.tsv").write_text(f"audio\ttranscription\tlang\n{wav}\t-\teng_Latn\n"
                                        f"{wav}\t-\teng_Latn\n", encoding="utf-8")
    code, out, _ = run(capsys, "mutox", "--model", heads["mutox_speech"], "--speech-manifest",
                       tmp_path / "clips.tsv", "--speech-encoder", speech_encoder, "--quiet")
    assert code == 0
    expected = MutoxSpeechClassifierPipeline(heads["mutox_speech"], speech_encoder).predict(
        [str(wav)])
    np.testing.assert_allclose(scores_of(out), np.repeat(expected, 2), atol=1e-5)
    code, _, err = run(capsys, "mutox", "--model", heads["mutox_speech"], "--speech-manifest",
                       tmp_path / "clips.tsv", "--speech-encoder", speech_encoder, "--encoder",
                       speech_encoder)
    assert code == 2 and "--encoder goes with --text, not --speech-manifest" in err
