"""Speech encoder parity with the official SONAR on committed fixtures (made by
tests/reference/make_speech_fixtures.py): a random-init tiny model with perturbed norms and u/v
biases, saved in the fairseq2 layout and in the fairseq(1) `spenc.*.pt` layout.
Every expected value here was computed by the reference.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sonar_jax import checkpoint
from sonar_jax.convert import convert_checkpoint
from sonar_jax.model_dir import PARAMS_DIR, load_model
from sonar_jax.models.conformer import relative_position_table

LAYOUTS = {"fairseq2": "tiny_speech_encoder.pt", "fairseq1": "tiny_speech_encoder_fairseq.pt"}
# fp32 vs the reference: measured max abs error 4.8e-7 (embeddings) and 1.4e-6 (frames).
ATOL = 1e-5


@functools.partial(jax.jit, static_argnames="graphdef")
def _forward(graphdef, state, fbank, lengths):
    return nnx.merge(graphdef, state)(fbank, lengths)


def forward(model, fbank, lengths):
    graphdef, state = nnx.split(model)
    return _forward(graphdef, state, jnp.asarray(fbank), jnp.asarray(lengths))


@pytest.fixture(scope="module")
def converted(tmp_path_factory, fixtures_dir):
    out = tmp_path_factory.mktemp("speech")
    return {layout: convert_checkpoint(fixtures_dir / "speech" / name, out / layout,
                                       "speech_encoder", num_heads=4)
            for layout, name in LAYOUTS.items()}


@pytest.fixture(scope="module")
def io(fixtures_dir):
    return dict(np.load(fixtures_dir / "speech" / "tiny_speech_encoder_io.npz"))


@pytest.fixture(scope="module")
def outputs(converted, io):
    """Our forward pass on the padded reference batch, for each layout."""
    results = {}
    for layout, directory in converted.items():
        model = load_model(directory, expected_kind="speech_encoder")
        results[layout] = forward(model, io["fbank"], io["fbank_lens"])
    return results


@pytest.mark.parametrize("layout", LAYOUTS)
def test_embeddings_match_reference(outputs, io, layout):
    out = outputs[layout]
    np.testing.assert_array_equal(out.seq_lens, io["seq_lens"])
    np.testing.assert_allclose(out.sentence_embeddings, io["sentence_embeddings"], atol=ATOL,
                               rtol=0)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_encoder_frames_match_reference(outputs, io, layout):
    """Conformer output after the model-level LayerNorm, at every valid stacked frame."""
    out = outputs[layout]
    assert out.encoded_seqs.shape == io["encoded_seqs"].shape
    for row, length in enumerate(io["seq_lens"]):
        np.testing.assert_allclose(out.encoded_seqs[row, :length],
                                   io["encoded_seqs"][row, :length], atol=ATOL, rtol=0)


def test_both_layouts_give_identical_parameters(converted):
    trees = [checkpoint.to_numpy(checkpoint.restore_params(d / PARAMS_DIR))
             for d in converted.values()]
    jax.tree.map(np.testing.assert_array_equal, *trees)


@pytest.mark.parametrize("row", [2, 3])  # 57 fbank frames (odd), 8 (shorter than the kernel)
def test_utterance_alone_matches_the_reference(converted, io, outputs, row):
    """Padding invariance: an utterance alone gives what the reference gives it alone, and what
    it gets inside the padded batch."""
    model = load_model(converted["fairseq2"])
    length = io["fbank_lens"][row]
    alone = forward(model, io["fbank"][row: row + 1, :length], [length]).sentence_embeddings[0]
    np.testing.assert_allclose(alone, io["single_embeddings"][row], atol=ATOL, rtol=0)
    np.testing.assert_allclose(alone, outputs["fairseq2"].sentence_embeddings[row], atol=ATOL,
                               rtol=0)


def test_relative_position_table_matches_reference(io):
    """Rows of the released-size table (1024 channels, 4096 positions each way).

    Agreement is ~1e-7 near position 0 and ~1e-4 at ±4095: the reference's float32 exp rounds a
    few frequencies one ulp away from ours, which moves an angle of ~4000 rad by ~1e-4.
    """
    table = np.asarray(relative_position_table(4096, 1024))
    rows = table[4095 - io["rel_pos_positions"]]
    near = np.abs(io["rel_pos_positions"]) <= 1
    np.testing.assert_allclose(rows[near], io["rel_pos_rows"][near], atol=1e-7, rtol=0)
    np.testing.assert_allclose(rows, io["rel_pos_rows"], atol=2e-4, rtol=0)
