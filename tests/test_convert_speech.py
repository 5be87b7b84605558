"""The speech converter and `sonar-jax convert --model speech_encoder`: both released layouts,
training state skipped unread, sizes from shapes, clear errors, streaming."""

import json

import numpy as np
import pytest

from sonar_jax import checkpoint
from sonar_jax.cli import main as cli_main
from sonar_jax.convert import convert_checkpoint, speech
from sonar_jax.convert.text import ConversionError, find_state_dict
from sonar_jax.convert.torch_pickle import UnsafeCheckpointError, open_checkpoint
from sonar_jax.model_dir import read_config


@pytest.fixture(scope="module")
def speech_dir(fixtures_dir):
    return fixtures_dir / "speech"


def _state_dict(path):
    """The checkpoint's lazy tensors, readable while the file stays open (module-scoped)."""
    ckpt = open_checkpoint(path, skip_unknown=True)
    return ckpt, find_state_dict(ckpt.root, path.name)


@pytest.fixture(scope="module")
def fairseq1(speech_dir):
    ckpt, state_dict = _state_dict(speech_dir / "tiny_speech_encoder_fairseq.pt")
    yield state_dict
    ckpt.close()


def test_sizes_are_inferred_and_no_tokenizer_is_written(tmp_path, speech_dir):
    out = convert_checkpoint(speech_dir / "tiny_speech_encoder.pt", tmp_path / "enc",
                             "speech_encoder", num_heads=4)
    kind, cfg = read_config(out)
    assert kind == "speech_encoder"
    assert (cfg.model_dim, cfg.num_layers, cfg.num_heads, cfg.ffn_dim, cfg.feature_dim,
            cfg.depthwise_kernel_size, cfg.pooler_layers, cfg.pooler_heads, cfg.pooler_ffn_dim,
            cfg.pooler_vocab_size) == (32, 2, 4, 64, 160, 31, 2, 4, 64, 32)
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "params"]
    assert json.loads((out / "config.json").read_text())["kind"] == "speech_encoder"
    params = checkpoint.param_metadata(out / "params")
    conv = params["layers"]["conv"]
    assert conv["depthwise_conv"].shape == (2, 31, 32)
    assert conv["pointwise_conv1"]["kernel"].shape == (2, 32, 64)
    assert sorted(conv["batch_norm"]) == ["bias", "mean", "scale", "var"]


def test_fairseq1_file_needs_skipping_its_training_objects(speech_dir):
    """A spenc-like file pickles a config object of a custom class: the strict reader refuses it,
    the converter skips it without importing anything."""
    with pytest.raises(UnsafeCheckpointError, match="FairseqConfigStandIn"):
        open_checkpoint(speech_dir / "tiny_speech_encoder_fairseq.pt")


def test_fairseq1_names_map_onto_the_fairseq2_ones(fairseq1, speech_dir):
    ckpt, fairseq2 = _state_dict(speech_dir / "tiny_speech_encoder.pt")
    with ckpt:
        renamed = speech.to_fairseq2_names(fairseq1)
        # fairseq(1)-only entries are dropped: mask_emb, pos_conv, version, position buffers.
        assert set(renamed) == set(fairseq2)
        assert len(fairseq1) == len(fairseq2) + 6
        for key in fairseq2:
            np.testing.assert_array_equal(renamed[key].load(), fairseq2[key].load())


def test_heads_must_divide_model_dim(fairseq1):
    with pytest.raises(ConversionError, match="--num-heads"):
        speech.convert_state_dict(fairseq1, num_heads=5)


def test_missing_tensor_is_named(fairseq1):
    state_dict = dict(fairseq1)
    del state_dict["encoder.w2v_model.encoder.layers.1.conv_module.batch_norm.running_var"]
    with pytest.raises(ConversionError, match=r"1 missing keys \['encoder.layers.1.conv.batch_"
                                              r"norm.running_var'\]"):
        speech.convert_state_dict(state_dict, num_heads=4)


def test_wrong_shape_is_named_before_any_tensor_is_read(fairseq1):
    class Unreadable:
        shape = (32, 1, 15)

        def load(self):
            raise AssertionError("read before the shape check")

    state_dict = dict(fairseq1)
    state_dict["encoder.w2v_model.encoder.layers.1.conv_module.depthwise_conv.weight"] = \
        Unreadable()
    with pytest.raises(ConversionError, match=r"layers.1.conv.depthwise_conv.weight has shape "
                                              r"\(32, 1, 15\)"):
        speech.convert_state_dict(state_dict, num_heads=4)


def test_text_checkpoint_is_not_a_speech_encoder(tmp_path, fixtures_dir):
    with pytest.raises(ConversionError, match="does not look like a SONAR speech encoder"):
        convert_checkpoint(fixtures_dir / "text" / "tiny_text_encoder.pt", tmp_path / "o",
                           "speech_encoder", num_heads=4)
    assert not (tmp_path / "o").exists()


def test_speech_encoder_takes_no_tokenizer(tmp_path, speech_dir, fixtures_dir):
    with pytest.raises(ValueError, match="no tokenizer"):
        convert_checkpoint(speech_dir / "tiny_speech_encoder.pt", tmp_path / "o",
                           "speech_encoder", tokenizer=fixtures_dir / "spm" / "udhr.spm.model")


def test_cli_converts_a_speech_encoder(tmp_path, speech_dir, capsys):
    out = tmp_path / "cli"
    code = cli_main(["convert", str(speech_dir / "tiny_speech_encoder_fairseq.pt"), str(out),
                     "--model", "speech_encoder", "--num-heads", "4"])
    assert code == 0 and read_config(out)[0] == "speech_encoder"
    code = cli_main(["convert", str(speech_dir / "tiny_speech_encoder.pt"), str(tmp_path / "x"),
                     "--model", "text_encoder"])
    assert code == 2 and "--tokenizer" in capsys.readouterr().err


def test_only_model_tensors_are_read_each_once(tmp_path, speech_dir, monkeypatch):
    """Streaming: of a spenc-like file (weights, dropped pretraining entries, optimizer moments)
    exactly the model's tensors are read, each once; the full-size peak RSS is measured in
    benchmarks/results/speech_convert_rss.json."""
    from sonar_jax.convert import torch_pickle

    reads = []
    original = torch_pickle.LazyTensor.load

    def counting_load(self):
        reads.append((self.key, self.offset))
        return original(self)

    monkeypatch.setattr(torch_pickle.LazyTensor, "load", counting_load)
    convert_checkpoint(speech_dir / "tiny_speech_encoder_fairseq.pt", tmp_path / "out",
                       "speech_encoder", num_heads=4)
    ckpt, fairseq2 = _state_dict(speech_dir / "tiny_speech_encoder.pt")
    ckpt.close()
    model_tensors = [k for k in fairseq2 if not k.endswith("num_batches_tracked")]
    assert len(reads) == len(set(reads)) == len(model_tensors)
