"""dhvc-ext: clustering on the hypersphere for PyTorch.

Layers, each importing only those below it: ``ops`` (the compiled kernels) -> ``distributions`` ->
``mixture`` -> ``models`` -> ``train`` -> the ``DHVC`` estimator, and the ``dhvc`` command: ``runs`` (a run's
life) over ``run_files``, ``options``, ``console`` and ``exit_codes``, with ``cli`` (parsing and dispatch) on
top; ``data`` and ``metrics`` are leaves. ``testing`` (slow, obviously-correct references) is for tests,
benchmarks and reports only. The modules from ``mixture`` up (scikit-learn, the networks) are imported on
first use: ``dhvc_ext.DHVC`` loads them.
"""
from dhvc_ext._torch_check import check_build

check_build()  # before the kernels load: a build for another torch fails here with the fix, not in _C

from dhvc_ext import distributions, ops
from dhvc_ext.ops import bessel_iv_ratio, cuda_available, log_bessel_iv, vmf_log_normalizer, vmf_sample

__version__ = "0.1.0"

__all__ = [
    "DHVC",
    "__version__",
    "bessel_iv_ratio",
    "cuda_available",
    "distributions",
    "log_bessel_iv",
    "ops",
    "vmf_log_normalizer",
    "vmf_sample",
]


def __getattr__(name):
    if name == "DHVC":
        from dhvc_ext.estimator import DHVC

        return DHVC
    raise AttributeError(f"module 'dhvc_ext' has no attribute {name!r}")
