"""Speech-encoder distillation (SONAR paper §3.2): student speech encoder -> frozen text teacher.

    from configs.train_speech import get_config
    cfg = get_config("tiny")          # "tiny" (CPU, the committed real-speech sample) | "basic"

    sonar-jax train --config=configs/train_speech.py:tiny --workdir=runs/speech \
        --config.init_from.teacher=runs/main_job/train/export/step_600/encoder

The teacher is a converted text encoder directory (`init_from.teacher`; its tokenizer reads the
transcriptions); its width fixes the student's. `teacher.mode`: "online" runs the teacher in
the step, "cached" reads embeddings that `sonar-jax data teacher-cache` wrote
(`data.teacher_cache`; the same manifests, in the same order). The student starts from a converted speech encoder (`init_from.student`)
or at random.
"""

import ml_collections

import pathlib

from sonar_jax.config import load_config_file
from sonar_jax.data.config import speech_data_config

SAMPLE = pathlib.Path(__file__).resolve().parents[1] / "data/sample/speech"


def get_config(variant: str = "basic") -> ml_collections.ConfigDict:
    if variant not in ("tiny", "basic"):
        raise ValueError(f"unknown variant {variant!r}; expected 'tiny' or 'basic'")
    small = variant == "tiny"
    # Mesh, sharding, optimizer, train, checkpoint and log sections are the text recipe's.
    cfg = load_config_file("train_text", "tiny" if small else "basic")
    for section in ("loss", "tokenizer", "data", "eval_data", "export"):
        del cfg[section]
    cfg.kind = "speech_distill"
    cfg.model = ml_collections.ConfigDict(dict(
        student_arch="speech_student_tiny" if small else "speech_non_english",
        teacher_arch="text_tiny" if small else "text_basic",
        dtype="float32" if small else "bfloat16",
        param_dtype="float32",
        remat_policy="none" if small else "full",
    ))
    cfg.teacher = ml_collections.ConfigDict(dict(mode="online"))  # online | cached
    cfg.init_from = ml_collections.ConfigDict(dict(teacher="", student=""))
    # SpecAugment on the standardised fbank, in the step: per row, time_masks spans of up to
    # time_width frames (10 ms each) and freq_masks bands of up to freq_width mel bins.
    cfg.specaugment = ml_collections.ConfigDict(dict(
        enabled=not small, time_masks=2, time_width=40, freq_masks=2, freq_width=15))

    cfg.data = speech_data_config()
    cfg.eval_data = speech_data_config()
    if small:
        for section, split in ((cfg.data, "train"), (cfg.eval_data, "dev")):
            manifests = sorted(SAMPLE.glob(f"*/speech/*.{split}.tsv"))
            section.manifest = ",".join(str(p) for p in manifests)
            section.batch_max_frames = 8192
        cfg.eval_data.shuffle = False
    cfg.optim.lr = 1e-3 if small else 1e-4
    cfg.optim.schedule = "cosine" if small else "inverse_sqrt"
    cfg.optim.warmup_steps = 20 if small else 8000
    cfg.optim.decay_steps = 280 if small else 0
    cfg.optim.final_lr_fraction = 0.1
    cfg.train.num_steps = 300 if small else 100_000
    # Every eval.every_steps: the dev MSE, and speech -> text retrieval on eval_data (each clip's
    # embedding against the teacher's embeddings of all the dev transcriptions, LASER's ratio
    # margin, errors counted by text so repeated lines are not errors).
    cfg.eval = ml_collections.ConfigDict(dict(every_steps=100 if small else 2000,
                                              retrieval=True))
    cfg.export = ml_collections.ConfigDict(dict(enabled=True))
    return cfg
