"""``VMFMixture``: K von Mises-Fisher components on S^{d-1} as a ``torch.nn.Module``, with a differentiable
``log_prob`` / ``posterior`` (training by gradient) and the closed-form ``em_step`` (fitting by EM); see
``dhvc_ext.mixture`` for the formulas and the M-step's guards.
"""
import numbers
import warnings

import torch
import torch.nn.functional as F

from dhvc_ext import distributed as dist
from dhvc_ext import ops

__all__ = ["EMPTY_FRACTION", "ConcentrationCapWarning", "VMFMixture"]

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
