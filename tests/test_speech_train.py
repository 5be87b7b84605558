"""Speech distillation on real recordings (Fish Fillets NG Dutch voice actors, data/sample/speech):
the student's MSE to the teacher falls well below its initialisation's (slow); the cached teacher
gives the same training as the online one; only the student is trained and checkpointed;
BatchNorm trains on the valid frames only."""

import pathlib

import jax
import numpy as np
import pytest
from flax import nnx

from sonar_jax import sharding
from sonar_jax.configs import get_config
from sonar_jax.data import make_iterator
from sonar_jax.data.manifests import read_manifest
from sonar_jax.data.teacher_cache import cache_teacher_embeddings
from sonar_jax.evaluate.xsim import xsim
from sonar_jax.models import registry
from sonar_jax.models.text_encoder import TextEncoder
from sonar_jax.tokenizer import NllbTokenizer
from sonar_jax.train.speech_distill import SpeechDistillTrainer

REPO = pathlib.Path(__file__).resolve().parents[1]
FILLETS = REPO / "data/sample/speech/fillets/speech"
FAST_CPU_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
CLIPS = 48


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    """The first CLIPS Dutch training clips with their transcriptions (real recordings)."""
    lines = (FILLETS / "nld_Latn.train.tsv").read_text(encoding="utf-8").splitlines()
    assert len(lines) > CLIPS, "the committed sample lost its Dutch clips"
    folder = tmp_path_factory.mktemp("speech")
    rows = [line.split("\t") for line in lines[1:CLIPS + 1]]
    path = folder / "nld.tsv"
    path.write_text("audio\ttranscription\tlang\n" + "".join(
        f"{FILLETS / audio}\t{text}\t{lang}\n" for audio, text, lang, *_ in rows),
        encoding="utf-8")
    return path


def _config(manifest, mode="online", cache=""):
    cfg = get_config("speech_distill", "tiny")
    cfg.train.compiler_options = FAST_CPU_COMPILE
    cfg.teacher.mode = mode
    cfg.optim.lr, cfg.optim.warmup_steps, cfg.optim.decay_steps = 2e-3, 5, 25
    for section in (cfg.data, cfg.eval_data):
        section.manifest = str(manifest)
        section.frame_buckets = (512,)  # one compiled shape: clips of up to 5 s
        section.max_seconds = 5.0
        section.batch_max_frames = 8 * 512
        section.max_text_len = 48
        section.teacher_cache = cache
    return cfg


@pytest.fixture(scope="module")
def tokenizer():
    return NllbTokenizer(REPO / "tests/fixtures/spm/udhr.spm.model")


@pytest.fixture(scope="module")
def teacher():
    cfg = get_config("speech_distill", "tiny")
    from sonar_jax.configs.architectures import text_model_config

    return TextEncoder(text_model_config(cfg.model.teacher_arch, "encoder"), rngs=nnx.Rngs(7))


def _trainer(cfg, teacher):
    mesh = sharding.make_mesh(dict(data=1, fsdp=-1, tensor=1), devices=jax.devices()[:1])
    trainer = SpeechDistillTrainer(cfg, mesh)
    trainer.set_frozen({"teacher": teacher} if cfg.teacher.mode == "online" else {})
    return trainer


def _embeddings(trainer, state, batches, teacher):
    """Student and teacher embeddings of every real row of the eval pass, and their tokens."""
    student, target, texts = [], [], []
    fn = jax.jit(lambda p, s, b: trainer.student_embeddings(p, s, b, jax.random.key(0), False)[0])
    for batch in batches:
        real = batch["num_samples"] > 0
        out = fn(state.params["student"], state.model_state["student"], batch)
        student.append(np.asarray(out)[real])
        bound = registry.bind(TextEncoder, trainer.teacher_cfg, nnx.state(teacher))
        target.append(np.asarray(bound(batch["text"]).sentence_embeddings)[real])
        texts += [tuple(row) for row in batch["text"][real]]
    return np.concatenate(student), np.concatenate(target), texts


def _retrieval_error(student, target, texts) -> float:
    """Speech -> text xsim error (%), errors counted by transcription (repeats are not errors)."""
    return xsim(student, target, target_texts=[" ".join(map(str, t)) for t in texts]).error_rate


@pytest.mark.slow
def test_student_retrieves_transcriptions_after_longer_training(manifest, tokenizer, teacher):
    """150 steps: speech -> text retrieval over the clips improves on its initialisation."""
    cfg = _config(manifest)
    cfg.optim.decay_steps = 150
    trainer = _trainer(cfg, teacher)
    state = trainer.init(0)
    evaluate = lambda: make_iterator(cfg.eval_data, tokenizer, "speech",  # noqa: E731
                                     training=False, rows_multiple=jax.local_device_count())
    error_before = _retrieval_error(*_embeddings(trainer, state, evaluate(), teacher))
    batches = make_iterator(cfg.data, tokenizer, "speech", training=True,
                            rows_multiple=jax.local_device_count(), seed=0)
    for _ in range(150):
        state, _ = trainer.train_step(state, trainer.shard_batch(next(batches)))
    error_after = _retrieval_error(*_embeddings(trainer, state, evaluate(), teacher))
    print(f"speech -> text retrieval error {error_before:.1f}% -> {error_after:.1f}%")
    assert error_after < error_before - 20


