"""Ahead-of-time compile of the real text train step for a TPU slice, from any host (no TPU).

    pip install -e ".[tpu]"          # libtpu: the TPU compiler, usable on a CPU-only host
    python launch/aot_compile.py --config=text:basic --topology=v5p-64 \
        --config.mesh.fsdp=-1 --batch_rows=512 --length=128 [--find_max_batch]

`jax.experimental.topologies.get_topology_desc` gives the (compile-only) devices of the named
slice; the mesh, the sharding rules, the model, the optimizer and the step are the ones
launch/train.py would build from the same config, and `TextTrainer.lower_train_step` lowers the
step from abstract state, so nothing is allocated. Printed per chip (XLA's
`compiled.memory_analysis()` of the SPMD-partitioned program): arguments, outputs, aliased bytes
(the donated state), temporaries, generated code and their total, and the FLOPs of
`compiled.cost_analysis()` (per chip; XLA counts a while loop's body once, so the scanned layers
and cross-entropy chunks count one iteration each: far below the step's FLOPs, see FLOPS_NOTE).
A JSON record goes to
benchmarks/results/aot_<accelerator type>_<mesh>.json (--out), e.g.
aot_v5p-64_data1xfsdp32xtensor1.json. See launch/TPU_COMPILE.md for measured figures.

Flags:
    --config=FILE[:VARIANT]      an ml_collections config file; --config.section.field=VALUE
                                 overrides (the mesh: --config.mesh.data=16 --config.mesh.fsdp=-1)
    --topology=NAME              v5p:4x4x2, v5e:16x16, v4:2x2x4, v6e:8x8 (get_topology_desc's
                                 names) or an accelerator type: v5p-64, v5e-256 (v5litepod-256),
                                 v4-32, v6e-64
    --num_slices=N               a multi-slice job of N such slices (use the config's dcn_* axes)
    --batch_rows, --length       the global batch: every array (source, target and, when the
                                 denoising term is on, noised_target) is [rows, length] int32;
                                 rows default: 8 per batch shard
    --find_max_batch             also search the largest number of rows that fits one chip's HBM:
                                 doubling (or halving) from --search_from_rows, then
                                 --bisect_steps bisection steps; compile-only, at most
                                 --max_compiles compiles besides the first. The default start
                                 scales the first compile's rows by (HBM - arguments - code) /
                                 (its total - arguments - code), an underestimate when it fits
    --hbm_gib                    HBM per chip to fit into (default: v4 32, v5e 16, v5p 95,
                                 v6e 32 GiB)

A batch fits when the compile succeeds (the TPU compiler itself refuses a program that cannot fit
HBM) and arguments + outputs - aliased + temporaries + generated code <= the HBM of one chip
(divided between the chip's devices where a chip shows several, as v4's two TensorCores do).
"""

from __future__ import annotations

import datetime
import json
import math
import os
import pathlib
import platform
import re
import sys
import time
from importlib import metadata
from typing import Any, Sequence

GIB = 1024 ** 3
# HBM per chip (GiB) taken as each generation's capacity (Cloud TPU's published figures).
HBM_GIB = {"v4": 32, "v5e": 16, "v5p": 95, "v6e": 32}
# Generations whose accelerator-type number counts TensorCores (2 per chip) rather than chips.
_CORES_PER_CHIP_IN_NAME = {"v4": 2, "v5p": 2, "v5e": 1, "v6e": 1}
_ALIASES = {"v5litepod": "v5e", "v5lite": "v5e", "v6": "v6e"}


# ----------------------------------------------------------------------------------------------
# Topologies


def _grid(chips: int, dims: int) -> list[int]:
    """The most even power-of-two grid of `chips` chips in `dims` dimensions, smallest first
    (v5e-256 -> 16x16, v5p-64 (32 chips) -> 2x4x4); other shapes: name the topology."""
    if chips < 1 or chips & (chips - 1):
        raise ValueError(f"{chips} chips: only power-of-two slices can be named by size; give "
                         "the topology as e.g. v5p:4x4x2")
    sizes = [1] * dims
    for _ in range(int(math.log2(chips))):
        sizes[sizes.index(min(sizes))] *= 2
    return sorted(sizes)


