"""`benchmarks.harness`: what every benchmark figure rests on (which calls are timed, how the
ratios are formed, when a peer is refused, what a record says of the command)."""

import time

import numpy as np
import pytest

from benchmarks import harness


def test_rounds_alternate_sides_after_a_first_and_a_warm_up_call_each():
    calls = []
    sides = {name: (lambda n=name: calls.append(n)) for name in ("ours", "peer")}
    result = harness.compare(sides, repeats=3)
    assert calls == ["ours", "ours", "peer", "peer"] + ["ours", "peer"] * 3
    for name in sides:
        assert len(result[name]["times_s"]) == 3
        assert result[name]["first_call_s"] >= 0 and "jax_compile_s" in result[name]
    assert 0 <= result["other_processes_cpu_share"] <= 1


def test_ratios_are_of_medians_and_per_round():
    result = {"ours": {"median_s": 2.0, "min_s": 1.0, "max_s": 4.0, "times_s": [1.0, 2.0, 4.0]},
              "peer": {"median_s": 3.0, "min_s": 2.0, "max_s": 6.0, "times_s": [3.0, 2.0, 6.0]}}
    harness.add_rates(result, {"sentences": 12})
    assert result["ours"]["sentences_per_s"] == 6.0
    assert result["ours"]["sentences_per_s_range"] == [3.0, 12.0]
    assert result["ours_over_peer"] == 1.5
    assert result["ours_over_peer_per_round"] == [1.0, 1.5, 3.0]  # 3/1, 2/2, 6/4
    assert harness.ratio_cell(result) == "1.50 (1.50 [1.00–3.00])"


class _Pending:
    """A result that takes `delay` seconds to become ready, as a device result does."""

    def __init__(self, delay):
        self.delay = delay

    def block_until_ready(self):
        time.sleep(self.delay)
        return self


def test_dispatch_time_leaves_out_the_wait_for_the_result():
    def call():
        time.sleep(0.002)  # host work before the launch
        return _Pending(0.05)

    dispatch = harness.dispatch_seconds(call)
    assert 0.002 <= dispatch < 0.03


def test_a_peer_that_computes_something_else_is_refused():
    ours = np.random.default_rng(0).standard_normal((4, 8)).astype(np.float32)
    report = harness.check_parity(ours, ours + 1e-6, "float32", "embeddings")
    assert report["max_abs_err"] < 1e-5 and report["min_cosine"] > 0.9999
    with pytest.raises(SystemExit, match="embeddings differ"):
        harness.check_parity(ours, ours + 1e-3, "float32", "embeddings")
    with pytest.raises(SystemExit, match="differ"):
        harness.check_parity(ours, -ours, "bfloat16", "embeddings")


def test_the_recorded_command_names_no_machine_path():
    assert (harness.command_line(["--suite", "cpu", "--out", "/home/someone/results"])
            == "python -m benchmarks --suite cpu --out results")
