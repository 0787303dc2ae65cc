"""Slow, obviously-correct references for von Mises-Fisher sampling (shared/KERNELS.md section 2), for tests
and benchmarks only (the runtime package never imports ``dhvc_ext.testing``).

* ``vmf_sample_torch``: Wood's (1994) rejection sampler in vectorised plain PyTorch, in the stable form,
  with an unbiased (implicit-reparameterisation) concentration gradient; ``vmf_sample_svae_rsample``: the
  S-VAE estimator, whose concentration gradient is biased (the baseline a gradient test must reject).
* Exact laws to test samplers against, float64 numpy: ``vmf_w_cdf`` / ``vmf_t_cdf`` (the CDF of
  w = mu^T z or of t = 1 - w, by composite Gauss-Legendre quadrature in the angle to mu),
  ``vmf_dw_dkappa`` (the implicit-reparameterisation derivative of a sample), and by mpmath
  ``vmf_mean_resultant_length`` (A_d = E[w]), ``vmf_one_minus_mean_resultant_length`` and
  ``vmf_mean_resultant_derivative`` (A_d').
"""
import math
from functools import lru_cache

import numpy as np
import torch

__all__ = [
    "vmf_sample_torch",
    "vmf_sample_svae_rsample",
    "vmf_w_cdf",
    "vmf_t_cdf",
    "vmf_dw_dkappa",
    "vmf_mean_resultant_length",
    "vmf_one_minus_mean_resultant_length",
    "vmf_mean_resultant_derivative",
]

# ----------------------------------------------------------------------------------------------------
# von Mises-Fisher sampling
# ----------------------------------------------------------------------------------------------------
# Notation of shared/KERNELS.md section 2: z ~ vMF(mu, kappa) on S^{d-1}, w = mu^T z, t = 1 - w,
# theta = arccos(w) the angle to mu, A_d(kappa) = I_{d/2}(kappa) / I_{d/2-1}(kappa) = E[w].
#
# The exact distribution of w is computed in theta, where it has the density
#     f(theta) proportional to exp(-2 kappa sin^2(theta/2)) sin^{d-2}(theta),   theta in [0, pi],
# (q(w) dw = exp(kappa w) (1 - w^2)^{(d-3)/2} dw with w = cos(theta), divided by exp(kappa)). Unlike q(w),
# f is smooth at both ends for every d >= 2 (no (1 - w^2)^{-1/2} singularity at d = 2, no square-root
# cusp at d = 4), theta keeps full relative precision where w rounds to 1 (kappa = 1e8: theta ~ 1e-4), and
# 2 sin^2(theta/2) is t itself, so no 1 - w is ever formed.

# Gauss-Legendre nodes per panel. Panels near the mode are a quarter of the density's width (see
# _AngleQuadrature), on which 20 nodes integrate the smooth, near-Gaussian density to rounding.
VMF_GL_NODES = 20
# Panels around the mode: a quarter of sigma = (-g''(theta*))^{-1/2} wide, out to 40 sigma on each side
# (where the log-density is concave, what lies beyond is below exp(-800) of the peak), on top of 64
# uniform panels over [0, pi] that cover the rest (the whole range at moderate kappa and d).
VMF_MODE_PANELS_PER_SIGMA = 4
VMF_MODE_SIGMAS = 40
VMF_UNIFORM_PANELS = 64


def _vmf_dimension(d):
    if isinstance(d, bool) or int(d) != d or d < 2:
        raise ValueError(f"d must be an integer >= 2, got {d!r}")
    return int(d)


