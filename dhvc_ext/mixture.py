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
import math
import numbers
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.base import BaseEstimator
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted

from dhvc_ext import distributed as dist
from dhvc_ext import ops

__all__ = ["ConcentrationCapWarning", "SphericalKMeans", "VMFMixture", "VonMisesFisherMixture"]

#: A component whose responsibility mass N_k is below this fraction of N is re-seeded in the M-step.
EMPTY_FRACTION = 1e-8


class ConcentrationCapWarning(RuntimeWarning):
    """The M-step's kappa = A_d^{-1}(rbar) exceeded ``kappa_max`` (rbar -> 1: a component's points coincide)."""


def _inverse_softplus(y):
    """x with softplus(x) = y for y > 0. Above 20 torch's softplus returns its input, so x = y exactly there."""
    y = y.clamp_min(torch.finfo(y.dtype).tiny)
    return torch.where(y > 20, y, y + torch.log(-torch.expm1(-y)))


class VMFMixture(torch.nn.Module):
    """K von Mises-Fisher components on S^{d-1}: p(z) = sum_k pi_k C_d(kappa_k) exp(kappa_k mu_k^T z).

    Parameters (unconstrained, trainable by gradient): ``mu_raw`` (K, d) with mu = mu_raw / |mu_raw|,
    ``kappa_raw`` (K,) with kappa = softplus(kappa_raw) + kappa_min, ``logits`` (K,) with pi = softmax(logits).

    Args:
        n_components: K >= 1.
        dim: the ambient dimension d >= 2.
        kappa_init: initial concentration of every component (> kappa_min).
        kappa_min: lower bound of kappa under the softplus parameterisation (>= 0).
        kappa_max: the cap ``em_step`` applies where A_d^{-1} diverges.
        generator: torch.Generator for the random initial means (standard normal, normalised) and the
            default generator of ``em_step``'s re-seeding; None uses torch's global generator.
        device, dtype: of the parameters (float32 or float64).
    """

    def __init__(self, n_components, dim, *, kappa_init=1.0, kappa_min=0.0, kappa_max=1e6, generator=None,
                 device=None, dtype=torch.float32):
        super().__init__()
        if isinstance(n_components, bool) or not isinstance(n_components, numbers.Integral) or n_components < 1:
            raise ValueError(f"VMFMixture: n_components must be an int >= 1, got {n_components!r}")
        if isinstance(dim, bool) or not isinstance(dim, numbers.Integral) or dim < 2:
            raise ValueError(f"VMFMixture: dim must be an int >= 2 (the sphere S^(d-1) in R^d), got {dim!r}")
        if not kappa_min >= 0:
            raise ValueError(f"VMFMixture: kappa_min must be >= 0, got {kappa_min!r}")
        if not kappa_init > kappa_min:
            raise ValueError(f"VMFMixture: kappa_init must be > kappa_min = {kappa_min}, got {kappa_init!r}")
        if not kappa_max > kappa_init:
            raise ValueError(f"VMFMixture: kappa_max must be > kappa_init = {kappa_init}, got {kappa_max!r}")
        self.n_components, self.dim = int(n_components), int(dim)
        self.kappa_min, self.kappa_max = float(kappa_min), float(kappa_max)
        self.generator = generator
        factory = dict(device=device, dtype=dtype)
        mu = torch.randn(self.n_components, self.dim, generator=generator, dtype=dtype,
                         device=generator.device if generator is not None else device).to(**factory)
        self.mu_raw = torch.nn.Parameter(F.normalize(mu, dim=-1))
        kappa = torch.full((self.n_components,), kappa_init - kappa_min, **factory)
        self.kappa_raw = torch.nn.Parameter(_inverse_softplus(kappa))
        self.logits = torch.nn.Parameter(torch.zeros(self.n_components, **factory))

    @property
    def mu(self):
        """(K, d) unit mean directions."""
        return F.normalize(self.mu_raw, dim=-1)

    @property
    def kappa(self):
        """(K,) concentrations, >= kappa_min."""
        return F.softplus(self.kappa_raw) + self.kappa_min

    @property
    def pi(self):
        """(K,) mixture weights, summing to 1."""
        return torch.softmax(self.logits, dim=-1)

    @property
    def log_pi(self):
        """(K,) log mixture weights."""
        return torch.log_softmax(self.logits, dim=-1)

    def _check_z(self, z):
        if not isinstance(z, torch.Tensor) or z.dim() != 2 or z.shape[1] != self.dim:
            shape = tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__
            raise ValueError(f"VMFMixture: z must be a tensor of shape (N, {self.dim}) with unit rows, got {shape}")
        return z.to(device=self.mu_raw.device, dtype=self.mu_raw.dtype)

    def _e_step(self, z):
        return ops.vmfmm_log_responsibilities(self._check_z(z), self.mu, self.kappa, self.log_pi)

    def log_prob(self, z):
        """log p(z_n) for z (N, d) unit rows: (N,). Differentiable in z and the parameters."""
        return self._e_step(z)[1]

    def log_posterior(self, z):
        """log r_nk = log p(component k | z_n) for z (N, d): (N, K)."""
        return self._e_step(z)[0]

    def posterior(self, z):
        """Responsibilities r_nk = p(component k | z_n) for z (N, d): (N, K), rows summing to 1."""
        return self._e_step(z)[0].exp()

    @torch.no_grad()
    def em_step(self, z, hard=False, generator=None, *, distributed=False):
        """One EM iteration on z (N, d) unit rows; writes mu, kappa, pi in place (no gradient).

        ``hard=True`` uses one-hot argmax responsibilities (classification EM). ``generator`` draws the data
        points that re-seed near-empty components (default: the module's generator). Returns the mean
        log-likelihood (1/N) sum_n log p(z_n) under the parameters *before* the update, a Python float (EM
        guarantees it does not decrease from one soft step to the next, barring re-seeding).

        ``distributed=True``: z is this process's shard of the data. N_k, S_k, the log-likelihood and N are
        summed over the torch.distributed process group (``dhvc_ext.distributed.all_reduce_sum``), so every
        rank makes the same M-step; a re-seeded component takes rank 0's choice (broadcast). Every rank must
        call it. Without a process group it is the plain step.
        """
        z = self._check_z(z)
        n_k, s_k, total = ops.vmfmm_em_statistics(z, self.mu, self.kappa, self.log_pi, hard=hard)
        n = z.shape[0]
        if distributed and dist.world_size() > 1:
            count = torch.tensor(float(n), dtype=torch.float64)
            n_k, s_k, total = n_k.double(), s_k.double(), total.double()
            dist.all_reduce_sum([n_k, s_k, total, count])
            n = int(count)
            if self._m_step(z, n_k, s_k, generator, n=n):
                dist.broadcast_([self.mu_raw, self.kappa_raw, self.logits])
        else:
            self._m_step(z, n_k, s_k, generator)
        return float(total) / n

    @torch.no_grad()
    def _m_step(self, z, n_k, s_k, generator=None, n=None):
        """Closed-form M-step from the sufficient statistics N_k (K,) and S_k (K, d) of n points (default: the
        rows of z), written to the parameters. z (M, d) are the candidates that re-seed empty components: all
        the data in memory, a sample of them when they stream. Returns whether a component was re-seeded."""
        mu, kappa, pi, reseed = self._m_step_values(z, n_k, s_k, generator, n)
        self._set_values(mu, kappa, pi)
        return reseed

    @torch.no_grad()
    def m_step(self, z, n_k, s_k, n=None):
        """The closed-form M-step from given sufficient statistics N_k = sum_i r_ik (K,) and S_k = sum_i r_ik z_i
        (K, d) of n points (default: the rows of z), e.g. of another clustering's soft labels r (N, K); z (M, d)
        are the candidates that re-seed an empty component. Writes the parameters; returns whether a component
        was re-seeded."""
        return self._m_step(z, n_k, s_k, None, n)

    @torch.no_grad()
    def set_parameters(self, mu, kappa, log_pi):
        """Write (mu (K, d) unit rows, kappa (K,), log_pi (K,)), of any dtype, to the unconstrained parameters
        (kappa below kappa_min becomes kappa_min): the inverse of the ``mu``, ``kappa`` and ``log_pi``
        properties, e.g. to take the parameters of another mixture (``other.mu, other.kappa, other.log_pi``)."""
        if self.kappa_min > 0:
            kappa = kappa.clamp_min(self.kappa_min) - self.kappa_min
        self.mu_raw.copy_(mu)
        self.kappa_raw.copy_(_inverse_softplus(kappa.to(self.kappa_raw.dtype)))
        self.logits.copy_(log_pi)

    @torch.no_grad()
    def _set_values(self, mu, kappa, pi):
        """Write (mu (K, d) unit rows, kappa (K,), pi (K,)) to the unconstrained parameters."""
        self.set_parameters(mu, kappa, torch.log(pi))

    @torch.no_grad()
    def score_arguments(self, dtype=torch.float64):
        """The E-step's arguments of the current parameters, from their float64 values: weighted means
        kappa_k mu_k (K, d) and bias log pi_k + log C_d(kappa_k) (K,), in ``dtype``, so that the scores are
        s_nk = bias_k + weighted_k^T z_n (``dhvc_ext.ops.vmfmm_score_arguments``). A linear softmax with these
        weights and bias is the posterior p(c|z)."""
        return ops.vmfmm_score_arguments(self.mu.double(), self.kappa.double(), self.log_pi.double(), dtype)

    def _m_step_values(self, z, n_k, s_k, generator=None, n=None):
        """The M-step of ``_m_step`` without writing it: (mu (K, d), kappa (K,), pi (K,), reseeded), float64."""
        n = z.shape[0] if n is None else n
        n_k, s_k = n_k.to(torch.float64), s_k.to(torch.float64)
        norm = torch.linalg.vector_norm(s_k, dim=-1)
        empty = (n_k < EMPTY_FRACTION * n) | (norm == 0)
        reseed = bool(empty.any())
        if reseed:
            n_k = torch.where(empty, torch.ones_like(n_k), n_k)
            norm = torch.where(empty, torch.ones_like(norm), norm)
        # Where a component is empty, rbar = |S_k| / 1 is replaced by 0 (its kappa is re-seeded below).
        rbar = (norm / n_k).clamp(0.0, 1.0)
        kappa = ops.vmf_kappa_mle(self.dim, torch.where(empty, torch.zeros_like(rbar), rbar) if reseed else rbar)
        over = ~(kappa <= self.kappa_max)  # NaN included
        if reseed:
            over = over & ~empty
        if bool(over.any()):
            warnings.warn(
                f"VMFMixture.em_step: components {over.nonzero().flatten().tolist()} have mean resultant length "
                f"{rbar[over].tolist()} (-> 1: their points coincide); kappa capped at kappa_max = {self.kappa_max:g}",
                ConcentrationCapWarning, stacklevel=4)
            kappa = torch.where(over, torch.full_like(kappa, self.kappa_max), kappa)
        mu = s_k / norm[:, None]
        pi = n_k / n
        if reseed:
            # Re-seed at random data points, with the median concentration of the others and a weight of one
            # point: EM can then pull it towards whatever it explains, instead of dividing 0 by 0.
            idx = empty.nonzero().flatten()
            gen = generator if generator is not None else self.generator
            pick = torch.randint(z.shape[0], (idx.numel(),), generator=gen,
                                 device=gen.device if gen is not None else z.device).to(z.device)
            mu[idx] = z[pick].to(torch.float64)
            kappa[idx] = kappa[~empty].median() if bool((~empty).any()) else max(1.0, self.kappa_min + 1.0)
            pi[idx] = 1.0 / n
            pi = pi / pi.sum()
        return mu, kappa, pi, reseed

    def sample(self, n, generator=None):
        """n draws: (z (n, d), labels (n,) int64). Labels ~ Categorical(pi), then z ~ vMF(mu_label, kappa_label)
        by ``dhvc_ext.ops.vmf_sample`` (reparameterised in mu and kappa; labels carry no gradient)."""
        labels = torch.multinomial(self.pi.detach(), int(n), replacement=True, generator=generator)
        return ops.vmf_sample(self.mu[labels], self.kappa[labels], generator=generator), labels