@pytest.mark.slow
def test_student_learns_the_teacher_on_real_speech(manifest, tokenizer, teacher):
    cfg = _config(manifest)
    trainer = _trainer(cfg, teacher)
    state = trainer.init(0)
    evaluate = lambda: make_iterator(cfg.eval_data, tokenizer, "speech",  # noqa: E731
                                     training=False, rows_multiple=jax.local_device_count())
    before = _embeddings(trainer, state, evaluate(), teacher)
    mse_before = float(np.mean((before[0] - before[1]) ** 2))

    batches = make_iterator(cfg.data, tokenizer, "speech", training=True,
                            rows_multiple=jax.local_device_count(), seed=0)
    stats_before = jax.tree.map(np.array, state.model_state)
    for _ in range(25):
        state, metrics = trainer.train_step(state, trainer.shard_batch(next(batches)))
    assert np.isfinite(float(metrics["loss"]))
    after = _embeddings(trainer, state, evaluate(), teacher)
    mse_after = float(np.mean((after[0] - after[1]) ** 2))
    print(f"MSE to the teacher {mse_before:.4f} -> {mse_after:.4f} over {len(after[2])} clips")
    assert mse_after < 0.5 * mse_before
    # BatchNorm ran in training mode: its running statistics moved.
    moved = jax.tree.map(lambda a, b: float(np.abs(np.asarray(a) - b).max()),
                         state.model_state, stats_before)
    assert min(jax.tree.leaves(moved)) > 0
    # Only the student is trained and saved: no teacher in the state.
    assert set(state.params) == {"student"} and set(state.model_state) == {"student"}


def test_cached_teacher_trains_like_the_online_teacher(manifest, tokenizer, teacher, tmp_path):
    from sonar_jax.pipelines import TextToEmbeddingModelPipeline

    pipeline = TextToEmbeddingModelPipeline(teacher, tokenizer)
    cache = tmp_path / "teacher.npy"
    cache_teacher_embeddings([manifest], lambda texts, lang: pipeline.predict(
        texts, source_lang=lang, batch_size=16), cache)
    assert np.load(cache).shape == (len(read_manifest(manifest)), 64)

    losses = {}
    for mode in ("online", "cached"):
        cfg = _config(manifest, mode, str(cache))
        cfg.data.max_text_len = 512  # the cache embedded whole transcriptions
        trainer = _trainer(cfg, teacher)
        state = trainer.init(0)
        batches = make_iterator(cfg.data, tokenizer, "speech", training=True,
                                rows_multiple=jax.local_device_count(), seed=0)
        losses[mode] = []
        stats_before = jax.tree.map(np.array, state.model_state)
        for _ in range(3):
            state, metrics = trainer.train_step(state, trainer.shard_batch(next(batches)))
            losses[mode].append(float(metrics["loss"]))
        # BatchNorm ran in training mode: its running statistics moved.
        moved = jax.tree.map(lambda a, b: float(np.abs(np.asarray(a) - b).max()),
                             state.model_state, stats_before)
        assert min(jax.tree.leaves(moved)) > 0
        # Only the student is trained and saved: no teacher in the state.
        assert set(state.params) == {"student"} and set(state.model_state) == {"student"}
    np.testing.assert_allclose(losses["cached"], losses["online"], rtol=1e-4)


def test_padding_rows_change_nothing(manifest, tokenizer, teacher):
    """All-pad rows (end of a window, multi-host filler) add no loss and no BatchNorm statistics."""
    cfg = _config(manifest)
    trainer = _trainer(cfg, teacher)
    batch = next(make_iterator(cfg.eval_data, tokenizer, "speech", training=False, rows_multiple=1))
    real = batch["num_samples"] > 0
    assert real.sum() >= 4
    small = {k: v[real][:4] for k, v in batch.items()}
    padded = {k: np.concatenate([v, np.zeros_like(v[:4])]) for k, v in small.items()}
    results = []
    for host_batch in (small, padded):
        state = trainer.init(0)
        state, metrics = trainer.train_step(state, trainer.shard_batch(host_batch))
        results.append((float(metrics["loss"]), jax.tree.map(np.asarray, state.model_state)))
    assert results[0][0] == pytest.approx(results[1][0], rel=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
                 results[0][1], results[1][1])


def test_teacher_width_must_match(manifest):
    cfg = _config(manifest)
    cfg.model.student_arch = "speech_tiny"  # 32-d, the teacher is 64-d
    with pytest.raises(ValueError, match="width"):
        SpeechDistillTrainer(cfg, sharding.make_mesh(dict(data=1, fsdp=-1, tensor=1)))
