#!/usr/bin/env bash
# Prepare, on this (networked) machine, build/gpu-carry: what the offline GPU machine lacks for
# tools/gpu_check.sh, and nothing it has (../shared/ENV.md lists what is there: torch 2.11.0+cu130, pytest,
# pytest-benchmark, pytest-timeout, pytest-xdist, scipy, numpy, scikit-learn, mpmath, tqdm, matplotlib, ...):
#   build/gpu-carry/wheels/         power-spherical (a comparison row of the vMF sampling benchmarks; pure
#                                   Python, installed there with --no-deps)
#   build/gpu-carry/fashion-mnist/  the four idx files (about 30 MB), for the time-capped DHVC training run
#                                   (`apt-get install -y dataset-fashion-mnist` puts them in /usr/share/datasets)
# Then: run("bash tools/gpu_check.sh", carry=["build/gpu-carry"], timeout_s=600). A part that cannot be
# prepared is left out, and gpu_check.sh says so in summary.json.
set -euo pipefail
cd "$(dirname "$0")/.."
CARRY=build/gpu-carry
rm -rf "$CARRY" && mkdir -p "$CARRY/wheels"
python3 -m pip download -q --no-deps --only-binary=:all: --dest "$CARRY/wheels" power-spherical \
  || echo "gpu_wheels: power-spherical could not be downloaded: its benchmark rows will be skipped"
if [ -d /usr/share/datasets/fashion-mnist ]; then
  cp -r /usr/share/datasets/fashion-mnist "$CARRY/"
else
  echo "gpu_wheels: /usr/share/datasets/fashion-mnist missing (apt-get install -y dataset-fashion-mnist):" \
    "the GPU run will leave out the DHVC training run"
fi
ls -la "$CARRY" "$CARRY"/*
du -sh "$CARRY"
