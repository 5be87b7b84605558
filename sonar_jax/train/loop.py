"""The training loop: steps, metrics, evaluation, checkpoints, preemption and NaN guards.

One loop serves every recipe's trainer: a trainer supplies `train_step`, `eval_step`,
`shard_batch`, `abstract_state` and `summarize_eval`; the loop owns everything around the step.

Guarantees:
- resume continues on the exact next batch with the saved state (data iterator state is saved
  in the same orbax step as the model);
- SIGTERM / SIGINT finish the current step, save, and return `stopped="preempted"`;
- a non-finite loss or gradient norm stops the run naming the step; the state after that step
  is never saved, so the last checkpoint on disk is the last good one;
- the device is never synchronised just to read metrics: step t's metrics are read after step
  t+1 has been dispatched (and always before a checkpoint of step t is written).
"""

from __future__ import annotations

import dataclasses
import math
import signal
import sys
import threading
import time
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import jax
import numpy as np
from tqdm import tqdm

from sonar_jax.checkpoint import TrainCheckpoints
from sonar_jax.train.metric_writer import MetricWriter

EvalHook = Callable[[Any, int], Mapping[str, float]]


class NonFiniteLossError(FloatingPointError):
    """Raised by `train` when a step produced a NaN/inf loss or gradient norm."""

    def __init__(self, step: int, metrics: Mapping[str, float], last_checkpoint: int | None):
        self.step, self.metrics, self.last_checkpoint = step, dict(metrics), last_checkpoint
        bad = {k: v for k, v in metrics.items() if not math.isfinite(v)}
        kept = (f"the last good checkpoint is step {last_checkpoint}" if last_checkpoint is not None
                else "no checkpoint was written")
        super().__init__(f"non-finite training metrics at step {step}: {bad}; the run stopped and "
                         f"{kept} (the state after step {step} was not saved)")


@dataclasses.dataclass
class LoopOptions:
    num_steps: int
    log_every: int = 10
    eval_every: int = 0            # 0: never (besides hooks at the end)
    checkpoint_every: int = 0      # 0: only at the end / on preemption
    keep_checkpoints: int = 3
    async_checkpoints: bool = True
    tensorboard: bool = True
    progress_bar: bool = True
    preemption_check_every: int = 1  # multi-host: steps between agreeing on a stop request


@dataclasses.dataclass
class LoopResult:
    state: Any
    step: int
    stopped: str                   # "completed" | "preempted"
    resumed_from: int | None
    last_train_metrics: dict