# ---------------------------------------------------------------------------------------------------------
# Estimators


def _as_unit_rows(X, who, dim=None, normalize=True, device=None, dtype=torch.float64, first_row=0):
    """X (NumPy array, torch tensor or nested list) -> (N, d) tensor of unit rows on device in dtype.
    ``first_row``: the index of X's first row in the whole data (a streamed chunk's), for the messages."""
    if isinstance(X, torch.Tensor):
        if X.is_complex():
            raise TypeError(f"{who}: X must be real, got a {X.dtype} tensor")
        z = X.detach().to(device=device, dtype=dtype)
    else:
        array = np.asarray(X)
        if array.dtype.kind == "c":
            raise TypeError(f"{who}: X must be real, got an array of {array.dtype}")
        if array.dtype not in (np.float32, np.float64):
            array = np.asarray(array, dtype=np.float64)
        # float32 rows go to torch as they are (widening is exact): a streamed float32 chunk computed in
        # float32 is never copied to float64 on the way. A read-only array (a memory map's rows) is shared,
        # not copied: nothing here writes to it, so torch's warning about such arrays does not apply.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            z = torch.as_tensor(array, device=device).to(dtype)
    if z.dim() != 2 or z.shape[0] < 1 or z.shape[1] < 2:
        raise ValueError(f"{who}: X must be 2-D (n_samples >= 1, n_features >= 2), got shape {tuple(z.shape)}")
    if dim is not None and z.shape[1] != dim:
        raise ValueError(f"{who}: X has {z.shape[1]} features, but the estimator was fitted with {dim}")
    norm = torch.linalg.vector_norm(z, dim=1)
    # A NaN or infinite entry makes its row's norm NaN or infinite, and with it the largest or smallest norm
    # (torch.aminmax propagates NaN): the full check only runs then. One pass over the norms for both checks.
    smallest, largest = (float(v) for v in torch.aminmax(norm))
    if not (math.isfinite(smallest) and math.isfinite(largest)):
        finite = torch.isfinite(z).all(dim=1)
        if not bool(finite.all()):
            raise ValueError(f"{who}: X contains NaN or infinity (row {first_row + int((~finite).nonzero()[0])})")
    if normalize:
        if not (largest < math.inf and smallest >= math.sqrt(torch.finfo(z.dtype).tiny)):
            # The sum of squares overflowed (a finite row of norm beyond the dtype's range would become a zero
            # vector) or may have underflowed: divide each row by its largest entry first, then normalise.
            peak = z.abs().amax(dim=1)
            if not bool((peak > 0).all()):
                i = first_row + int((peak == 0).nonzero()[0])
                raise ValueError(f"{who}: row {i} of X is zero and has no direction")
            z = z / peak[:, None]
            norm = torch.linalg.vector_norm(z, dim=1)
        return z / norm[:, None]
    tol = max(torch.finfo(dtype).eps ** 0.5, 1e-6)
    bad = (norm - 1).abs() > tol
    if bool(bad.any()):
        i = int(bad.nonzero()[0])
        raise ValueError(f"{who}: normalize=False but row {first_row + i} of X has norm {float(norm[i]):g}, not 1")
    return z


