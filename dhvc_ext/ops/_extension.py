"""Loads the compiled kernels (``dhvc_ext._C``) and reports what was built into them."""
import warnings

import torch

try:
    from dhvc_ext import _C  # noqa: F401  (importing it registers torch.ops.dhvc_ext.*)
except ImportError as exc:  # pragma: no cover - exercised only on a broken install
    raise ImportError(
        f"dhvc_ext's compiled kernels (dhvc_ext._C) could not be loaded: {exc}\n"
        "They are built against the torch you run: install torch first, then from the source tree run\n"
        "    pip install --no-build-isolation -e .\n"
        "(or `make build`). A torch upgrade after the build needs a rebuild."
    ) from exc

#: Every op of the library; each has a CPU kernel, and a CUDA kernel when built with CUDA.
OPS = (
    "log_bessel_iv",
    "log_bessel_iv_normalized",
    "bessel_iv_ratio",
    "_bessel_iv_ratio_derivative",
    "vmf_log_normalizer",
    "vmf_kappa_mle",
    "_vmfmm_scores_log_softmax",
    "_vmfmm_em_statistics",
    "vmf_sample",
    "_vmf_sample_backward",
)


#: The largest ``int`` argument an op's schema takes (C++ int64_t): a larger Python int is a ValueError.
INT64_MAX = 2**63 - 1


def cuda_available() -> bool:
    """True when every op has a CUDA kernel compiled in (regardless of whether a GPU is present)."""
    return all(torch._C._dispatch_has_kernel_for_dispatch_key(f"dhvc_ext::{op}", "CUDA") for op in OPS)


def check_device(op: str, device: torch.device) -> None:
    """Fail loudly, with the fix, when a CUDA tensor reaches an op built without CUDA kernels."""
    if device.type == "cuda" and not cuda_available():
        raise RuntimeError(
            f"dhvc_ext.{op}: got CUDA tensors, but this build of dhvc_ext has no CUDA kernels. Rebuild it "
            "with a CUDA toolkit visible (CUDA_HOME), e.g. `FORCE_CUDA=1 pip install --no-build-isolation -e .`"
        )


if torch.cuda.is_available() and not cuda_available():
    warnings.warn(
        "dhvc_ext was built without CUDA kernels although a GPU is visible: its ops will refuse CUDA "
        "tensors. Rebuild with `FORCE_CUDA=1 pip install --no-build-isolation -e .`",
        RuntimeWarning,
        stacklevel=2,
    )
