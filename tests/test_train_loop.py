"""The training loop: exact resume, preemption, NaN stop, metrics, evaluation, export.

One TextTrainer (tiny model, one length bucket, so one compiled program) is shared by every
test; each test runs the real loop on real parallel text from the UDHR fixture.
"""

import json
import os
import pathlib
import signal

import jax
import ml_collections
import numpy as np
import pytest

from sonar_jax.configs.text import get_config
from sonar_jax import sharding
from sonar_jax.data import make_iterator
from sonar_jax.tokenizer import NllbTokenizer
from sonar_jax.train import loop
from sonar_jax.train.metric_writer import read_metrics
from sonar_jax.train.text import TextTrainer


def tsv_from_fixture(fixtures_dir, path: pathlib.Path) -> pathlib.Path:
    """English sentences paired with the fixture's sentences in 15 other languages."""
    sentences = json.loads((fixtures_dir / "spm" / "udhr_sentences.json").read_text())
    english = [s["text"] for s in sentences if s["lang"] == "eng_Latn"]
    rows = [(english[i % len(english)], s["text"], "eng_Latn", s["lang"])
            for i, s in enumerate(sentences) if s["lang"] != "eng_Latn"]
    path.write_text("".join("\t".join(row) + "\n" for row in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def setup(fixtures_dir, tmp_path_factory):
    cfg = get_config("tiny")
    cfg.train.compiler_options = {"xla_backend_optimization_level": 0}  # compile 3x faster
    cfg.data.format = "tsv"
    cfg.data.path = str(tsv_from_fixture(fixtures_dir, tmp_path_factory.mktemp("data") / "t.tsv"))
    cfg.data.max_len = 64
    cfg.data.length_buckets = (64,)
    cfg.data.batch_max_tokens = 8 * 64
    cfg.data.window_size = 32
    tokenizer = NllbTokenizer(fixtures_dir / "spm" / "udhr.spm.model")
    trainer = TextTrainer(cfg, sharding.make_mesh(cfg.mesh))
    return cfg, tokenizer, trainer


def run(setup, workdir, num_steps, *, trainer=None, **options):
    cfg, tokenizer, base = setup
    trainer = trainer or base
    batches = make_iterator(cfg.data, tokenizer, "text", training=True, rows_multiple=8,
                            seed=0)
    dev = lambda: make_iterator(cfg.data, tokenizer, "text", training=False,  # noqa: E731
                                rows_multiple=8)
    opts = loop.LoopOptions(num_steps=num_steps, log_every=1, progress_bar=False,
                            async_checkpoints=True, **options)
    return loop.train(trainer, workdir=workdir, options=opts, train_batches=batches,
                      init_state=lambda: base.init(0), eval_batches=dev)


def params_of(state):
    return jax.tree.map(np.asarray, state.params)


def test_resume_continues_bit_identically(setup, tmp_path):
    straight = run(setup, tmp_path / "straight", 6)
    first = run(setup, tmp_path / "split", 3)
    assert (first.stopped, first.step, first.resumed_from) == ("completed", 3, None)
    resumed = run(setup, tmp_path / "split", 6)
    assert (resumed.step, resumed.resumed_from) == (6, 3)
    jax.tree.map(np.testing.assert_array_equal, params_of(resumed.state),
                 params_of(straight.state))
    losses = lambda d: [r["loss"] for r in read_metrics(d, "train")]  # noqa: E731
    assert losses(tmp_path / "split") == losses(tmp_path / "straight")
    assert losses(tmp_path / "straight")[-1] < losses(tmp_path / "straight")[0]


class SignalAt:
    """Wraps a trainer and sends this process a signal while step `at` runs."""

    def __init__(self, trainer, at: int, signum=signal.SIGTERM):
        self._trainer, self._at, self._signum, self._calls = trainer, at, signum, 0

    def __getattr__(self, name):
        return getattr(self._trainer, name)

    def train_step(self, state, batch):
        self._calls += 1
        if self._calls == self._at:
            os.kill(os.getpid(), self._signum)
        return self._trainer.train_step(state, batch)


def test_sigterm_saves_and_stops_then_resume_finishes(setup, tmp_path):
    cfg, _, trainer = setup
    stopped = run(setup, tmp_path, 8, trainer=SignalAt(trainer, 2))
    assert (stopped.stopped, stopped.step) == ("preempted", 2)
    assert loop.TrainCheckpoints(tmp_path / "checkpoints").all_steps() == [2]
    finished = run(setup, tmp_path, 4)
    assert (finished.stopped, finished.step, finished.resumed_from) == ("completed", 4, 2)


class NanAt:
    """Wraps a trainer so that step `at` reports a NaN loss."""

    def __init__(self, trainer, at: int):
        self._trainer, self._at, self._calls = trainer, at, 0

    def __getattr__(self, name):
        return getattr(self._trainer, name)

    def train_step(self, state, batch):
        self._calls += 1
        state, metrics = self._trainer.train_step(state, batch)
        if self._calls == self._at:
            metrics = dict(metrics, loss=jax.numpy.float32(np.nan))
        return state, metrics


def test_nan_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(setup, tmp_path):
    _, _, trainer = setup
    with pytest.raises(loop.NonFiniteLossError, match="step 5.*last good checkpoint is step 4"):
        run(setup, tmp_path, 10, trainer=NanAt(trainer, 5), checkpoint_every=2)
    assert loop.TrainCheckpoints(tmp_path / "checkpoints").all_steps() == [2, 4]
    steps = [r["step"] for r in read_metrics(tmp_path, "train")]
    assert steps == [1, 2, 3, 4]


def test_eval_is_token_weighted_over_the_whole_dev_set(setup, tmp_path):
    cfg, tokenizer, trainer = setup
    state = trainer.init(0)
    batches = list(make_iterator(cfg.data, tokenizer, "text", training=False, rows_multiple=8))
    assert len(batches) > 1
    metrics = loop.evaluate(trainer, state, batches)
    # Brute force: the MT loss summed over every batch, divided by all target tokens.
    per_batch = [jax.tree.map(float, trainer.eval_step(state, trainer.shard_batch(b)))
                 for b in batches]
    tokens = sum(m["mt_tokens"] for m in per_batch)
    expected = sum(m["mt_loss"] * m["mt_tokens"] for m in per_batch) / tokens
    np.testing.assert_allclose(metrics["mt_loss"], expected, rtol=1e-5)
    assert metrics["mt_tokens"] == tokens


def test_metrics_and_tensorboard_are_written(setup, tmp_path):
    run(setup, tmp_path, 2, eval_every=2)
    train_records = read_metrics(tmp_path, "train")
    assert [r["step"] for r in train_records] == [1, 2]
    for key in ("loss", "mt_loss", "mse_loss", "dae_loss", "grad_norm", "learning_rate",
                "tokens_per_s"):
        assert np.isfinite(train_records[-1][key]), key
    assert [r["step"] for r in read_metrics(tmp_path, "eval")] == [2]
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))


