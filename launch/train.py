"""Training entry point, the same on one CPU, a GPU node, a Slurm cluster and a TPU pod.

    python launch/train.py --config=text:tiny --workdir=runs/tiny \
        --config.train.num_steps=200 --config.mesh.fsdp=2

Flags: see sonar_jax/train/entry.py (`sonar-jax train` takes the same). Rerunning a command with
the same workdir resumes from its newest checkpoint. launch/gpu_slurm.sbatch and
launch/tpu_pod.sh start one process per host with this script.
"""

import sys

from sonar_jax.train.entry import run_from_flags

if __name__ == "__main__":
    run_from_flags(sys.argv)
