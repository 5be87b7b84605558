"""What every benchmark workload shares: timing sides in alternating rounds, the environment and
command of the run, and the record.

Method (each workload, each side): a first call, timed on its own (for ours it includes tracing
and XLA compilation, recorded from jax.monitoring), and a warm-up call are excluded; then
`repeats` rounds in which the sides run one after the other, so that a disturbance hits all of
them. A side is a callable that returns only once its result is ready (numpy on the host, or a
device result synchronised: `jax.block_until_ready`, `torch.cuda.synchronize`). Medians are
reported with the range. On CPUs the share of CPU time other processes used during the rounds is
recorded, so a disturbed run can be recognised and repeated.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import pathlib
import platform
import resource
import statistics
import sys
import time
from typing import Callable, Mapping, Sequence

import jax


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# Disturbance on shared CPUs


def _busy_seconds() -> float:
    try:
        fields = [int(v) for v in pathlib.Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    except OSError:
        return 0.0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class CpuShare:
    """Share of the machine's CPU time that other processes used while the block ran (from
    /proc/stat minus our own getrusage); well above zero means the timings are suspect."""

    def __enter__(self):
        self._busy, self._ours, self._wall = _busy_seconds(), _own_cpu_seconds(), time.perf_counter()
        return self

    def __exit__(self, *exc):
        wall = time.perf_counter() - self._wall
        others = (_busy_seconds() - self._busy) - (_own_cpu_seconds() - self._ours)
        self.value = max(0.0, others) / (wall * (os.cpu_count() or 1)) if wall > 0 else 0.0


def wait_until_idle(max_wait_s: float, threshold: float = 0.05, window_s: float = 5.0) -> None:
    """Waits (at most `max_wait_s`) until other processes use under `threshold` of the CPU."""
    deadline = time.monotonic() + max_wait_s
    while max_wait_s > 0:
        with CpuShare() as share:
            time.sleep(window_s)
        if share.value < threshold or time.monotonic() >= deadline:
            return
        log(f"other processes use {share.value:.0%} of the CPU; waiting")


# ---------------------------------------------------------------------------------------------
# Timing


class CompileClock:
    """Seconds JAX spent tracing, lowering and compiling (jax.monitoring events), so a first
    call's compile time is reported apart from its run time."""

    EVENTS = ("/jax/core/compile/jaxpr_trace_duration",
              "/jax/core/compile/jaxpr_to_mlir_module_duration",
              "/jax/core/compile/backend_compile_duration")

    def __init__(self):
        self.total = 0.0
        jax.monitoring.register_event_duration_secs_listener(self._record)

    def _record(self, event: str, duration: float, **_) -> None:
        if event in self.EVENTS:
            self.total += duration


COMPILE_CLOCK = CompileClock()


