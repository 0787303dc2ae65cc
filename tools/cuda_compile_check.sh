#!/usr/bin/env bash
# Compile and link the CUDA kernels without a GPU, and check that every op registered a CUDA kernel.
#
# A CUDA build of torch (torch==2.14.1, +cu130) goes into .venv-cuda; the source tree is copied to
# build/cuda-check/src and built there with FORCE_CUDA=1, so the CPU build in dhvc_ext/ is untouched. This
# proves that the CUDA code compiles, links and registers; only a GPU run proves its results.
# Environment: CUDA_HOME (found from nvcc when unset), CUDA_TORCH (default torch==2.14.1),
# TORCH_CUDA_ARCH_LIST (default 9.0), MAX_JOBS (default 2).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

if ! command -v nvcc > /dev/null; then
  echo "cuda-check: no nvcc on PATH, nothing to check" >&2
  exit 1
fi
if [ -z "${CUDA_HOME:-}" ]; then
  nvcc_path=$(command -v nvcc)
  # This machine's nvcc is a two-line wrapper whose exec line names the real toolkit.
  real=$(grep -o '/[^ "]*/bin/nvcc' "$nvcc_path" | head -n 1 || true)
  [ -n "$real" ] || real=$(readlink -f "$nvcc_path")
  CUDA_HOME=$(dirname "$(dirname "$real")")
fi
export CUDA_HOME
echo "cuda-check: CUDA_HOME=$CUDA_HOME ($("$CUDA_HOME/bin/nvcc" --version | tail -n 1))"

VENV=.venv-cuda
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
fi
"$VENV/bin/python" -m pip install -q "${CUDA_TORCH:-torch==2.14.1}" numpy scipy ninja setuptools wheel

SRC=build/cuda-check/src
rm -rf "$SRC" && mkdir -p "$SRC"
# Tracked and untracked-but-not-ignored files: the working tree as it would be committed.
git ls-files -z --cached --others --exclude-standard | xargs -0 cp --parents -t "$SRC" 2> /dev/null || true

log=build/cuda-check/build.log
start=$(date +%s)
if ! (cd "$SRC" && FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}" MAX_JOBS="${MAX_JOBS:-2}" \
      "$ROOT/$VENV/bin/python" -m pip install -v --no-build-isolation . > "../build.log" 2>&1); then
  tail -n 80 "$log"
  echo "cuda-check: FAILED to build the CUDA extension (log: $log)"
  exit 1
fi
grep "\[dhvc-ext setup\]" "$log" || true
echo "cuda-check: built in $(( $(date +%s) - start )) s"

# Import from outside the source tree so that the installed (CUDA) build is the one loaded.
(cd /tmp && "$ROOT/$VENV/bin/python" - << 'PYEOF'
import torch
import dhvc_ext
from dhvc_ext.ops import OPS

missing = [op for op in OPS if not torch._C._dispatch_has_kernel_for_dispatch_key(f"dhvc_ext::{op}", "CUDA")]
print(f"cuda-check: torch {torch.__version__}, dhvc_ext from {dhvc_ext.__file__}")
assert not missing, f"ops without a CUDA kernel: {missing}"
assert dhvc_ext.cuda_available()
print(f"cuda-check: OK, CUDA kernels registered for {len(OPS)} ops: {', '.join(OPS)}")
PYEOF
)
