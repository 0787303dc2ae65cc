"""Slow, obviously-correct reference implementations, for tests and benchmarks only.

The package never imports this module. It holds two kinds of reference:

* ``*_scipy``: what a user gets from SciPy today (numpy in, numpy out). Accurate where finite in
  float64, but ``log(ive(nu, x)) + x`` underflows to ``-inf`` for large orders (nu >= 49.5 at x = 1e-8,
  nu = 511 at x <= 100, nu = 5000 at x <= 1e4: 48% of the benchmark inputs) and the ratio
  ``ive(nu+1, x) / ive(nu, x)`` becomes ``0/0 = NaN`` there, or 0 where only the numerator underflows.
* ``*_torch``: plain, vectorised, branch-free PyTorch of the kind a user would write without our
  kernels: every region is computed for every element and the answer is picked with ``torch.where``;
  loops run a fixed number of times. Any device, float32 or float64, computed in the input dtype.
  About 2e-14 relative accuracy in float64 (|error| / max(1, |log I|)) over nu in [0, 1000],
  x in [1e-6, 1e5]; see ``log_bessel_iv_torch``.

Mathematics: DLMF 10.25.2 (series), 10.41.3 and 10.41.10 (Olver's uniform expansion), Gautschi & Slavik
(1978) (Perron's continued fraction for the ratio).

von Mises-Fisher sampling (shared/KERNELS.md section 2):

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
from fractions import Fraction
from functools import lru_cache

import numpy as np
import scipy.special
import torch

__all__ = [
    "benchmark_inputs",
    "log_bessel_iv_scipy",
    "bessel_iv_ratio_scipy",
    "debye_polynomials",
    "log_bessel_iv_torch",
    "bessel_iv_ratio_torch",
    "vmf_log_normalizer_torch",
    "vmf_sample_torch",
    "vmf_sample_svae_rsample",
    "vmf_w_cdf",
    "vmf_t_cdf",
    "vmf_dw_dkappa",
    "vmf_mean_resultant_length",
    "vmf_one_minus_mean_resultant_length",
    "vmf_mean_resultant_derivative",
]

# Orders below NU0 are shifted up to NU0 <= nu + N < NU0 + 1 before Olver's expansion is used: the
# expansion fails badly for nu <= 1; with DEBYE_TERMS = 8 its error (O(nu^-9)) is 7e-13 at nu = 20 and
# 2e-14 at nu = 25 (measured against mpmath).
NU0 = 25
# Debye polynomials u_0..u_DEBYE_TERMS in the uniform expansion.
DEBYE_TERMS = 8
# Terms of the power series; only used where x^2/4 < nu + 1, where term k is at most 1/k!.
SERIES_TERMS = 24
# Depth of the bottom-up Perron continued fraction (<= 47 terms reach 7.7e-16 over the whole domain).
PERRON_DEPTH = 120


def benchmark_inputs(n, seed=0):
    """The benchmark distribution: nu uniform in [0, 500], x log-uniform in [1e-3, 1e4].

    Returns two float64 numpy arrays of shape (n,), reproducible from ``seed``. Shared by the benchmarks
    and ``python -m dhvc_ext.bessel_report`` so that both time the same inputs.
    """
    rng = np.random.default_rng(seed)
    nu = rng.uniform(0.0, 500.0, n)
    x = np.exp(rng.uniform(math.log(1e-3), math.log(1e4), n))
    return nu, x


# ----------------------------------------------------------------------------------------------------
# SciPy: the naive way
# ----------------------------------------------------------------------------------------------------
def _as_arrays(*args):
    """np.asarray for array-likes; python numbers stay python numbers, so that (as in plain SciPy use)
    a float32 array with a python-float order is computed in float32 (NEP 50)."""
    return tuple(a if np.isscalar(a) else np.asarray(a) for a in args)


def log_bessel_iv_scipy(nu, x):
    """log I_nu(x) as ``np.log(scipy.special.ive(nu, x)) + x`` (the naive SciPy way).

    Args:
        nu: array-like of orders, broadcastable against ``x``.
        x: array-like of arguments.
    Returns:
        numpy array of the broadcast shape, float64, or float32 where SciPy picks its float32 loop
        (float32 arrays with float32 or python-number partners), which underflows far sooner.
    Known limits: ``-inf`` wherever ``ive`` underflows, which happens for large orders at moderate x
    (nu = 511 at x <= 100, nu = 5000 at x <= 1e4, nu >= 49.5 at x = 1e-8). Where finite, within about
    2e-13 of mpmath in float64 (|delta| / max(1, |log I|)); in float32 the log of a subnormal ``ive`` is
    off by up to 0.5 nats.
    """
    nu, x = _as_arrays(nu, x)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.log(scipy.special.ive(nu, x)) + x


def bessel_iv_ratio_scipy(nu, x):
    """R_nu(x) = I_{nu+1}(x) / I_nu(x) as ``ive(nu + 1, x) / ive(nu, x)``.

    Args:
        nu, x: array-likes, broadcastable.
    Returns:
        numpy array of the broadcast shape.
    Known limits: ``0/0 = NaN`` once both ``ive`` underflow (nu >= 49.5 at x = 1e-8, nu >= 511 at
    x <= 100), 0 where only ``ive(nu + 1, x)`` does (0.1% of the benchmark inputs in float64, 0.7% in
    float32); elsewhere within about 2e-13 relative of mpmath (AMOS's accuracy at large orders).
    """
    nu, x = _as_arrays(nu, x)
    with np.errstate(divide="ignore", invalid="ignore"):
        return scipy.special.ive(nu + 1, x) / scipy.special.ive(nu, x)


# ----------------------------------------------------------------------------------------------------
# Plain PyTorch
# ----------------------------------------------------------------------------------------------------
@lru_cache(maxsize=None)
def debye_polynomials(kmax=DEBYE_TERMS):
    """Exact Debye polynomials u_0..u_kmax of Olver's expansion, as tuples of Fractions.

    ``debye_polynomials(k)[j][n]`` is the coefficient of p^n in u_j(p). From DLMF 10.41.10:
        u_0(p) = 1,
        u_{k+1}(p) = 1/2 p^2 (1 - p^2) u_k'(p) + 1/8 int_0^p (1 - 5 t^2) u_k(t) dt.
    """
    polys = [(Fraction(1),)]
    for _ in range(kmax):
        u = polys[-1]
        nxt = [Fraction(0)] * (len(u) + 3)
        for n, c in enumerate(u):
            if n > 0:  # 1/2 (p^2 - p^4) * n c p^(n-1)
                nxt[n + 1] += Fraction(n, 2) * c
                nxt[n + 3] -= Fraction(n, 2) * c
            nxt[n + 1] += c / (8 * (n + 1))  # 1/8 int_0^p t^n dt
            nxt[n + 3] -= 5 * c / (8 * (n + 3))  # -5/8 int_0^p t^(n+2) dt
        polys.append(tuple(nxt))
    return tuple(polys)


@lru_cache(maxsize=None)
def _debye_float_coefficients(kmax):
    """Coefficients of u_k as floats, highest power first (Horner order), each rounded once."""
    return tuple(tuple(float(c) for c in reversed(u)) for u in debye_polynomials(kmax))


def _as_float_tensors(*args):
    """Turn tensors / python numbers into broadcast floating tensors on one device, common dtype.

    Integer or boolean tensors are promoted to the default dtype; python numbers take the dtype of the
    tensor arguments.
    """
    tensors = [a for a in args if isinstance(a, torch.Tensor)]
    device = tensors[0].device if tensors else torch.device("cpu")
    if not tensors:
        dtype = torch.get_default_dtype()
    elif len(args) == 1:
        dtype = args[0].dtype
    else:
        dtype = torch.result_type(*args)
    if not dtype.is_floating_point:
        dtype = torch.get_default_dtype()
    if dtype not in (torch.float32, torch.float64):
        raise TypeError(f"expected float32 or float64 inputs, got {dtype}")
    out = [torch.as_tensor(a, dtype=dtype, device=device) for a in args]
    return torch.broadcast_tensors(*out)


def _perron_ratio(nu, x, depth=PERRON_DEPTH):
    """I_{nu+1}(x) / I_nu(x) by Perron's continued fraction, bottom-up over a fixed depth.

    With v = nu + 1, a_k = (2v + 2k - 1) x and b_k = 2(v + x) + k (b_0 = x + 2v):
        R = x / (b_0 - a_1 / (b_1 - a_2 / (b_2 - ...))).
    """
    v = nu + 1
    two_vx = 2 * (v + x)
    t = two_vx + depth
    for k in range(depth, 0, -1):
        b_prev = x + 2 * v if k == 1 else two_vx + (k - 1)
        t = b_prev - (2 * v + (2 * k - 1)) * x / t
    return x / t


def bessel_iv_ratio_torch(nu, x):
    """R_nu(x) = I_{nu+1}(x) / I_nu(x) in plain PyTorch (Perron's continued fraction, fixed depth 120).

    Args:
        nu: tensor or number, orders >= 0.
        x: tensor or number, arguments >= 0; broadcast against ``nu``.
    Returns:
        tensor of the broadcast shape, in the inputs' floating dtype, on their device.
    Edge cases: R_nu(0) = 0, R_nu(inf) = 1, NaN for nu < 0, x < 0 or NaN input.
    Known limits: the fixed depth (120) is about 2.5 times what the worst case over nu in [0, 5000],
    x in [1e-8, 1e6] needs; measured against mpmath the float64 error is <= 2.2e-16 relative (1.3e-7 in
    float32). Every element pays all 120 steps (about 0.3 us per element on one CPU core).
    """
    nu, x = _as_float_tensors(nu, x)
    r = _perron_ratio(nu, x)
    nan = torch.full_like(r, float("nan"))
    r = torch.where(torch.isinf(x), torch.ones_like(r), r)
    r = torch.where(x == 0, torch.zeros_like(r), r)
    return torch.where((nu < 0) | (x < 0) | torch.isnan(nu) | torch.isnan(x), nan, r)


def _log_iv_series(nu, x):
    """nu log(x/2) - lgamma(nu + 1) + log sum_k t_k, t_k = t_{k-1} (x^2/4) / (k (nu + k)) (DLMF 10.25.2).

    Accurate where x^2/4 < nu + 1: there term k is at most 1/k!, so SERIES_TERMS terms are plenty.
    """
    y = x * x / 4
    term = torch.ones_like(x)
    total = torch.ones_like(x)
    for k in range(1, SERIES_TERMS + 1):
        term = term * y / (k * (nu + k))
        total = total + term
    return nu * torch.log(x / 2) - torch.lgamma(nu + 1) + torch.log(total)


def _log_iv_debye(nu, x, kmax=DEBYE_TERMS):
    """Olver's uniform expansion (DLMF 10.41.3): with z = x/nu, s = sqrt(1 + z^2), p = 1/s,
    eta = s + log(z / (1 + s)):
        log I_nu(nu z) = nu eta - 1/2 log(2 pi nu) - 1/2 log s + log sum_{k<=kmax} u_k(p) / nu^k.
    Only for nu >= NU0 (it is off by up to ~3 nats at nu <= 1).
    """
    z = x / nu
    s = torch.hypot(torch.ones_like(z), z)
    p = 1 / s
    eta = s + torch.log(z / (1 + s))
    inv_nu = 1 / nu
    coeffs = _debye_float_coefficients(kmax)
    total = None  # Horner in 1/nu: u_0 + (u_1 + (u_2 + ...) / nu) / nu
    for k in range(kmax, -1, -1):
        u = torch.full_like(p, coeffs[k][0])
        for c in coeffs[k][1:]:
            u = u * p + c
        total = u if total is None else u + total * inv_nu
    return (nu * eta - 0.5 * torch.log(2 * math.pi * nu) - 0.5 * torch.log(s)
            + torch.log(total))


def log_bessel_iv_torch(nu, x):
    """log I_nu(x) in plain, branch-free PyTorch.

    Args:
        nu: tensor or number, orders >= 0.
        x: tensor or number, arguments >= 0; broadcast against ``nu``.
    Returns:
        tensor of the broadcast shape, in the inputs' floating dtype, on their device.

    Regions, all computed for every element and picked with ``torch.where``:
      * x^2/4 < nu + 1: power series (DLMF 10.25.2), SERIES_TERMS terms;
      * else nu >= NU0 (25): Olver's uniform expansion with u_0..u_8 (DLMF 10.41.3, 10.41.10);
      * else: upward shift log I_nu = log I_{nu+N} - sum_{k<N} log R_{nu+k}, N = ceil(NU0 - nu), with
        log I_{nu+N} from Olver's expansion and the ratios from one Perron continued fraction at order
        nu + N - 1 walked down with R_{m-1} = 1 / (2m/x + R_m).
    Edge cases: log I_0(0) = 0, log I_nu(0) = -inf for nu > 0, +inf at x = inf, NaN for nu < 0, x < 0 or
    NaN input.
    Known limits (measured against mpmath at 50 digits on 240 points, and against SciPy where it is
    finite on 1e6 points): in float64 |delta| / max(1, |log I|) <= 2e-14 over nu in [0, 1000],
    x in [1e-6, 1e5], except where log I crosses 0 at large nu (e.g. nu = 985, x = 656), where terms of
    size ~nu cancel and the absolute error is up to ~2e-13 (SciPy's is the same there). The error of the
    8-term expansion grows like nu^-9 (7e-13 at nu = 20), which the shift to NU0 = 25 keeps out. float32
    is computed in float32, so the same cancellation costs up to ~1e-4 absolute where log I crosses 0 at
    large nu (nu = 461, x = 308; measured on the 1e6-point benchmark inputs), ~1e-7 relative elsewhere.
    Slow: every element pays for every region, including the 120-step continued fraction (about 0.7 to
    1.9 us per element on one CPU core in float64).
    """
    nu, x = _as_float_tensors(nu, x)
    # Upward shift: N = 0 for nu >= NU0, else nu + N lands in [NU0, NU0 + 1).
    n_shift = torch.clamp(torch.ceil(NU0 - nu), min=0)
    nu_big = nu + n_shift
    log_big = _log_iv_debye(nu_big, x)
    # R_m with m = nu_big - 1, then walk down: R_{m-1} = 1 / (2m/x + R_m); keep the first N of them.
    r = _perron_ratio(nu_big - 1, x)
    log_r_sum = torch.zeros_like(x)
    for j in range(NU0):
        m = nu_big - 1 - j
        log_r_sum = log_r_sum + torch.where(j < n_shift, torch.log(r), torch.zeros_like(r))
        r = 1 / (2 * m / x + r)
    large = log_big - log_r_sum

    out = torch.where(x * x / 4 < nu + 1, _log_iv_series(nu, x), large)

    nan = torch.full_like(out, float("nan"))
    out = torch.where(torch.isinf(x), torch.full_like(out, float("inf")), out)
    out = torch.where(x == 0, torch.where(nu == 0, torch.zeros_like(out),
                                          torch.full_like(out, float("-inf"))), out)
    return torch.where((nu < 0) | (x < 0) | torch.isnan(nu) | torch.isnan(x), nan, out)


def vmf_log_normalizer_torch(d, kappa):
    """log C_d(kappa) = nu log kappa - (d/2) log(2 pi) - log I_nu(kappa), nu = d/2 - 1, in plain PyTorch.

    Args:
        d: int >= 2, the ambient dimension (the sphere is S^{d-1}).
        kappa: tensor or number, concentrations >= 0.
    Returns:
        tensor of kappa's shape and floating dtype (float64 for a python number), on kappa's device.
    kappa = 0 gives the uniform density, log C_d(0) = -log|S^{d-1}| = lgamma(d/2) - log 2 - (d/2) log pi.
    Known limits: the direct formula cancels terms of size ~max(nu, kappa) (d = 10000, kappa = 100: two
    terms of about 2e4 whose difference is O(1)); at d = 512 over kappa in [1e-2, 1e5] (1e6 points) the
    error is about 6e-13 absolute in float64 and 3e-4 in float32 where log C crosses 0 (kappa ~ 1405),
    ~1e-16 relative elsewhere. It is a reference, not the stable log H form of KERNELS.md section 2.
    """
    if isinstance(d, bool) or int(d) != d or d < 2:
        raise ValueError(f"d must be an integer >= 2, got {d!r}")
    d = int(d)
    if not isinstance(kappa, torch.Tensor):
        kappa = torch.as_tensor(kappa, dtype=torch.float64)
    (kappa,) = _as_float_tensors(kappa)
    nu = d / 2 - 1
    log_c = nu * torch.log(kappa) - (d / 2) * math.log(2 * math.pi) - log_bessel_iv_torch(nu, kappa)
    if nu == 0:  # 0 * log(0) is NaN; the kappa^0 factor is 1.
        log_c = -(d / 2) * math.log(2 * math.pi) - log_bessel_iv_torch(nu, kappa)
    uniform = math.lgamma(d / 2) - math.log(2) - (d / 2) * math.log(math.pi)
    return torch.where(kappa == 0, torch.full_like(log_c, uniform), log_c)


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
