"""The host batches the input pipelines yield and the trainers read, defined once: each field's
kind and rank, which fields a step needs, how the loop counts a batch's tokens, and the checks
and abstract shapes the trainers, the ahead-of-time compiles and the loop derive from that.

    TEXT:   {"source", "target"[, "noised_target"]}   int32 [B, L], 0-padded
    SPEECH: {"waveform": float32 [B, S], "num_samples": int32 [B], "text": int32 [B, L]
             | "teacher": float32 [B, D]}
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import numpy as np


@dataclasses.dataclass(frozen=True)
class BatchSpec:
    """fields: {name: ("int" | "float", ndim)}, every field a batch may carry; required: the
    fields every step reads; train_required: more that a training step reads; optional: fields
    read when present (the rest of `fields` are accepted and ignored); tokens(host batch): the
    loop's throughput unit."""

    fields: Mapping[str, tuple[str, int]]
    required: tuple[str, ...]
    tokens: Callable[[Mapping[str, np.ndarray]], int]
    train_required: tuple[str, ...] = ()
    optional: tuple[str, ...] = ()

    def but(self, **changes: Any) -> "BatchSpec":
        return dataclasses.replace(self, **changes)

    def missing(self, batch: Mapping[str, Any], *, training: bool) -> None:
        """Raises naming the fields a step needs that `batch` lacks."""
        needed = self.required + (self.train_required if training else ())
        absent = [k for k in needed if k not in batch]
        if absent:
            raise KeyError(f"batch lacks {absent}; it has {sorted(batch)}")

    def used(self, batch: Mapping[str, Any]) -> list[str]:
        """The fields of `batch` a step reads, in the spec's order."""
        read = set(self.required) | set(self.train_required) | set(self.optional)
        return [k for k in self.fields if k in read and k in batch]

    def check(self, batch: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """The fields a step reads, checked (known names, kinds, ranks, equal rows) and cast to
        int32 / float32."""
        self.missing(batch, training=False)
        unknown = sorted(set(batch) - set(self.fields))
        if unknown:
            raise KeyError(f"batch has unknown fields {unknown}; expected {sorted(self.fields)}")
        out, first = {}, None
        for key in self.used(batch):
            kind, ndim = self.fields[key]
            x = np.asarray(batch[key])
            numeric = np.integer if kind == "int" else np.floating
            if x.ndim != ndim or not np.issubdtype(x.dtype, numeric):
                raise ValueError(f"batch[{key!r}] must be a {ndim}-D {kind} array, got "
                                 f"{x.dtype} {x.shape}")
            if first is not None and x.shape[0] != out[first].shape[0]:
                raise ValueError(f"batch fields have different row counts: {key!r} has "
                                 f"{x.shape[0]}, {first!r} has {out[first].shape[0]}")
            first = first or key
            out[key] = x.astype(np.int32 if kind == "int" else np.float32)
        return out

    def dtype(self, key: str):
        return np.int32 if self.fields[key][0] == "int" else np.float32


def _target_tokens(batch: Mapping[str, np.ndarray]) -> int:
    return int(np.count_nonzero(batch["target"]))


def _fbank_frames(batch: Mapping[str, np.ndarray]) -> int:
    from sonar_jax import audio

    return int(np.sum(audio.num_frames(batch["num_samples"])))


# Text recipes: every row in encoder form `[lang] pieces [eos]`; tokens = non-pad target tokens.
TEXT = BatchSpec(fields={"source": ("int", 2), "target": ("int", 2),
                         "noised_target": ("int", 2)},
                 required=("source", "target"), tokens=_target_tokens)
# Speech distillation: 16 kHz waveforms and the teacher's tokens or cached embeddings;
# tokens = fbank frames (100 per second of audio).
SPEECH = BatchSpec(fields={"waveform": ("float", 2), "num_samples": ("int", 1),
                           "text": ("int", 2), "teacher": ("float", 2)},
                   required=("waveform", "num_samples"), tokens=_fbank_frames)
