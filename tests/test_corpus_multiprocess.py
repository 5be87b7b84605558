"""2 processes x 4 CPU devices over loopback (JAX_COORDINATOR_*, the launchers' machinery) run
`sonar-jax embed` and `sonar-jax mine`: the same bytes as 1 process with 4 devices.
About 40-65 s on the 2-core CPU machine (39, 53, 64 s measured), in the default suite."""

import json
import os
import pathlib
import socket
import subprocess
import sys

import jax

from sonar_jax import cli
from sonar_jax.corpus.embed import embed_corpus
from sonar_jax.evaluate.mining import mine_corpora

ROOT = pathlib.Path(__file__).parent.parent
DEV = ROOT / "data" / "sample" / "libreoffice" / "dev"
ENCODER = pathlib.Path(__file__).parent / "fixtures" / "trained" / "main_job_tiny" / "encoder"

_WORKER = """
import json, sys
from sonar_jax import cli
for argv in json.loads(sys.argv[1]):
    assert cli.main(argv) == 0, argv
"""


def _commands(out):
    embed = ["embed", "--model", str(ENCODER), "--quiet"]
    return [embed + ["--input", str(DEV), "--output", str(out / "dev"), "--shard-rows", "100"],
            embed + ["--input", str(DEV / "eng_Latn.dev"), "--output", str(out / "eng"),
                     "--shard-rows", "64"],
            embed + ["--input", str(DEV / "fra_Latn.dev"), "--output", str(out / "fra"),
                     "--shard-rows", "64"],
            ["mine", "--src", str(out / "eng"), "--tgt", str(out / "fra"), "--output",
             str(out / "pairs.tsv")]]


def _files(folder: pathlib.Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_two_processes_embed_and_mine_the_same_bytes_as_one(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    two = tmp_path / "two"
    script = tmp_path / "worker.py"
    script.write_text(_WORKER)
    base = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    base.update(JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=4",
                JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2",
                PYTHONPATH=os.pathsep.join([str(ROOT)] + [p for p in [
                    os.environ.get("PYTHONPATH")] if p]))
    procs = [subprocess.Popen([sys.executable, str(script), json.dumps(_commands(two))],
                              env={**base, "JAX_PROCESS_ID": str(i)}, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT) for i in range(2)]
    logs = [p.communicate(timeout=900)[0].decode(errors="replace") for p in procs]
    assert all(p.returncode == 0 for p in procs), logs[0][-3000:] + logs[1][-3000:]
    assert "over 2 process(es)" in logs[0]

    one = tmp_path / "one"
    devices = jax.local_devices()[:4]
    for argv in _commands(one)[:3]:
        args = cli.build_parser().parse_args(argv)
        embed_corpus(args.input, args.output, model=args.model, shard_rows=args.shard_rows,
                     devices=devices, progress=False)
    mine_corpora(one / "eng", one / "fra", one / "pairs.tsv", devices=devices)
    for name in ("dev", "eng", "fra"):
        got, want = _files(two / name), _files(one / name)
        assert list(got) == list(want)
        assert all(got[f] == want[f] for f in want), [f for f in want if got[f] != want[f]]
    assert len(json.loads((two / "dev" / "manifest.json").read_text())["shards"]) == 28
    assert (two / "pairs.tsv").read_bytes() == (one / "pairs.tsv").read_bytes()