def parse_topology(name: str) -> tuple[str, str]:
    """(generation, get_topology_desc name) of 'v5p:4x4x2' or of an accelerator type 'v5p-64'."""
    name = name.strip().lower()
    match = re.fullmatch(r"(v\d+[a-z]*)[:](\d+(?:x\d+)*)", name)
    if match:
        gen = _ALIASES.get(match[1], match[1])
        if gen not in HBM_GIB:
            raise ValueError(f"unknown TPU generation {match[1]!r}; known: {sorted(HBM_GIB)}")
        return gen, f"{gen}:{match[2]}"
    match = re.fullmatch(r"(v\d+[a-z]*)-(\d+)", name)
    if not match:
        raise ValueError(f"topology {name!r}: expected e.g. v5p:4x4x2, v5e:16x16 or v5p-64, "
                         "v5e-256")
    gen = _ALIASES.get(match[1], match[1])
    if gen not in HBM_GIB:
        raise ValueError(f"unknown TPU generation {match[1]!r}; known: {sorted(HBM_GIB)}")
    count, per_chip = int(match[2]), _CORES_PER_CHIP_IN_NAME[gen]
    if count % per_chip:
        raise ValueError(f"{name}: {gen} sizes count TensorCores, {per_chip} per chip")
    dims = 3 if gen in ("v4", "v5p") else 2
    return gen, f"{gen}:" + "x".join(map(str, _grid(count // per_chip, dims)))


def accelerator_type(gen: str, chips: int) -> str:
    """Cloud TPU's name of a slice: v5p-64 for 32 v5p chips, v5e-256 for 256 v5e chips."""
    return f"{gen}-{chips * _CORES_PER_CHIP_IN_NAME[gen]}"


def topology_devices(topo_name: str, num_slices: int = 1) -> list:
    """The compile-only devices of a TPU slice (or of `num_slices` slices). Needs libtpu."""
    import importlib.util

    if importlib.util.find_spec("libtpu") is None:
        raise RuntimeError("compiling for a TPU topology needs libtpu: pip install -e '.[tpu]'")
    from jax.experimental import topologies

    kwargs = {"num_slices": num_slices} if num_slices > 1 else {}
    return list(topologies.get_topology_desc(platform="tpu", topology_name=topo_name,
                                             **kwargs).devices)


# ----------------------------------------------------------------------------------------------
# One compile


_MEMORY_FIELDS = ("argument", "output", "alias", "temp", "generated_code")
# XLA's cost analysis counts the body of a while loop once, whatever its trip count (checked: a
# lax.scan over 10 matmuls reports the FLOPs of one): the scanned layer stacks and the chunked
# cross-entropy scan count one iteration each, so these FLOPs are far below the step's.
FLOPS_NOTE = "XLA cost analysis: each while-loop body (layer scan, CE chunks) counted once"


def memory_record(mem: Any) -> dict:
    """Per-device bytes of a compiled program, with total = arguments + outputs - aliased +
    temporaries + generated code (what must sit in HBM at once)."""
    rec = {f"{f}_bytes": int(getattr(mem, f"{f}_size_in_bytes", 0) or 0) for f in _MEMORY_FIELDS}
    rec["total_bytes"] = (rec["argument_bytes"] + rec["output_bytes"] - rec["alias_bytes"]
                          + rec["temp_bytes"] + rec["generated_code_bytes"])
    for f in ("argument", "output", "temp"):
        host = int(getattr(mem, f"host_{f}_size_in_bytes", 0) or 0)
        if host:
            rec[f"host_{f}_bytes"] = host
    return rec


def cost_record(compiled: Any) -> dict:
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):  # older jax: one dict per program
        cost = cost[0] if cost else {}
    cost = cost or {}
    out = {}
    if "flops" in cost:
        out["flops_per_chip"] = float(cost["flops"])
    if "bytes accessed" in cost:
        out["bytes_accessed_per_chip"] = float(cost["bytes accessed"])
    return out


def _out_of_memory(err: Exception) -> bool:
    text = str(err)
    return "RESOURCE_EXHAUSTED" in text or "Ran out of memory" in text


def batch_shapes(trainer: Any, rows: int, length: int) -> dict:
    """[rows, length] for every token array a training step of `trainer` reads."""
    spec = trainer.batch_spec
    return {name: (rows, length) for name in spec.used(dict.fromkeys(spec.fields))}


def compile_step(trainer: Any, rows: int, length: int, hbm_bytes: float) -> dict:
    """Lowers and compiles the train step for a global batch of [rows, length] arrays; returns
    the per-chip memory, the FLOPs, the timings and whether it fits `hbm_bytes` per device.
    A compile the TPU compiler rejects for lack of memory is a non-fit (its message kept)."""
    from sonar_jax import sharding

    sharding.check_batch_divisible(rows, trainer.rules, trainer.mesh, "global batch",
                                   trainer.accum_steps)
    rec: dict = {"rows": rows, "length": length, "tokens_per_array": rows * length}
    start = time.perf_counter()
    lowered = trainer.lower_train_step(batch_shapes(trainer, rows, length))
    rec["lower_seconds"] = round(time.perf_counter() - start, 1)
    start = time.perf_counter()
    try:
        compiled = lowered.compile()
    except Exception as err:  # noqa: BLE001 - only out-of-memory is a result, the rest raises
        if not _out_of_memory(err):
            raise
        rec["compile_seconds"] = round(time.perf_counter() - start, 1)
        rec["fits"] = False
        rec["compile_error"] = " ".join(str(err).split())[:600]
        # The compiler's own figures (libtpu 0.0.52: "the total memory required for HLO
        # temporaries (<needed>) exceeds available HBM (<capacity>)"; older: "Used <needed> of
        # <capacity> hbm").
        used = (re.search(r"HLO temporaries \((\S+)\) exceeds available HBM \((\S+)\)", str(err))
                or re.search(r"Used (\S+) of (\S+) hbm", str(err)))
        if used:
            rec["compiler_hbm_needed"], rec["compiler_hbm_available"] = used[1], used[2]
        return rec
    rec["compile_seconds"] = round(time.perf_counter() - start, 1)
    rec["memory_per_chip"] = memory_record(compiled.memory_analysis())
    rec.update(cost_record(compiled))
    if "flops_per_chip" in rec:
        rec["flops_total"] = rec["flops_per_chip"] * trainer.mesh.size
    rec["fits"] = rec["memory_per_chip"]["total_bytes"] <= hbm_bytes
    return rec


def estimate_rows(rec: dict, hbm_bytes: float, unit: int) -> int:
    """A start for the search from one compile: everything but the arguments and the code taken
    as proportional to the rows (the fixed part of the temporaries, e.g. gathered weights, makes
    this an underestimate of the rows that fit, when the compiled batch itself fits)."""
    mem = rec["memory_per_chip"]
    fixed = mem["argument_bytes"] + mem["generated_code_bytes"]
    per_row = max(mem["total_bytes"] - fixed, 1) / rec["rows"]
    return max(unit, int((hbm_bytes - fixed) / per_row) // unit * unit)


def find_max_batch(trainer: Any, length: int, start_rows: int, hbm_bytes: float,
                   bisect_steps: int = 2, max_compiles: int = 8, known: dict | None = None,
                   log=print, on_probe=None) -> dict:
    """Largest global row count (a multiple of the batch shards x grad_accum_steps) that fits:
    doubling (or halving) from `start_rows` until the fit changes, then `bisect_steps` bisection
    steps. Every probe is one compile (at most `max_compiles`; `known` probes are free).
    Returns the bracket [largest fit, smallest non-fit] and every probe; `on_probe(result so
    far)` is called after each compile."""
    unit = trainer.accum_steps * _batch_shards(trainer)
    start_rows = max(unit, -(-start_rows // unit) * unit)
    probes: dict[int, dict] = dict(known or {})
    free = set(probes)
    lo, hi = 0, None  # largest fit, smallest non-fit

    def result() -> dict:
        fit = [r for r, p in probes.items() if p["fits"]]
        nonfit = [r for r, p in probes.items() if not p["fits"]]
        best = max(fit, default=0)
        above = min((r for r in nonfit if r > best), default=None)
        return {"row_multiple": unit, "largest_fit_rows": best, "smallest_nonfit_rows": above,
                "resolution_rows": None if above is None else above - best,
                "largest_fit_tokens_per_array": best * length,
                "probes": [probes[r] for r in sorted(probes)]}

    def fits(rows: int) -> bool | None:
        if rows not in probes:
            if len(set(probes) - free) >= max_compiles:
                return None
            log(f"  probing {rows} rows x {length} ...")
            probes[rows] = compile_step(trainer, rows, length, hbm_bytes)
            log("  " + summary_line(probes[rows], hbm_bytes))
            if on_probe is not None:
                on_probe(result())
        return probes[rows]["fits"]
    ok = fits(start_rows)
    if ok:
        lo, rows = start_rows, start_rows * 2
        while (ok := fits(rows)):
            lo, rows = rows, rows * 2
        hi = rows if ok is False else None
    elif ok is False:
        hi, rows = start_rows, start_rows // 2 // unit * unit
        while rows >= unit and (ok := fits(rows)) is False:
            hi, rows = rows, rows // 2 // unit * unit
        lo = rows if ok else 0
    for _ in range(bisect_steps):
        if hi is None or hi - lo <= unit:
            break
        mid = (lo + hi) // 2 // unit * unit
        ok = fits(mid)
        if ok is None:
            break
        lo, hi = (mid, hi) if ok else (lo, mid)
    return result()


def _batch_shards(trainer: Any) -> int:
    from sonar_jax import sharding

    return sharding.batch_shards(trainer.rules, trainer.mesh)


def _gib(x: float) -> str:
    return f"{x / GIB:.2f} GiB"


def summary_line(rec: dict, hbm_bytes: float) -> str:
    head = f"{rec['rows']} x {rec['length']}: "
    if "memory_per_chip" not in rec:
        return head + f"does not fit (compiler: {rec.get('compile_error', '?')[:160]})"
    total = rec["memory_per_chip"]["total_bytes"]
    flops = rec.get("flops_per_chip")
    return (head + f"{_gib(total)} per chip of {_gib(hbm_bytes)} -> "
            f"{'fits' if rec['fits'] else 'does NOT fit'}"
            + (f", {flops / 1e12:.2f} TFLOP per chip" if flops is not None else "")
            + f" (compile {rec['compile_seconds']} s)")


def print_compile(rec: dict, hbm_bytes: float, hbm_label: str = "HBM per chip",
                  out=sys.stdout) -> None:
    print(f"global batch: {rec['rows']} rows x {rec['length']} tokens per array", file=out)
    mem = rec.get("memory_per_chip")
    if mem is None:
        print(f"  compile failed for lack of memory: {rec.get('compile_error')}", file=out)
        return
    for key, label in (("argument_bytes", "arguments"), ("output_bytes", "outputs"),
                       ("alias_bytes", "aliased (donated)"), ("temp_bytes", "temporaries"),
                       ("generated_code_bytes", "generated code"),
                       ("host_argument_bytes", "host arguments"),
                       ("host_temp_bytes", "host temporaries"),
                       ("total_bytes", "total in HBM")):
        if key in mem:
            print(f"  {label:>20}: {mem[key]:>16,d} B  {_gib(mem[key]):>12}", file=out)
    print(f"  {hbm_label:>20}: {int(hbm_bytes):>16,d} B  {_gib(hbm_bytes):>12}  -> "
          f"{'fits' if rec['fits'] else 'does NOT fit'}", file=out)
    if "flops_per_chip" in rec:
        print(f"  {'FLOPs per chip':>20}: {rec['flops_per_chip']:.4e}  "
              f"(all chips: {rec['flops_total']:.4e}; {FLOPS_NOTE})", file=out)
    print(f"  lower {rec['lower_seconds']} s, compile {rec['compile_seconds']} s", file=out)


# ----------------------------------------------------------------------------------------------
# The command line


def _plain(x: Any) -> dict:
    return dict(x.to_dict() if hasattr(x, "to_dict") else x or {})


def _versions() -> dict:
    out = {"python": platform.python_version(), "host_cpus": os.cpu_count()}
    for pkg in ("jax", "jaxlib", "flax", "libtpu"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


def run(cfg: Any, topology: str, batch_rows: int = 0, length: int = 128, num_slices: int = 1,
        hbm_gib: float = 0.0, search: bool = False, search_from_rows: int = 0,
        bisect_steps: int = 2, max_compiles: int = 8, out: str | None = "") -> dict:
    """Compiles (and optionally searches the largest batch) and returns the JSON record; writes
    it to `out` ('' = benchmarks/results/aot_<accelerator>_<mesh>.json, None = nowhere)."""
    import jax

    from sonar_jax import sharding
    from sonar_jax.train.text import TextTrainer

    gen, topo_name = parse_topology(topology)
    devices = topology_devices(topo_name, num_slices)
    chips = len({(getattr(d, "slice_index", 0), tuple(d.coords)) for d in devices})
    per_chip = len(devices) // chips
    hbm_chip = float(hbm_gib or HBM_GIB[gen]) * GIB
    hbm_device = hbm_chip / per_chip
    mesh = sharding.make_mesh(cfg.mesh, devices=devices)
    trainer = TextTrainer(cfg, mesh)
    shards = _batch_shards(trainer)
    rows = batch_rows or 8 * shards * trainer.accum_steps
    mesh_desc = "x".join(f"{a}{n}" for a, n in mesh.shape.items())
    slices = f"{num_slices}x" if num_slices > 1 else ""
    print(f"{slices}{accelerator_type(gen, chips // num_slices)} ({topo_name}, "
          f"{devices[0].device_kind}): {chips} chips, {len(devices)} devices; mesh "
          f"{dict(mesh.shape)}, preset {cfg.sharding.preset}, batch shards {shards}")
    state_bytes = sum(math.prod(x.shape) * x.dtype.itemsize
                      for x in jax.tree.leaves(trainer.abstract_state()))
    print(f"model: {trainer.num_params():,d} parameters, train state {_gib(state_bytes)} "
          f"in all; compute {cfg.model.dtype}, params {cfg.model.param_dtype}, remat "
          f"{cfg.model.remat_policy}; HBM assumed {_gib(hbm_chip)} per chip")

    rec = compile_step(trainer, rows, length, hbm_device)
    print_compile(rec, hbm_device, "HBM per chip" if per_chip == 1 else "HBM per core")
    record = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "topology": topo_name, "num_slices": num_slices,
        "accelerator_type": accelerator_type(gen, chips // num_slices),
        "device_kind": devices[0].device_kind, "chips": chips, "devices": len(devices),
        "hbm_bytes_per_chip": int(hbm_chip), "hbm_bytes_per_device": int(hbm_device),
        "mesh": dict(mesh.shape), "batch_shards": shards,
        "config": {"variant": cfg.get("variant"), "sharding": cfg.sharding.to_dict(),
                   "model": cfg.model.to_dict(), "loss": cfg.loss.to_dict(),
                   "grad_accum_steps": trainer.accum_steps,
                   "compiler_options": _plain(cfg.train.get("compiler_options", {}))},
        "num_params": trainer.num_params(), "train_state_bytes": state_bytes,
        "batch_arrays": sorted(batch_shapes(trainer, rows, length)),
        "fit_rule": "compiles, and argument + output - alias + temp + generated_code bytes per "
                    "device <= hbm_bytes_per_device",
        "flops_note": FLOPS_NOTE,
        "compile": rec, "versions": _versions(),
    }
    path = None
    if out is not None:
        path = pathlib.Path(out) if out else (
            pathlib.Path("benchmarks") / "results" /
            f"aot_{slices}{accelerator_type(gen, chips // num_slices)}_{mesh_desc}.json")
        path.parent.mkdir(parents=True, exist_ok=True)

    def save(search_so_far: dict | None = None) -> None:
        if search_so_far is not None:
            record["max_batch"] = {**search_so_far, "start_rows": start,
                                   "bisect_steps": bisect_steps, "max_compiles": max_compiles}
        if path is not None:
            path.write_text(json.dumps(record, indent=2) + "\n")

    save()  # the first compile is on disk before any search
    if search:
        unit = shards * trainer.accum_steps
        start = search_from_rows or (estimate_rows(rec, hbm_device, unit)
                                     if "memory_per_chip" in rec else rows)
        print(f"searching the largest batch from {start} rows (rows a multiple of {unit}; "
              f"doubling, then {bisect_steps} bisection steps; at most {max_compiles} more "
              "compiles):")
        found = find_max_batch(trainer, length, start, hbm_device, bisect_steps, max_compiles,
                               known={rows: rec}, on_probe=save)
        save(found)
        hi = found["smallest_nonfit_rows"]
        print(f"largest batch that fits: {found['largest_fit_rows']} rows x {length} "
              + (f"({hi} rows do not fit: resolution {found['resolution_rows']} rows)" if hi
                 else "(no non-fit found within the compile budget)"))
    if path is not None:
        print(f"wrote {path}")
    return record


def main(argv: Sequence[str]) -> dict:
    from absl import flags
    from ml_collections import config_flags

    from sonar_jax.train.entry import parse_flags, resolve_config_flag

    argv = resolve_config_flag(argv)  # config_flags reads sys_argv below itself
    fv = flags.FlagValues()
    config = config_flags.DEFINE_config_file("config", None, "training config file[:variant]",
                                             lock_config=True, flag_values=fv,
                                             sys_argv=list(argv))
    topology = flags.DEFINE_string("topology", None, "v5p:4x4x2, v5e:16x16, v5p-64, v5e-256...",
                                   flag_values=fv)
    num_slices = flags.DEFINE_integer("num_slices", 1, "slices of that topology", flag_values=fv)
    rows = flags.DEFINE_integer("batch_rows", 0, "global rows (0: 8 per batch shard)",
                                flag_values=fv)
    length = flags.DEFINE_integer("length", 128, "tokens per row of every batch array",
                                  flag_values=fv)
    search = flags.DEFINE_bool("find_max_batch", False, "search the largest batch that fits",
                               flag_values=fv)
    search_from = flags.DEFINE_integer("search_from_rows", 0, "rows the doubling starts from "
                                       "(0: estimated from the first compile)", flag_values=fv)
    bisect = flags.DEFINE_integer("bisect_steps", 2, "bisection steps after doubling",
                                  flag_values=fv)
    budget = flags.DEFINE_integer("max_compiles", 8, "compiles the search may spend",
                                  flag_values=fv)
    hbm = flags.DEFINE_float("hbm_gib", 0.0, "HBM per chip in GiB (0: the generation's)",
                             flag_values=fv)
    out = flags.DEFINE_string("out", "", "JSON record path ('' = benchmarks/results/aot_"
                              "<accelerator>_<mesh>.json, '-' = do not write)", flag_values=fv)
    parse_flags(fv, argv, "config topology")
    return run(config.value, topology.value, batch_rows=rows.value, length=length.value,
               num_slices=num_slices.value, hbm_gib=hbm.value, search=search.value,
               search_from_rows=search_from.value, bisect_steps=bisect.value,
               max_compiles=budget.value, out=None if out.value == "-" else out.value)
