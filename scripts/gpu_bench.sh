#!/usr/bin/env bash
# Training speed on a GPU (issue #15): benchmarks/bench_train.py (official + tutorial settings, the
# tutorial reference loop and the matmul limit) in the GPU image, one JSON line out, within 5 min.
#
#   bash scripts/gpu_bench.sh            # GPU=auto: docker + the GPU image when `nvidia-smi` answers
#   GPU=0 bash scripts/gpu_bench.sh      # no GPU: the same benchmark on this machine's CPU (.venv)
#   make gpu-bench                       # the same as the first line
#
# Env: IMAGE (default sbrjob:gpu; built from docker/Dockerfile.gpu when missing, which is not
# counted in the 5 minutes), OUT (where the JSON line is written, default
# benchmarks/results/train_gpu.json, or train_cpu.json with GPU=0), LIMIT_S (default 300),
# BENCH_ARGS (default "--rounds 1 --steps 640 --reference-budget 20"), JIT (auto|true|false).
# The JSON line is also printed on stdout; exit status non-zero when the benchmark failed or ran
# past LIMIT_S (then nothing is written to OUT).
set -euo pipefail
cd "$(dirname "$0")/.."
GPU=${GPU:-auto}
IMAGE=${IMAGE:-sbrjob:gpu}
LIMIT_S=${LIMIT_S:-300}
BENCH_ARGS=${BENCH_ARGS:---rounds 1 --steps 640 --reference-budget 20}
ARGS=(--json-line $BENCH_ARGS)
[ -n "${JIT:-}" ] && ARGS+=(--jit "$JIT")

if [ "$GPU" = auto ]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && command -v docker >/dev/null 2>&1; then
    GPU=1
  else
    echo "[gpu-bench] no GPU (nvidia-smi) or no docker here: running on the CPU (GPU=0)" >&2
    GPU=0
  fi
fi
OUT=${OUT:-benchmarks/results/train_$([ "$GPU" = 0 ] && echo cpu || echo gpu).json}
TMP=$(mktemp)
trap 'rm -f "$TMP"' EXIT

if [ "$GPU" = 0 ]; then
  PY=$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)
  PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} timeout "$LIMIT_S" "$PY" benchmarks/bench_train.py "${ARGS[@]}" > "$TMP"
else
  if ! docker image inspect "$IMAGE" >/dev/null 2>&1; then
    echo "[gpu-bench] building $IMAGE from docker/Dockerfile.gpu (once)" >&2
    DOCKER_BUILDKIT=1 docker build -q -f docker/Dockerfile.gpu -t "$IMAGE" . >&2
  fi
  # the image has sbrjob installed; the benchmark scripts are mounted read-only
  timeout "$LIMIT_S" docker run --rm --gpus all -e TF_CPP_MIN_LOG_LEVEL=2 -v "$PWD/benchmarks:/bench:ro" \
    --entrypoint python "$IMAGE" /bench/bench_train.py "${ARGS[@]}" > "$TMP"
fi
LINE=$(tail -n 1 "$TMP")
python3 -c 'import json, sys; json.loads(sys.argv[1])' "$LINE" || { echo "[gpu-bench] no JSON line from the benchmark" >&2; exit 1; }
mkdir -p "$(dirname "$OUT")"
printf '%s\n' "$LINE" > "$OUT.tmp" && mv "$OUT.tmp" "$OUT"
echo "$LINE"
