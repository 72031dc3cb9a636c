#!/usr/bin/env bash
# GPU check: on a machine with CUDA, run the tests marked `gpu` and the pruning benchmark.
# Usage (repo root, venv built with a CUDA torch): bash benchmarks/gpu_check.sh   (< 8 minutes)
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-workspace/gpu-check}
mkdir -p "$OUT"
$PY - <<'PY' || { echo "CUDA is not available: nothing to check here"; exit 1; }
import torch, sys
print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name(0))
sys.exit(0 if torch.cuda.is_available() else 1)
PY
timeout 300 $PY -m pytest -m gpu -q tests/test_gpu.py 2>&1 | tee "$OUT/gpu-tests.log"
tests=${PIPESTATUS[0]}
timeout 240 $PY benchmarks/bench_foundation.py 2>&1 | tee "$OUT/foundation.log"
if [ -f benchmarks/bench_pruning.py ]; then
  timeout 240 $PY benchmarks/bench_pruning.py --quick 2>&1 | tee "$OUT/pruning.log"
fi
exit $tests