def _vmf_batch(loc, concentration):
    """Flatten (loc, concentration) to (mu (N, d), kappa (N,)) of loc's dtype and device, and the batch
    shape: concentration broadcasts against loc.shape[:-1]; a trailing size-1 dimension (..., 1) is
    dropped first. Differentiable (expand and reshape), so broadcast gradients are summed."""
    if not isinstance(loc, torch.Tensor) or loc.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"loc must be a float32 or float64 tensor, got {getattr(loc, 'dtype', type(loc))}")
    if loc.dim() < 1 or loc.shape[-1] < 2:
        raise ValueError(f"loc must have a last dimension d >= 2, got shape {tuple(loc.shape)}")
    if isinstance(concentration, torch.Tensor):
        kappa = concentration.to(device=loc.device, dtype=loc.dtype)
    else:
        kappa = torch.tensor(float(concentration), device=loc.device, dtype=loc.dtype)
    if kappa.dim() == loc.dim() and kappa.shape[-1] == 1:
        kappa = kappa.squeeze(-1)
    try:
        batch = torch.broadcast_shapes(loc.shape[:-1], kappa.shape)
    except RuntimeError:
        raise ValueError(f"concentration of shape {tuple(kappa.shape)} does not broadcast with loc's batch "
                         f"shape {tuple(loc.shape[:-1])}") from None
    d = loc.shape[-1]
    return loc.expand(*batch, d).reshape(-1, d).contiguous(), kappa.expand(batch).reshape(-1), batch


def _wood_b(kappa, m):
    """Wood's envelope parameter b = m / (sqrt(4 kappa^2 + m^2) + 2 kappa), m = d - 1, in the form that
    does not cancel (the textbook (-2 kappa + sqrt(4 kappa^2 + m^2)) / m is 0 in float32 from kappa ~ 1e4)."""
    return m / (torch.hypot(2 * kappa, torch.full_like(kappa, m)) + 2 * kappa)


def _wood_accepted_beta(kappa, d, generator=None):
    """Wood's rejection loop (KERNELS.md 2.1) for every row of kappa (N,), without gradients.

    Proposal eps ~ Beta((d-1)/2, (d-1)/2) as G1 / (G1 + G2) with G1, G2 ~ Gamma((d-1)/2), so that both eps
    and 1 - eps = G2 / (G1 + G2) are exact where eps is near 0 or 1. With m = d - 1 a proposal is accepted
    when
        kappa (w - x0) + m log((1 + b) / (2 (1 - (1 - b) eps))) >= log u,   u ~ U(0, 1),
        w - x0 = 2 b (1 - 2 eps) / ((1 + b) (1 - (1 - b) eps)),  1 - (1 - b) eps = (1 - eps) + b eps,
    i.e. Wood's test kappa w + m log(1 - x0 w) - c >= log u with the constant c subtracted analytically
    (no kappa x0 term to cancel at large kappa). Only the rejected rows draw again.
    Returns (eps, 1 - eps) of the accepted proposals, shape (N,), kappa's dtype. Rows with kappa = +inf
    get eps = 0 (so t = 0: the sample is mu); rows with a negative or NaN kappa get NaN.
    """
    m = d - 1
    with torch.no_grad():
        kappa = kappa.detach()
        b = _wood_b(kappa, m)
        eps = torch.full_like(kappa, math.nan)
        one_minus_eps = torch.full_like(kappa, math.nan)
        eps[torch.isposinf(kappa)] = 0
        one_minus_eps[torch.isposinf(kappa)] = 1
        pending = torch.nonzero(torch.isfinite(kappa) & (kappa >= 0)).flatten()
        while pending.numel() > 0:
            k, bb = kappa[pending], b[pending]
            alpha = torch.full_like(k, m / 2)
            g1 = torch._standard_gamma(alpha, generator=generator)
            g2 = torch._standard_gamma(alpha, generator=generator)
            e, oe = g1 / (g1 + g2), g2 / (g1 + g2)
            denom = oe + bb * e
            w_minus_x0 = 2 * bb * (oe - e) / ((1 + bb) * denom)
            log_u = torch.log(torch.rand(k.shape, dtype=k.dtype, device=k.device, generator=generator))
            accept = k * w_minus_x0 + m * torch.log((1 + bb) / (2 * denom)) >= log_u
            eps[pending[accept]] = e[accept]
            one_minus_eps[pending[accept]] = oe[accept]
            pending = pending[~accept]
    return eps, one_minus_eps


