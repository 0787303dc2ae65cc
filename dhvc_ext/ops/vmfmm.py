"""von Mises-Fisher mixture (vMFMM) kernels: the E-step, the EM sufficient statistics, and the kappa MLE.

Shapes: z (N, d) unit rows; mu (K, d) unit rows; kappa (K,) >= 0; log_pi (K,) log mixture weights.

- ``vmfmm_log_responsibilities(z, mu, kappa, log_pi) -> (log_resp (N, K), loglik (N,))`` with the scores
  s_nk = log pi_k + log C_d(kappa_k) + kappa_k mu_k^T z_n, log_resp = s - logsumexp_k s and
  loglik = logsumexp_k s. The K normalisers are computed once, in float64 (through ``vmf_log_normalizer``);
  the rest is one op (``dhvc_ext::_vmfmm_scores_log_softmax``). On the CPU it works on blocks of rows
  (csrc/cpu/vmfmm_estep_cpu.cpp, csrc/include/dhvc/kernels/vmfmm_block.h): the block's dot products by one
  small matrix product, kept transposed, (K, block), so that the maxima, the sums of exponentials (in
  double) and s - lse are vectorised loops over the rows of the block; then the block is copied, transposed,
  into the (N, K) output (threads take whole blocks, so the result does not depend on their number). On CUDA:
  the N x K products by one cuBLAS product, then one thread per row adds the bias and takes the log-softmax in
  place (NaN, +inf and -inf rows as torch.logsumexp gives them).
  Differentiable in z, mu, kappa and log_pi (second order too; the backward is torch ops on the saved
  log-responsibilities).
- ``vmfmm_em_statistics(z, mu, kappa, log_pi, hard=False) -> (N_k (K,), S_k (K, d), total loglik)``: the
  E-step and the M-step sums, N_k = sum_n r_nk and S_k = sum_n r_nk z_n (r one-hot at the argmax when hard,
  ties to the lowest index), in one pass over z by one fused op (``dhvc_ext::_vmfmm_em_statistics``): the
  responsibilities of a block of rows never leave the cache, and memory does not grow with N beyond the
  input. No gradient. The sums and the total log-likelihood sum_n logsumexp_k s_nk are accumulated in
  float64 (in float32, soft sums of r z run over at most 2048 rows before that; hard mode adds each row to
  its own component only, so that a NaN row leaves the other components intact); N_k and S_k are returned in
  the compute dtype, the total as a 0-dim float64 tensor. On the CPU the result does not depend on the number
  of threads; on CUDA it is deterministic (no atomics).
- On CUDA both fused ops take their internal products in full precision whatever the caller's settings:
  outside autocast (bf16 training leaves their float32 results unchanged) and without TF32.
- ``vmf_kappa_mle(d, rbar)``: kappa = A_d^{-1}(rbar), Banerjee's start and Halley steps on the exact ratio,
  about 1e-15 relative; rbar = 0 -> 0, rbar >= 1 -> inf. Differentiable: dkappa/drbar = 1 / A_d'(kappa).
float16/bfloat16 inputs are computed in float32; float32 and float64 natively.
"""
import numbers

import torch

from dhvc_ext.ops._extension import INT64_MAX, check_device
from dhvc_ext.ops.bessel import vmf_log_normalizer

__all__ = ["vmf_kappa_mle", "vmfmm_em_statistics", "vmfmm_em_statistics_from_scores", "vmfmm_log_responsibilities",
           "vmfmm_score_arguments"]

_ops = torch.ops.dhvc_ext