def _torch_generator(random_state, device):
    """A torch.Generator on device seeded from a NumPy RandomState (one draw)."""
    seed = int(random_state.randint(0, 2**62, dtype=np.int64))
    return torch.Generator(device=device).manual_seed(seed)


def _spherical_kmeans_pp(z, k, generator):
    """Greedy k-means++ on the sphere: the first centre uniformly among the rows of z (N, d); for each next one,
    2 + floor(log k) candidates drawn with probability proportional to 1 - (max cosine to the chosen centres),
    of which the one that leaves the smallest potential sum_n (1 - max cosine) is kept (scikit-learn's greedy
    k-means++: plain k-means++ puts two centres in one cluster of three well separated ones about one time
    in eight, and EM does not undo that). Returns (k, d) rows of z."""
    n, trials = z.shape[0], 2 + int(math.log(k))
    idx = [int(torch.randint(n, (1,), generator=generator, device=generator.device))]
    best = z @ z[idx[0]]
    for _ in range(1, k):
        weight = (1 - best).clamp_min_(0)
        if not bool(weight.sum() > 0):  # every row sits on a centre: any choice is as good
            weight = torch.ones_like(weight)
        cand = torch.multinomial(weight.to(generator.device), trials, replacement=True, generator=generator).to(z.device)
        closest = z[cand] @ z.T  # (trials, N)
        torch.maximum(closest, best, out=closest)
        # The smallest potential sum_n (1 - closest) is the largest sum_n closest.
        pick = int(closest.sum(dim=1).argmax())
        idx.append(int(cand[pick]))
        best = closest[pick]
    return z[idx]


