"""Slow, obviously-correct references for von Mises-Fisher mixtures (shared/KERNELS.md section 3), for tests
and benchmarks only (the runtime package never imports ``dhvc_ext.testing``): SciPy's ``ive`` normaliser and
mean resultant length, the kappa MLE by root finding, and the plain NumPy EM.
"""
import math

import numpy as np
import scipy.special

from dhvc_ext.testing.vmf import _vmf_dimension

__all__ = ["vmf_kappa_mle_brentq", "vmf_log_normalizer_ive", "vmf_mean_resultant_ive", "vmfmm_em_numpy"]

# ----------------------------------------------------------------------------------------------------
# von Mises-Fisher mixtures
# ----------------------------------------------------------------------------------------------------
# Notation of shared/KERNELS.md section 3: p(z) = sum_k pi_k C_d(kappa_k) exp(kappa_k mu_k^T z) on S^{d-1}.
# Everything here is float64 NumPy/SciPy with a Python loop over components: slow, obviously correct, and
# limited to where SciPy's exponentially scaled ive(nu, kappa) neither underflows nor loses its digits.


def vmf_log_normalizer_ive(d, kappa):
    """log C_d(kappa) = nu log kappa - (d/2) log(2 pi) - log I_nu(kappa), nu = d/2 - 1, float64 numpy.

    log I_nu(kappa) is taken as log(ive(nu, kappa)) + kappa. Limits: ive underflows to 0 (the result is then
    +inf) when nu is large and kappa small, e.g. nu >= 49.5 at kappa = 1e-8 or nu = 511 at kappa <= 100 (see
    the module docstring); where kappa << nu the two large terms nu log kappa and log I_nu cancel and the
    result loses about log10(nu |log kappa|) digits. Use it only for small d (the tests use d <= 10), where it
    is accurate to about 1e-15 relative. kappa = 0 gives the uniform density, -log|S^{d-1}|.
    """
    d = _vmf_dimension(d)
    kappa = np.asarray(kappa, dtype=np.float64)
    nu = 0.5 * d - 1.0
    log_surface = math.log(2.0) + 0.5 * d * math.log(math.pi) - math.lgamma(0.5 * d)
    safe = np.where(kappa > 0, kappa, 1.0)
    with np.errstate(divide="ignore"):
        out = nu * np.log(safe) - 0.5 * d * math.log(2 * math.pi) - (np.log(scipy.special.ive(nu, safe)) + safe)
    return np.where(kappa > 0, out, -log_surface)


def vmf_mean_resultant_ive(d, kappa):
    """A_d(kappa) = ive(d/2, kappa) / ive(d/2 - 1, kappa), float64 numpy (0 at kappa = 0); same limits as
    vmf_log_normalizer_ive (0/0 = NaN where both underflow)."""
    d = _vmf_dimension(d)
    kappa = np.asarray(kappa, dtype=np.float64)
    safe = np.where(kappa > 0, kappa, 1.0)
    return np.where(kappa > 0, scipy.special.ive(0.5 * d, safe) / scipy.special.ive(0.5 * d - 1.0, safe), 0.0)


def vmf_kappa_mle_brentq(d, rbar, kappa_max=1e6):
    """kappa = A_d^{-1}(rbar) for one float rbar in [0, 1], by scipy.optimize.brentq on the ive ratio.

    0 gives 0; an rbar that A_d does not reach below kappa_max (rbar -> 1) gives kappa_max. The root is
    bracketed by doubling from kappa = 1; brentq's xtol = 1e-12 and rtol = 4 eps make the result accurate to
    about 1e-12 relative wherever the ratio itself is (small d).
    """
    import scipy.optimize

    rbar = float(rbar)
    if not rbar > 0:
        return 0.0
    f = lambda k: float(vmf_mean_resultant_ive(d, k)) - rbar  # noqa: E731
    if f(kappa_max) <= 0:
        return float(kappa_max)
    hi = 1.0
    while f(hi) <= 0:
        hi *= 2.0
    return float(scipy.optimize.brentq(f, 0.0, min(hi, kappa_max), xtol=1e-12, rtol=4 * np.finfo(float).eps, maxiter=500))


def vmfmm_em_numpy(X, mu0, kappa0, pi0, n_iter, kappa_max=1e6):
    """Plain EM for a vMF mixture (KERNELS.md section 3) from a given initialisation, float64 numpy.

    Args:
        X: (N, d) unit rows. mu0: (K, d) unit rows. kappa0: (K,) >= 0. pi0: (K,) positive weights summing to 1.
        n_iter: number of EM iterations. kappa_max: the cap where rbar -> 1.
    Returns:
        (logliks, mu, kappa, pi): logliks (n_iter,) where logliks[i] = sum_n log p(x_n) under the parameters
        before the i-th M-step (logliks[0] is the initialisation's), and the parameters after the last one.

    Each iteration: s_nk = log pi_k + log C_d(kappa_k) + kappa_k mu_k^T x_n, r = exp(s - logsumexp_k s),
    N_k = sum_n r_nk, S_k = sum_n r_nk x_n, pi = N_k / N, mu_k = S_k / |S_k|, kappa_k = A_d^{-1}(|S_k| / N_k)
    (vmf_kappa_mle_brentq). No guards for empty components: keep the tests where none empties. Limits are
    those of vmf_log_normalizer_ive (small d).
    """
    X = np.asarray(X, dtype=np.float64)
    mu = np.array(mu0, dtype=np.float64)
    kappa = np.array(kappa0, dtype=np.float64)
    pi = np.array(pi0, dtype=np.float64)
    n, d = X.shape
    logliks = np.empty(n_iter)
    for it in range(n_iter):
        scores = np.log(pi) + vmf_log_normalizer_ive(d, kappa) + kappa * (X @ mu.T)
        loglik = scipy.special.logsumexp(scores, axis=1)
        logliks[it] = loglik.sum()
        resp = np.exp(scores - loglik[:, None])
        n_k = resp.sum(axis=0)
        s_k = resp.T @ X
        norm = np.linalg.norm(s_k, axis=1)
        pi = n_k / n
        mu = s_k / norm[:, None]
        kappa = np.array([vmf_kappa_mle_brentq(d, r, kappa_max) for r in norm / n_k])
    return logliks, mu, kappa, pi
