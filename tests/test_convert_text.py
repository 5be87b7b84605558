"""The text converter and `sonar-jax convert`: layouts, tied weights, atomic output, clear errors."""

import tracemalloc
import zipfile

import pytest

from sonar_jax import checkpoint
from sonar_jax.cli import main as cli_main
from sonar_jax.convert import convert_checkpoint
from sonar_jax.convert.text import ConversionError
from sonar_jax.convert.torch_pickle import CheckpointFormatError, UnsafeCheckpointError
from sonar_jax.model_dir import read_config


@pytest.fixture(scope="module")
def spm(fixtures_dir):
    return fixtures_dir / "spm" / "udhr.spm.model"


@pytest.fixture(scope="module")
def text_dir(fixtures_dir):
    return fixtures_dir / "text"


def _listing(path):
    return sorted(p.name for p in path.iterdir())


def test_sizes_are_inferred_from_shapes(tmp_path, text_dir, spm):
    out = convert_checkpoint(text_dir / "mid_text_decoder.pt", tmp_path / "dec", "text_decoder",
                             tokenizer=spm, num_heads=8)
    kind, cfg = read_config(out)
    assert kind == "text_decoder"
    assert (cfg.vocab_size, cfg.model_dim, cfg.num_layers, cfg.num_heads, cfg.ffn_dim,
            cfg.max_seq_len) == (3206, 128, 3, 8, 512, 512)
    assert _listing(out) == ["config.json", "langs.txt", "params", "tokenizer.model"]
    # The tied output projection is stored once, as the embedding table.
    params = checkpoint.param_metadata(out / "params")
    assert "final_proj" not in params and params["embed"]["embedding"].shape == (3206, 128)


def test_untied_decoder_is_refused(text_dir):
    """Released files store final_proj and the embedding as one storage; a file whose
    final_proj differs is not a SONAR decoder and must not convert silently."""
    from sonar_jax.convert.text import convert_state_dict, find_state_dict
    from sonar_jax.convert.torch_pickle import open_checkpoint

    class Scaled:
        def __init__(self, lazy):
            self.shape, self._lazy = lazy.shape, lazy

        def load(self):
            return self._lazy.load() * 2.0

    with open_checkpoint(text_dir / "tiny_text_decoder.pt") as ckpt:
        state_dict = find_state_dict(ckpt.root, "tiny")
        state_dict["final_proj.weight"] = Scaled(state_dict["final_proj.weight"])
        with pytest.raises(ConversionError, match="final_proj.weight differs"):
            convert_state_dict(state_dict, "text_decoder", num_heads=4)


def test_inconsistent_tensor_shape_is_named(text_dir):
    from sonar_jax.convert.text import convert_state_dict, find_state_dict
    from sonar_jax.convert.torch_pickle import open_checkpoint

    class Wrong:
        shape = (100, 64)

        def load(self):
            raise AssertionError("shapes are checked before any tensor is read")

    with open_checkpoint(text_dir / "tiny_text_encoder.pt") as ckpt:
        state_dict = find_state_dict(ckpt.root, "tiny")
        state_dict["encoder.layers.1.ffn.inner_proj.weight"] = Wrong()
        with pytest.raises(ConversionError, match=r"layers.1.ffn.inner_proj.weight has shape "
                                                  r"\(100, 64\)"):
            convert_state_dict(state_dict, "text_encoder", num_heads=4)


def test_wrong_model_kind_is_named(tmp_path, text_dir, spm):
    with pytest.raises(ConversionError, match="text_decoder"):
        convert_checkpoint(text_dir / "tiny_text_encoder.pt", tmp_path / "o", "text_decoder",
                           tokenizer=spm, num_heads=4)


def test_foreign_state_dict_is_refused(tmp_path, fixtures_dir, spm):
    with pytest.raises(ConversionError, match="does not look like a SONAR text_encoder"):
        convert_checkpoint(fixtures_dir / "torch_files" / "module_state.pt", tmp_path / "o",
                           "text_encoder", tokenizer=spm)


