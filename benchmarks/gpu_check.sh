#!/usr/bin/env bash
# The GPU check (issue 2, section 8) as one script for a CUDA machine with the project's
# dependencies importable: the engine tests on CUDA (bfloat16, the engine's default there,
# then float32), and the serving benchmark with a larger tiny model on the GPU (the replicas'
# engine in a child process, the default on CUDA; continuous batching with static batching
# side by side): equal completion lengths at concurrency 1, 4, 16, mixed lengths at 16, and
# 4 ingress replicas at 16. SKIP_ENGINE_TESTS=1 runs the benchmarks alone.
#
# Logs go to $OUT (default ./gpu-check). Each step has its own time limit so that a slow
# step still leaves the others' results; the benchmark prints each run as it finishes.
#
# On an H200 (2026-11-26) the engine tests took ~1.5 min and each benchmark 2-4 min: about
# 9 min in all, near a lent machine's 10-minute call limit; SKIP_ENGINE_TESTS=1 saves 1.5 min.
#
#   OUT=/tmp/gpu PYTHON=python3 bash benchmarks/gpu_check.sh
set -u
OUT=${OUT:-gpu-check}
PYTHON=${PYTHON:-python3}
BENCH_S=${BENCH_S:-300}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 RAY_USAGE_STATS_ENABLED=0

{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  nproc
  "$PYTHON" - <<'EOF'
import peft, ray, torch, transformers
print("python", __import__("sys").version.split()[0], "| torch", torch.__version__,
      "cuda", torch.version.cuda, torch.cuda.is_available(), "| transformers",
      transformers.__version__, "| peft", peft.__version__, "| ray", ray.__version__)
EOF
} 2>&1 | tee "$OUT/env.txt"

engine_tests() {  # $1: dtype
  LLMVM_TEST_DEVICE=cuda LLMVM_TEST_DTYPE="$1" timeout 240 "$PYTHON" -m pytest tests/engine \
    -q -p no:cacheprovider --timeout 120 -W ignore::UserWarning 2>&1 \
    | tee "$OUT/engine-$1.log" | tail -25
  echo "engine tests on cuda ($1): exit ${PIPESTATUS[0]}"
}

bench() {  # $1: log name, then benchmarks/serve.py arguments
  local name=$1; shift
  timeout "$BENCH_S" "$PYTHON" -u benchmarks/serve.py --hidden 1024 --layers 8 \
    --per-client 16 --unbatched-per-client 2 --rounds 2 "$@" 2>&1 \
    | grep -v --line-buffered "Loading weights\|Writing model shards" | tee "$OUT/$name.log" \
    | grep -v --line-buffered "^\S*(\|^INFO\|^WARNING\|^\["
  echo "benchmark $name: exit ${PIPESTATUS[0]}"
}

if [ -z "${SKIP_ENGINE_TESTS:-}" ]; then
  echo "== engine tests on CUDA, dtype auto (bfloat16)"
  engine_tests auto
fi
echo "== serving benchmark on the GPU, engine in a child process of the replica (the default)"
bench bench-process --engine-process on
echo "== mixed completion lengths (8-56 tokens) at concurrency 16: what continuous batching refills"
bench bench-mixed --mixed --concurrency 16
echo "== concurrency 16 with 4 ingress replicas (the closed loop's trip spread over 4 processes)"
bench bench-ingress4 --ingress-replicas 4 --concurrency 16
if [ -z "${SKIP_ENGINE_TESTS:-}" ]; then
  echo "== engine tests on CUDA, float32"
  engine_tests float32
fi
