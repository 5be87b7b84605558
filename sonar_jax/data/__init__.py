"""Training data: sources, denoising noise, bucketed batches, grain input pipelines.

    windows.py          the window stream and batch iterator both pipelines share (resume, hosts)
    text_pipeline.py    parallel text -> token batches (text recipes)
    speech_pipeline.py  speech manifests -> waveform batches (speech_distill)
    text.py, manifests.py, teacher_cache.py   the sources they read
    noise.py, buckets.py                      denoising noise, length buckets and batch shapes

`make_iterator` builds either pipeline's iterator for training or for one dev pass. Submodules
are imported on first use, so importing a light one (e.g. `sonar_jax.data.noise`) does not
import grain. The config sections these read are `sonar_jax.configs.sections`.
"""

from __future__ import annotations

import importlib
from typing import Any

MODALITIES = {"text": "sonar_jax.data.text_pipeline", "speech": "sonar_jax.data.speech_pipeline"}


def make_iterator(data_cfg: Any, tokenizer: Any, modality: str, *, training: bool,
                  rows_multiple: int, seed: int = 0, shard_index: int | None = None,
                  shard_count: int | None = None):
    """This host's batches of a `data` / `eval_data` section (`sonar_jax.configs.sections`).

    training: shuffled as the section says, epoch after epoch (`num_epochs`, None: forever);
    otherwise one unshuffled pass in which all hosts yield the same number of batches (so a
    sharded eval step never waits for a host). rows_multiple: every batch's rows are a multiple
    of it (local devices x grad-accum steps). seed: shuffling, noise and batch order follow
    from it and the stream position. With several processes, all of them must draw batches in
    step (loading a window is a collective). The iterator's state (`state_to_json`) resumes on
    the exact next batch.
    """
    if modality not in MODALITIES:
        raise ValueError(f"unknown data modality {modality!r}; expected one of "
                         f"{sorted(MODALITIES)}")
    shuffle, num_epochs = (data_cfg.shuffle, data_cfg.num_epochs) if training else (False, 1)
    return importlib.import_module(MODALITIES[modality]).batches(
        data_cfg, tokenizer, rows_multiple=rows_multiple, seed=seed, shuffle=shuffle,
        num_epochs=num_epochs, shard_index=shard_index, shard_count=shard_count)


def state_to_json(iterator) -> bytes:
    from sonar_jax.data import windows

    return windows.state_to_json(iterator)


def state_from_json(iterator, data: bytes) -> None:
    from sonar_jax.data import windows

    windows.state_from_json(iterator, data)
