#!/usr/bin/env bash
# Download, on this (networked) machine, the wheels that the offline GPU machine lacks for the test and
# benchmark suites: scikit-learn (and its joblib, threadpoolctl), tqdm, matplotlib (and its dependencies),
# power-spherical and mpmath, for the GPU machine's Python (3.12, x86_64 by default). They go to
# build/gpu-wheels, an ignored folder that the device tool can carry; Fashion-MNIST (apt-get install
# dataset-fashion-mnist here) is copied to build/gpu-data/fashion-mnist for the DHVC results run:
#   run("bash tools/gpu_check.sh", carry=["build/gpu-wheels", "build/gpu-data"]); gpu_check.sh installs them.
# Usage: bash tools/gpu_wheels.sh [python-version]
set -euo pipefail
cd "$(dirname "$0")/.."
PYV=${1:-3.12}
rm -rf build/gpu-wheels && mkdir -p build/gpu-wheels
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PYV" \
  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
  --dest build/gpu-wheels scikit-learn joblib threadpoolctl power-spherical mpmath tqdm \
  matplotlib contourpy cycler fonttools kiwisolver packaging pillow pyparsing python-dateutil six
ls -la build/gpu-wheels
du -sh build/gpu-wheels
rm -rf build/gpu-data && mkdir -p build/gpu-data
if [ -d /usr/share/datasets/fashion-mnist ]; then
  cp -r /usr/share/datasets/fashion-mnist build/gpu-data/
else
  echo "gpu_wheels: /usr/share/datasets/fashion-mnist missing (apt-get install -y dataset-fashion-mnist);" \
    "the GPU run will leave out the DHVC Fashion-MNIST results"
fi
du -sh build/gpu-data
