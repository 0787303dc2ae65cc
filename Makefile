# dhvc-ext: the two commands of the README's quick start, and the steps they are made of.
#
#   make demo     set up .venv, build the extension, train DHVC on digits with `dhvc train` (plots in build/demo-digits)
#   make test     set up .venv, build, then the C++ tests (CTest) and the whole pytest suite
#
# TORCH=<pip spec> picks the torch to install into a new .venv (default torch==2.13.0, the CPU build);
# a .venv that already has a torch keeps it unless TORCH is given.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
TORCH_DEFAULT := torch==2.13.0
DEPS := numpy scipy scikit-learn tqdm matplotlib pyyaml mpmath ninja pytest pytest-benchmark setuptools wheel power-spherical umap-learn tensorboard faiss-cpu
# `make demo` writes its run here (build/ is ignored by git); DEMO_ARGS adds `dhvc train` options.
DEMO_OUT ?= build/demo-digits
DEMO_ARGS ?=
BUILD_LOG := build/pip-build.log

.PHONY: demo test venv build cpp-test py-test bench cuda-check sdist-check asan clean

demo: build
	$(VENV)/bin/dhvc train --data digits --clusters 10 --out $(DEMO_OUT) --overwrite $(DEMO_ARGS)
	@echo "plots: $(DEMO_OUT)/*.png   metrics: $(DEMO_OUT)/metrics.json   log: $(DEMO_OUT)/log.jsonl"

test: build cpp-test py-test

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

venv: $(PY)
	@if [ -n "$(TORCH)" ]; then \
		echo "installing $(TORCH) into $(VENV)"; $(PIP) install -q "$(TORCH)"; \
	elif $(PY) -c "import torch" 2>/dev/null; then \
		echo "using the torch already in $(VENV): $$($(PY) -c 'import torch; print(torch.__version__)')"; \
	else \
		echo "installing $(TORCH_DEFAULT) into $(VENV)"; $(PIP) install -q "$(TORCH_DEFAULT)"; \
	fi
	$(PIP) install -q $(DEPS)

# The extension is compiled against the venv's torch (no build isolation); setup.py's decisions are
# printed, the full compiler output is kept in $(BUILD_LOG).
build: venv
	@mkdir -p build
	@if $(PIP) install -v --no-build-isolation -e . > $(BUILD_LOG) 2>&1; then \
		grep "\[dhvc-ext setup\]" $(BUILD_LOG) || true; echo "built dhvc_ext (log: $(BUILD_LOG))"; \
	else \
		tail -n 60 $(BUILD_LOG); echo "build failed; full log: $(BUILD_LOG)"; exit 1; \
	fi

cpp-test:
	cmake -S . -B build/cpp -DCMAKE_BUILD_TYPE=Release > /dev/null
	cmake --build build/cpp -j2
	ctest --test-dir build/cpp --output-on-failure

# The C++ tests again under AddressSanitizer and UndefinedBehaviorSanitizer.
asan:
	cmake -S . -B build/asan -DDHVC_SANITIZE=ON > /dev/null
	cmake --build build/asan -j2
	ctest --test-dir build/asan --output-on-failure

py-test:
	$(PY) -m pytest python_tests

# Kernel benchmarks, ours against the references, with a summary table (benchmarks/summarize.py).
bench: build
	@mkdir -p benchmarks/results
	$(PY) -m pytest benchmarks --benchmark-json=benchmarks/results/bench.json -q
	$(PY) benchmarks/summarize.py benchmarks/results/bench.json

# Compile and link the CUDA kernels without a GPU (shared/ENV.md), in a separate venv and build folder.
cuda-check:
	bash tools/cuda_compile_check.sh

# The sdist and a wheel built from it, each installed into a fresh venv with TORCH (default $(TORCH_DEFAULT))
# and the runtime dependencies only, then smoke-tested outside the source tree.
sdist-check:
	TORCH="$(or $(TORCH),$(TORCH_DEFAULT))" bash tools/sdist_check.sh

clean:
	rm -rf build dhvc_ext/_C*.so dhvc_ext/_build_info.py dhvc_ext.egg-info .pytest_cache
