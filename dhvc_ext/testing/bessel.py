"""Slow, obviously-correct references for the Bessel ops, for tests and benchmarks only (the runtime package
never imports ``dhvc_ext.testing``). Two kinds:

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
    and ``python -m dhvc_ext.testing.bessel_report`` so that both time the same inputs.
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