def _closest_centre_sums(z, centres):
    """The hard-label sums of the rows of z (N, d) labelled by their closest centre (largest cosine, ties to
    the lowest index) among centres (K, d): (N_k (K,), S_k (K, d)), float64. The hard E-step of the fused
    statistics op with weighted means = the centres and a zero bias (kappa = 1, log pi = -log C_d(1)): its
    scores are the cosines themselves."""
    centres = centres.to(z.dtype).contiguous()
    bias = torch.zeros(centres.shape[0], dtype=z.dtype, device=z.device)
    n_k, s_k, _ = ops.vmfmm_em_statistics_from_scores(z, centres, bias, hard=True)
    return n_k.to(torch.float64), s_k.to(torch.float64)


def _chunk_reader(X, chunk_size, who):
    """For an X that streams (see ``VonMisesFisherMixture.fit``), a function returning a fresh iterable of its
    2-D chunks; None for in-memory data."""
    if isinstance(X, np.memmap):
        if X.ndim != 2:
            raise ValueError(f"{who}: a memory-mapped X must be 2-D (n_samples, n_features), got shape {X.shape}")
        return lambda: (X[i:i + chunk_size] for i in range(0, X.shape[0], chunk_size))
    if isinstance(X, (np.ndarray, torch.Tensor)):
        return None
    if callable(X):
        return X
    if isinstance(X, (list, tuple)):
        if len(X) and all(isinstance(c, (np.ndarray, torch.Tensor)) and c.ndim == 2 for c in X):
            return lambda: iter(X)
        return None
    if hasattr(X, "__next__"):
        raise ValueError(f"{who}: X is a one-shot iterator ({type(X).__name__}), but EM reads the data once per "
                         "iteration; pass a list of chunks or a callable that returns a new iterable of chunks")
    if hasattr(X, "__iter__"):
        return lambda: iter(X)
    return None


def _check_int(value, name, who, low):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise ValueError(f"{who}: {name} must be an int >= {low}, got {value!r}")


