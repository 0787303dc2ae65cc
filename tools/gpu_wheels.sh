#!/usr/bin/env bash
# Download, on this (networked) machine, the wheels that the offline GPU machine lacks for the test and
# benchmark suites: scikit-learn (and its joblib, threadpoolctl), power-spherical and mpmath, for the GPU
# machine's Python (3.12, x86_64 by default). They go to build/gpu-wheels, an ignored folder that the device
# tool can carry: run("bash tools/gpu_check.sh", carry=["build/gpu-wheels"]); gpu_check.sh installs them.
# Usage: bash tools/gpu_wheels.sh [python-version]
set -euo pipefail
cd "$(dirname "$0")/.."
PYV=${1:-3.12}
rm -rf build/gpu-wheels && mkdir -p build/gpu-wheels
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PYV" \
  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
  --dest build/gpu-wheels scikit-learn joblib threadpoolctl power-spherical mpmath
ls -la build/gpu-wheels
du -sh build/gpu-wheels