def _uniform_tangent(n, d, like, generator=None):
    """n directions uniform on S^{d-2}: d - 1 standard normals, normalised. Shape (n, d - 1).

    Rows whose normals are all exactly 0 are drawn again: torch's float32 randn returns an exact 0 about
    once in 1e6 draws (measured), which at d = 2 (one normal) would be a NaN direction."""
    v = torch.randn(n, d - 1, dtype=like.dtype, device=like.device, generator=generator)
    norm = torch.linalg.vector_norm(v, dim=-1)
    zero = torch.nonzero(norm == 0).flatten()
    while zero.numel() > 0:
        v[zero] = torch.randn(zero.numel(), d - 1, dtype=like.dtype, device=like.device, generator=generator)
        norm[zero] = torch.linalg.vector_norm(v[zero], dim=-1)
        zero = zero[norm[zero] == 0]
    return v / norm[:, None]


def _householder_to(x, mu):
    """z = U x, U orthogonal with U e1 = mu (mu unit), by a Householder reflection with the sign trick:
    mu_1 >= 0: u = (e1 + mu) / ||e1 + mu||, z = -(x - 2 (u^T x) u); else u = (e1 - mu) / ||e1 - mu||,
    z = x - 2 (u^T x) u. Both map e1 to mu and ||u||'s denominator is >= sqrt(2), so mu = +-e1 is safe
    (the plain (e1 - mu) / ||e1 - mu|| is 0/0 at mu = e1). x, mu: (N, d); differentiable in both."""
    s = torch.where(mu[:, :1] >= 0, 1.0, -1.0).to(mu.dtype)
    e1 = torch.zeros_like(mu[:1])
    e1[0, 0] = 1
    u = e1 + s * mu
    u = u / torch.linalg.vector_norm(u, dim=-1, keepdim=True)
    return -s * (x - 2 * (u * x).sum(-1, keepdim=True) * u)


def _implicit_dt_dkappa(t, kappa, d):
    """d(1 - w)/dkappa at each row's (t, kappa) by implicit reparameterisation (vmf_dw_dkappa), in float64
    on the CPU, one quadrature set-up per distinct kappa; returned in t's dtype and device."""
    tt = t.detach().double().cpu().numpy()
    kk = kappa.detach().double().cpu().numpy()
    out = np.zeros_like(tt)
    for k in np.unique(kk[np.isfinite(kk) & (kk >= 0)]):
        rows = kk == k
        out[rows] = -vmf_dw_dkappa(tt[rows], float(k), d)
    return torch.from_numpy(out).to(dtype=t.dtype, device=t.device)


