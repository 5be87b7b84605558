"""Teacher-student speech training (SONAR paper §3.2): a speech encoder (the student) learns to
put an utterance where the frozen text encoder (the teacher) puts its transcription.

    L = MSE(student(fbank(audio)), teacher(transcription))       per row, mean over D

Only the student is trained: it is the TrainState's only part (optimizer state, checkpoints);
its BatchNorm statistics are `model_state`. The teacher is either a frozen part (`set_frozen`,
run on the transcription tokens inside the step) or absent, when the batches carry cached
teacher embeddings (sonar_jax/data/teacher_cache.py): both give the same
targets, so the same training.

Batch contract (per host, numpy): {"waveform": float32 [B, S] 16 kHz, right-padded,
"num_samples": int32 [B] (0 for padding rows), and "text": int32 [B, L] teacher tokens
`[lang] pieces [eos]` or "teacher": float32 [B, D]}. Features (Kaldi fbank, standardised per
utterance, as the inference pipelines compute them) are computed on the accelerator, then the
optional SpecAugment (config `specaugment`), keyed by the step.
"""

from __future__ import annotations

import pathlib
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from sonar_jax import audio, sharding
from sonar_jax.configs.architectures import speech_model_config, text_model_config
from sonar_jax.data import batch_spec
from sonar_jax.model_dir import load_model, load_tokenizer
from sonar_jax.models import registry
from sonar_jax.models.speech_encoder import SpeechEncoder
from sonar_jax.models.text_encoder import TextEncoder
from sonar_jax.train import losses
from sonar_jax.train.loop import EvalHook, LoopResult, train
from sonar_jax.train.runs import data_iterators, export_final, loop_options, trained_module
from sonar_jax.train.state import StepContext, merge_trees
from sonar_jax.train.trainer import Trainer

TEACHER_MODES = ("online", "cached")


