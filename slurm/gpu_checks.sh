#!/usr/bin/env bash
# Every GPU check of pic_bench in one go, for a machine (or SLURM node) with CUDA GPUs, in about 10 minutes:
#   1. the GPU tests (pytest -m gpu): tests/test_gpu.py, tests/test_dali_gpu.py, then the other gpu-marked tests,
#   2. the preflight (python -m pic_bench.preflight),
#   3. the benchmarks: the head on the GPU (tests/bench), the loader (generated JPEGs), the quick scaling sweep.
# Each step runs under a time-out of STEP_TIMEOUT seconds (default 120) and only while the whole run is inside
# TOTAL_S (default 600); a step past the budget is recorded as not run. A failing step does not stop the later
# ones; the exit status is the number of failed (or not run) steps. Everything (summary.txt, machine.txt, each
# step's log, the preflight JSON, the benchmark files) goes into ONE file, OUT/gpu_checks.tar (the device tool
# returns at most 8 files); read it with `tar -xf OUT/gpu_checks.tar -C somewhere`. Run from the repository root:
#   bash slurm/gpu_checks.sh results/gpu-checks/$(date +%Y%m%d)                                  # here
#   sbatch --gpus-per-node=2 --time=20 --wrap "bash slurm/gpu_checks.sh results/gpu-checks/node1"   # on a node
#
# On a bare H100/H200 of the device tool (its image has torch, triton, torchvision, pytest, pytest-benchmark,
# pandas, scipy, matplotlib, scikit-learn, pyyaml, tqdm; not submitit, not DALI; no Fashion-MNIST, none needed):
#   carry list, prepared here once:
#     .whl/submitit-1.5.4-py3-none-any.whl   python3 -m pip download --no-deps -d .whl submitit==1.5.4
#                                            (its needs, cloudpickle and typing_extensions, are on the image)
#     .gpu-carry/p0 p1 p2 bin                bash ../shared/gpu/pack_dali.sh (DALI 2.4.0 for CUDA 13, ~180 MiB
#                                            in three parts of ~60 MiB: the tool carries 64 MiB per call)
#   calls, back to back on one warm machine: carry [.gpu-carry/bin, .gpu-carry/p0] with
#   `mkdir -p /root/dparts && cp .gpu-carry/p0/* /root/dparts/`; carry [.gpu-carry/p1] with
#   `cp .gpu-carry/p1/* /root/dparts/`; carry [.gpu-carry/p2, .gpu-carry/bin, .whl] with
#   `cp .gpu-carry/p2/* /root/dparts/ && bash slurm/gpu_checks.sh $OUT`. This script installs the wheels in .whl
#   (pip --no-index) and unpacks /root/dparts into $SITE (default /tmp/site) when submitit / DALI do not import.
# Env: STEP_TIMEOUT (s per step, 120), TOTAL_S (s for the whole run, 600), PYTHON (python3), SITE (/tmp/site).
set -u
OUT=${1:?usage: bash slurm/gpu_checks.sh OUT_DIR}
PYTHON=${PYTHON:-python3}
T=${STEP_TIMEOUT:-120}
TOTAL=${TOTAL_S:-600}
SITE=${SITE:-/tmp/site}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
W=$(mktemp -d)
finish() {  # the one output file, also when the run is cut short
  tar -C "$W" -cf "$OUT/gpu_checks.tar" . && rm -rf "$W"
}
trap finish EXIT
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export CUBLAS_WORKSPACE_CONFIG=${CUBLAS_WORKSPACE_CONFIG:-:4096:8}
export PYTHONUNBUFFERED=1
: >"$W/summary.txt"
# --- what the image lacks, from the carried parts (nothing is fetched)
if ! "$PYTHON" -c "import submitit" 2>/dev/null && ls .whl/*.whl >/dev/null 2>&1; then
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" .whl/*.whl \
    >>"$W/setup.log" 2>&1
  export PYTHONPATH="$PYTHONPATH:$SITE"
fi
if ! "$PYTHON" -c "import nvidia.dali" 2>/dev/null && ls /root/dparts/part.* >/dev/null 2>&1; then
  mkdir -p "$(dirname "$SITE")"
  ZSTD=$(command -v zstd || echo .gpu-carry/bin/zstd)
  # pack_dali.sh's tar holds site/...: unpacked next to SITE's parent as <parent>/site
  cat /root/dparts/part.* | "$ZSTD" -d -q | tar -xf - -C "$(dirname "$SITE")" >>"$W/setup.log" 2>&1
  case ":$PYTHONPATH:" in *":$SITE:"*) ;; *) export PYTHONPATH="$PYTHONPATH:$SITE" ;; esac
fi
failed=0
step() {  # step NAME COMMAND...
  local name=$1; shift
  local t0=$SECONDS
  if [ "$SECONDS" -ge "$TOTAL" ]; then
    echo "== $name: not run (the run's $TOTAL s are spent)" | tee -a "$W/summary.txt"
    failed=$((failed + 1))
    return
  fi
  echo "== $name: $*" | tee -a "$W/summary.txt"
  timeout -k 10 "$T" "$@" >"$W/$name.log" 2>&1
  local rc=$?
  if [ "$rc" -eq 0 ]; then
    echo "   ok ($((SECONDS - t0)) s)" | tee -a "$W/summary.txt"
  else
    local why="exit $rc"
    [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ] && why="timed out after $T s"
    echo "   FAILED ($why, $((SECONDS - t0)) s; see $name.log)" | tee -a "$W/summary.txt"
    failed=$((failed + 1))
  fi
}
{ nvidia-smi || true; "$PYTHON" -c "import torch; print(torch.__version__, torch.version.cuda, torch.cuda.device_count(), [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())])"
  "$PYTHON" -c "import submitit; print('submitit', submitit.__version__)" || true
  "$PYTHON" -c "import nvidia.dali as d; print('dali', d.__version__)" || true; } >"$W/machine.txt" 2>&1
"$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" \
  || { echo "no CUDA device: nothing to check" | tee -a "$W/summary.txt"; exit 1; }
PYTEST=("$PYTHON" -m pytest -q -p no:cacheprovider -rs --benchmark-disable)
step gpu_tests_train "${PYTEST[@]}" tests/test_gpu.py -m gpu --junitxml="$W/gpu_tests_train.xml"
step gpu_tests_dali "${PYTEST[@]}" tests/test_dali_gpu.py -m gpu --junitxml="$W/gpu_tests_dali.xml"
step gpu_tests_other "${PYTEST[@]}" tests -m gpu --ignore=tests/test_gpu.py --ignore=tests/test_dali_gpu.py \
  --ignore=tests/bench --junitxml="$W/gpu_tests_other.xml"
step preflight "$PYTHON" -m pic_bench.preflight --out "$W"
step bench_head "$PYTHON" -m pytest tests/bench -m gpu -q -p no:cacheprovider --benchmark-json="$W/bench_head.json"
step bench_loader "$PYTHON" -m pic_bench.bench.loader --images 256 --steps 6 --out "$W"
step bench_scaling "$PYTHON" -m pic_bench.bench.scaling --quick --device cuda --out "$W"
echo "$failed step(s) failed or not run; outputs in $OUT/gpu_checks.tar ($SECONDS s)" | tee -a "$W/summary.txt"
exit "$failed"