def vmf_sample_torch(loc, concentration, generator=None):
    """z ~ vMF(loc, concentration): Wood's (1994) rejection sampler, vectorised in plain PyTorch.

    Args:
        loc: (..., d) float32 or float64 tensor of unit vectors, d >= 2.
        concentration: tensor or number >= 0, broadcastable to loc.shape[:-1]; a trailing size-1
            dimension, (..., 1), is dropped first.
        generator: torch.Generator of loc's device, or None for torch's default generator.
    Returns:
        (batch..., d) tensor in loc's dtype and on its device, batch = broadcast of loc.shape[:-1] and
        concentration's shape.

    The stable form of KERNELS.md 2.1, computed in loc's dtype: b = (d-1) / (sqrt(4 kappa^2 + (d-1)^2) +
    2 kappa), the acceptance test written with w - x0 and 1 - (1 - b) eps in closed form, the accepted
    t = 1 - w = 2 b eps / ((1 - eps) + b eps) never formed from w (in float32 1 - w would round to 0 from
    kappa ~ 1e7) and 2 - t = 2 (1 - eps) / ((1 - eps) + b eps) likewise, the tangent sqrt(t (2 - t)) v
    with v from d - 1 normals, and a Householder rotation with the sign trick. The loop draws again for the
    rejected rows only. It uses Wood's proposal at every d (also d = 3, where the op uses the inverse CDF),
    so it is an independent check of the op's d = 3 path. Random draws, in order: Gamma pairs and uniforms
    per round of the loop, then the normals (from torch's generator, so not the op's samples for a seed).
    Edges: kappa = 0 gives the uniform distribution (every proposal is accepted), +inf gives mu, a
    negative or NaN concentration gives NaN rows.

    Gradients: to loc through the rotation (autograd); to concentration by implicit reparameterisation,
    dt/dkappa = -vmf_dw_dkappa(t, kappa, d) (unbiased; Figurnov et al. 2018), attached as
    t + dt/dkappa * (kappa - kappa.detach()) so that autograd carries it. That gradient is computed on the
    CPU in float64 by quadrature, once per distinct concentration value: slow when many rows have
    different concentrations and need gradients.
    """
    mu, kappa, batch = _vmf_batch(loc, concentration)
    n, d = mu.shape
    eps, one_minus_eps = _wood_accepted_beta(kappa, d, generator)
    b = _wood_b(kappa.detach(), d - 1)
    denom = one_minus_eps + b * eps
    # t = 1 - w and 2 - t = 1 + w, each in closed form: t (2 - t) stays >= 0 and exact at both poles
    # (2 - t formed from a rounded t can be negative when eps is near 1: NaN at d = 2 in float32).
    t, two_minus_t = 2 * b * eps / denom, 2 * one_minus_eps / denom
    if kappa.requires_grad:
        delta = _implicit_dt_dkappa(t, kappa, d) * (kappa - kappa.detach())
        t, two_minus_t = t + delta, two_minus_t - delta
    v = _uniform_tangent(n, d, mu, generator)
    x = torch.cat([(1 - t)[:, None], torch.sqrt(t * two_minus_t)[:, None] * v], dim=-1)
    return _householder_to(x, mu).reshape(*batch, d)


def vmf_sample_svae_rsample(loc, concentration, generator=None):
    """The S-VAE estimator (Davidson et al. 2018): Wood's sampler differentiated with its Beta draw held
    fixed. BIASED in concentration; a baseline that the gradient tests must be able to reject.

    Same arguments, result and random draws as ``vmf_sample_torch`` (same seed, same samples up to
    rounding). The accepted eps (and the tangent v) come from the non-differentiable rejection loop; the
    sample is then
        w = (1 - (1 + b) eps) / (1 - (1 - b) eps),  b = (d-1) / (sqrt(4 kappa^2 + (d-1)^2) + 2 kappa),
        z = U (w, sqrt(1 - w^2) v),
    differentiable in kappa through b only. This drops the correction term of rejection-sampling
    reparameterisation: at d = 5, kappa = 2 the mean of d(mu^T z)/dkappa is 0.12767 instead of
    A_d'(2) = 0.14739 (KERNELS.md 2.2). b is the stable form here, so the bias is that of the estimator
    alone (S-VAE's own code also blends b towards (d-1)/(4 kappa) above kappa = 10, another bias).
    """
    mu, kappa, batch = _vmf_batch(loc, concentration)
    n, d = mu.shape
    eps, _ = _wood_accepted_beta(kappa, d, generator)
    b = _wood_b(kappa, d - 1)
    w = (1 - (1 + b) * eps) / (1 - (1 - b) * eps)
    v = _uniform_tangent(n, d, mu, generator)
    x = torch.cat([w[:, None], torch.sqrt(torch.clamp(1 - w * w, min=0))[:, None] * v], dim=-1)
    return _householder_to(x, mu).reshape(*batch, d)


