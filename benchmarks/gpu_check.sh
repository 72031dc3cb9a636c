#!/usr/bin/env bash
# GPU check: on a machine with CUDA, run the tests marked `gpu` and the quick benchmarks.
# Usage (repo root, venv built with a CUDA torch): bash benchmarks/gpu_check.sh
# Finishes in under 8 minutes: the step timeouts add up to 20 + 240 + 90 + 120 = 470 s.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-workspace/gpu-check}
mkdir -p "$OUT"
timeout 20 $PY - <<'PY' || { echo "CUDA is not available: nothing to check here"; exit 1; }
import torch, sys
if not torch.cuda.is_available():
    sys.exit(1)
print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name(0))
PY
timeout 240 $PY -m pytest -m gpu -q tests/test_gpu.py 2>&1 | tee "$OUT/gpu-tests.log"
tests=${PIPESTATUS[0]}
timeout 90 $PY benchmarks/bench_foundation.py --tokens 4096 2>&1 | tee "$OUT/foundation.log"
if [ -f benchmarks/bench_pruning.py ]; then
  timeout 120 $PY benchmarks/bench_pruning.py --quick 2>&1 | tee "$OUT/pruning.log"
fi
exit $tests
