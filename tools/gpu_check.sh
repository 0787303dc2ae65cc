#!/usr/bin/env bash
# The GPU check, run once per issue on the lent GPU machine (the device tool runs it in a copy of the tree):
#   build the extension with its CUDA kernels in place, run the whole test suite (CUDA cases included), run
#   the benchmarks (CUDA groups included), and leave logs and results under $OUT:
#     env.txt, nvidia-smi.txt, build.log, tests.log, tests.xml, bench.log, bench.json, bench.md, summary.txt
# Usage there: bash tools/gpu_check.sh   (OUT defaults to build/gpu-check when unset)
# Every later issue adds its CUDA tests and GPU benchmarks to the suites this runs; keep it under ~8 minutes.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-build/gpu-check}
mkdir -p "$OUT"
PY=${PYTHON:-python}
start=$(date +%s)

nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || echo "nvidia-smi failed" >> "$OUT/nvidia-smi.txt"
"$PY" - > "$OUT/env.txt" 2>&1 << 'PYEOF'
import platform, torch
print("date", __import__("datetime").datetime.now().isoformat())
print("python", platform.python_version())
print("torch", torch.__version__, "cuda", torch.version.cuda)
print("gpu", torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)
PYEOF
cat "$OUT/env.txt"

# In-place build (no pip: the machine is offline); the tests import the tree through PYTHONPATH.
if ! FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-16} \
    "$PY" setup.py build_ext --inplace > "$OUT/build.log" 2>&1; then
  tail -n 60 "$OUT/build.log"
  echo "gpu-check: BUILD FAILED" | tee "$OUT/summary.txt"
  exit 1
fi
echo "gpu-check: built in $(( $(date +%s) - start )) s"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
"$PY" -c "import dhvc_ext, torch; assert torch.cuda.is_available() and dhvc_ext.cuda_available(), 'no CUDA kernels'" \
  || { echo "gpu-check: CUDA kernels not available" | tee "$OUT/summary.txt"; exit 1; }

"$PY" -m pytest python_tests -q -p no:cacheprovider --junitxml="$OUT/tests.xml" > "$OUT/tests.log" 2>&1
tests_rc=$?
tail -n 15 "$OUT/tests.log"

"$PY" -m pytest benchmarks -q -p no:cacheprovider --benchmark-json="$OUT/bench.json" > "$OUT/bench.log" 2>&1
bench_rc=$?
tail -n 5 "$OUT/bench.log"
"$PY" benchmarks/summarize.py "$OUT/bench.json" --markdown "$OUT/bench.md" || true

{
  echo "tests: $(tail -n 1 "$OUT/tests.log") (rc $tests_rc)"
  echo "benchmarks: $(tail -n 1 "$OUT/bench.log") (rc $bench_rc)"
  echo "wall: $(( $(date +%s) - start )) s"
} | tee "$OUT/summary.txt"
[ "$tests_rc" -eq 0 ] && [ "$bench_rc" -eq 0 ]
