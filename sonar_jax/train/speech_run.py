"""A speech distillation run from one config (configs/train_speech.py): teacher, student, audio
data, the shared loop, speech -> text retrieval while training, export.

Called by sonar_jax/train/entry.py (`sonar-jax train`, launch/train.py) for `kind =
"speech_distill"`. The teacher (`init_from.teacher`, a converted text encoder) always supplies
the tokenizer and the dev transcriptions' embeddings; in "online" mode it also runs inside the
step, in "cached" mode the batches carry its embeddings from `data.teacher_cache`.
"""

from __future__ import annotations

import pathlib
from typing import Sequence

import jax
import numpy as np

from sonar_jax import audio, sharding
from sonar_jax.data.speech import (make_speech_eval_iterator, make_speech_train_iterator,
                                   read_manifests)
from sonar_jax.model_dir import load_model, load_tokenizer
from sonar_jax.models.speech_encoder import SpeechEncoder
from sonar_jax.train.loop import EvalHook, LoopResult, train
from sonar_jax.train.speech_distill import SpeechDistillTrainer
from sonar_jax.train.text_run import export_final, host_module, loop_options


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
    from sonar_jax.evaluate.report import evaluate_speech_retrieval
    from sonar_jax.speech_pipelines import SpeechToEmbeddingModelPipeline

    rows = read_manifests(manifests.split(","))
    clips = [audio.load_audio(row.audio) for row in rows]  # decoded once, scored every eval
    texts = [row.text for row in rows]
    text_embeddings = teacher_text_embeddings(teacher, tokenizer, texts,
                                              [row.lang for row in rows])

    def hook(state, step: int) -> dict:
        student = host_module(SpeechEncoder, trainer.student_cfg,
                              trainer.export_params(state)["student"])
        speech = SpeechToEmbeddingModelPipeline(student).predict(clips, batch_size=16)
        to_text, to_speech = evaluate_speech_retrieval(speech, text_embeddings, texts=texts)
        return {"speech_to_text_error_percent": to_text["error_rate"],
                "text_to_speech_error_percent": to_speech["error_rate"]}

    return hook


def run_speech_distillation(cfg, workdir: str | pathlib.Path,
                            eval_hooks: Sequence[EvalHook] = ()) -> LoopResult:
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

    rows_multiple = jax.local_device_count() * int(cfg.train.grad_accum_steps)
    train_batches = make_speech_train_iterator(cfg.data, tokenizer, rows_multiple=rows_multiple,
                                               seed=cfg.train.seed)
    eval_batches = None
    if cfg.eval_data.manifest:
        eval_batches = lambda: make_speech_eval_iterator(  # noqa: E731
            cfg.eval_data, tokenizer, rows_multiple=rows_multiple)
        if cfg.eval.retrieval:
            eval_hooks = (*eval_hooks,
                          retrieval_hook(cfg.eval_data.manifest, trainer, teacher, tokenizer))

    def frames(batch) -> int:  # the loop's throughput unit here: fbank frames (100 per second)
        return int(np.sum(audio.num_frames(batch["num_samples"])))

    result = train(trainer, workdir=workdir, options=loop_options(cfg),
                   train_batches=train_batches,
                   init_state=lambda: trainer.init(cfg.train.seed, init_params=init_params),
                   eval_batches=eval_batches, eval_hooks=eval_hooks, tokens_in=frames)
    export_final(cfg, trainer, result, None, workdir)
    return result
