"""Shared fixtures for the pytest-benchmark suites, and ``torch_threads`` (the one helper the files import).

Run: ``python -m pytest benchmarks/ -q --benchmark-json=results.json`` then
``python benchmarks/summarize.py results.json``.
"""
import contextlib

import numpy as np
import pytest
import torch

from dhvc_ext import testing

N_ELEMENTS = 1_000_000
SEED = 0
DTYPES = ("float64", "float32")
OPS_NEEDED = ("log_bessel_iv", "bessel_iv_ratio", "vmf_log_normalizer", "cuda_available")


@contextlib.contextmanager
def torch_threads(n):
    """Run the body with torch.set_num_threads(n), restoring the previous count afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _load_ops():
    """Return (module, None) when our ops are usable, else (None, why not)."""
    try:
        from dhvc_ext import ops
    except Exception as exc:  # an unbuilt or ABI-broken extension raises more than ImportError
        return None, f"dhvc_ext.ops does not import: {exc!r}"
    missing = [name for name in OPS_NEEDED if not hasattr(ops, name)]
    if missing:
        return None, f"dhvc_ext.ops lacks {missing}: build it with pip install --no-build-isolation -e ."
    return ops, None


@pytest.fixture(scope="session")
def ops():
    """dhvc_ext.ops, or a skip naming why it is unusable."""
    module, why = _load_ops()
    if module is None:
        pytest.skip(why)
    return module


@pytest.fixture(scope="session")
def cuda_ops(ops):
    """dhvc_ext.ops when a GPU and our CUDA kernels are both present, else a skip with the reason."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device visible to torch")
    if not ops.cuda_available():
        pytest.skip("dhvc_ext was built without CUDA kernels (FORCE_CUDA=1 to build them)")
    return ops


@pytest.fixture(scope="session")
def bessel_inputs():
    """dtype name -> (nu, x) as numpy arrays of that dtype: the distribution of testing.benchmark_inputs."""
    nu, x = testing.benchmark_inputs(N_ELEMENTS, SEED)
    return {name: (nu.astype(name), x.astype(name)) for name in DTYPES}


@pytest.fixture(scope="session")
def kappa_grid():
    """dtype name -> N_ELEMENTS concentrations, log-spaced over [1e-2, 1e5], as numpy arrays."""
    kappa = np.logspace(-2, 5, N_ELEMENTS)
    return {name: kappa.astype(name) for name in DTYPES}


# --- vMF sampling (test_bench_vmf.py) ---------------------------------------------------------------------
VMF_N_SAMPLES = 100_000


@pytest.fixture(scope="session")
def vmf_sample_op(ops):
    """dhvc_ext.ops.vmf_sample, or a skip when this build of the extension lacks it."""
    if not hasattr(ops, "vmf_sample"):
        pytest.skip("dhvc_ext.ops lacks vmf_sample: rebuild with pip install --no-build-isolation -e .")
    return ops.vmf_sample


@pytest.fixture(scope="session")
def vmf_locs():
    """A function d -> (VMF_N_SAMPLES, d) float32 CPU tensor of unit vectors, one random mean direction per
    row (seed SEED, normalised in float64), built on first use and kept for the session."""
    cache = {}

    def get(d):
        if d not in cache:
            g = torch.Generator().manual_seed(SEED)
            loc = torch.randn(VMF_N_SAMPLES, d, dtype=torch.float64, generator=g)
            cache[d] = (loc / torch.linalg.vector_norm(loc, dim=-1, keepdim=True)).to(torch.float32)
        return cache[d]

    return get
