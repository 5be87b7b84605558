"""Ahead-of-time compile of the train step for a TPU slice from any host: the launcher of
sonar_jax/train/aot.py (flags and measured figures: its docstring and launch/TPU_COMPILE.md).

    python launch/aot_compile.py --config=text:basic --topology=v5p-64 \
        --config.mesh.fsdp=-1 --batch_rows=512 --length=128 [--find_max_batch]
"""

import os
import sys

# Set before jax is imported: keep jax itself on the CPU (with libtpu installed on a host without
# TPUs, initialising the TPU backend would fail; the topology API still compiles for TPUs), and
# let several such processes load libtpu's compiler at once (its lockfile refuses otherwise).
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

from sonar_jax.train import aot  # noqa: E402

if __name__ == "__main__":
    if {"-h", "--help", "--helpfull"} & set(sys.argv[1:]):
        print(aot.__doc__)
        sys.exit(0)
    try:
        aot.main(sys.argv)
    except Exception as error:  # absl's UsageError: the message without a traceback
        if type(error).__name__ != "UsageError":
            raise
        print(f"aot_compile: {error} (see --help)", file=sys.stderr)
        sys.exit(2)
