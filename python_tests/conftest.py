"""Shared fixtures: the devices and dtypes every op test runs on.

CUDA parameters are present only when a GPU and the CUDA kernels are both there; on a machine without them
the CUDA cases are not collected as "skipped coverage" but simply do not exist, and
``test_cuda_kernels_present_when_gpu_is`` (test_bessel_ops.py) fails if a GPU is visible but the kernels are
missing.
"""
import pytest
import torch

import dhvc_ext

HAS_CUDA = torch.cuda.is_available() and dhvc_ext.cuda_available()
DEVICES = ["cpu"] + (["cuda"] if HAS_CUDA else [])
DTYPES = [torch.float32, torch.float64]


@pytest.fixture(params=DEVICES)
def device(request):
    return torch.device(request.param)


@pytest.fixture(params=DTYPES, ids=["float32", "float64"])
def dtype(request):
    return request.param