class _AngleQuadrature:
    """Composite Gauss-Legendre quadrature of f(theta) = exp(g(theta) - g(theta*)) on [0, pi], with
        g(theta) = -2 kappa sin^2(theta/2) + (d - 2) log sin(theta)
    (the density of the angle to mu up to a constant), and of (E[t] - t(theta)) f(theta), the integrand of
    the implicit gradient, t(theta) = 2 sin^2(theta/2) = 1 - cos(theta).

    Mode: g'(theta) = 0 gives cos(theta*) = 2 kappa / (m + sqrt(m^2 + 4 kappa^2)) and sin^2(theta*) =
    2 m / (m + sqrt(m^2 + 4 kappa^2)), m = d - 2 (theta* = 0 at d = 2); curvature -g''(theta*) =
    kappa cos(theta*) + m / sin^2(theta*), sigma = its -1/2 power. Panel boundaries: 64 uniform panels on
    [0, pi] merged with panels sigma / 4 wide over theta* +- 40 sigma.
    Cumulative panel sums from below and from above let every integral over [0, theta] or [theta, pi] be a
    sum of positive terms plus one partial panel, so tail probabilities keep their relative accuracy.
    """

    def __init__(self, kappa, d):
        if not (math.isfinite(kappa) and kappa >= 0):
            raise ValueError(f"kappa must be finite and >= 0, got {kappa!r}")
        self.kappa, self.d = float(kappa), _vmf_dimension(d)
        m = self.d - 2
        root = math.hypot(m, 2 * self.kappa)
        if m == 0:
            self.theta_star, curvature = 0.0, self.kappa
        else:
            self.theta_star = math.asin(math.sqrt(2 * m / (m + root)))
            curvature = 2 * self.kappa ** 2 / (m + root) + (m + root) / 2
        self.g_star = 0.0
        self.g_star = float(self.log_f(np.array([self.theta_star]))[0]) if m else 0.0
        edges = [np.linspace(0.0, math.pi, VMF_UNIFORM_PANELS + 1)]
        if curvature > 0:
            sigma = curvature ** -0.5
            steps = np.arange(-VMF_MODE_SIGMAS * VMF_MODE_PANELS_PER_SIGMA,
                              VMF_MODE_SIGMAS * VMF_MODE_PANELS_PER_SIGMA + 1) / VMF_MODE_PANELS_PER_SIGMA
            edges.append(np.clip(self.theta_star + sigma * steps, 0.0, math.pi))
        self.edges = np.unique(np.concatenate(edges))
        lo, hi = self.edges[:-1], self.edges[1:]
        f0 = self._panel_sums(lo, hi, lambda th: self.f(th))
        ft = self._panel_sums(lo, hi, lambda th: self.t(th) * self.f(th))
        self.norm = f0.sum()
        # E[t] = 1 - A_d(kappa), from the same quadrature, so that the gradient integrand integrates to 0.
        self.mean_t = ft.sum() / self.norm
        fg = self._panel_sums(lo, hi, lambda th: self.g_integrand(th))
        zero = np.zeros(1)
        self.below = {"f": np.concatenate([zero, np.cumsum(f0)]), "g": np.concatenate([zero, np.cumsum(fg)])}
        self.above = {"f": np.concatenate([np.cumsum(f0[::-1])[::-1], zero]),
                      "g": np.concatenate([np.cumsum(fg[::-1])[::-1], zero])}

    @staticmethod
    def t(theta):
        return 2 * np.sin(theta / 2) ** 2

    def log_f(self, theta):
        out = -self.kappa * self.t(theta)
        if self.d > 2:
            with np.errstate(divide="ignore"):
                out = out + (self.d - 2) * np.log(np.sin(theta))
        return out - self.g_star

    def f(self, theta):
        return np.exp(self.log_f(theta))

    def g_integrand(self, theta):
        return (self.mean_t - self.t(theta)) * self.f(theta)

    @staticmethod
    def _panel_sums(lo, hi, fn):
        """sum over the Gauss-Legendre nodes of each [lo_i, hi_i] of fn: the integrals, shape lo.shape."""
        x, w = np.polynomial.legendre.leggauss(VMF_GL_NODES)
        half = (hi - lo)[..., None] / 2
        nodes = (lo + hi)[..., None] / 2 + half * x
        return (fn(nodes) * w * half).sum(-1)

    def integral(self, theta, which, side):
        """int_0^theta (side "below") or int_theta^pi (side "above") of f (which "f") or of the gradient
        integrand (which "g"), elementwise over the array theta."""
        theta = np.clip(np.asarray(theta, dtype=np.float64), 0.0, math.pi)
        j = np.clip(np.searchsorted(self.edges, theta, side="right") - 1, 0, len(self.edges) - 2)
        fn = self.f if which == "f" else self.g_integrand
        if side == "below":
            return self.below[which][j] + self._panel_sums(self.edges[j], theta, fn)
        return self.above[which][j + 1] + self._panel_sums(theta, self.edges[j + 1], fn)


