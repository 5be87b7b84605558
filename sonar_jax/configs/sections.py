"""Config sections the training recipes share, with their defaults: the mesh, the sharding rules,
the optimizer, the step loop, checkpoints, logging, exports, and the text and speech data.

`small` picks the CPU-sized settings of a recipe's small variant. The data sections list every
field the input pipelines read; they import no grain, so a config (and whatever reads one, e.g.
the benchmarks on a GPU image without grain) does not need it.
"""

from __future__ import annotations

import ml_collections


def mesh() -> ml_collections.ConfigDict:
    """Mesh sizes within a slice/node (one may be -1 = the rest) and across slices/hosts."""
    return ml_collections.ConfigDict(dict(data=1, fsdp=-1, tensor=1,
                                          dcn_data=1, dcn_fsdp=1, dcn_tensor=1))


def sharding() -> ml_collections.ConfigDict:
    """Logical-axis rules: `rules` (pairs (logical name, mesh axes or None), tried first) then
    the preset's: data_parallel | fsdp | tensor (FSDP + tensor parallel) | custom (rules only)."""
    return ml_collections.ConfigDict(dict(preset="fsdp", rules=()))


def optim(small: bool) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(
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


def train(small: bool) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(
        seed=0,
        num_steps=100 if small else 100_000,
        grad_accum_steps=1,
        compiler_options={},  # per-jit XLA options, e.g. {"xla_backend_optimization_level": 0}
    ))


def checkpoint(small: bool) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(
        every_steps=50 if small else 2000,  # 0: only at the end and on preemption
        keep=3,
        async_save=True,
        preemption_check_every=1,  # steps between hosts agreeing on a SIGTERM (multi-host)
    ))


def log(small: bool) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(every_steps=10 if small else 100, tensorboard=True,
                                          progress_bar=True))


def export() -> ml_collections.ConfigDict:
    """Write the final trained models as converted directories (workdir/export/step_N)."""
    return ml_collections.ConfigDict(dict(enabled=True))


def text_data() -> ml_collections.ConfigDict:
    """The text data section (`data`, `eval_data` of the text recipes)."""
    cfg = ml_collections.ConfigDict()
    cfg.format = "tsv"  # "tsv" | "flores" | "tfds"
    cfg.path = ""  # TSV file(s) (comma-separated), FLORES root folder, or tfds dataset name
    cfg.split = "dev"  # FLORES split folder / tfds split
    cfg.pairs = "*-*"  # FLORES: comma-separated "src-tgt"; "*" = every language in the folder
    cfg.src_lang = ""  # TSV without language columns, and tfds
    cfg.tgt_lang = ""
    cfg.src_field = ""  # tfds: feature names of the two texts
    cfg.tgt_field = ""
    cfg.tfds_data_dir = ""
    cfg.max_len = 512  # tokens per row, [lang] and eos included; longer rows are truncated
    cfg.batch_max_tokens = 8192  # rows x padded length of each array of a host batch
    # Padded lengths; () = powers of two from 8 up to max_len. Denser buckets pad less for a few
    # more compiled shapes (on mixed-length pairs: 60% real tokens with powers of two, 71% with
    # 16, 24, 32, 48, ..., 256).
    cfg.length_buckets = ()
    # Records batched together: each window ends with one partly filled batch per bucket, and a
    # resume recomputes one window. 16384 keeps ~90% of rows real on mixed-length pairs.
    cfg.window_size = 16384
    cfg.shuffle = True
    cfg.num_epochs = ml_collections.config_dict.placeholder(int)  # None: repeat forever
    cfg.num_workers = 0  # grain worker processes (0: tokenize in the training process)
    cfg.worker_buffer_size = 2  # windows each worker prepares ahead
    cfg.read_threads = 1  # threads per process reading and tokenizing windows
    cfg.noise = ml_collections.ConfigDict(dict(
        enabled=True, mask_ratio=0.35, poisson_lambda=3.5, word_drop=0.0, shuffle_distance=0))
    return cfg


def speech_data() -> ml_collections.ConfigDict:
    """The speech data section (`data`, `eval_data` of the speech recipe)."""
    cfg = ml_collections.ConfigDict()
    cfg.manifest = ""  # TSV manifest(s), comma-separated
    cfg.lang = ""  # NLLB code for manifests without a lang column
    cfg.min_seconds = 0.1  # shorter clips are dropped (and counted)
    cfg.max_seconds = 30.0  # longer clips are dropped (and counted); sets the longest bucket
    cfg.batch_max_frames = 32768  # rows x padded fbank frames of a host batch (100 frames/s)
    cfg.frame_buckets = ()  # padded frame counts; () = powers of two from 8, up to max_seconds
    cfg.max_text_len = 512  # teacher tokens per row, [lang] and eos included; longer truncated
    # Clips decoded together (and held in memory: 512 clips of 10 s are 330 MB); each window
    # ends with one partly filled batch per bucket, and a resume recomputes one window.
    cfg.window_size = 512
    cfg.shuffle = True
    cfg.num_epochs = ml_collections.config_dict.placeholder(int)  # None: repeat forever
    cfg.num_workers = 0  # grain worker processes (0: decode in the training process)
    cfg.worker_buffer_size = 2  # windows each worker prepares ahead
    cfg.read_threads = 1  # threads per process decoding windows
    cfg.teacher_cache = ""  # .npy from cache_teacher_embeddings: batches then carry "teacher"
    return cfg