class SpeechDistillTrainer(Trainer):
    """MSE between the student's pooled speech embedding and the teacher's text embedding."""

    def __init__(self, cfg: Any, mesh: Mesh):
        m = cfg.model
        self.student_cfg = speech_model_config(m.student_arch, dtype=m.dtype,
                                               param_dtype=m.param_dtype,
                                               remat_policy=m.remat_policy)
        self.teacher_mode = cfg.teacher.mode
        if self.teacher_mode not in TEACHER_MODES:
            raise ValueError(f"teacher.mode {self.teacher_mode!r}: expected one of {TEACHER_MODES}")
        self.teacher_cfg = None
        frozen = {}
        if self.teacher_mode == "online":
            self.teacher_cfg = text_model_config(m.teacher_arch, "encoder", dtype=m.dtype,
                                                 param_dtype=m.param_dtype)
            if self.teacher_cfg.model_dim != self.student_cfg.model_dim:
                raise ValueError(
                    f"the student's model_dim {self.student_cfg.model_dim} differs from the "
                    f"teacher's {self.teacher_cfg.model_dim}: the student's embeddings must have "
                    "the teacher's width; pick a student architecture of that width")
            frozen = {"teacher": (TextEncoder, self.teacher_cfg)}
        self.specaugment = cfg.get("specaugment", None)
        target = "text" if self.teacher_mode == "online" else "teacher"
        spec = batch_spec.SPEECH.but(required=batch_spec.SPEECH.required + (target,))
        super().__init__(cfg, mesh, batch_spec=spec, frozen_parts=frozen,
                         parts={"student": (SpeechEncoder, self.student_cfg)})

    def check_field(self, key: str, x: np.ndarray) -> None:
        if key == "text" and x.size and (x.min() < 0 or x.max() >= self.teacher_cfg.vocab_size):
            raise ValueError(f"batch['text'] holds token ids outside [0, "
                             f"{self.teacher_cfg.vocab_size}): min {x.min()}, max {x.max()}")
        if key == "teacher" and x.shape[1] != self.student_cfg.model_dim:
            raise ValueError(f"batch['teacher'] has width {x.shape[1]}, the student's embeddings "
                             f"{self.student_cfg.model_dim}: the cache is of another teacher")
        if key == "waveform" and x.shape[1] // audio.FRAME_SHIFT // self.student_cfg.fbank_stride \
                > self.student_cfg.max_seq_len:
            raise ValueError(f"waveforms of {x.shape[1]} samples exceed the student's "
                             f"{self.student_cfg.max_seq_len} stacked frames; lower the data's "
                             "max_seconds")

    # ------------------------------------------------------------------------------------------
    # Loss

    def _totals(self, batch: Mapping[str, jax.Array]) -> dict:
        return {"rows": jnp.sum((batch["num_samples"] > 0).astype(jnp.float32))}

    def student_embeddings(self, params: Any, model_state: Any, batch: Mapping[str, jax.Array],
                           rng: jax.Array, train: bool) -> tuple[jax.Array, Any]:
        """Pooled student embeddings [B, D] float32 and the updated BatchNorm statistics."""
        feats, lengths = audio.batch_features(batch["waveform"], batch["num_samples"])
        aug = self.specaugment
        if train and aug is not None and aug.enabled:
            feats = audio.spec_augment(feats, lengths, rng, time_masks=aug.time_masks,
                                       time_width=aug.time_width, freq_masks=aug.freq_masks,
                                       freq_width=aug.freq_width)
        student = registry.bind(SpeechEncoder, self.student_cfg,
                                merge_trees(params, model_state))
        if train:
            student.train()  # BatchNorm on the batch's valid frames, running averages updated
        embeddings = student(feats, lengths).sentence_embeddings
        return embeddings, nnx.to_pure_dict(nnx.state(student, nnx.BatchStat))

    def teacher_embeddings(self, frozen: Any, batch: Mapping[str, jax.Array]) -> jax.Array:
        if self.teacher_mode == "cached":
            return batch["teacher"]
        teacher = registry.bind(TextEncoder, self.teacher_cfg, frozen["teacher"])
        return teacher(batch["text"]).sentence_embeddings.astype(jnp.float32)

    def _loss(self, params: dict, batch: Mapping[str, jax.Array], totals: Mapping[str, Any],
              ctx: StepContext) -> tuple[jax.Array, dict, Any]:
        student, stats = self.student_embeddings(params["student"], ctx.model_state["student"],
                                                 batch, ctx.rng, ctx.train)
        target = jax.lax.stop_gradient(self.teacher_embeddings(ctx.frozen, batch))
        real = batch["num_samples"] > 0
        # Padding rows have no frames; `where` keeps whatever they computed out of the sums.
        student = jnp.where(real[:, None], student, 0.0)
        target = jnp.where(real[:, None], target, 0.0)
        mse, rows = losses.mse_sums(student, target, real)
        cosine = jnp.sum(jnp.where(real, _cosine(student, target), 0.0))
        loss = mse / jnp.maximum(totals["rows"], 1.0)
        sums = {"loss": loss, "mse_loss": mse, "cosine": cosine, "rows": rows}
        return loss, sums, {"student": stats}

    def _metrics(self, sums: Mapping[str, jax.Array]) -> dict:
        rows = jnp.maximum(sums["rows"], 1.0)
        return {"loss": sums["loss"], "mse_loss": sums["mse_loss"] / rows,
                "cosine": sums["cosine"] / rows, "rows": sums["rows"]}

    def summarize_eval(self, totals: Mapping[str, float]) -> dict:
        rows = max(float(totals["rows_sum"]), 1.0)
        mse = float(totals["mse_loss_sum"]) / rows
        return {"loss": mse, "mse_loss": mse, "cosine": float(totals["cosine_sum"]) / rows,
                "rows": float(totals["rows_sum"])}


def _cosine(a: jax.Array, b: jax.Array) -> jax.Array:
    """Row-wise cosine similarity, 0 for zero rows."""
    norms = jnp.linalg.norm(a, axis=-1) * jnp.linalg.norm(b, axis=-1)
    return jnp.sum(a * b, axis=-1) / jnp.maximum(norms, 1e-12)


