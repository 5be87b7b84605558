"""An interrupted command leaves no output that a later step would take for a finished one:
SIGTERM and Ctrl-C (SIGINT) sent to a real `sonar-jax` process mid-run, and an exception raised
mid-write in every writing command."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from sonar_jax import cli, pipelines


def _files(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def _interrupt_when_writing(argv, partial, sig, timeout=240.0) -> subprocess.CompletedProcess:
    """Starts `sonar-jax ARGV`, waits until its partial output exists, sends `sig`."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    env.pop("XLA_FLAGS", None)
    process = subprocess.Popen([sys.executable, "-m", "sonar_jax.cli", *map(str, argv)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + timeout
    while not partial.exists():
        if process.poll() is not None:
            out, err = process.communicate()
            pytest.fail(f"finished (status {process.returncode}) before writing began:\n{err}")
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail("the partial output never appeared")
        time.sleep(0.05)
    time.sleep(0.5)  # well inside the work
    process.send_signal(sig)
    out, err = process.communicate(timeout=120)
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Enough sentences that the tiny models take several seconds on them."""
    folder = tmp_path_factory.mktemp("corpus")
    words = "the quick brown fox jumps over a lazy dog while it rains".split()
    rng = np.random.default_rng(0)
    lines = [" ".join(rng.choice(words, size=rng.integers(3, 30))) for _ in range(20_000)]
    (folder / "in.txt").write_text("\n".join(lines) + "\n")
    np.save(folder / "emb.npy", rng.normal(size=(2_000, 64)).astype(np.float32))
    return folder


def _encode_argv(models, corpus, out):
    return ["encode", "--model", models["encoder"], "--lang", "eng_Latn",
            "--input", corpus / "in.txt", "--output", out]


def _decode_argv(models, corpus, out):
    return ["decode", "--model", models["decoder"], "--lang", "fra_Latn",
            "--input", corpus / "emb.npy", "--output", out]


@pytest.mark.parametrize("argv, output", [(_encode_argv, "out.npy"), (_decode_argv, "out.txt")],
                         ids=["encode", "decode"])
@pytest.mark.parametrize("sig, status", [(signal.SIGTERM, 143), (signal.SIGINT, 130)],
                         ids=["sigterm", "ctrl-c"])
def test_interrupted_command_leaves_nothing(tiny_text_dirs, corpus, tmp_path, argv, output,
                                            sig, status):
    out = tmp_path / output
    done = _interrupt_when_writing(
        [*argv(tiny_text_dirs, corpus, out), "--batch-size", "1", "--quiet"],
        tmp_path / f"{output}.partial", sig)
    assert done.returncode == status, done.stderr
    assert "no partial output is left" in done.stderr
    assert _files(tmp_path) == []


class Stop(Exception):
    """Stands in for anything that ends a run mid-write."""


def _fail_midway(monkeypatch, owner, name: str):
    """Makes `owner.name` run once and then raise, so output has begun."""
    real = getattr(owner, name)
    calls = []

    def once_then_stop(*args, **kwargs):
        if calls:
            raise Stop("stopped mid-run")
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, once_then_stop)


def _lines(folder, count=40):
    (folder / "in.txt").write_text("".join(f"sentence number {i}\n" for i in range(count)))
    return folder / "in.txt"


def test_translate_in_chunks_fails_after_writing_some(monkeypatch, tiny_text_dirs, tmp_path):
    source = _lines(tmp_path)
    from sonar_jax import streaming

    real = streaming.translate_file

    def small_chunks(*args, **kwargs):
        return real(*args, chunk=8, **kwargs)

    monkeypatch.setattr(streaming, "translate_file", small_chunks)
    _fail_midway(monkeypatch, pipelines.TextToTextModelPipeline, "translate_tokens")
    code = cli.main(["translate", "--encoder", str(tiny_text_dirs["encoder"]),
                     "--decoder", str(tiny_text_dirs["decoder"]), "--src", "eng_Latn",
                     "--tgt", "fra_Latn", "--input", str(source), "--output",
                     str(tmp_path / "out.txt"), "--beam-size", "1", "--max-seq-len", "6",
                     "--quiet"])
    assert code == 1
    assert _files(tmp_path) == ["in.txt"]  # 8 lines were written, then removed with the rest


def test_speech_encode_fails_before_saving(monkeypatch, tiny_speech_dir, fixtures_dir, tmp_path):
    monkeypatch.setattr("numpy.save", lambda *a, **k: (_ for _ in ()).throw(Stop("disk full")))
    code = cli.main(["speech-encode", "--model", str(tiny_speech_dir), "--input",
                     str(fixtures_dir / "audio" / "speech_en.wav"), "--output",
                     str(tmp_path / "out.npy"), "--quiet"])
    assert code == 1 and _files(tmp_path) == []


def test_encode_fails_midway(monkeypatch, tiny_text_dirs, tmp_path):
    source = _lines(tmp_path, 50)
    from sonar_jax import streaming

    real = streaming.encode_file
    monkeypatch.setattr(streaming, "encode_file",
                        lambda *args, **kwargs: real(*args, **{**kwargs, "chunk": 10}))
    _fail_midway(monkeypatch, pipelines.TextToEmbeddingModelPipeline, "embed_tokens")
    code = cli.main(["encode", "--model", str(tiny_text_dirs["encoder"]), "--lang", "eng_Latn",
                     "--input", str(source), "--output", str(tmp_path / "out.npy"), "--quiet"])
    assert code == 1 and _files(tmp_path) == ["in.txt"]


def test_a_previous_output_survives_a_failed_overwrite(monkeypatch, tiny_text_dirs, tmp_path):
    source = _lines(tmp_path, 5)
    (tmp_path / "out.npy").write_bytes(b"the earlier result")
    monkeypatch.setattr("sonar_jax.streaming.encode_file",
                        lambda *a, **k: (_ for _ in ()).throw(Stop("killed")))
    code = cli.main(["encode", "--model", str(tiny_text_dirs["encoder"]), "--lang", "eng_Latn",
                     "--input", str(source), "--output", str(tmp_path / "out.npy"),
                     "--overwrite", "--quiet"])
    assert code == 1 and (tmp_path / "out.npy").read_bytes() == b"the earlier result"
    assert _files(tmp_path) == ["in.txt", "out.npy"]


def test_a_stop_that_python_dropped_still_keeps_outputs_out(tmp_path):
    """Python drops an exception raised inside a gc callback; the recorded stop is raised again
    where work hands over an item and before an output is renamed into place."""
    from sonar_jax import outputs, prefetch, stopping

    with stopping.on_signals("testing"):
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)
        except KeyboardInterrupt:
            pass  # as if lost in a callback
        with pytest.raises(KeyboardInterrupt):
            with outputs.atomic_text(tmp_path / "out.txt") as out:
                out.write("complete-looking\n")
        with pytest.raises(KeyboardInterrupt):
            next(prefetch.prefetch(iter(range(3))))
    assert _files(tmp_path) == []
    stopping.check()  # the stop ends with the block
