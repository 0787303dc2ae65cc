#!/usr/bin/env bash
# The GPU check: one command, run once per issue on the lent GPU machine (the device tool runs it in a copy
# of the tree), that ends by itself within GPU_CHECK_BUDGET = 540 s:
#   on this machine:   bash tools/gpu_wheels.sh     (build/gpu-carry: what the GPU machine lacks)
#   through the tool:  run("bash tools/gpu_check.sh", carry=["build/gpu-carry"], timeout_s=600)
# Steps, each under its own `timeout` (its cap, or what is left of the budget less a reserve for the rest):
#   env        python3, torch, CUDA, nvidia-smi
#   build      FORCE_CUDA=1 setup.py build_ext --inplace, with -Xptxas -v: registers and spills per kernel
#   tests      the CUDA cases only (pytest -m cuda: conftest.py marks every device-parametrised CUDA case),
#              pytest-timeout per test, --maxfail, pytest-xdist workers when installed
#   sanitizer  compute-sanitizer --tool memcheck over tiny inputs of every op (gpu_check_steps.py smoke),
#              without torch's caching allocator, so that an access past a tensor's end is one
#   bench      the CUDA benchmark groups only (pytest -m cuda benchmarks; synchronised before and after each
#              timed round): elements/s, samples/s, GB/s against the 4.3 TB/s copy rate, ours against the
#              torch composite on the same GPU
#   train      DHVC on Fashion-MNIST (carried in build/gpu-carry), a few epochs capped in time: samples/s, ACC
# Results, rewritten as each step ends (a kill at any moment leaves what the finished steps found), three
# files under $OUT (the device tool brings back at most 8):
#   summary.json      per step: status (ok, failed, timeout, skipped), seconds, note, parsed results
#   gpu_check.log     this script's progress lines
#   details.tar.gz    every step's full log, the junit XML, the benchmark JSON and table, the ptxas report
# GPU_CHECK_DRY_RUN=1 (CI, .ci/run): the same steps and files on a machine without a GPU, in under 3 minutes:
# no CUDA build (the CPU build in place is used; the log parsers are checked on samples), the CUDA tests
# and benchmarks collected and skipped with their reason, the sanitizer's op calls on the CPU without the
# sanitizer, and a one-epoch run on digits instead of Fashion-MNIST. Each step says what it skipped.
# Environment: OUT (default build/gpu-check), PYTHON (default python3; .venv/bin/python in a dry run when
# present), GPU_CHECK_BUDGET (540), MAX_JOBS (16), TORCH_CUDA_ARCH_LIST (9.0).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
OUT=${OUT:-build/gpu-check}
DRY=${GPU_CHECK_DRY_RUN:-0}
BUDGET=${GPU_CHECK_BUDGET:-540}
if [ -n "${PYTHON:-}" ]; then
  PY=$PYTHON
elif [ "$DRY" = 1 ] && [ -x .venv/bin/python ]; then
  PY=$ROOT/.venv/bin/python
else
  PY=python3  # the GPU machine's interpreter with torch (there is no `python` there)
fi
START=$(date +%s)
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu-check.XXXXXX")  # the full logs, packed into details.tar.gz
SUMMARY=$OUT/summary.json
LOG=$OUT/gpu_check.log
STEPS="$PY $ROOT/tools/gpu_check_steps.py"
rm -f "$SUMMARY" "$LOG" "$OUT/details.tar.gz"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONDONTWRITEBYTECODE=1

say() { echo "gpu-check [$(( $(date +%s) - START )) s] $*" | tee -a "$LOG"; }
elapsed() { echo $(( $(date +%s) - START )); }
# limit CAP RESERVE: a step's timeout, its cap or what is left of the budget after RESERVE s for later steps.
limit() {
  local left=$(( BUDGET - $(elapsed) - $2 ))
  [ "$left" -lt "$1" ] && echo $(( left > 5 ? left : 5 )) || echo "$1"
}
pack() {
  tar -czf "$OUT/.details.tmp" -C "$WORK" . 2> /dev/null && mv "$OUT/.details.tmp" "$OUT/details.tar.gz"
}
# finish STEP RC SECONDS NOTE [RESULTS_JSON]: the step's status from its exit code, recorded and packed.
finish() {
  local status=ok
  [ "$2" -ne 0 ] && status=failed
  [ "$2" -eq 124 ] || [ "$2" -eq 137 ] && status=timeout
  [ "$2" -eq 200 ] && status=skipped
  $STEPS record "$SUMMARY" "$1" "$status" "$3" --note "$4" ${5:+--json "$5"} || say "cannot write $SUMMARY"
  say "$1: $status in $3 s${4:+ ($4)}"
  pack
}

$STEPS record "$SUMMARY" start ok 0 --note "dry_run=$DRY budget=${BUDGET}s python=$PY $(date -Is)"
say "start: dry run $DRY, budget $BUDGET s, $PY, OUT=$OUT"

