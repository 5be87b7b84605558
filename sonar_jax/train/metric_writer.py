"""Training metrics to JSON lines and TensorBoard event files, written by process 0 only.

JSON lines are the record the tests, plots and notes read; TensorBoard is for watching a run.
Both are appended to, so a resumed run continues the same files.
"""

from __future__ import annotations

import json
import math
import pathlib
from typing import Mapping

import jax


class MetricWriter:
    def __init__(self, workdir: str | pathlib.Path, *, tensorboard: bool = True):
        self.enabled = jax.process_index() == 0
        self.path = pathlib.Path(workdir) / "metrics.jsonl"
        self._tb = None
        if self.enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if tensorboard:
                from tensorboardX import SummaryWriter

                self._tb = SummaryWriter(str(pathlib.Path(workdir) / "tensorboard"))

    def write(self, step: int, split: str, metrics: Mapping[str, float]) -> None:
        """One record: {"step", "split", name: value, ...}; non-finite values stay visible
        in the JSON (as strings) instead of breaking the file."""
        if not self.enabled:
            return
        record = {"step": int(step), "split": split}
        for name, value in metrics.items():
            value = float(value)
            record[name] = value if math.isfinite(value) else str(value)
            if self._tb is not None:
                self._tb.add_scalar(f"{split}/{name}", value, int(step))
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def read_metrics(workdir: str | pathlib.Path, split: str | None = None) -> list[dict]:
    """The records of `workdir`'s metrics.jsonl, optionally only one split."""
    path = pathlib.Path(workdir) / "metrics.jsonl"
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
    return [r for r in records if split is None or r["split"] == split]
