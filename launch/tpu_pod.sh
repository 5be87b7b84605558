#!/bin/bash
# Runs the same training command on every worker of a Cloud TPU VM pod slice.
#
#   launch/tpu_pod.sh TPU_NAME ZONE text:basic /mnt/shared/runs/text_basic \
#       --config.mesh.fsdp=-1
#
# Every worker must already have this repository at the same path (REPO_DIR, default: the path
# of this checkout) with `pip install -e .` done. jax.distributed.initialize() needs no arguments
# on Cloud TPU: launch/train.py calls it when it finds itself on a multi-worker slice. WORKDIR
# must be a directory every worker sees (an NFS or gcsfuse mount): checkpoints are written by all
# workers together. Rerunning the command resumes from the newest checkpoint.
#
# After `--`, any command runs on every worker instead of training, e.g. embedding a corpus:
#
#   launch/tpu_pod.sh TPU_NAME ZONE -- sonar-jax embed --model DIR --input corpus/ \
#       --output /mnt/shared/embeddings
set -euo pipefail
if [ "$#" -ge 4 ] && [ "$3" = "--" ]; then
  TPU_NAME="$1"; ZONE="$2"; shift 3
  COMMAND=("$@")
elif [ "$#" -ge 4 ]; then
  TPU_NAME="$1"; ZONE="$2"; CONFIG="$3"; WORKDIR="$4"; shift 4
  COMMAND=(python launch/train.py --config="$CONFIG" --workdir="$WORKDIR" "$@")
else
  echo "usage: launch/tpu_pod.sh TPU_NAME ZONE CONFIG[:VARIANT] WORKDIR [--config.field=value ...]" >&2
  echo "       launch/tpu_pod.sh TPU_NAME ZONE -- COMMAND [ARG ...]" >&2
  exit 2
fi
REPO_DIR="${REPO_DIR:-$(cd "$(dirname "$0")/.." && pwd)}"

gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" --worker=all --command \
  "cd $(printf %q "$REPO_DIR") &&$(printf ' %q' "${COMMAND[@]}")"
