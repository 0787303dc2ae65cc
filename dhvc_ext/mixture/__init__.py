"""Mixtures of von Mises-Fisher distributions on S^{d-1} in R^d, and spherical k-means, built on ``dhvc_ext.ops``.

- ``VMFMixture``: a ``torch.nn.Module`` holding K components (mean directions, concentrations, weights) as
  unconstrained parameters, with a differentiable ``log_prob`` / ``posterior`` (for training by gradient) and
  a closed-form ``em_step`` (for fitting by EM).
- ``VonMisesFisherMixture``: a scikit-learn-style estimator (``fit``, ``predict``, ``predict_proba``,
  ``score``, ``bic``, ...) that runs EM on a ``VMFMixture`` from a spherical k-means++ start.
- ``SphericalKMeans``: k-means with cosine similarity (assign by max mu^T z, centres = normalised means).

Formulas (shared/KERNELS.md section 3), with p(z) = sum_k pi_k C_d(kappa_k) exp(kappa_k mu_k^T z):

    E-step  s_nk = log pi_k + log C_d(kappa_k) + kappa_k mu_k^T z_n,   log r_nk = s_nk - logsumexp_k s_nk
    M-step  N_k = sum_n r_nk, S_k = sum_n r_nk z_n, pi_k = N_k / N, mu_k = S_k / |S_k|,
            kappa_k = A_d^{-1}(|S_k| / N_k)

The E-step and the sums are the ``vmfmm_log_responsibilities`` / ``vmfmm_em_statistics`` ops (one pass over
z, log C_d in float64), A_d^{-1} is ``vmf_kappa_mle``: no SciPy Bessel function, so nothing overflows for
kappa up to 1e6 and d in the thousands (SciPy's ``iv`` overflows above kappa ~ 700, which is what breaks the
spherecluster package). Guards in the M-step: a component whose N_k falls below 1e-8 N is re-seeded at a
random data point instead of producing 0/0; a mean resultant length |S_k| / N_k -> 1 (all its points equal)
would give kappa = inf and is capped at ``kappa_max`` with a ``ConcentrationCapWarning``.

Estimators take NumPy arrays or torch tensors of shape (n_samples, d), L2-normalise the rows unless
``normalize=False`` (a zero row is a ValueError), compute in torch on ``device`` in ``dtype`` and return
NumPy arrays. ``random_state`` (None, an int or a ``numpy.random.RandomState``) seeds a ``torch.Generator``
per initialisation, so the same int gives identical results.

Data larger than memory: ``VonMisesFisherMixture.fit`` also takes a ``numpy.memmap`` or an iterable of
chunks and streams it, one pass of the fused statistics op per chunk and EM iteration, with memory bounded by
the chunk and the initialisation sample; with ``distributed=True`` each torch.distributed rank passes its
shard and the sums are all-reduced (``dhvc_ext.distributed``), as ``VMFMixture.em_step(distributed=True)``
does for one step.
"""
from dhvc_ext.mixture.estimators import SphericalKMeans, VonMisesFisherMixture
from dhvc_ext.mixture.vmf_mixture import EMPTY_FRACTION, ConcentrationCapWarning, VMFMixture

__all__ = ["EMPTY_FRACTION", "ConcentrationCapWarning", "SphericalKMeans", "VMFMixture", "VonMisesFisherMixture"]