def teacher_text_embeddings(teacher, tokenizer, texts: Sequence[str], langs: Sequence[str]
                            ) -> np.ndarray:
    """[N, D] teacher embeddings of transcriptions in any mix of languages, in input order."""
    from sonar_jax.pipelines import TextToEmbeddingModelPipeline

    pipeline = TextToEmbeddingModelPipeline(teacher, tokenizer)
    out = None
    for lang in sorted(set(langs)):
        rows = [i for i, row_lang in enumerate(langs) if row_lang == lang]
        embeddings = pipeline.predict([texts[i] for i in rows], source_lang=lang, batch_size=64)
        if out is None:
            out = np.zeros((len(texts), embeddings.shape[1]), np.float32)
        out[rows] = embeddings
    return out


def retrieval_hook(manifests: str, trainer: SpeechDistillTrainer, teacher, tokenizer
                   ) -> EvalHook:
    """Speech -> text retrieval on the dev manifests: each clip's student embedding against the
    teacher's embeddings of all dev transcriptions (LASER's ratio margin, k=4), errors counted
    by text so a repeated line is not an error; reported as error % both ways."""
    from sonar_jax.data.manifests import read_manifests
    from sonar_jax.evaluate.report import evaluate_speech_retrieval
    from sonar_jax.speech_pipelines import SpeechToEmbeddingModelPipeline

    rows = read_manifests(manifests.split(","))
    clips = [audio.load_audio(row.audio) for row in rows]  # decoded once, scored every eval
    texts = [row.text for row in rows]
    text_embeddings = teacher_text_embeddings(teacher, tokenizer, texts,
                                              [row.lang for row in rows])

    def hook(state, step: int) -> dict:
        student = trained_module(trainer, state, "student")
        speech = SpeechToEmbeddingModelPipeline(student).predict(clips, batch_size=16)
        to_text, to_speech = evaluate_speech_retrieval(speech, text_embeddings, texts=texts)
        return {"speech_to_text_error_percent": to_text["error_rate"],
                "text_to_speech_error_percent": to_speech["error_rate"]}

    return hook


def run(cfg, workdir: str | pathlib.Path, eval_hooks: Sequence[EvalHook] = ()) -> LoopResult:
    """Trains the student as `cfg` says, resuming from `workdir`; exports
    `workdir/export/step_N/speech_encoder` when `cfg.export.enabled`."""
    if not cfg.init_from.teacher:
        raise ValueError("speech distillation needs init_from.teacher: the converted text "
                         "encoder directory whose embeddings the student learns (e.g. a text "
                         "run's workdir/export/step_N/encoder)")
    if cfg.teacher.mode == "cached" and not cfg.data.teacher_cache:
        raise ValueError("teacher.mode 'cached' needs data.teacher_cache (written by "
                         "`sonar-jax data teacher-cache`)")
    workdir = pathlib.Path(workdir)
    teacher = load_model(cfg.init_from.teacher, expected_kind="text_encoder")
    tokenizer = load_tokenizer(cfg.init_from.teacher)
    trainer = SpeechDistillTrainer(cfg, sharding.make_mesh(cfg.mesh))
    trainer.set_frozen({"teacher": teacher} if cfg.teacher.mode == "online" else {})
    init_params = None
    if cfg.init_from.student:
        init_params = {"student": load_model(cfg.init_from.student,
                                             expected_kind="speech_encoder")}

    train_batches, eval_batches = data_iterators(cfg, tokenizer, "speech")
    if eval_batches is not None and cfg.eval.retrieval:
        eval_hooks = (*eval_hooks,
                      retrieval_hook(cfg.eval_data.manifest, trainer, teacher, tokenizer))

    result = train(trainer, workdir=workdir, options=loop_options(cfg),
                   train_batches=train_batches,
                   init_state=lambda: trainer.init(cfg.train.seed, init_params=init_params),
                   eval_batches=eval_batches, eval_hooks=eval_hooks)
    export_final(cfg, trainer, result, None, workdir)
    return result