class StopRequest:
    """Records SIGTERM/SIGINT instead of dying, so the loop can save first. A second SIGINT
    while stopping falls through to the default handler (a stuck run can still be killed)."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.requested = False
        self._previous = {}

    def _handle(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        print(f"\nsonar_jax: received {signal.Signals(signum).name}; saving a checkpoint after "
              f"the current step, then stopping", file=sys.stderr)

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def agreed(self) -> bool:
        """True when any process saw a stop signal (all processes must stop at the same step)."""
        if jax.process_count() == 1:
            return self.requested
        from jax.experimental import multihost_utils

        flags = multihost_utils.process_allgather(np.array([int(self.requested)], np.int32))
        return bool(np.max(flags))


class _Averages:
    """Token-weighted running sums of host-side metrics between two log lines."""

    def __init__(self):
        self.sums, self.count = {}, 0

    def add(self, metrics: Mapping[str, float]) -> None:
        for name, value in metrics.items():
            self.sums[name] = self.sums.get(name, 0.0) + value
        self.count += 1

    def pop(self) -> dict:
        out = {name: total / max(self.count, 1) for name, total in self.sums.items()}
        self.sums, self.count = {}, 0
        return out


def _host_metrics(metrics: Mapping[str, Any]) -> dict:
    return {name: float(np.asarray(value)) for name, value in metrics.items()}


def _finite(metrics: Mapping[str, float]) -> bool:
    return all(math.isfinite(metrics[k]) for k in ("loss", "grad_norm") if k in metrics)


def evaluate(trainer, state, batches: Iterable[Mapping[str, np.ndarray]]) -> dict:
    """Dev metrics over a finite iterator: the per-batch sums, summed, turned into dataset-level
    figures by `trainer.summarize_eval` (losses divided by all the dev set's tokens, not averaged
    per batch)."""
    totals: dict[str, float] = {}
    for batch in batches:
        metrics = _host_metrics(trainer.eval_step(state, trainer.shard_batch(batch)))
        for name, value in metrics.items():
            totals[name] = totals.get(name, 0.0) + value
    if not totals:
        raise ValueError("the evaluation iterator yielded no batch; check the dev data")
    return _host_metrics(trainer.summarize_eval(totals))


def train(trainer, *, workdir, options: LoopOptions, train_batches: Iterator,
          init_state: Callable[[], Any], eval_batches: Callable[[], Iterable] | None = None,
          eval_hooks: Sequence[EvalHook] = ()
          ) -> LoopResult:
    """Runs `trainer` until `options.num_steps`, resuming from `workdir`'s newest checkpoint.

    train_batches: a grain iterator of per-host numpy batches (its state is checkpointed).
    init_state: builds the initial (sharded) state when there is no checkpoint to resume
      (`trainer.abstract_state()` gives the shapes and shardings to restore onto).
    eval_batches: returns a fresh finite iterator of dev batches (dev loss every eval_every).
    eval_hooks: functions (state, step) -> metrics, run with the dev loss (e.g. xsim).
    Throughput (tokens/s) counts what the trainer's batch spec calls a batch's tokens.
    """
    count_tokens = trainer.batch_spec.tokens
    checkpoints = TrainCheckpoints(f"{workdir}/checkpoints", keep=options.keep_checkpoints,
                                   async_save=options.async_checkpoints)
    writer = MetricWriter(workdir, tensorboard=options.tensorboard)
    resumed_from = checkpoints.latest_step()
    if resumed_from is not None:
        state = checkpoints.restore(resumed_from, trainer.abstract_state(), train_batches)
        step = resumed_from
    else:
        state, step = init_state(), 0
    last_saved = resumed_from

    def save(at_step: int, saved_state) -> None:
        nonlocal last_saved
        checkpoints.save(at_step, saved_state, train_batches)
        last_saved = at_step

    def run_eval(at_step: int, eval_state) -> None:
        metrics = {}
        if eval_batches is not None:
            metrics.update(evaluate(trainer, eval_state, eval_batches()))
        for hook in eval_hooks:
            metrics.update(hook(eval_state, at_step))
        if metrics:
            writer.write(at_step, "eval", metrics)

    averages, last_metrics = _Averages(), {}
    pending: tuple[int, Any, int] | None = None  # (step, device metrics, tokens) not yet checked
    window_start, window_tokens = time.perf_counter(), 0
    bar = tqdm(total=options.num_steps, initial=step, unit="step", file=sys.stderr,
               disable=not options.progress_bar or jax.process_index() != 0, dynamic_ncols=True)

    def check(entry) -> None:
        """Reads a finished step's metrics on the host; stops the run if they are not finite."""
        nonlocal last_metrics, window_start, window_tokens
        done_step, device_metrics, tokens = entry
        metrics = _host_metrics(device_metrics)
        if not _finite(metrics):
            checkpoints.wait()
            raise NonFiniteLossError(done_step, metrics, last_saved)
        averages.add(metrics)
        last_metrics = metrics
        window_tokens += tokens
        if done_step % options.log_every == 0 or done_step == options.num_steps:
            elapsed = time.perf_counter() - window_start
            record = averages.pop()
            record["tokens_per_s"] = window_tokens / elapsed if elapsed > 0 else float("nan")
            writer.write(done_step, "train", record)
            bar.set_postfix(loss=f"{record.get('loss', float('nan')):.4f}",
                            tok_s=f"{record['tokens_per_s']:.0f}")
            window_start, window_tokens = time.perf_counter(), 0

    stopped = "completed"
    try:
        with StopRequest() as stop:
            while step < options.num_steps:
                try:
                    host_batch = next(train_batches)
                except StopIteration:
                    raise ValueError("the training data ran out before num_steps; make the "
                                     "iterator repeat (epochs) or lower num_steps") from None
                state, device_metrics = trainer.train_step(state, trainer.shard_batch(host_batch))
                step += 1
                bar.update(1)
                if pending is not None:
                    check(pending)
                pending = (step, device_metrics, count_tokens(host_batch))
                save_now = bool(options.checkpoint_every) and step % options.checkpoint_every == 0
                eval_now = bool(options.eval_every) and step % options.eval_every == 0
                stop_now = (step % options.preemption_check_every == 0 or save_now) and stop.agreed()
                if save_now or eval_now or stop_now:
                    check(pending)  # never save or evaluate a state that came from a bad step
                    pending = None
                if save_now or stop_now:
                    save(step, state)
                if eval_now:
                    run_eval(step, state)
                if stop_now:
                    stopped = "preempted"
                    break
            if pending is not None:
                check(pending)
            if stopped == "completed":
                if last_saved != step:
                    save(step, state)
                if options.eval_every and step % options.eval_every:
                    run_eval(step, state)
    finally:
        bar.close()
        checkpoints.wait()
        checkpoints.close()
        writer.close()
    return LoopResult(state=state, step=step, stopped=stopped, resumed_from=resumed_from,
                      last_train_metrics=last_metrics)
