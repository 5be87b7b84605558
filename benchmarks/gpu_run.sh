#!/usr/bin/env bash
# Every GPU measurement of the project, for one lent GPU machine (see benchmarks/README.md):
#
#   benchmarks/gpu_run.sh inference   # encode, encode_corpus, decode, speech (released shapes)
#   benchmarks/gpu_run.sh train       # the train step against torch, then XLA flags one by one
#   benchmarks/gpu_run.sh remat       # our train step under each remat policy (no peer)
#
# Results go to a tarball in $OUT (default benchmarks/results/) holding every JSON record, the
# markdown tables and the logs. The image lacks ml-collections (the training config): carry its
# wheel in .whl/ (README). A part can be dry-run on a CPU with `TINY=1 JAX_PLATFORMS=cpu`.
set -uo pipefail
part=${1:?usage: benchmarks/gpu_run.sh inference|train|remat}
out=${OUT:-benchmarks/results}
work=$(mktemp -d)
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl &&
    export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export XLA_PYTHON_CLIENT_PREALLOCATE=false  # JAX and torch share the GPU
export PYTHONUNBUFFERED=1
tiny=${TINY:+--tiny}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >"$work/gpu.txt" 2>&1

bench() {  # bench NAME ARGS...: one suite run into $work/NAME, its log beside it
  local name=$1; shift
  python3 -m benchmarks --suite gpu $tiny --out "$work/$name" "$@" 2>&1 | tee "$work/$name.log"
}

case $part in
  inference)
    bench inference --only encode,encode_corpus,decode,speech ;;
  train)
    bench train --only train --torch-compile
    # The JAX GPU performance guide's settings, one at a time, on our step alone.
    for flags in --xla_gpu_enable_latency_hiding_scheduler=true \
                 --xla_gpu_enable_command_buffer= \
                 --xla_gpu_enable_triton_gemm=false \
                 --xla_gpu_enable_cublaslt=true; do
      name=train_flag_$(echo "$flags" | tr -c 'a-z0-9\n' '_' | sed 's/^_*//')
      XLA_FLAGS="$flags" bench "$name" --only train --no-peer
    done ;;
  remat)
    bench remat --only train --no-peer --train-remat none,dots,attention,full ;;
  *) echo "unknown part $part" >&2; exit 2 ;;
esac
mkdir -p "$out"
tar -czf "$out/gpu_$part.tgz" -C "$work" .
echo "wrote $out/gpu_$part.tgz"