class VonMisesFisherMixture(BaseEstimator):
    """Mixture of von Mises-Fisher distributions fitted by EM (scikit-learn estimator API).

    Args:
        n_components: K >= 1.
        init: "k-means++" (spherical greedy k-means++ centres: the first uniform, the next ones among
            candidates drawn with probability proportional to 1 - max cosine to the chosen ones) or "random"
            (K distinct random rows). The centres give hard labels from which one M-step makes the initial
            (mu, kappa, pi).
        n_init: number of initialisations; the one with the best final lower bound is kept.
        max_iter: EM iterations per initialisation.
        tol: stop when the mean log-likelihood changes by less than tol between iterations.
        posterior_type: "soft" (EM) or "hard" (classification EM: one-hot argmax responsibilities).
        kappa_max: cap of the concentrations (reached when a component's points coincide; warns).
        normalize: L2-normalise the rows of every X (a zero row raises ValueError); if False, rows must
            already be unit vectors.
        random_state: None, an int or a numpy.random.RandomState.
        device, dtype: where and in what precision torch computes (float32 or float64).
        chunk_size: rows read at a time from a ``numpy.memmap`` X (see ``fit``).
        init_size: rows of the sample that a streamed X's initialisation draws its centres from (>= K);
            a stream of at most this many rows is fitted exactly as in memory.

    Fitted attributes (NumPy): ``weights_`` (K,), ``means_`` (K, d), ``concentrations_`` (K,), ``n_iter_``,
    ``converged_``, ``lower_bound_`` (mean log-likelihood at the parameters before the last M-step, as in
    scikit-learn's GaussianMixture), and ``mixture_``, the fitted ``VMFMixture``.
    """

    def __init__(self, n_components=1, *, init="k-means++", n_init=1, max_iter=100, tol=1e-6, posterior_type="soft",
                 kappa_max=1e6, normalize=True, random_state=None, device=None, dtype=torch.float64,
                 chunk_size=65536, init_size=65536):
        self.n_components = n_components
        self.init = init
        self.n_init = n_init
        self.max_iter = max_iter
        self.tol = tol
        self.posterior_type = posterior_type
        self.kappa_max = kappa_max
        self.normalize = normalize
        self.random_state = random_state
        self.device = device
        self.dtype = dtype
        self.chunk_size = chunk_size
        self.init_size = init_size

    def _validate_params(self):
        who = type(self).__name__
        _check_int(self.n_components, "n_components", who, 1)
        _check_int(self.chunk_size, "chunk_size", who, 1)
        _check_int(self.init_size, "init_size", who, self.n_components)
        _check_int(self.n_init, "n_init", who, 1)
        _check_int(self.max_iter, "max_iter", who, 1)
        if self.init not in ("k-means++", "random"):
            raise ValueError(f"{who}: init must be 'k-means++' or 'random', got {self.init!r}")
        if self.posterior_type not in ("soft", "hard"):
            raise ValueError(f"{who}: posterior_type must be 'soft' or 'hard', got {self.posterior_type!r}")
        if not (isinstance(self.tol, numbers.Real) and self.tol >= 0):
            raise ValueError(f"{who}: tol must be a number >= 0, got {self.tol!r}")
        if not (isinstance(self.kappa_max, numbers.Real) and self.kappa_max > 1):
            raise ValueError(f"{who}: kappa_max must be a number > 1, got {self.kappa_max!r}")
        if self.dtype not in (torch.float32, torch.float64):
            raise ValueError(f"{who}: dtype must be torch.float32 or torch.float64, got {self.dtype!r}")

    def _input(self, X, fitted=True):
        if fitted:
            check_is_fitted(self)
        dim = self.means_.shape[1] if fitted else None
        return _as_unit_rows(X, type(self).__name__, dim, self.normalize, self.device, self.dtype)

    def fit(self, X, y=None, *, distributed=False):
        """Fit the mixture to X. Returns self.

        X holds (n_samples, d) rows, either in memory (a NumPy array, a torch tensor, a nested list) or as a
        stream of chunks of rows, which EM reads once per iteration with memory bounded by one chunk plus the
        ``init_size`` sample: a ``numpy.memmap`` (``np.load(path, mmap_mode="r")``; read ``chunk_size`` rows
        at a time), a list or tuple of 2-D arrays or tensors, or a callable that returns a fresh iterable of
        2-D chunks at every call (a one-shot iterator or generator object is refused: EM needs many passes).
        A stream of at most ``init_size`` rows gives the in-memory fit, up to the order of float64 sums.

        ``distributed=True``: X is this process's shard of the data, and the E-step sums, the row count and
        the initialisation sample are combined over the torch.distributed process group, so that every rank
        ends with the same mixture, the one a single process fits to the shards concatenated in rank order
        (same order of float64 sums aside). Every rank must call it, with the same parameters and an int
        ``random_state`` (None is drawn on rank 0 and shared). Without a process group it is a plain fit.
        """
        self._validate_params()
        who = type(self).__name__
        read = _chunk_reader(X, self.chunk_size, who)
        distributed = bool(distributed) and dist.world_size() > 1
        if read is None and not distributed:
            z = self._input(X, fitted=False)
            if z.shape[0] < self.n_components:
                raise ValueError(f"{who}: n_samples = {z.shape[0]} must be >= n_components = {self.n_components}")
            rng = check_random_state(self.random_state)
            best = None
            for _ in range(self.n_init):
                generator = _torch_generator(rng, z.device)
                chunks = lambda: [z]  # noqa: E731
                model, values = self._init_mixture(z, chunks, z.shape[0], generator)
                result = self._em(model, values, z, chunks, z.shape[0], generator)
                if best is None or result[0] > best[0]:
                    best = result
        else:
            if read is None:
                z = self._input(X, fitted=False) if len(X) else None
                read = lambda: [] if z is None else [z]  # noqa: E731
            best = self._fit_stream(read, distributed)
        self.lower_bound_, self.mixture_, self.n_iter_, self.converged_ = best
        if not self.converged_:
            warnings.warn(f"{who}: EM did not converge in max_iter = {self.max_iter} iterations "
                          f"(tol = {self.tol:g}); increase max_iter or tol", ConvergenceWarning, stacklevel=2)
        with torch.no_grad():
            self.weights_ = self.mixture_.pi.cpu().numpy()
            self.means_ = self.mixture_.mu.cpu().numpy()
            self.concentrations_ = self.mixture_.kappa.cpu().numpy()
        return self

    def _fit_stream(self, read, distributed):
        """EM over the chunks that ``read()`` yields (this rank's shard when ``distributed``); returns
        (lower_bound, mixture, n_iter, converged) of the best initialisation.

        Pass 1 counts and checks the rows. The k-means++ centres (and the rows that re-seed empty components)
        come from a sample of at most ``init_size`` rows: all rows, in order, when there are no more (so that
        the fit is the in-memory one), else a uniform sample without replacement (the rows with the
        ``init_size`` smallest of independent uniform keys, kept by a running merge, chunk by chunk). Each EM
        iteration is then one pass of the fused ``vmfmm_em_statistics`` op per chunk, summed in float64.
        """
        who, k = type(self).__name__, self.n_components
        reduce = dist.all_reduce_sum if distributed else (lambda tensors: tensors)
        dim = None

        def chunks():
            first_row = 0
            for chunk in read():
                if not isinstance(chunk, (np.ndarray, torch.Tensor)):
                    chunk = np.asarray(chunk, dtype=np.float64)
                if chunk.ndim >= 1 and chunk.shape[0] == 0:
                    continue
                z = _as_unit_rows(chunk, who, dim, self.normalize, self.device, self.dtype, first_row)
                first_row += z.shape[0]
                yield z

        n_local, kept = 0, []
        for z in chunks():
            if dim is None:
                dim = z.shape[1]
            n_local += z.shape[0]
            if kept is not None:
                kept = kept + [z] if n_local <= self.init_size else None
        infos = dist.all_gather_objects((n_local, dim)) if distributed else [(n_local, dim)]
        dims = {d for _, d in infos if d is not None}
        if len(dims) > 1:
            raise ValueError(f"{who}: the ranks' shards have different numbers of features {sorted(dims)}")
        n = sum(c for c, _ in infos)
        if n < max(k, 1):
            raise ValueError(f"{who}: n_samples = {n} must be >= n_components = {k}")
        dim = dims.pop()
        rng = check_random_state(self.random_state)
        if distributed and not isinstance(self.random_state, numbers.Integral):
            rng = np.random.RandomState(dist.all_gather_objects(int(rng.randint(0, 2**31 - 1)))[0])
        factory = dict(device=self.device, dtype=self.dtype)
        if n <= self.init_size:
            local = torch.cat(kept) if kept else torch.empty((0, dim), **factory)
        else:
            local, keys = self._bottom_k_sample(chunks(), dim, int(rng.randint(0, 2**62, dtype=np.int64)) + dist.rank())
        sample = dist.all_gather_rows(local) if distributed else local
        if sample.shape[0] > self.init_size:  # merge the ranks' samples: the smallest keys overall
            keys = dist.all_gather_rows(keys)
            sample = sample[torch.argsort(keys)[:self.init_size].sort().values]
        best = None
        for _ in range(self.n_init):
            generator = _torch_generator(rng, sample.device)
            model, values = self._init_mixture(sample, chunks, n, generator, reduce)
            result = self._em(model, values, sample, chunks, n, generator, reduce)
            if best is None or result[0] > best[0]:
                best = result
        if distributed:  # the same already on every rank; made certain, whatever the device's arithmetic
            dist.broadcast_([best[1].mu_raw, best[1].kappa_raw, best[1].logits])
        return best

    def _bottom_k_sample(self, chunks, dim, seed):
        """The rows with the ``init_size`` smallest of independent uniform keys (a uniform sample without
        replacement), in stream order, and their keys (for merging the samples of several ranks)."""
        generator = torch.Generator().manual_seed(seed)
        keys = torch.empty(0, dtype=torch.float64)
        rows = torch.empty((0, dim), device=self.device, dtype=self.dtype)
        order = torch.empty(0, dtype=torch.int64)
        seen = 0
        for z in chunks:
            chunk_keys = torch.rand(z.shape[0], generator=generator, dtype=torch.float64)
            keys = torch.cat([keys, chunk_keys])
            rows = torch.cat([rows, z])
            order = torch.cat([order, torch.arange(seen, seen + z.shape[0])])
            seen += z.shape[0]
            if keys.numel() > self.init_size:
                keep = torch.argsort(keys)[:self.init_size]
                keys, rows, order = keys[keep], rows[keep.to(rows.device)], order[keep]
        position = torch.argsort(order)
        return rows[position.to(rows.device)], keys[position].to(rows.device)

    @torch.no_grad()
    def _em(self, model, values, sample, chunks, n, generator, reduce=None):
        """EM iterations from the M-step values (mu, kappa, pi) that initialise ``model``, over the chunks that
        ``chunks()`` yields (one pass of the fused statistics op per chunk and iteration; the sums of several
        chunks, or ranks with ``reduce``, combined in float64), n rows in all, ``sample`` the rows that
        re-seed empty components. Writes the last M-step to ``model``; returns (lower_bound, model, n_iter,
        converged). The parameters stay float64 M-step values between iterations: the same EM as
        ``VMFMixture.em_step`` (which reads them back from the module's unconstrained parameters), without
        that round trip."""
        hard = self.posterior_type == "hard"
        k, dim = model.n_components, model.dim
        lower_bound, converged, n_iter = -math.inf, False, 0
        for n_iter in range(1, self.max_iter + 1):
            previous = lower_bound
            # From the float64 M-step values, without the round trip through the module's parameters (and the
            # op wrapper's checks) at every iteration.
            mu, kappa, pi = values
            weighted, bias = ops.vmfmm_score_arguments(mu, kappa, torch.log(pi), sample.dtype)
            n_k = s_k = total = None
            for z in chunks():
                stats = ops.vmfmm_em_statistics_from_scores(z, weighted, bias, hard)
                if n_k is None:
                    n_k, s_k, total = stats
                    if reduce is not None:  # summed in float64, in place
                        n_k, s_k = n_k.to(torch.float64), s_k.to(torch.float64)
                else:
                    n_k = n_k.to(torch.float64) + stats[0]
                    s_k = s_k.to(torch.float64) + stats[1]
                    total = total + stats[2]
            if n_k is None:  # this rank's shard is empty
                n_k = torch.zeros(k, dtype=torch.float64, device=sample.device)
                s_k = torch.zeros(k, dim, dtype=torch.float64, device=sample.device)
                total = torch.zeros((), dtype=torch.float64, device=sample.device)
            if reduce is not None:
                reduce([n_k, s_k, total])
            values = model._m_step_values(sample, n_k, s_k, generator, n=n)[:3]
            lower_bound = float(total) / n
            if abs(lower_bound - previous) < self.tol:
                converged = True
                break
        model._set_values(*values)
        return lower_bound, model, n_iter, converged

    def _init_mixture(self, sample, chunks, n, generator, reduce=None):
        """The initial mixture: K centres drawn from ``sample`` (M, d) (k-means++, or K distinct random rows),
        the rows of every chunk that ``chunks()`` yields labelled by their closest centre, and one M-step from
        these hard labels (the sums over the chunks combined by ``reduce``, if given); n rows in all. In memory,
        ``sample`` is all the data and ``chunks()`` yields it as one chunk. Returns (model, its M-step values
        (mu, kappa, pi) in float64)."""
        k, d = self.n_components, sample.shape[1]
        model = VMFMixture(k, d, kappa_max=self.kappa_max, generator=generator, device=sample.device,
                           dtype=sample.dtype)
        if self.init == "k-means++":
            centres = _spherical_kmeans_pp(sample, k, generator)
        else:
            m = sample.shape[0]
            centres = sample[torch.randperm(m, generator=generator, device=generator.device)[:k].to(sample.device)]
        n_k = s_k = None
        for z in chunks():
            counts, sums = _closest_centre_sums(z, centres)
            n_k, s_k = (counts, sums) if n_k is None else (n_k + counts, s_k + sums)
        if n_k is None:  # this rank's shard is empty
            n_k = torch.zeros(k, dtype=torch.float64, device=sample.device)
            s_k = torch.zeros(k, d, dtype=torch.float64, device=sample.device)
        if reduce is not None:
            reduce([n_k, s_k])
        values = model._m_step_values(sample, n_k, s_k, generator, n=n)[:3]
        model._set_values(*values)
        return model, values

    def fit_predict(self, X, y=None):
        """fit(X), then the labels of X (n_samples,)."""
        return self.fit(X).predict(X)

    @torch.no_grad()
    def _log_resp(self, X):
        z = self._input(X)  # checks that the estimator is fitted
        return self.mixture_._e_step(z)

    def predict(self, X):
        """Most probable component of each row: (n_samples,) int64."""
        return self._log_resp(X)[0].argmax(dim=1).cpu().numpy()

    def predict_proba(self, X):
        """Responsibilities p(k | x): (n_samples, K)."""
        return self._log_resp(X)[0].exp().cpu().numpy()

    def score_samples(self, X):
        """log p(x) per row (density with respect to the surface measure of S^{d-1}): (n_samples,)."""
        return self._log_resp(X)[1].cpu().numpy()

    def score(self, X, y=None):
        """Mean log-likelihood of the rows of X, a float."""
        return float(self._log_resp(X)[1].to(torch.float64).mean())

    def sample(self, n_samples=1):
        """(X (n_samples, d), y (n_samples,)) drawn from the fitted mixture, seeded by random_state."""
        check_is_fitted(self)
        _check_int(n_samples, "n_samples", type(self).__name__, 1)
        generator = _torch_generator(check_random_state(self.random_state), self.mixture_.mu_raw.device)
        with torch.no_grad():
            z, labels = self.mixture_.sample(n_samples, generator=generator)
        return z.cpu().numpy(), labels.cpu().numpy()

    def _n_parameters(self):
        k, d = self.means_.shape
        return k * (d - 1) + k + (k - 1)

    def bic(self, X):
        """Bayesian information criterion -2 log L + p log N (lower is better), p = K(d-1) + K + (K-1)."""
        n = self._input(X).shape[0]
        return -2 * self.score(X) * n + self._n_parameters() * math.log(n)

    def aic(self, X):
        """Akaike information criterion -2 log L + 2 p (lower is better), p = K(d-1) + K + (K-1)."""
        n = self._input(X).shape[0]
        return -2 * self.score(X) * n + 2 * self._n_parameters()


