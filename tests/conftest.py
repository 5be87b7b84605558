"""Test setup: CPU only, with 8 fake devices so sharding is exercised without accelerators."""

import os
import pathlib

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_force_host_platform_device_count=8").strip()

import pytest  # noqa: E402

FIXTURES = pathlib.Path(__file__).parent / "fixtures"


@pytest.fixture(scope="session")
def fixtures_dir() -> pathlib.Path:
    return FIXTURES


def _convert_fixture_models(out: pathlib.Path, names: dict[str, tuple[str, str]], heads: int,
                            tokenizer: bool = True) -> dict[str, pathlib.Path]:
    from sonar_jax.convert import convert_checkpoint

    spm = FIXTURES / "spm" / "udhr.spm.model"
    return {name: convert_checkpoint(FIXTURES / file, out / name, kind, num_heads=heads,
                                     tokenizer=spm if tokenizer else None)
            for name, (file, kind) in names.items()}


@pytest.fixture(scope="session")
def tiny_text_dirs(tmp_path_factory) -> dict[str, pathlib.Path]:
    """The tiny reference encoder and decoder (64-d, 4 heads), converted once per test run:
    {"encoder": DIR, "decoder": DIR}. Read-only: copy one before changing it."""
    return _convert_fixture_models(tmp_path_factory.mktemp("tiny_text"), {
        "encoder": ("text/tiny_text_encoder.pt", "text_encoder"),
        "decoder": ("text/tiny_text_decoder.pt", "text_decoder")}, heads=4)


@pytest.fixture(scope="session")
def mid_text_dirs(tmp_path_factory) -> dict[str, pathlib.Path]:
    """The mid reference encoder and decoder (128-d, 8 heads), converted once per test run."""
    return _convert_fixture_models(tmp_path_factory.mktemp("mid_text"), {
        "encoder": ("text/mid_text_encoder.pt", "text_encoder"),
        "decoder": ("text/mid_text_decoder.pt", "text_decoder")}, heads=8)


@pytest.fixture(scope="session")
def tiny_speech_dir(tmp_path_factory) -> pathlib.Path:
    """The tiny reference speech encoder (32-d, 4 heads), converted once per test run."""
    return _convert_fixture_models(tmp_path_factory.mktemp("tiny_speech"), {
        "encoder": ("speech/tiny_speech_encoder.pt", "speech_encoder")}, heads=4,
        tokenizer=False)["encoder"]