@lru_cache(maxsize=256)
def _angle_quadrature(kappa, d):
    return _AngleQuadrature(kappa, d)


def _theta_of_t(t):
    """The angle to mu from t = 1 - w, theta = 2 arcsin(sqrt(t / 2)): exact for small t, unlike arccos."""
    return 2 * np.arcsin(np.sqrt(np.clip(np.asarray(t, dtype=np.float64), 0.0, 2.0) / 2))


def vmf_w_cdf(w, kappa, d):
    """P(mu^T z <= w) for z ~ vMF(mu, kappa) on S^{d-1}: the CDF of q(w) ~ exp(kappa w) (1-w^2)^{(d-3)/2}.

    Args:
        w: array-like (or tensor) of points in [-1, 1]; values outside are clipped.
        kappa: float >= 0 (finite). d: int >= 2.
    Returns:
        float64 numpy array of w's shape.
    Integrates the angle density (see _AngleQuadrature) over [arccos(w), pi], from the side that keeps the
    lower tail's relative accuracy. Closed form at d = 3 (what the tests check it against):
        P(w' <= w) = (exp(kappa (w - 1)) - exp(-2 kappa)) / (1 - exp(-2 kappa))   (kappa = 0: (w + 1) / 2).
    Measured: within 4.5e-16 absolute (1.4e-15 relative) of that closed form for kappa in [0, 1e8]; within
    3e-15 of scipy.integrate.quad for d <= 10 and 6e-13 at d = 4096, kappa = 1e8 (QUADPACK's own error
    there); the mean of 1 - w it implies matches 1 - A_d(kappa) from mpmath to 1.2e-15 relative over
    d in {2, ..., 4096} x kappa in {0, ..., 1e8} (python_tests/test_vmf_sample.py checks these).
    For kappa so large that w rounds to 1, pass t = 1 - w to vmf_t_cdf instead.
    """
    quad = _angle_quadrature(float(kappa), _vmf_dimension(d))
    w = np.asarray(w.detach().cpu() if isinstance(w, torch.Tensor) else w, dtype=np.float64)
    theta = np.arccos(np.clip(w, -1.0, 1.0))
    return quad.integral(theta, "f", "above") / quad.norm


def vmf_t_cdf(t, kappa, d):
    """P(1 - mu^T z <= t) for z ~ vMF(mu, kappa): the CDF of t = 1 - w, accurate for t << 1 (at any
    kappa up to 1e8 and d up to 4096), where w itself rounds to 1. t in [0, 2] (clipped); float64 numpy
    array of t's shape. Closed form at d = 3: (1 - exp(-kappa t)) / (1 - exp(-2 kappa)) (kappa = 0: t / 2)."""
    quad = _angle_quadrature(float(kappa), _vmf_dimension(d))
    t = np.asarray(t.detach().cpu() if isinstance(t, torch.Tensor) else t, dtype=np.float64)
    return quad.integral(_theta_of_t(t), "f", "below") / quad.norm


