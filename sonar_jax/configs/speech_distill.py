"""The `speech_distill` recipe: a student speech encoder distilled from a frozen text teacher
(paper §3.2).

    sonar-jax train --config=speech_distill:tiny --workdir=runs/speech \
        --config.init_from.teacher=runs/main_job/train/export/step_600/encoder

The teacher is a converted text encoder directory (`init_from.teacher`; its tokenizer reads the
transcriptions); its width fixes the student's. `teacher.mode`: "online" runs the teacher in
the step, "cached" reads embeddings that `sonar-jax data teacher-cache` wrote
(`data.teacher_cache`; the same manifests, in the same order). The student starts from a
converted speech encoder (`init_from.student`) or at random. The tiny variant trains on the
committed real-speech sample (data/sample/speech).
"""

import glob
import os

import ml_collections

from sonar_jax.configs import sample_path, sections


def get_config(variant: str = "basic") -> ml_collections.ConfigDict:
    if variant not in ("tiny", "basic"):
        raise ValueError(f"unknown variant {variant!r}; expected 'tiny' or 'basic'")
    small = variant == "tiny"
    cfg = ml_collections.ConfigDict()
    cfg.kind = "speech_distill"
    cfg.variant = variant
    cfg.model = ml_collections.ConfigDict(dict(
        student_arch="speech_student_tiny" if small else "speech_non_english",
        teacher_arch="text_tiny" if small else "text_basic",
        dtype="float32" if small else "bfloat16",
        param_dtype="float32",
        remat_policy="none" if small else "full",
    ))
    cfg.mesh = sections.mesh()
    cfg.sharding = sections.sharding()
    cfg.teacher = ml_collections.ConfigDict(dict(mode="online"))  # online | cached
    cfg.init_from = ml_collections.ConfigDict(dict(teacher="", student=""))
    # SpecAugment on the standardised fbank, in the step: per row, time_masks spans of up to
    # time_width frames (10 ms each) and freq_masks bands of up to freq_width mel bins.
    cfg.specaugment = ml_collections.ConfigDict(dict(
        enabled=not small, time_masks=2, time_width=40, freq_masks=2, freq_width=15))

    cfg.data = sections.speech_data()
    cfg.eval_data = sections.speech_data()
    if small:
        speech = sample_path("data/sample/speech")
        for section, split in ((cfg.data, "train"), (cfg.eval_data, "dev")):
            manifests = sorted(glob.glob(os.path.join(speech, f"*/speech/*.{split}.tsv")))
            section.manifest = ",".join(manifests)
            section.batch_max_frames = 8192
        cfg.eval_data.shuffle = False
    cfg.optim = sections.optim(small)
    cfg.optim.lr = 1e-3 if small else 1e-4
    cfg.optim.schedule = "cosine" if small else "inverse_sqrt"
    cfg.optim.warmup_steps = 20 if small else 8000
    cfg.optim.decay_steps = 280 if small else 0
    cfg.optim.final_lr_fraction = 0.1
    cfg.train = sections.train(small)
    cfg.train.num_steps = 300 if small else 100_000
    cfg.checkpoint = sections.checkpoint(small)
    # Every eval.every_steps: the dev MSE, and speech -> text retrieval on eval_data (each clip's
    # embedding against the teacher's embeddings of all the dev transcriptions, LASER's ratio
    # margin, errors counted by text so repeated lines are not errors).
    cfg.eval = ml_collections.ConfigDict(dict(every_steps=100 if small else 2000,
                                              retrieval=True))
    cfg.log = sections.log(small)
    cfg.export = sections.export()
    return cfg