def test_truncated_file_fails_cleanly_and_writes_nothing(tmp_path, text_dir, spm):
    data = (text_dir / "tiny_text_encoder.pt").read_bytes()
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointFormatError, match="truncated.pt"):
        convert_checkpoint(truncated, tmp_path / "out", "text_encoder", tokenizer=spm,
                           num_heads=4)
    assert _listing(tmp_path) == ["truncated.pt"]


def test_not_a_checkpoint(tmp_path, spm):
    bogus = tmp_path / "notes.pt"
    bogus.write_text("hello")
    with pytest.raises(CheckpointFormatError, match="torch.save"):
        convert_checkpoint(bogus, tmp_path / "out", "text_encoder", tokenizer=spm)


def test_code_executing_pickle_is_refused(tmp_path, text_dir, spm):
    evil = tmp_path / "evil.pt"
    marker = tmp_path / "pwned"
    payload = f"cos\nsystem\n(S'touch {marker}'\ntR.".encode()
    with zipfile.ZipFile(text_dir / "tiny_text_encoder.pt") as src, \
            zipfile.ZipFile(evil, "w") as dst:
        for item in src.infolist():
            body = payload if item.filename.endswith("data.pkl") else src.read(item)
            dst.writestr(item, body)
    with pytest.raises(UnsafeCheckpointError, match="os.system"):
        convert_checkpoint(evil, tmp_path / "out", "text_encoder", tokenizer=spm)
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_tokenizer_that_does_not_fit_the_model(tmp_path, text_dir, spm):
    with pytest.raises(ValueError, match="3206 embedding rows but the tokenizer has 3006 ids"):
        convert_checkpoint(text_dir / "tiny_text_encoder.pt", tmp_path / "o", "text_encoder",
                           tokenizer=spm, langs=["eng_Latn", "fra_Latn"], num_heads=4)
    assert not (tmp_path / "o").exists()


def test_existing_output_is_never_overwritten(tmp_path, text_dir, spm):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    with pytest.raises(FileExistsError, match="already exists"):
        convert_checkpoint(text_dir / "tiny_text_encoder.pt", out, "text_encoder",
                           tokenizer=spm, num_heads=4)
    assert (out / "keep.txt").read_text() == "precious"


def test_heads_must_divide_model_dim(tmp_path, text_dir, spm):
    with pytest.raises(ConversionError, match="--num-heads 5"):
        convert_checkpoint(text_dir / "tiny_text_encoder.pt", tmp_path / "o", "text_encoder",
                           tokenizer=spm, num_heads=5)


def test_cli_converts_and_reports_errors(tmp_path, text_dir, spm, capsys):
    out = tmp_path / "cli"
    code = cli_main(["convert", str(text_dir / "tiny_text_encoder.pt"), str(out), "--model",
                     "text_encoder", "--num-heads", "4", "--tokenizer", str(spm)])
    assert code == 0 and (out / "config.json").is_file()
    code = cli_main(["convert", str(text_dir / "tiny_text_encoder.pt"), str(out), "--model",
                     "text_encoder", "--tokenizer", str(spm)])
    assert code == 2 and "already exists" in capsys.readouterr().err


@pytest.mark.parametrize("name, kind", [("mid_text_encoder", "text_encoder"),
                                        ("mid_text_decoder", "text_decoder")])
def test_conversion_streams_tensor_by_tensor(tmp_path, text_dir, spm, name, kind):
    """Peak host memory of a conversion stays near the output size (1.5x the file at most).

    tracemalloc sees every numpy buffer, so this measures our streaming (and orbax's copies of
    numpy leaves) deterministically. The full-size figure (RSS of `sonar-jax convert` on the
    3 GB encoder) comes from tests/reference/check_full_size.py and is in the README.
    """
    src = text_dir / f"{name}.pt"
    convert_checkpoint(src, tmp_path / "warm", kind, tokenizer=spm, num_heads=8)  # imports, caches
    tracemalloc.start()
    try:
        convert_checkpoint(src, tmp_path / "out", kind, tokenizer=spm, num_heads=8)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak <= 1.5 * src.stat().st_size, peak / src.stat().st_size
