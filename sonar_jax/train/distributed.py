"""Multi-process start-up: decide whether to call jax.distributed.initialize(), and call it.

JAX detects the coordinator, process count and process id by itself on Cloud TPU, under Slurm
and under Kubernetes/MPI launchers, so the call takes no arguments there; a bare cluster sets
JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID. It must run before any device is
touched, which is why the entry points call it first.
"""

from __future__ import annotations

import os


def multi_process_environment(env=os.environ) -> bool:
    """True when the environment says this is one of several processes of one job."""
    if env.get("JAX_COORDINATOR_ADDRESS"):
        return True
    if int(env.get("SLURM_NTASKS", "1") or 1) > 1:
        return True
    # Cloud TPU VMs list every worker of the slice, comma-separated.
    return "," in env.get("TPU_WORKER_HOSTNAMES", "")


def maybe_initialize(mode: str = "auto", env=os.environ) -> bool:
    """mode 'on' always initialises, 'off' never, 'auto' when `multi_process_environment`.
    Returns whether this process is (now) one of several; a second call changes nothing."""
    if mode not in ("auto", "on", "off"):
        raise ValueError(f"distributed mode must be auto, on or off, got {mode!r}")
    if mode == "off" or (mode == "auto" and not multi_process_environment(env)):
        return False
    import jax

    if jax.distributed.is_initialized():
        return True

    if env.get("JAX_PLATFORMS", "") == "cpu":
        # CPU processes exchange collectives over gloo (tests run two processes on loopback).
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if env.get("JAX_COORDINATOR_ADDRESS"):
        jax.distributed.initialize(coordinator_address=env["JAX_COORDINATOR_ADDRESS"],
                                   num_processes=int(env["JAX_NUM_PROCESSES"]),
                                   process_id=int(env["JAX_PROCESS_ID"]))
    else:
        jax.distributed.initialize()
    return True