def test_running_out_of_data_is_a_clear_error(setup, tmp_path):
    cfg, tokenizer, trainer = setup
    batches = make_iterator(cfg.data, tokenizer, "text", training=False,
                            rows_multiple=8)  # one pass only
    opts = loop.LoopOptions(num_steps=10_000, progress_bar=False, tensorboard=False)
    with pytest.raises(ValueError, match="ran out before num_steps"):
        loop.train(trainer, workdir=tmp_path, options=opts, train_batches=batches,
                   init_state=lambda: trainer.init(0))


@pytest.mark.slow
def test_two_processes_train_through_the_launcher_and_resume(fixtures_dir, tmp_path):
    """launch/train.py on 2 processes x 4 CPU devices over loopback (as on two hosts), then
    the same command again with more steps resumes from the shared workdir."""
    import socket
    import subprocess
    import sys

    repo = pathlib.Path(__file__).resolve().parents[1]
    tsv = tsv_from_fixture(fixtures_dir, tmp_path / "train.tsv")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    def launch(num_steps: int) -> None:
        args = [sys.executable, str(repo / "launch/train.py"),
                "--config=text:tiny",
                f"--workdir={tmp_path / 'run'}", "--config.data.format=tsv",
                f"--config.data.path={tsv}", "--config.data.max_len=64",
                "--config.data.length_buckets=(64,)", "--config.data.batch_max_tokens=512",
                "--config.data.window_size=32", "--config.eval_data.path=",
                "--config.eval.xsim.path=",
                f"--config.train.num_steps={num_steps}", "--config.log.every_steps=1",
                "--config.log.progress_bar=False", "--config.mesh.dcn_data=2"]
        procs = []
        for rank in range(2):
            env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_NUM_PROCESSES="2",
                       JAX_PROCESS_ID=str(rank), JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
                       XLA_FLAGS="--xla_force_host_platform_device_count=4")
            procs.append(subprocess.Popen(args, env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                                          stderr=subprocess.STDOUT, text=True))
        outputs = [p.communicate(timeout=600)[0] for p in procs]
        for rank, (proc, out) in enumerate(zip(procs, outputs)):
            assert proc.returncode == 0, f"process {rank} failed:\n{out[-4000:]}"
        assert f"completed at step {num_steps}" in outputs[0]

    launch(2)
    launch(3)
    run_dir = tmp_path / "run"
    assert [r["step"] for r in read_metrics(run_dir, "train")] == [1, 2, 3]
    checkpoints = loop.TrainCheckpoints(run_dir / "checkpoints")
    assert checkpoints.all_steps() == [2, 3]
    for step in (2, 3):
        for part in ("encoder", "decoder"):
            assert (run_dir / "export" / f"step_{step}" / part / "config.json").is_file()

    # The 2-process checkpoint restores into this 1-process run on another mesh (fsdp=8).
    from sonar_jax import checkpoint

    cfg = get_config("tiny")
    cfg.mesh.update(dict(data=1, fsdp=8, tensor=1))
    trainer = TextTrainer(cfg, sharding.make_mesh(cfg.mesh))
    state = checkpoints.restore(3, trainer.abstract_state())
    checkpoints.close()
    assert int(state.step) == 3
    kernel = state.params["encoder"]["layers"]["ffn"]["inner_proj"]["kernel"]
    assert "fsdp" in str(kernel.sharding.spec) and len(kernel.sharding.device_set) == 8
    exported = checkpoint.restore_params(run_dir / "export" / "step_3" / "encoder" / "params")
    jax.tree.map(np.testing.assert_array_equal, params_of(state)["encoder"],
                 jax.tree.map(np.asarray, exported))


