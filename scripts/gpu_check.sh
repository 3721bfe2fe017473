#!/usr/bin/env bash
# Everything that needs a GPU, in one command, on a machine with nvcc, torch and triton but no network.
#   scripts/gpu_check.sh OUTDIR              build (sm_90), self-check, the whole test suite on the GPU
#                                            over triton, cuda and torch, then benchmarks/run_all.py --quick
#   scripts/gpu_check.sh OUTDIR --sanitize   also the cuda-backend tests under compute-sanitizer
# Logs and CSV rows land in OUTDIR; the rows are also appended to benchmarks/results/results.csv.
# Wheels of pure-Python peers placed in wheels/ (git-ignored; carry it) are put on PYTHONPATH first, e.g.
#   pip download --no-deps --only-binary=:all: -d wheels liger-kernel
set -uo pipefail
OUT=$(realpath -m "${1:?usage: scripts/gpu_check.sh OUTDIR [--sanitize]}")
SANITIZE=${2:-}
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
status=0
step() { echo "== $1 ($(date +%T))" | tee -a "$OUT/summary.txt"; }

step "environment"
{ nvidia-smi; python -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"; } \
  > "$OUT/environment.txt" 2>&1
if compgen -G "wheels/*.whl" > /dev/null; then  # pure-Python peers carried along (no network there)
  python -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/peer-site wheels/*.whl \
    >> "$OUT/install.log" 2>&1 && export PYTHONPATH="/tmp/peer-site${PYTHONPATH:+:$PYTHONPATH}"
fi

step "install (sm_90 only)"
if ! RECIPE_KERNELS_CUDA_ARCHS=90 RECIPE_KERNELS_BUILD_CUDA=1 RECIPE_KERNELS_BUILD_JOBS=8 \
     pip install --no-build-isolation --no-deps -e . >> "$OUT/install.log" 2>&1; then
  tail -40 "$OUT/install.log"; echo "install failed" | tee -a "$OUT/summary.txt"; exit 1
fi

step "self-check"
python -m recipe_kernels 2>&1 | tee "$OUT/selfcheck.log" || status=1

step "tests on the GPU"
# Most of the suite's time there is Triton compiling kernels, one process a core: eight pytest-xdist
# workers (in the image) share the one GPU. The suite passes under xdist on the CPU (-n 2, 2026-12-02).
parallel=()
if python -c "import xdist" 2> /dev/null; then parallel=(-n 8); fi
# At the limit pytest gets an interrupt (SIGINT), so it stops and still reports what ran: the counts, and every
# failure, error and skip by name (-rfEs).
RECIPE_KERNELS_TEST_DEVICE=cuda timeout -s INT -k 20 220 python -m pytest -q -rfEs "${parallel[@]}" tests \
  > "$OUT/tests.log" 2>&1 || status=1
grep -E "^(FAILED|ERROR) " "$OUT/tests.log" | head -40 | tee -a "$OUT/summary.txt"
tail -3 "$OUT/tests.log" | tee -a "$OUT/summary.txt"

if [ "$SANITIZE" = "--sanitize" ]; then
  step "compute-sanitizer memcheck on the cuda-backend tests"
  RECIPE_KERNELS_TEST_DEVICE=cuda timeout -s INT -k 20 280 compute-sanitizer --tool memcheck \
    --target-processes all python -m pytest -q -x -k "cuda and not 2_to_31" tests > "$OUT/sanitizer.log" 2>&1 \
    || status=1
  tail -5 "$OUT/sanitizer.log" | tee -a "$OUT/summary.txt"
fi

step "quick benchmarks"
timeout 320 python benchmarks/run_all.py --quick --out "$OUT" > "$OUT/benchmarks.log" 2>&1 || status=1
grep -E "^(failed|wrote|skipping)" "$OUT/benchmarks.log" | tee -a "$OUT/summary.txt"
step "done, status $status"
exit $status