def _compute_dtype(*tensors):
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def _check_mixture_args(op, z, mu, kappa, log_pi):
    for name, t in (("z", z), ("mu", mu), ("kappa", kappa), ("log_pi", log_pi)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"dhvc_ext.{op}: {name} must be a tensor, got {type(t).__name__}")
        if t.is_complex():
            raise TypeError(f"dhvc_ext.{op}: {name} must be real")
    if z.dim() != 2 or mu.dim() != 2:
        raise ValueError(f"dhvc_ext.{op}: z must be (N, d) and mu (K, d), got {tuple(z.shape)} and {tuple(mu.shape)}")
    if z.shape[1] != mu.shape[1] or z.shape[1] < 2:
        raise ValueError(f"dhvc_ext.{op}: z and mu must share a dimension d >= 2, got {z.shape[1]} and {mu.shape[1]}")
    k = mu.shape[0]
    if kappa.shape != (k,) or log_pi.shape != (k,):
        raise ValueError(
            f"dhvc_ext.{op}: kappa and log_pi must have shape ({k},), got {tuple(kappa.shape)} and {tuple(log_pi.shape)}"
        )
    devices = {t.device for t in (z, mu, kappa, log_pi)}
    if len(devices) > 1:
        raise RuntimeError(f"dhvc_ext.{op}: all arguments must be on one device, got {sorted(map(str, devices))}")
    check_device(op, z.device)


def vmfmm_score_arguments(mu, kappa, log_pi, dtype):
    """The E-step's arguments of a mixture, mu (K, d) unit rows, kappa (K,) and log_pi (K,): the weighted means
    kappa mu (K, d), multiplied in the dtype of mu and kappa, and the bias log pi + log C_d(kappa) (K,), both
    returned in ``dtype``. The one place that builds them: the fused ops below, ``VMFMixture.score_arguments``
    (EM, the cluster head's start) all go through it. No checks (the callers hold valid parameters)."""
    # The K normalisers in float64: log C_d(kappa) is large (|log C| ~ d log d) and must not be rounded to
    # float32 before the difference that the softmax takes.
    bias = (log_pi.double() + vmf_log_normalizer(mu.shape[1], kappa.double())).to(dtype)
    weighted = (mu * kappa.unsqueeze(1)).to(dtype)
    return weighted.contiguous(), bias


def _score_args(z, mu, kappa, log_pi):
    """The fused ops' arguments: z, weighted_mu = kappa mu (K, d) and bias = log pi + log C_d(kappa) (K,), all
    in the compute dtype."""
    dtype = _compute_dtype(z, mu, kappa, log_pi)
    weighted, bias = vmfmm_score_arguments(mu.to(dtype), kappa.to(dtype), log_pi, dtype)
    return z.to(dtype), weighted, bias


def vmfmm_log_responsibilities(z, mu, kappa, log_pi):
    """Log-responsibilities (N, K) and per-point log-likelihoods (N,) of a vMF mixture; see the module doc."""
    _check_mixture_args("vmfmm_log_responsibilities", z, mu, kappa, log_pi)
    z, weighted, bias = _score_args(z, mu, kappa, log_pi)
    return _ops._vmfmm_scores_log_softmax(z.contiguous(), weighted, bias)


@torch.no_grad()
def vmfmm_em_statistics(z, mu, kappa, log_pi, hard=False):
    """(N_k (K,), S_k (K, d), total log-likelihood (0-dim float64)) of the E-step for z (N, d) in one pass; see
    the module doc. ``hard``: one-hot argmax responsibilities (classification EM)."""
    _check_mixture_args("vmfmm_em_statistics", z, mu, kappa, log_pi)
    # z as it is when already in the compute dtype: the kernels take any row stride.
    return _ops._vmfmm_em_statistics(*_score_args(z, mu, kappa, log_pi), bool(hard))


@torch.no_grad()
def vmfmm_em_statistics_from_scores(z, weighted_mu, bias, hard=False):
    """``vmfmm_em_statistics`` from the arguments of ``vmfmm_score_arguments`` (weighted means (K, d) and bias
    (K,), in z's dtype), for loops that hold them across calls (EM over chunks, k-means labels with a zero
    bias: scores = the dot products). No checks beyond the kernel's."""
    return _ops._vmfmm_em_statistics(z, weighted_mu, bias, bool(hard))