def _seconds(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def compare(sides: Mapping[str, Callable[[], object]], repeats: int, *,
            wait_for_idle_s: float = 0.0) -> dict:
    """{side: {median_s, min_s, max_s, times_s, first_call_s, jax_compile_s}} and the CPU share
    other processes took during the rounds (see the module docstring)."""
    wait_until_idle(wait_for_idle_s)
    first = {}
    for name, fn in sides.items():
        compiled_before = COMPILE_CLOCK.total
        first[name] = (_seconds(fn), COMPILE_CLOCK.total - compiled_before)
        fn()  # warm-up
    times: dict[str, list[float]] = {name: [] for name in sides}
    with CpuShare() as share:
        for _ in range(repeats):
            for name, fn in sides.items():
                times[name].append(_seconds(fn))
    out = {"other_processes_cpu_share": round(share.value, 3)}
    for name, values in times.items():
        out[name] = {"median_s": statistics.median(values), "min_s": min(values),
                     "max_s": max(values), "times_s": [round(t, 6) for t in values],
                     "first_call_s": first[name][0], "jax_compile_s": first[name][1]}
    return out


def dispatch_seconds(fn: Callable[[], object], calls: int = 3) -> float:
    """Median host time for `fn` to return, its device result not waited for: the part of a
    synchronised call that the device cannot overlap (jit's argument handling and launch)."""
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
        jax.block_until_ready(out)
    return statistics.median(times)


def add_rates(result: dict, units: Mapping[str, float], peer: str = "peer") -> None:
    """Adds `<unit>_per_s` (median, and the range from max/min) to every side of `result`, and
    for the other sides `<side>_over_<peer>` (> 1: that side is faster; ratio of the medians) and
    `<side>_over_<peer>_per_round` ([min, median, max] of the ratios within each round: the sides
    of a round run seconds apart, so a host that speeds up and slows down over a run moves these
    less than the medians)."""
    sides = [k for k, v in result.items() if isinstance(v, dict) and "median_s" in v]
    for side in sides:
        timing = result[side]
        for unit, amount in units.items():
            timing[f"{unit}_per_s"] = amount / timing["median_s"]
            timing[f"{unit}_per_s_range"] = [amount / timing["max_s"], amount / timing["min_s"]]
    if peer in result:
        for side in sides:
            if side != peer:
                result[f"{side}_over_{peer}"] = result[peer]["median_s"] / result[side]["median_s"]
                rounds = [theirs / ours for theirs, ours in
                          zip(result[peer]["times_s"], result[side]["times_s"])]
                result[f"{side}_over_{peer}_per_round"] = [
                    min(rounds), statistics.median(rounds), max(rounds)]


def jax_ready(fn: Callable[[], object]) -> Callable[[], object]:
    """`fn` with its (device) result waited for."""
    return lambda: jax.block_until_ready(fn())


def torch_ready(fn: Callable[[], object]) -> Callable[[], object]:
    """`fn` with the GPU's queue drained when torch runs on one."""
    import torch

    def run():
        out = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return out
    return run


# ---------------------------------------------------------------------------------------------
# Record


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor()


def _version(package: str) -> str | None:
    from importlib import metadata

    with contextlib.suppress(metadata.PackageNotFoundError):
        return metadata.version(package)
    return None


def environment() -> dict:
    """Versions, devices and XLA flags of this run (torch's when it is importable)."""
    env = {"date": datetime.date.today().isoformat(), "cpu": cpu_model(),
           "cpu_count": os.cpu_count(), "platform": platform.platform(),
           "python": platform.python_version(),
           **{name: _version(name) for name in ("jax", "jaxlib", "flax", "optax", "torch",
                                                "transformers")},
           "jax_devices": [str(d) for d in jax.devices()],
           "device_kind": jax.devices()[0].device_kind,
           "xla_flags": os.environ.get("XLA_FLAGS", "")}
    with contextlib.suppress(ImportError):
        import torch

        env["torch_num_threads"] = torch.get_num_threads()
        env["torch_cuda"] = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    return env


def command_line(argv: Sequence[str]) -> str:
    """The command as run, absolute paths reduced to their names (no machine paths)."""
    words = [pathlib.Path(a).name if os.path.isabs(a) else a for a in argv]
    return " ".join(["python", "-m", "benchmarks", *words])


# Both sides must compute the same function before they are timed.
PARITY_MAX_ABS_FP32 = 1e-4
PARITY_MIN_COSINE_BF16 = 0.99


def check_parity(ours, theirs, dtype: str, what: str) -> dict:
    """Max abs error and min cosine (over the last axis) of two outputs; exits unless within
    the tolerance of `dtype` (float32: max abs error; bfloat16: cosine)."""
    import numpy as np

    ours = np.asarray(ours, np.float32).reshape(-1, np.shape(ours)[-1])
    theirs = np.asarray(theirs, np.float32).reshape(ours.shape)
    cosine = np.sum(ours * theirs, 1) / (np.linalg.norm(ours, axis=1) *
                                        np.linalg.norm(theirs, axis=1))
    report = {"max_abs_err": float(np.abs(ours - theirs).max()),
              "max_abs": float(np.abs(ours).max()), "min_cosine": float(cosine.min())}
    ok = (report["max_abs_err"] <= PARITY_MAX_ABS_FP32 if dtype == "float32"
          else report["min_cosine"] >= PARITY_MIN_COSINE_BF16)
    if not ok:
        raise SystemExit(f"the PyTorch peer's {what} differ from ours: {report}")
    return report


def ratio_cell(result: dict, side: str = "ours", peer: str = "peer") -> str:
    """'ratio of medians (per round: median [min–max])' of `side` over `peer`."""
    low, mid, high = result[f"{side}_over_{peer}_per_round"]
    return f"{result[f'{side}_over_{peer}']:.2f} ({mid:.2f} [{low:.2f}–{high:.2f}])"


def cell(side: dict, unit: str) -> str:
    """'median [min–max]' of a side's rate."""
    low, high = side[f"{unit}_per_s_range"]
    return f"{side[f'{unit}_per_s']:,.1f} [{low:,.1f}–{high:,.1f}]"
