#!/usr/bin/env bash
# The whole test suite with every Triton kernel it launches compiled for sm_90 under the stand-in driver
# (RECIPE_KERNELS_TEST_DEVICE=standin), not run, to find what the compiler refuses and the interpreter
# passes (scripts/compile_edge_cases.py has the curated cases). No GPU needed; 4-6 minutes here with a warm
# Triton cache, about 15 cold. Launches are no-ops, so most value assertions fail: only compile errors count.
#   scripts/compile_suite.sh [LOG]      exit status 1 if any test failed on a compile error
set -uo pipefail
cd "$(dirname "$0")/.."
LOG=${1:-/tmp/compile_suite.log}
RECIPE_KERNELS_TEST_DEVICE=standin COLUMNS=1000 python -m pytest -q -p no:cacheprovider --tb=no -rfE tests \
  > "$LOG" 2>&1
errors=$(grep -E "^(FAILED|ERROR) .*CompilationError" "$LOG")
echo "$(tail -1 "$LOG")"
if [ -n "$errors" ]; then
  echo "$errors"
  echo "compile errors: $(echo "$errors" | wc -l) (log: $LOG)"
  exit 1
fi
echo "no compile errors (triton $(python -c 'import triton; print(triton.__version__)'); log: $LOG)"
