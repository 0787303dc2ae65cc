"""Shared fixtures: the devices and dtypes every op test runs on.

Every device-parametrised test has a CUDA case, marked ``cuda`` (pyproject.toml registers the marker), so
that ``pytest -m cuda`` selects exactly the tests that run on a GPU (tools/gpu_check.sh). Where no GPU and
CUDA kernels are present, the CUDA cases are skipped with that reason, and ``test_cuda_kernels_present_when_gpu_is``
(test_bessel_ops.py) fails if a GPU is visible but the kernels are missing, so that a CPU-only build never
passes for a GPU one. Tests that need CUDA without a device parameter use ``cuda_only``.
"""
import pytest
import torch

import dhvc_ext

HAS_CUDA = torch.cuda.is_available() and dhvc_ext.cuda_available()
CUDA_SKIP = "needs a GPU and the CUDA kernels" + (
    "" if HAS_CUDA else f" (torch.cuda.is_available() = {torch.cuda.is_available()}, "
    f"CUDA kernels built = {dhvc_ext.cuda_available()})")
requires_cuda = pytest.mark.skipif(not HAS_CUDA, reason=CUDA_SKIP)
DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.cuda, requires_cuda])]
DTYPES = [torch.float32, torch.float64]


def cuda_only(test):
    """A test that needs the CUDA kernels: marked ``cuda``, skipped without them."""
    return pytest.mark.cuda(requires_cuda(test))


@pytest.fixture(params=DEVICES)
def device(request):
    return torch.device(request.param)


@pytest.fixture(params=DTYPES, ids=["float32", "float64"])
def dtype(request):
    return request.param