def vmf_dw_dkappa(one_minus_w, kappa, d):
    """The implicit-reparameterisation derivative dw/dkappa of a sample w = mu^T z at fixed CDF value:
        dw/dkappa = -(dF(w; kappa)/dkappa) / q(w; kappa)
                  = sin(theta_w) int_0^{theta_w} (cos(theta) - A_d(kappa)) f(theta) dtheta / f(theta_w)
    (f the angle density; Figurnov et al. 2018, KERNELS.md 2.2), >= 0.

    Args:
        one_minus_w: array-like of t = 1 - w in [0, 2] (t, not w: exact for kappa large).
        kappa: float >= 0. d: int >= 2.
    Returns:
        float64 numpy array of t's shape; d(1 - w)/dkappa is its negative. NaN where the density at t is
        below exp(-745) of its peak (about 37 standard deviations out), where the integral underflows.
    cos(theta) - A = E[t] - t(theta). Where t_w < E[t] the integral is taken over [0, theta_w], else as
    minus the integral over [theta_w, pi]: both integrands are then of one sign (no cancellation). E[t]
    is computed by the same quadrature (it matches 1 - A_d(kappa) to about 1e-15). Closed form at d = 3,
    from the inverse CDF t = -log(u + (1 - u) e^{-2 kappa}) / kappa at fixed u.
    """
    quad = _angle_quadrature(float(kappa), _vmf_dimension(d))
    t = np.asarray(one_minus_w.detach().cpu() if isinstance(one_minus_w, torch.Tensor) else one_minus_w,
                   dtype=np.float64)
    theta = _theta_of_t(t)
    below = t < quad.mean_t
    integral = np.where(below, quad.integral(theta, "g", "below"), -quad.integral(theta, "g", "above"))
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.exp(np.log(integral) - quad.log_f(theta))
    # t -> 0: the integral vanishes like theta^{d-1}, f(theta_w) like theta^{d-2}: dw/dkappa -> 0. Where
    # the integral underflows (f below exp(-745) of its peak over the whole range: some 37 standard
    # deviations from the mode, never sampled) the value is not computed: NaN, not a wrong 0.
    out = np.where(integral > 0, np.sqrt(t * (2 - t)) * ratio, np.nan)
    return np.where(t > 0, out, 0.0)


def vmf_mean_resultant_length(d, kappa, dps=40):
    """A_d(kappa) = I_{d/2}(kappa) / I_{d/2-1}(kappa) = E[mu^T z], by mpmath at ``dps`` digits (a float;
    0 at kappa = 0). Where A_d is near 1 (kappa >> d), 1 - A_d formed from this float loses digits: use
    vmf_one_minus_mean_resultant_length there."""
    return float(_mp_mean_resultant(_vmf_dimension(d), float(kappa), dps))


def vmf_one_minus_mean_resultant_length(d, kappa, dps=40):
    """1 - A_d(kappa) = E[1 - mu^T z], by mpmath (exact where A_d rounds to 1: kappa = 1e8 gives about
    (d - 1) / (2 kappa))."""
    import mpmath

    with mpmath.workdps(dps):
        return float(1 - _mp_mean_resultant(_vmf_dimension(d), float(kappa), dps))


def vmf_mean_resultant_derivative(d, kappa, dps=40):
    """A_d'(kappa) = 1 - A_d^2 - (d - 1) A_d / kappa (KERNELS.md 2), by mpmath at ``dps`` digits, so the
    cancellation at large kappa (A_d' ~ (d - 1) / (2 kappa^2)) costs nothing; 1/d at kappa = 0. A float."""
    import mpmath

    d = _vmf_dimension(d)
    if kappa == 0:
        return 1.0 / d
    with mpmath.workdps(dps):
        a = _mp_mean_resultant(d, float(kappa), dps)
        return float(1 - a * a - (d - 1) * a / mpmath.mpf(kappa))


def _mp_mean_resultant(d, kappa, dps):
    import mpmath

    with mpmath.workdps(dps):
        if kappa == 0:
            return mpmath.mpf(0)
        k = mpmath.mpf(kappa)
        return mpmath.besseli(mpmath.mpf(d) / 2, k) / mpmath.besseli(mpmath.mpf(d) / 2 - 1, k)
