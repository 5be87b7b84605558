"""BLASER 2.0 and MuTox parity with the official SONAR on committed fixtures (made by
tests/reference/make_head_fixtures.py), and the converter's reading of their checkpoints.

Every expected score here was computed by the reference. Set SONAR_JAX_HEADS_FULL to the output
folder of `make_head_fixtures.py --full` to run the same parity checks at the released sizes.
"""

import os
import pathlib

import numpy as np
import pytest

from sonar_jax.convert import convert_checkpoint
from sonar_jax.convert.heads import blaser_input_form, linear_stack
from sonar_jax.convert.text import ConversionError
from sonar_jax.model_dir import read_config
from sonar_jax.scoring_pipelines import (BlaserPipeline, MutoxClassifierPipeline,
                                         load_blaser_model)

# fp32 vs the reference, measured max abs error on the committed fixtures (8 fake CPU devices):
# 1.3e-6 (BLASER scores), 5.1e-7 (MuTox logits); at the released sizes 7.7e-6 (1.3e-6 with
# norm_emb on, as released) and 6.1e-7.
ATOL = 1e-5
BLASER = {"blaser_qe": None, "blaser_ref": 64}  # file stem -> --embedding-dim needed
MUTOX = ("mutox", "mutox_speech")


FULL_DIR = os.environ.get("SONAR_JAX_HEADS_FULL")


@pytest.fixture(scope="module", params=[
    pytest.param("small", id="small"),
    pytest.param("released_size", id="released_size", marks=pytest.mark.skipif(
        not FULL_DIR, reason="SONAR_JAX_HEADS_FULL is not set"))])
def heads_dir(request, fixtures_dir):
    return fixtures_dir / "heads" if request.param == "small" else pathlib.Path(FULL_DIR)


@pytest.fixture(scope="module")
def converted(heads_dir, fixtures_dir, tmp_path_factory):
    small = heads_dir == fixtures_dir / "heads"
    out = tmp_path_factory.mktemp("heads")
    dirs = {stem: convert_checkpoint(heads_dir / f"{stem}.pt", out / stem, "blaser",
                                     embedding_dim=dim if small else None)
            for stem, dim in BLASER.items()}
    for stem in MUTOX:
        if (heads_dir / f"{stem}.pt").exists():
            dirs[stem] = convert_checkpoint(heads_dir / f"{stem}.pt", out / stem, "mutox")
    return dirs


@pytest.fixture(scope="module")
def io(heads_dir):
    return dict(np.load(heads_dir / "heads_io.npz"))


@pytest.mark.parametrize("stem", BLASER)
@pytest.mark.parametrize("norm_emb", [True, False])
def test_blaser_scores_match_reference(converted, io, stem, norm_emb):
    model = load_blaser_model(converted[stem])
    if not norm_emb:
        from sonar_jax.model_dir import load_model

        model = load_model(converted[stem], norm_emb=False)
    ref = io["ref"] if model.cfg.needs_reference else None
    scores = BlaserPipeline(model).score(io["src"], io["mt"], ref, batch_size=3)
    expected = io[f"{stem}_scores" + ("" if norm_emb else "_no_norm")][:, 0]
    np.testing.assert_allclose(scores, expected, rtol=0, atol=ATOL)


@pytest.mark.parametrize("stem", MUTOX)
def test_mutox_logits_and_probabilities_match_reference(converted, io, stem):
    if stem not in converted:
        pytest.skip(f"{stem} is only in the small fixtures")
    pipeline = MutoxClassifierPipeline(converted[stem])
    inputs = io[f"{stem}_inputs"]
    np.testing.assert_allclose(pipeline.classify(inputs), io[f"{stem}_logits"][:, 0], rtol=0,
                               atol=ATOL)
    np.testing.assert_allclose(pipeline.classify(inputs, output_prob=True),
                               io[f"{stem}_probs"][:, 0], rtol=0, atol=ATOL)


def test_converted_configs_follow_the_checkpoints(converted, heads_dir, fixtures_dir):
    kinds = {stem: read_config(path) for stem, path in converted.items()}
    small = heads_dir == fixtures_dir / "heads"
    qe, ref = kinds["blaser_qe"][1], kinds["blaser_ref"][1]
    assert (qe.input_form, ref.input_form) == ("QE", "COMET")
    assert qe.hidden_dims == ((96, 48) if small else (3072, 1536))
    assert qe.embedding_dim == ref.embedding_dim == (64 if small else 1024)
    assert kinds["mutox"][1].hidden_dims == (512, 128)


@pytest.fixture(scope="module")
def text_encoder(tiny_text_dirs):
    """The tiny reference text encoder (64-d) that embedded the end-to-end fixture's sentences."""
    return tiny_text_dirs["encoder"]


@pytest.fixture(scope="module")
def text_io(fixtures_dir):
    return dict(np.load(fixtures_dir / "heads" / "text_io.npz"))


