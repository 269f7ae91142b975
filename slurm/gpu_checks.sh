#!/usr/bin/env bash
# Every GPU check of pic_bench in one go, for a machine (or SLURM node) with CUDA GPUs:
#   1. the GPU tests (pytest -m gpu: tests/test_gpu.py, tests/test_dali_gpu.py, GPU benchmarks' checks),
#   2. the preflight (python -m pic_bench.preflight),
#   3. the benchmarks (head benchmarks on the GPU, the loader benchmark, the quick scaling sweep).
# Each step writes under OUT and its log to OUT/<step>.log; a failing step does not stop the later ones; the
# exit status is the number of failed steps (0: all passed). Run from the repository root:
#   bash slurm/gpu_checks.sh results/gpu-checks/$(date +%Y%m%d)           # here
#   sbatch --gpus-per-node=2 --time=60 --wrap "bash slurm/gpu_checks.sh results/gpu-checks/node1"   # on a node
# Env: STEP_TIMEOUT (seconds per step, default 1800), PYTHON (default python).
set -u
OUT=${1:?usage: bash slurm/gpu_checks.sh OUT_DIR}
PYTHON=${PYTHON:-python}
T=${STEP_TIMEOUT:-1800}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export CUBLAS_WORKSPACE_CONFIG=${CUBLAS_WORKSPACE_CONFIG:-:4096:8}
failed=0
step() {  # step NAME COMMAND...
  local name=$1; shift
  local t0=$SECONDS
  echo "== $name: $*" | tee -a "$OUT/summary.txt"
  if timeout "$T" "$@" >"$OUT/$name.log" 2>&1; then
    echo "   ok ($((SECONDS - t0)) s)" | tee -a "$OUT/summary.txt"
  else
    echo "   FAILED (exit $?, $((SECONDS - t0)) s; see $OUT/$name.log)" | tee -a "$OUT/summary.txt"
    failed=$((failed + 1))
  fi
}
: >"$OUT/summary.txt"
{ nvidia-smi || true; "$PYTHON" -c "import torch; print(torch.__version__, torch.version.cuda, torch.cuda.device_count(), [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())])"; } >"$OUT/machine.txt" 2>&1
"$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" \
  || { echo "no CUDA device: nothing to check" | tee -a "$OUT/summary.txt"; exit 1; }
step gpu_tests "$PYTHON" -m pytest tests -m gpu -q -p no:cacheprovider -rs --benchmark-disable --junitxml="$OUT/gpu_tests.xml"
step preflight "$PYTHON" -m pic_bench.preflight --out "$OUT"
step bench_head "$PYTHON" -m pytest tests/bench -m gpu -q -p no:cacheprovider --benchmark-json="$OUT/bench_head.json"
step bench_loader "$PYTHON" -m pic_bench.bench.loader --out "$OUT"
step bench_scaling "$PYTHON" -m pic_bench.bench.scaling --quick --device cuda --out "$OUT"
echo "$failed step(s) failed; outputs in $OUT" | tee -a "$OUT/summary.txt"
exit "$failed"
