"""Defaults of the `data` / `eval_data` config sections: every field the text and speech input
pipelines read. Kept apart from the pipelines so configs (and whatever reads them) need no grain.
"""

from __future__ import annotations

import ml_collections


def text_data_config() -> ml_collections.ConfigDict:
    """Defaults for the text data config; every field the pipeline reads is here."""
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



def speech_data_config() -> ml_collections.ConfigDict:
    """Defaults for the speech data config; every field the pipeline reads is here."""
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