# --- env -----------------------------------------------------------------------------------------------------
t0=$(date +%s)
{
  timeout 20 nvidia-smi || echo "nvidia-smi: not available"
  timeout 60 "$PY" -c "
import json, platform, torch
print(json.dumps({'python': platform.python_version(), 'torch': torch.__version__, 'cuda': torch.version.cuda,
                  'gpu': torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}))"
} > "$WORK/env.txt" 2>&1
rc=$?
tail -n 1 "$WORK/env.txt" > "$WORK/env.json" 2> /dev/null
finish env "$rc" $(( $(date +%s) - t0 )) "$(tail -n 1 "$WORK/env.txt")" "$WORK/env.json"
HAVE_GPU=0
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2> /dev/null && HAVE_GPU=1
if [ "$DRY" != 1 ] && [ "$HAVE_GPU" != 1 ]; then
  say "no GPU visible to torch and not a dry run (GPU_CHECK_DRY_RUN=1): stopping"
  exit 1
fi

# The carried folder (tools/gpu_wheels.sh): wheels the machine lacks, and Fashion-MNIST.
CARRY=build/gpu-carry
if [ "$DRY" != 1 ] && ls "$CARRY"/wheels/*.whl > /dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps "$CARRY"/wheels/*.whl > "$WORK/wheels.log" 2>&1 \
    || say "installing the carried wheels failed (wheels.log)"
fi

# --- build ---------------------------------------------------------------------------------------------------
t0=$(date +%s)
if [ "$DRY" = 1 ]; then
  "$PY" tools/gpu_check_steps.py selfcheck > "$WORK/build.log" 2>&1
  rc=$?
  [ "$rc" -eq 0 ] && rc=200
  finish build "$rc" $(( $(date +%s) - t0 )) "dry run: no CUDA build (the CPU build in place is used); ptxas parser self-check: $(tail -n 1 "$WORK/build.log")"
else
  # nvcc reads NVCC_APPEND_FLAGS: -Xptxas -v reports registers, stack and spills per kernel into the log.
  FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-16} \
    NVCC_APPEND_FLAGS="${NVCC_APPEND_FLAGS:+$NVCC_APPEND_FLAGS }-Xptxas -v" \
    timeout "$(limit 300 200)" "$PY" setup.py build_ext --inplace > "$WORK/build.log" 2>&1
  rc=$?
  note="$(grep -c "Used [0-9]* registers" "$WORK/build.log") kernels reported by ptxas"
  $STEPS ptxas "$WORK/build.log" "$WORK/ptxas.json" > "$WORK/ptxas.txt" 2>&1
  if [ "$rc" -eq 0 ] && ! "$PY" -c "import dhvc_ext, sys; sys.exit(0 if dhvc_ext.cuda_available() else 1)"; then
    rc=1
    note="built, but dhvc_ext has no CUDA kernels"
  fi
  finish build "$rc" $(( $(date +%s) - t0 )) "$note" "$WORK/ptxas.json"
  if [ "$rc" -ne 0 ]; then
    tail -n 40 "$WORK/build.log" | tee -a "$LOG"
    say "the build failed: the other steps need it; stopping"
    exit 1
  fi
fi

# --- tests ---------------------------------------------------------------------------------------------------
t0=$(date +%s)
test_args=(-m cuda -q -p no:cacheprovider --maxfail=20 -rfEs)
notes=()
if "$PY" -c "import pytest_timeout" 2> /dev/null; then
  test_args+=(--timeout=120)
else
  notes+=("pytest-timeout missing: no per-test timeout")
fi
if [ "$DRY" != 1 ] && "$PY" -c "import xdist" 2> /dev/null; then
  test_args+=(-n 8)
fi
timeout "$(limit 240 150)" "$PY" -m pytest python_tests "${test_args[@]}" --junitxml="$WORK/tests.xml" \
  > "$WORK/tests.log" 2>&1
rc=$?
[ -f "$WORK/tests.xml" ] && $STEPS junit "$WORK/tests.xml" "$WORK/tests.json"
note="$(tail -n 1 "$WORK/tests.log")"
if [ "$DRY" = 1 ]; then
  # Without a GPU every CUDA case is skipped with its reason: the selection must still find them.
  grep -q "skipped" "$WORK/tests.log" || rc=1
  note="dry run, CUDA cases skipped: $note"
fi
[ "${#notes[@]}" -gt 0 ] && note="$note; ${notes[*]}"
finish tests "$rc" $(( $(date +%s) - t0 )) "$note" "$WORK/tests.json"

# --- sanitizer -----------------------------------------------------------------------------------------------
t0=$(date +%s)
if [ "$DRY" = 1 ]; then
  timeout "$(limit 60 60)" "$PY" tools/gpu_check_steps.py smoke --device cpu > "$WORK/sanitizer.log" 2>&1
  rc=$?
  note="dry run: the op calls on the CPU, without compute-sanitizer: $(tail -n 1 "$WORK/sanitizer.log")"
elif command -v compute-sanitizer > /dev/null; then
  PYTORCH_NO_CUDA_MEMORY_CACHING=1 timeout "$(limit 150 100)" compute-sanitizer --tool memcheck \
    --error-exitcode 3 "$PY" tools/gpu_check_steps.py smoke --device cuda > "$WORK/sanitizer.log" 2>&1
  rc=$?
  note="$(grep -E "ERROR SUMMARY|smoke:" "$WORK/sanitizer.log" | tr '\n' ' ')"
else
  rc=200
  note="compute-sanitizer not on PATH"
fi
finish sanitizer "$rc" $(( $(date +%s) - t0 )) "$note"

# --- bench ---------------------------------------------------------------------------------------------------
# One pytest run per benchmark file, each with its own JSON, so that a timeout loses one file's figures only.
t0=$(date +%s)
rc=0
notes=()
bench_jsons=()
for file in test_bench_bessel test_bench_vmf test_bench_vmfmm; do
  name=${file#test_bench_}
  timeout "$(limit 60 60)" "$PY" -m pytest "benchmarks/$file.py" -m cuda -q -p no:cacheprovider -rs \
    --benchmark-json="$WORK/bench_$name.json" > "$WORK/bench_$name.log" 2>&1
  file_rc=$?
  [ "$file_rc" -ne 0 ] && rc=$file_rc
  [ "$DRY" = 1 ] && ! grep -q "skipped" "$WORK/bench_$name.log" && rc=1
  notes+=("$name: $(tail -n 1 "$WORK/bench_$name.log")")
  [ -s "$WORK/bench_$name.json" ] && bench_jsons+=("$WORK/bench_$name.json")
  if [ -s "$WORK/bench_$name.json" ] && [ "$DRY" != 1 ]; then
    "$PY" benchmarks/summarize.py "$WORK/bench_$name.json" --markdown "$WORK/bench_$name.md" > /dev/null 2>&1
  fi
done
[ "${#bench_jsons[@]}" -gt 0 ] && $STEPS bench "${bench_jsons[@]}" "$WORK/bench_summary.json"
note="${notes[*]}"
[ "$DRY" = 1 ] && note="dry run, CUDA groups skipped: $note"
finish bench "$rc" $(( $(date +%s) - t0 )) "$note" "$WORK/bench_summary.json"

# --- train ---------------------------------------------------------------------------------------------------
t0=$(date +%s)
run_dir=$WORK/dhvc
if [ "$DRY" = 1 ]; then
  # --cluster-init mixture: this step times the GPU's training steps; the default's second start (UMAP on the
  # CPU) would double the joint epochs and needs umap-learn, which the offline GPU machine may lack
  train_args=(--data digits --subset 300 --pretrain-epochs 1 --epochs 1 --device cpu --threads 1 --cluster-init mixture)
  note="dry run: digits, 300 rows, 1 + 1 epochs on the CPU"
elif [ -d "$CARRY/fashion-mnist" ]; then
  train_args=(--data fashion-mnist --data-dir "$CARRY/fashion-mnist" --pretrain-epochs 10 --epochs 10
              --device cuda --cluster-init mixture)
  note="Fashion-MNIST, 10 + 10 epochs on the GPU"
else
  train_args=()
  note="$CARRY/fashion-mnist missing (tools/gpu_wheels.sh copies it): not run"
fi
if [ "${#train_args[@]}" -gt 0 ]; then
  timeout "$(limit 150 15)" "$PY" -m dhvc_ext train "${train_args[@]}" --clusters 10 --seed 0 --quiet \
    --out "$run_dir" --overwrite > "$WORK/train.log" 2>&1
  rc=$?
  $STEPS train "$run_dir" "$WORK/train.json" >> "$WORK/train.log" 2>&1
  note="$note: $(tail -n 1 "$WORK/train.log")"
  rm -f "$run_dir"/*.pt  # checkpoints: large, and nothing to read in them
else
  rc=200
fi
finish train "$rc" $(( $(date +%s) - t0 )) "$note" "$WORK/train.json"

# --- end -----------------------------------------------------------------------------------------------------
failed=$("$PY" -c "
import json, sys
steps = json.load(open(sys.argv[1]))['steps']
print(' '.join(k for k, v in steps.items() if v['status'] in ('failed', 'timeout')))" "$SUMMARY")
$STEPS record "$SUMMARY" end "$([ -z "$failed" ] && echo ok || echo failed)" "$(elapsed)" \
  --note "${failed:+failed: $failed}"
say "done in $(elapsed) s; ${failed:+failed: $failed}${failed:-every step ok or skipped}; files: $(ls "$OUT" | tr '\n' ' ')"
rm -rf "$WORK"
[ -z "$failed" ]
