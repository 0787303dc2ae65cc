"""dhvc-ext: clustering on the hypersphere for PyTorch.

Layers, each importing only those below it: ``ops`` (the compiled kernels) -> ``distributions`` ->
``mixture`` -> ``models`` -> ``train`` -> ``cli``. ``reference`` (slow, obviously-correct versions) is for
tests and benchmarks only. ``dhvc_ext.mixture`` (which needs scikit-learn) is imported on demand.
"""
from dhvc_ext import distributions, ops
from dhvc_ext.ops import bessel_iv_ratio, cuda_available, log_bessel_iv, vmf_log_normalizer, vmf_sample

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "bessel_iv_ratio",
    "cuda_available",
    "distributions",
    "log_bessel_iv",
    "ops",
    "vmf_log_normalizer",
    "vmf_sample",
]