class SphericalKMeans(BaseEstimator):
    """k-means with cosine similarity: assign each unit row to the centre of largest mu^T z, move each centre
    to the normalised mean of its rows. Rows are L2-normalised (a zero row raises ValueError).

    Args:
        n_clusters: K >= 1. n_init: k-means++ restarts; the lowest inertia is kept. max_iter, tol: stop when
        the inertia decreases by less than tol. random_state, device, dtype: as in VonMisesFisherMixture.

    Fitted attributes (NumPy): ``cluster_centers_`` (K, d) unit rows, ``labels_`` (n_samples,), ``inertia_``
    (sum of 1 - cosine to the assigned centre), ``n_iter_``. An empty cluster is moved to the row farthest
    from its centre.
    """

    def __init__(self, n_clusters=8, *, n_init=1, max_iter=100, tol=1e-6, random_state=None, device=None,
                 dtype=torch.float64):
        self.n_clusters = n_clusters
        self.n_init = n_init
        self.max_iter = max_iter
        self.tol = tol
        self.random_state = random_state
        self.device = device
        self.dtype = dtype

    def _input(self, X, fitted=True):
        if fitted:
            check_is_fitted(self)
        dim = self.cluster_centers_.shape[1] if fitted else None
        return _as_unit_rows(X, type(self).__name__, dim, True, self.device, self.dtype)

    @staticmethod
    def _lloyd(z, centres, max_iter, tol):
        k = centres.shape[0]
        inertia, n_iter = math.inf, 0
        for n_iter in range(1, max_iter + 1):
            cos, labels = (z @ centres.T).max(dim=1)
            previous, inertia = inertia, float((1 - cos).sum())
            sums = torch.zeros_like(centres).index_add_(0, labels, z)
            counts = torch.bincount(labels, minlength=k)
            for j in (counts == 0).nonzero().flatten().tolist():
                far = int(cos.argmin())
                sums[j], cos[far] = z[far], 1.0
            centres = F.normalize(sums, dim=1)
            if previous - inertia < tol:
                break
        cos, labels = (z @ centres.T).max(dim=1)
        return centres, labels, float((1 - cos).sum()), n_iter

    def fit(self, X, y=None):
        """Cluster X (n_samples, d). Returns self."""
        who = type(self).__name__
        _check_int(self.n_clusters, "n_clusters", who, 1)
        _check_int(self.n_init, "n_init", who, 1)
        _check_int(self.max_iter, "max_iter", who, 1)
        z = self._input(X, fitted=False)
        if z.shape[0] < self.n_clusters:
            raise ValueError(f"{who}: n_samples = {z.shape[0]} must be >= n_clusters = {self.n_clusters}")
        rng = check_random_state(self.random_state)
        best = None
        for _ in range(self.n_init):
            generator = _torch_generator(rng, z.device)
            result = self._lloyd(z, _spherical_kmeans_pp(z, self.n_clusters, generator), self.max_iter, self.tol)
            if best is None or result[2] < best[2]:
                best = result
        centres, labels, self.inertia_, self.n_iter_ = best
        self.cluster_centers_ = centres.cpu().numpy()
        self.labels_ = labels.cpu().numpy()
        return self

    def fit_predict(self, X, y=None):
        return self.fit(X).labels_

    def predict(self, X):
        """Index of the closest centre (largest cosine) of each row: (n_samples,) int64."""
        z = self._input(X)
        return (z @ torch.as_tensor(self.cluster_centers_, device=z.device, dtype=z.dtype).T).argmax(dim=1).cpu().numpy()
