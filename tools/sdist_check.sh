#!/usr/bin/env bash
# What a package index would serve must build: the sdist, and a wheel built from it, each installed into a
# fresh venv (torch and the runtime dependencies only) and smoke-tested outside the source tree.
#
#   1. build the sdist in a venv without torch (`python -m build --sdist --no-isolation`), and check that it
#      lists every file under csrc/ and tests_cpp/, the build files and the Python package, and no build
#      outputs, venvs or benchmark results;
#   2. add torch ($TORCH, default torch==2.13.0: the CPU wheel) and ninja, `pip install --no-build-isolation`
#      the sdist (pip brings the runtime dependencies from its metadata), run tools/sdist_smoke.py;
#   3. take the wheel pip built from the sdist for that install (see below), check that it holds _C and the
#      recorded torch and requires torch's major.minor, swap it in for the sdist install, smoke test again.
# The sdist and wheel stay in build/sdist-check/dist, the build logs in build/sdist-check; the venv (about
# 1 GB) lives in a temporary folder that is removed at exit. MAX_JOBS (default 2) as for any build.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
OUTDIR=build/sdist-check
DIST=$OUTDIR/dist
rm -rf "$OUTDIR" && mkdir -p "$DIST"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/dhvc-sdist-check.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
VENV=$WORK/venv
PY=$VENV/bin/python
export MAX_JOBS=${MAX_JOBS:-2}
t0=$(date +%s)
lap() { echo "sdist-check: $1 ($(( $(date +%s) - t0 )) s so far)"; }
fail() { echo "sdist-check: FAILED: $*"; exit 1; }

python3 -m venv "$VENV"
"$PY" -m pip install -q --upgrade build setuptools wheel > "$OUTDIR/venv.log" 2>&1 || { cat "$OUTDIR/venv.log"; fail "venv"; }
# No torch in the venv yet: the sdist must not need one.
"$PY" -m build --sdist --no-isolation --outdir "$DIST" . > "$OUTDIR/sdist.log" 2>&1 \
  || { tail -n 30 "$OUTDIR/sdist.log"; fail "building the sdist (log: $OUTDIR/sdist.log)"; }
sdist=$(ls "$DIST"/*.tar.gz)
lap "built $sdist"

tar tzf "$sdist" | sed 's|^[^/]*/||' | sort > "$OUTDIR/sdist-files.txt"
# Everything the build compiles or reads, as it stands in the working tree.
git ls-files --cached --others --exclude-standard -- csrc tests_cpp dhvc_ext \
    setup.py pyproject.toml MANIFEST.in README.md LICENSE CMakeLists.txt \
  | while read -r f; do [ -f "$f" ] && echo "$f"; done | sort > "$OUTDIR/needed-files.txt"
missing=$(comm -23 "$OUTDIR/needed-files.txt" "$OUTDIR/sdist-files.txt")
[ -z "$missing" ] || fail "the sdist lacks: $missing"
stray=$(grep -E '\.(so|o|pyc)$|(^|/)(\.venv[^/]*|build|__pycache__|benchmarks)/|_build_info\.py$' \
        "$OUTDIR/sdist-files.txt" || true)
[ -z "$stray" ] || fail "the sdist carries build outputs or results: $stray"
echo "sdist-check: the sdist holds all $(wc -l < "$OUTDIR/needed-files.txt") source and build files" \
     "($(grep -c '^csrc/.*[^/]$' "$OUTDIR/sdist-files.txt") under csrc/), and no build outputs"

"$PY" -m pip install -q "${TORCH:-torch==2.13.0}" ninja >> "$OUTDIR/venv.log" 2>&1 \
  || { tail -n 20 "$OUTDIR/venv.log"; fail "installing ${TORCH:-torch==2.13.0}"; }
lap "installed $("$PY" -W ignore -c 'import torch; print("torch", torch.__version__)') and ninja"

smoke() {
  (cd "$WORK" && "$PY" - < "$ROOT/tools/sdist_smoke.py") > "$OUTDIR/smoke-$1.log" 2>&1 \
    || { cat "$OUTDIR/smoke-$1.log"; fail "smoke test of the $1 install (log: $OUTDIR/smoke-$1.log)"; }
  grep -E "cuda_available|built against" "$OUTDIR/smoke-$1.log" | sed 's/^/  /'
  "$PY" -m pip check > /dev/null || { "$PY" -m pip check; fail "pip check after the $1 install"; }
  lap "$1 install: smoke test passed"
}

# To install an sdist, pip builds a wheel from it and keeps that wheel in its cache. With a cache of its own
# (empty, so nothing stale is reused) the check takes that very wheel as the wheel built from the sdist,
# instead of compiling everything a second time (about 2 min on 2 cores); `pip wheel` is the fallback.
PIP_CACHE_DIR="$WORK/pip-cache" "$PY" -m pip install -v --no-build-isolation "$sdist" \
    > "$OUTDIR/install-sdist.log" 2>&1 \
  || { tail -n 60 "$OUTDIR/install-sdist.log"; fail "pip install of the sdist (log: $OUTDIR/install-sdist.log)"; }
grep "\[dhvc-ext setup\]" "$OUTDIR/install-sdist.log" | sort -u | sed 's/^ */  /' || true
lap "installed the sdist"
smoke sdist

cached=$(find "$WORK/pip-cache" -name 'dhvc_ext-*.whl' | head -n 1)
if [ -n "$cached" ]; then
  cp "$cached" "$DIST/"
else
  "$PY" -m pip wheel -v --no-cache-dir --no-build-isolation --no-deps -w "$DIST" "$sdist" > "$OUTDIR/wheel.log" 2>&1 \
    || { tail -n 60 "$OUTDIR/wheel.log"; fail "building a wheel from the sdist (log: $OUTDIR/wheel.log)"; }
fi
wheel=$(ls "$DIST"/*.whl)
how=${cached:+"the sdist install (from pip's cache)"}
lap "$wheel: built from the sdist by ${how:-pip wheel}"
"$PY" - "$wheel" << 'PYEOF' || fail "the wheel's contents or metadata"
import sys, zipfile
names = zipfile.ZipFile(sys.argv[1]).namelist()
meta = zipfile.ZipFile(sys.argv[1]).read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
assert any(n.startswith("dhvc_ext/_C") and n.endswith(".so") for n in names), "no dhvc_ext/_C*.so"
assert "dhvc_ext/_build_info.py" in names, "no dhvc_ext/_build_info.py"
torch_req = [line for line in meta.splitlines() if line.startswith("Requires-Dist: torch")]
assert len(torch_req) == 1 and ".*" in torch_req[0], torch_req
print(f"sdist-check: the wheel holds _C and _build_info.py; {torch_req[0]}")
PYEOF
"$PY" -m pip uninstall -q -y dhvc-ext >> "$OUTDIR/venv.log" 2>&1
"$PY" -m pip install -q --no-deps "$wheel" >> "$OUTDIR/venv.log" 2>&1 || { tail -n 20 "$OUTDIR/venv.log"; fail "wheel install"; }
smoke wheel

echo "sdist-check: OK in $(( $(date +%s) - t0 )) s"
