"""The only door to the compiled kernels: every use of ``torch.ops.dhvc_ext`` goes through this package.

Importing it loads ``dhvc_ext._C`` (which registers the ops with the dispatcher) and the Python
registrations: fake kernels for torch.compile and autograd formulas.
"""
from dhvc_ext.ops._extension import OPS, cuda_available
from dhvc_ext.ops.bessel import bessel_iv_ratio, log_bessel_iv, log_bessel_iv_normalized, vmf_log_normalizer
from dhvc_ext.ops.vmf import vmf_sample
from dhvc_ext.ops.vmfmm import (vmf_kappa_mle, vmfmm_em_statistics, vmfmm_em_statistics_from_scores,
                                vmfmm_log_responsibilities, vmfmm_score_arguments)

__all__ = ["OPS", "bessel_iv_ratio", "cuda_available", "log_bessel_iv", "log_bessel_iv_normalized", "vmf_log_normalizer", "vmf_sample",
           "vmf_kappa_mle", "vmfmm_em_statistics", "vmfmm_em_statistics_from_scores", "vmfmm_log_responsibilities",
           "vmfmm_score_arguments"]