def test_xsim_hook_equals_evaluating_the_exported_encoder(setup, tmp_path):
    """The trainer's dev-xsim hook scores the encoder being trained exactly as `sonar-jax
    evaluate` scores the same weights exported as a converted directory."""
    from sonar_jax.evaluate.report import evaluate_text_retrieval
    from sonar_jax.pipelines import TextToEmbeddingModelPipeline
    from sonar_jax.train.runs import export_models
    from sonar_jax.train.text import xsim_hook

    _, tokenizer, trainer = setup
    sample = pathlib.Path(__file__).resolve().parents[1] / "data" / "sample" / "libreoffice"
    xsim_cfg = ml_collections.ConfigDict(dict(path=str(sample), split="dev", langs="deu_Latn",
                                              pivot="eng_Latn"))
    state = trainer.init(0)
    metrics = xsim_hook(xsim_cfg, trainer, tokenizer)(state, 0)

    export_models(trainer, state, tokenizer, tmp_path / "export")
    rows = evaluate_text_retrieval(TextToEmbeddingModelPipeline(tmp_path / "export" / "encoder"),
                                   sample, "dev", "deu_Latn", pivot="eng_Latn")
    for task, name in (("xsim", "xsim_error_percent"), ("xsim++", "xsimpp_error_percent")):
        chosen = [r for r in rows if r["task"] == task]
        expected = 100.0 * sum(r["errors"] for r in chosen) / sum(r["total"] for r in chosen)
        assert metrics[name] == pytest.approx(expected)
    assert 0.0 < metrics["xsim_error_percent"] <= 100.0


def test_cli_train_passes_every_flag_to_the_entry_point(monkeypatch):
    from sonar_jax import cli
    from sonar_jax.train import entry

    seen = []
    monkeypatch.setattr(entry, "run_from_flags", seen.append)
    flags = ["--config=decoder_finetune:tiny", "--workdir=w", "--config.train.seed=3"]
    assert cli.main(["train", *flags]) == 0
    assert seen == [["sonar-jax train", *flags]]
    with pytest.raises(SystemExit):
        cli.main(["data", "sample", "out", "--no-such-flag"])


def test_run_training_dispatches_on_the_config_kind(monkeypatch):
    from sonar_jax.train import entry

    with pytest.raises(ValueError, match="expected one of"):
        entry.run_training(ml_collections.ConfigDict(dict(kind="nope")), "w")
