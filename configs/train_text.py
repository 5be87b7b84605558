"""Text multi-loss training (SONAR paper §3.1): MT + 0.1·MSE + 0.01·denoising auto-encoding.

    from configs.train_text import get_config      # or sonar_jax.config.load_config_file
    cfg = get_config("tiny")                         # "tiny" | "mid" | "basic" (released shapes)

Variants differ in the architecture (configs/text_<variant>.py), the compute dtype, remat and the
optimizer horizon. Sections: model, mesh, sharding, loss, optim, train (more may be added).
"""

import pathlib

import ml_collections

from sonar_jax.data.config import text_data_config

REPO = pathlib.Path(__file__).resolve().parents[1]

ARCHS = {"tiny": "text_tiny", "mid": "text_mid", "basic": "text_basic"}


def get_config(variant: str = "basic") -> ml_collections.ConfigDict:
    if variant not in ARCHS:
        raise ValueError(f"unknown variant {variant!r}; expected one of {sorted(ARCHS)}")
    small = variant != "basic"
    cfg = ml_collections.ConfigDict()
    cfg.variant = variant

    # Architecture: configs/<arch>.py (encoder and decoder sections). Parameters are kept in
    # param_dtype (float32 master weights); matmuls run in dtype.
    cfg.model = ml_collections.ConfigDict(dict(
        arch=ARCHS[variant],
        dtype="float32" if small else "bfloat16",
        param_dtype="float32",
        remat_policy="none" if small else "full",  # none | full | dots | dots_saveable | attention
        pad_idx=0,
        eos_idx=3,
    ))

    # Mesh: sizes within a slice/node (one may be -1 = the rest) and across slices/hosts (dcn_*).
    cfg.mesh = ml_collections.ConfigDict(dict(
        data=1, fsdp=-1, tensor=1,
        dcn_data=1, dcn_fsdp=1, dcn_tensor=1,
    ))

    # Logical-axis rules: `rules` (pairs (logical name, mesh axes or None), tried first) then the
    # preset's: data_parallel | fsdp | tensor (FSDP + tensor parallel) | custom (rules only).
    cfg.sharding = ml_collections.ConfigDict(dict(
        preset="fsdp",
        rules=(),
    ))

    # L = mt·CE(dec(enc(x)) -> y) + mse·MSE(enc(x), enc(y)) + dae·CE(dec(enc(noise(y))) -> y).
    # A weight of 0 turns a term off (and mse/dae at 0 skip encoding y / noise(y)).
    cfg.loss = ml_collections.ConfigDict(dict(
        mt_weight=1.0,
        mse_weight=0.1,
        dae_weight=0.01,
        label_smoothing=0.1,
        ce_chunk_size=8192,  # target tokens per chunk of the cross-entropy (<= 0: no chunking)
        mse_stop_gradient_target=False,  # the paper trains both sides of the MSE
    ))

    cfg.optim = ml_collections.ConfigDict(dict(
        lr=1e-3 if small else 1e-4,
        warmup_steps=10 if small else 8000,
        schedule="inverse_sqrt",  # inverse_sqrt | cosine | linear | constant
        decay_steps=0,  # for cosine / linear: steps after warmup to reach lr·final_lr_fraction
        final_lr_fraction=0.0,
        b1=0.9,
        b2=0.98,
        eps=1e-6,
        weight_decay=0.0,
        clip_norm=1.0,
        mu_dtype="",  # '' = the parameter dtype
        skip_nonfinite=True,  # a step with a NaN/inf loss or gradient leaves the state unchanged
    ))

    cfg.train = ml_collections.ConfigDict(dict(
        seed=0,
        num_steps=100 if small else 100_000,
        grad_accum_steps=1,
        compiler_options={},  # per-jit XLA options, e.g. {"xla_backend_optimization_level": 0}
    ))

    # Tokenizer: a converted encoder's when init_from.encoder is set, else this SentencePiece
    # model with `langs` (comma-separated or a file; '' = the released 202-language list).
    cfg.tokenizer = ml_collections.ConfigDict(dict(
        spm=str(REPO / "tests/fixtures/spm/udhr.spm.model") if small else "",
        langs="",
    ))
    # Converted model directories (`sonar-jax convert`) to start from; '' = random init.
    cfg.init_from = ml_collections.ConfigDict(dict(encoder="", decoder=""))

    # Training and dev data (fields: sonar_jax/data/config.py text_data_config). The small
    # variants train on the committed sample of real LibreOffice translations, X <-> English.
    # A batch holds batch_max_tokens = rows x padded length per array, per host.
    cfg.data = text_data_config()
    cfg.eval_data = text_data_config()
    if small:
        sample = str(REPO / "data/sample/libreoffice")
        for section, split in ((cfg.data, "train"), (cfg.eval_data, "dev")):
            section.format, section.path, section.split = "flores", sample, split
            section.pairs = "*-eng_Latn,eng_Latn-*"
            section.max_len = 128
            section.batch_max_tokens = 4096
        cfg.eval_data.shuffle = False

    cfg.checkpoint = ml_collections.ConfigDict(dict(
        every_steps=50 if small else 2000,  # 0: only at the end and on preemption
        keep=3,
        async_save=True,
        preemption_check_every=1,  # steps between hosts agreeing on a SIGTERM (multi-host)
    ))
    # Every eval.every_steps: dev loss on eval_data, and dev xsim (LASER's ratio margin, both
    # directions, every language against the pivot) on a FLORES-layout folder when xsim.path is set.
    cfg.eval = ml_collections.ConfigDict(dict(
        every_steps=50 if small else 2000,
        xsim=dict(path=str(REPO / "data/sample/libreoffice") if small else "", split="dev",
                  langs="", pivot="eng_Latn"),
    ))
    cfg.log = ml_collections.ConfigDict(dict(every_steps=10 if small else 100, tensorboard=True,
                                             progress_bar=True))
    # Write the final encoder and decoder as converted directories (workdir/export/step_N).
    cfg.export = ml_collections.ConfigDict(dict(enabled=True))
    return cfg