def vmf_kappa_mle(d, rbar):
    """kappa = A_d^{-1}(rbar) for mean resultant lengths rbar (tensor or number) in [0, 1); d an int >= 2."""
    if isinstance(d, bool) or not isinstance(d, numbers.Integral) or not 2 <= d <= INT64_MAX:
        raise ValueError(f"dhvc_ext.vmf_kappa_mle: d must be an int >= 2 and <= 2^63 - 1, got {d!r}")
    if isinstance(rbar, torch.Tensor):
        if rbar.is_complex():
            raise TypeError("dhvc_ext.vmf_kappa_mle: rbar must be real")
        if not rbar.dtype.is_floating_point:
            rbar = rbar.to(torch.get_default_dtype())
        elif rbar.dtype in (torch.float16, torch.bfloat16):
            rbar = rbar.float()
    else:
        rbar = torch.tensor(float(rbar), dtype=torch.get_default_dtype())
    check_device("vmf_kappa_mle", rbar.device)
    return _ops.vmf_kappa_mle(rbar, int(d))


# ---------------------------------------------------------------------------------------------------------
# torch.library registrations.


@torch.library.register_fake("dhvc_ext::_vmfmm_scores_log_softmax")
def _(z, weighted_mu, bias):
    torch._check(z.dim() == 2 and weighted_mu.dim() == 2 and z.shape[1] == weighted_mu.shape[1],
                 lambda: "_vmfmm_scores_log_softmax: z (N, d) and weighted_mu (K, d) must share d")
    return z.new_empty((z.shape[0], weighted_mu.shape[0])), z.new_empty((z.shape[0],))


@torch.library.register_fake("dhvc_ext::_vmfmm_em_statistics")
def _(z, weighted_mu, bias, hard):
    torch._check(z.dim() == 2 and weighted_mu.dim() == 2 and z.shape[1] == weighted_mu.shape[1],
                 lambda: "_vmfmm_em_statistics: z (N, d) and weighted_mu (K, d) must share d")
    k, d = weighted_mu.shape
    return z.new_empty((k,)), z.new_empty((k, d)), z.new_empty((), dtype=torch.float64)


@torch.library.register_fake("dhvc_ext::vmf_kappa_mle")
def _(rbar, d):
    return torch.empty_like(rbar, memory_format=torch.contiguous_format)


def _save_estep(ctx, inputs, output):
    z, weighted_mu, _ = inputs
    ctx.save_for_backward(z, weighted_mu, output[0])


def _vmfmm_estep_backward(ctx, grad_log_resp, grad_lse):
    # log_resp = s - lse(s), lse = logsumexp(s): ds = g_r - r sum_k g_r + r g_lse, r = exp(log_resp); then
    # s = bias + z W^T gives dz = ds W, dW = ds^T z, dbias = sum_n ds. Made of differentiable torch ops, so
    # second derivatives work too.
    z, weighted_mu, log_resp = ctx.saved_tensors
    resp = log_resp.exp()
    ds = torch.zeros_like(log_resp)
    if grad_log_resp is not None:
        ds = ds + grad_log_resp - resp * grad_log_resp.sum(1, keepdim=True)
    if grad_lse is not None:
        ds = ds + resp * grad_lse.unsqueeze(1)
    return ds @ weighted_mu, ds.t() @ z, ds.sum(0)


def _save_kappa(ctx, inputs, output):
    ctx.save_for_backward(output)
    ctx.d = inputs[1]


def _vmf_kappa_mle_backward(ctx, grad):
    # kappa(rbar) inverts A_d: dkappa/drbar = 1 / A_d'(kappa).
    (kappa,) = ctx.saved_tensors
    nu = kappa.new_full((), 0.5 * ctx.d - 1.0)
    return grad / _ops._bessel_iv_ratio_derivative(nu, kappa, 1), None


torch.library.register_autograd(
    "dhvc_ext::_vmfmm_scores_log_softmax", _vmfmm_estep_backward, setup_context=_save_estep
)
torch.library.register_autograd("dhvc_ext::vmf_kappa_mle", _vmf_kappa_mle_backward, setup_context=_save_kappa)