def test_sentence_pairs_score_like_the_reference_end_to_end(fixtures_dir, tmp_path_factory,
                                                            text_encoder, text_io):
    """Text -> our encoder -> heads against the reference's pipeline -> heads: measured max
    abs error 3.6e-7 (BLASER) and 3.3e-6 (MuTox logits of about -4)."""
    out = tmp_path_factory.mktemp("e2e")
    langs = str(text_io["src_lang"]), str(text_io["mt_lang"])
    texts = {part: text_io[f"{part}_texts"].tolist() for part in ("src", "mt", "ref")}
    qe = BlaserPipeline(convert_checkpoint(fixtures_dir / "heads" / "blaser_qe.pt", out / "qe",
                                           "blaser"), encoder=text_encoder)
    scores = qe.predict(texts["src"], texts["mt"], *langs)
    np.testing.assert_allclose(scores, text_io["blaser_qe_scores"][:, 0], rtol=0, atol=ATOL)
    ref = BlaserPipeline(convert_checkpoint(fixtures_dir / "heads" / "blaser_ref.pt",
                                            out / "ref", "blaser", embedding_dim=64),
                         encoder=text_encoder)
    scores = ref.predict(texts["src"], texts["mt"], *langs, ref=texts["ref"])
    np.testing.assert_allclose(scores, text_io["blaser_ref_scores"][:, 0], rtol=0, atol=ATOL)
    mutox = MutoxClassifierPipeline(convert_checkpoint(fixtures_dir / "heads" / "mutox.pt",
                                                       out / "mutox", "mutox"),
                                    encoder=text_encoder)
    np.testing.assert_allclose(mutox.predict(texts["src"], langs[0]),
                               text_io["mutox_src_logits"][:, 0], rtol=0, atol=ATOL)


class FakeTensor:
    """Stands in for a lazy checkpoint tensor: a shape and `load()`."""

    def __init__(self, *shape):
        self.shape = shape

    def load(self):
        return np.zeros(self.shape, np.float32)


def linears(prefix: str, positions, dims) -> dict:
    state = {}
    for position, (d_in, d_out) in zip(positions, zip(dims[:-1], dims[1:])):
        state[f"{prefix}.{position}.weight"] = FakeTensor(d_out, d_in)
        state[f"{prefix}.{position}.bias"] = FakeTensor(d_out)
    return state


def test_linear_layers_are_read_in_sequence_order_whatever_their_positions():
    # Built without dropout, BLASER's Linears sit at 0, 2, 4; position 10 sorts after 4.
    state = linears("mlp", [0, 4, 10], [256, 96, 48, 1])
    assert [name for name, _, _ in linear_stack(state, "blaser", "f.pt")] == [
        "mlp.0", "mlp.4", "mlp.10"]
    nested = linears("model_all", ["0.1", "1.1", "2.1"], [64, 512, 128, 1])
    assert len(linear_stack({**nested, "step": FakeTensor(1)}, "mutox", "f.pt")) == 3


@pytest.mark.parametrize("state, message", [
    (linears("mlp", [1, 4], [256, 96, 2]), "2 outputs"),
    ({**linears("mlp", [1, 4], [256, 96, 1]), "mlp.7.weight": FakeTensor(1, 1)}, "only"),
    ({"mlp.1.weight": FakeTensor(96, 256), "mlp.1.bias": FakeTensor(96),
      "mlp.4.weight": FakeTensor(1, 95), "mlp.4.bias": FakeTensor(1)}, "takes 95 inputs"),
    ({**linears("mlp", [1], [256, 1]), "extra.weight": FakeTensor(3)}, "unexpected keys"),
])
def test_inconsistent_blaser_tensors_are_named(state, message):
    with pytest.raises(ConversionError, match=message):
        linear_stack(state, "blaser", "f.pt")


@pytest.mark.parametrize("width, dim, expected", [
    (4096, None, ("QE", 1024)), (6144, None, ("COMET", 1024)), (256, None, ("QE", 64)),
    (384, 64, ("COMET", 64)), (384, 96, ("QE", 96))])
def test_blaser_input_form_comes_from_the_input_width(width, dim, expected):
    assert blaser_input_form(width, dim, "f.pt") == expected


@pytest.mark.parametrize("width, dim, message", [
    (384, None, "pass --embedding-dim"), (384, 100, "not 4 or 6 embeddings of width 100"),
    (250, None, "not a multiple")])
def test_unclear_blaser_widths_are_refused(width, dim, message):
    with pytest.raises(ConversionError, match=message):
        blaser_input_form(width, dim, "f.pt")


@pytest.mark.parametrize("file, kind, family", [
    ("heads/mutox.pt", "blaser", "mutox"), ("heads/blaser_qe.pt", "mutox", "blaser"),
    ("text/tiny_text_encoder.pt", "blaser", "text_encoder"),
    ("speech/tiny_speech_encoder_fairseq.pt", "mutox", "speech_encoder")])
def test_a_checkpoint_of_another_family_is_named(fixtures_dir, tmp_path, file, kind, family):
    with pytest.raises(ConversionError, match=f"not a {kind} checkpoint.*--model {family}"):
        convert_checkpoint(fixtures_dir / file, tmp_path / "out", kind)
    assert not (tmp_path / "out").exists()


def test_heads_take_no_tokenizer_and_only_blaser_an_embedding_dim(fixtures_dir, tmp_path):
    with pytest.raises(ValueError, match="has no tokenizer"):
        convert_checkpoint(fixtures_dir / "heads" / "mutox.pt", tmp_path / "a", "mutox",
                           tokenizer=fixtures_dir / "spm" / "udhr.spm.model")
    with pytest.raises(ValueError, match="--embedding-dim is for --model blaser"):
        convert_checkpoint(fixtures_dir / "heads" / "mutox.pt", tmp_path / "b", "mutox",
                           embedding_dim=64)
