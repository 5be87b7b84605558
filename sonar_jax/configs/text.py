"""The `text` recipe: SONAR's multi-loss objective (paper §3.1),
MT + 0.1·MSE + 0.01·denoising auto-encoding.

    sonar-jax train --config=text:tiny --workdir=runs/tiny        # or in Python:
    cfg = sonar_jax.configs.get_config("text", "tiny")              # "tiny" | "mid" | "basic"

Variants differ in the architecture (`architectures.TEXT`), the compute dtype, remat and the
optimizer horizon; the small ones train on the committed sample of real LibreOffice
translations (data/sample, X <-> English).
"""

import ml_collections

from sonar_jax.configs import sample_path, sections

ARCHS = {"tiny": "text_tiny", "mid": "text_mid", "basic": "text_basic"}


def get_config(variant: str = "basic") -> ml_collections.ConfigDict:
    if variant not in ARCHS:
        raise ValueError(f"unknown variant {variant!r}; expected one of {sorted(ARCHS)}")
    small = variant != "basic"
    cfg = ml_collections.ConfigDict()
    cfg.kind = "text"
    cfg.variant = variant

    # The encoder and decoder of architecture `arch`. Parameters are kept in param_dtype (float32
    # master weights); matmuls run in dtype.
    cfg.model = ml_collections.ConfigDict(dict(
        arch=ARCHS[variant],
        dtype="float32" if small else "bfloat16",
        param_dtype="float32",
        remat_policy="none" if small else "full",  # none | full | dots | dots_saveable | attention
        # auto: cuDNN's flash attention on GPUs where it applies, XLA's elsewhere | xla | cudnn
        attention="auto",
        pad_idx=0,
        eos_idx=3,
    ))
    cfg.mesh = sections.mesh()
    cfg.sharding = sections.sharding()

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
    cfg.optim = sections.optim(small)
    cfg.train = sections.train(small)

    # Tokenizer: a converted encoder's when init_from.encoder is set, else this SentencePiece
    # model with `langs` (comma-separated or a file; '' = the released 202-language list).
    cfg.tokenizer = ml_collections.ConfigDict(dict(
        spm=sample_path("tests/fixtures/spm/udhr.spm.model") if small else "", langs=""))
    # Converted model directories (`sonar-jax convert`) to start from; '' = random init.
    cfg.init_from = ml_collections.ConfigDict(dict(encoder="", decoder=""))

    # Training and dev data. A batch holds batch_max_tokens = rows x padded length per array,
    # per host.
    cfg.data = sections.text_data()
    cfg.eval_data = sections.text_data()
    sample = sample_path("data/sample/libreoffice")
    if small:
        for section, split in ((cfg.data, "train"), (cfg.eval_data, "dev")):
            section.format, section.path, section.split = "flores", sample, split
            section.pairs = "*-eng_Latn,eng_Latn-*"
            section.max_len = 128
            section.batch_max_tokens = 4096
        cfg.eval_data.shuffle = False

    cfg.checkpoint = sections.checkpoint(small)
    # Every eval.every_steps: dev loss on eval_data, and dev xsim (LASER's ratio margin, both
    # directions, every language against the pivot) on a FLORES-layout folder when xsim.path is set.
    cfg.eval = ml_collections.ConfigDict(dict(
        every_steps=50 if small else 2000,
        xsim=dict(path=sample if small else "", split="dev", langs="", pivot="eng_Latn"),
    ))
    cfg.log = sections.log(small)
    cfg.export = sections.export()
    return cfg
