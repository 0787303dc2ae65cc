"""dhvc_ext.distributions: VonMisesFisher, HypersphericalUniform and their KL divergences.

Values against SciPy (where SciPy is finite) and mpmath, normalisation by quadrature over the sphere, closed
forms (d = 3, the small-kappa KL), Monte-Carlo checks of entropy, mean, KL and reparameterised gradients
(each within 4 standard errors, fixed seeds), and argument validation, shapes and expansion.
"""
import math

import numpy as np
import pytest
import scipy.integrate
import scipy.stats
import torch
from torch.autograd import gradcheck, gradgradcheck
from torch.distributions import kl_divergence

from dhvc_ext.distributions import HypersphericalUniform, VonMisesFisher, sphere
from dhvc_ext.ops import bessel_iv_ratio

F64 = torch.float64
EPS64 = torch.finfo(F64).eps
EPS32 = torch.finfo(torch.float32).eps
VONMISES_FISHER = getattr(scipy.stats, "vonmises_fisher", None)  # SciPy >= 1.11
needs_scipy_vmf = pytest.mark.skipif(VONMISES_FISHER is None, reason="scipy.stats.vonmises_fisher needs SciPy >= 1.11")

DIMS = [2, 3, 5, 10, 64]
KAPPAS = [1e-3, 1.0, 50.0, 1e3]


def unit(shape, seed, dtype=F64, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=F64)
    return (x / torch.linalg.vector_norm(x, dim=-1, keepdim=True)).to(device=device, dtype=dtype)


def log_surface(d):
    """log|S^{d-1}| = log 2 + (d/2) log pi - lgamma(d/2)."""
    return math.log(2) + 0.5 * d * math.log(math.pi) - math.lgamma(0.5 * d)


def log_surface_abs(d):
    return abs(log_surface(d))


def mp_vmf(d, kappa):
    """(log C_d(kappa), A_d(kappa), log H_nu(kappa)) from mpmath at 60 digits, as floats."""
    mpmath = pytest.importorskip("mpmath")
    with mpmath.workdps(60):
        nu, k = mpmath.mpf(d) / 2 - 1, mpmath.mpf(kappa)
        log_h = mpmath.log(mpmath.hyp0f1(nu + 1, k * k / 4))
        a = mpmath.besseli(nu + 1, k) / mpmath.besseli(nu, k)
        return float(-log_surface(d) - log_h), float(a), float(log_h)


def a_prime(d, kappa):
    """A_d'(kappa) = 1 - A^2 - (d-1) A / kappa."""
    a = bessel_iv_ratio(d / 2 - 1, torch.tensor(kappa, dtype=F64)).item()
    return 1 - a * a - (d - 1) * a / kappa


def score_points(mu, kappa, n, seed):
    """Unit vectors to score: mu, -mu, uniform points, and points at the typical distance of a sample."""
    d = mu.shape[-1]
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(n, d, generator=g, dtype=F64)
    near = mu + noise / math.sqrt(max(kappa, 1.0))
    pts = torch.cat([mu[None], -mu[None], noise, near])
    return pts / torch.linalg.vector_norm(pts, dim=-1, keepdim=True)


def within_se(samples, expected, k=4.0):
    """|mean(samples) - expected| <= k standard errors (per coordinate over the last dimension when 2-D)."""
    mean = samples.mean(0)
    se = samples.std(0) / math.sqrt(samples.shape[0])
    err = (mean - expected).abs()
    assert torch.all(err <= k * se + 1e-12), f"mean {mean}, expected {expected}, {err / se} standard errors"


# --- log_prob -------------------------------------------------------------------------------------------------


@needs_scipy_vmf
@pytest.mark.parametrize("d", DIMS)
@pytest.mark.parametrize("kappa", KAPPAS)
def test_log_prob_matches_scipy(d, kappa, dtype, device):
    mu = unit(d, seed=d).to(dtype)
    z = score_points(mu.double(), kappa, 20, seed=d + 1).to(dtype)
    got = VonMisesFisher(mu.to(device), torch.tensor(kappa, dtype=dtype, device=device)).log_prob(z.to(device))
    assert got.dtype == dtype and got.shape == (z.shape[0],)
    # SciPy on exactly our (rounded) inputs, in float64.
    ref = torch.from_numpy(VONMISES_FISHER(mu.double().numpy(), kappa).logpdf(z.double().numpy()))
    assert torch.isfinite(ref).all()
    err = (got.cpu().double() - ref).abs()
    if dtype == F64:
        assert (err / ref.abs().clamp(min=1)).max() <= 1e-10
    else:
        # The float32 sum log C + kappa mu^T z: a few roundings of each term.
        log_c = abs(VONMISES_FISHER(mu.double().numpy(), kappa).logpdf(mu.double().numpy()) - kappa)
        assert err.max() <= 8 * EPS32 * (1 + log_c + kappa)


def mp_log_prob_at_mode(d, kappa):
    """log C_d(kappa) + kappa, the density's log at its mode, from mpmath at 60 digits (the sum taken there)."""
    mpmath = pytest.importorskip("mpmath")
    with mpmath.workdps(60):
        nu, k = mpmath.mpf(d) / 2 - 1, mpmath.mpf(kappa)
        return float(nu * mpmath.log(k) - mpmath.mpf(d) / 2 * mpmath.log(2 * mpmath.pi)
                     - mpmath.log(mpmath.besseli(nu, k)) + k)


@pytest.mark.parametrize("d", [3, 5, 64])
@pytest.mark.parametrize("kappa", [1e3, 1e5, 1e8, 1e12])
def test_float32_log_prob_at_large_kappa_is_within_1e3_of_float64(d, kappa):
    # log C_d(kappa) is about -kappa: summed with kappa mu^T z in float32 it lost 20 nats at kappa = 1e8 (at
    # the mode, d = 5: 32.0 for 33.17) and 1e5 at 1e12.
    mu = unit(d, seed=d, dtype=torch.float32)
    z = torch.cat([mu[None], score_points(mu.double(), kappa, 20, seed=d + 1).float()])
    got = VonMisesFisher(mu, torch.tensor(kappa), validate_args=False).log_prob(z)
    assert got.dtype == torch.float32
    # float64 on exactly these (rounded) inputs
    ref = VonMisesFisher(mu.double(), torch.tensor(kappa, dtype=F64), validate_args=False).log_prob(z.double())
    assert ((got.double() - ref).abs() / ref.abs().clamp(min=1)).max() <= 1e-3
    mode = mp_log_prob_at_mode(d, kappa)
    assert abs(got[0].item() - mode) <= 1e-3 * abs(mode) and abs(ref[0].item() - mode) <= 1e-5 * abs(mode)


# SciPy 1.17 computes log C_d as ... - log(ive(nu, kappa)) - kappa; ive underflows to 0 for kappa << nu, so
# its log C_d, logpdf and entropy are +inf / NaN at these points (observed; e.g. d = 1000, kappa = 50 and
# d = 10000, kappa = 1e4), while the exact values are moderate numbers.
SCIPY_OVERFLOWS = [(1000, 1e-3), (1000, 1.0), (1000, 50.0), (10000, 1.0), (10000, 1e4)]


@needs_scipy_vmf
@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # SciPy's log(0) and inf - inf
@pytest.mark.parametrize("d, kappa", SCIPY_OVERFLOWS)
def test_log_prob_finite_where_scipy_overflows(d, kappa):
    mu = unit(d, seed=1)
    z = score_points(mu, kappa, 4, seed=2)
    frozen = VONMISES_FISHER(mu.numpy(), kappa)
    scipy_lp = frozen.logpdf(z.numpy())
    dist = VonMisesFisher(mu, kappa)
    got = dist.log_prob(z)
    log_c, a, _ = mp_vmf(d, kappa)
    ref = log_c + kappa * (z @ mu)
    assert torch.isfinite(got).all()
    assert ((got - ref).abs() / ref.abs().clamp(min=1)).max() <= 1e-12
    ent = dist.entropy().item()
    assert math.isfinite(ent) and abs(ent - (-log_c - kappa * a)) <= 1e-12 * max(1, abs(ent))
    if np.all(np.isfinite(scipy_lp)):  # a later SciPy that gets these right must agree with us
        np.testing.assert_allclose(scipy_lp, got.numpy(), rtol=1e-10)
    else:  # what SciPy 1.17 does
        assert np.all(np.isposinf(scipy_lp)) and np.isnan(frozen.entropy())


@pytest.mark.parametrize("d", [3, 5, 10])
@pytest.mark.parametrize("kappa", KAPPAS)
def test_log_prob_integrates_to_one(d, kappa):
    # On S^{d-1}, z = cos(t) mu + sin(t) v with v uniform on the S^{d-2} orthogonal to mu; the density depends
    # on t only, and the surface element is |S^{d-2}| sin(t)^{d-2} dt. log_prob is evaluated on actual unit
    # vectors along one such great half-circle (mu and v random).
    mu = unit(d, seed=10 + d)
    v = unit(d, seed=20 + d)
    v = v - (v @ mu) * mu
    v = v / v.norm()
    dist = VonMisesFisher(mu, kappa)

    def integrand(t):
        z = math.cos(t) * mu + math.sin(t) * v
        return math.exp(dist.log_prob(z).item() + log_surface(d - 1)) * math.sin(t) ** (d - 2)

    width = min(math.pi / 2, 10 / math.sqrt(kappa))  # where the mass is, for large kappa
    total = sum(
        scipy.integrate.quad(integrand, a, b, epsabs=1e-14, epsrel=1e-13, limit=200)[0]
        for a, b in ((0, width), (width, math.pi))
    )
    assert abs(total - 1) <= 1e-8


@pytest.mark.parametrize("kappa", [1e-3, 1.0, 50.0])
def test_log_prob_integrates_to_one_d3_surface(kappa):
    # d = 3 over the whole sphere in (theta, phi) about the z axis, mu in a generic direction: Gauss-Legendre in
    # cos(theta), the trapezoid rule in phi (spectrally accurate for a smooth periodic integrand).
    mu = unit(3, seed=5)
    x, w = np.polynomial.legendre.leggauss(400)
    c = torch.from_numpy(x)
    phi = torch.arange(800, dtype=F64) * (2 * math.pi / 800)
    s = torch.sqrt(1 - c**2)
    z = torch.stack(
        [s[:, None] * torch.cos(phi)[None], s[:, None] * torch.sin(phi)[None], c[:, None].expand(-1, 800)], dim=-1
    )
    density = VonMisesFisher(mu, kappa).log_prob(z).exp()
    total = (density.mean(1) * torch.from_numpy(w)).sum().item() * 2 * math.pi
    assert abs(total - 1) <= 1e-10


def test_log_prob_uniform_limit_and_broadcasting(device):
    d = 7
    z = unit((5, 1, d), seed=3, device=device)  # value shape (5, 1, d) against batch shape (4,)
    kappa = torch.tensor([0.0, 0.5, 2.0, 30.0], dtype=F64, device=device)
    dist = VonMisesFisher(unit((4, d), seed=4, device=device), kappa)
    lp = dist.log_prob(z)
    assert lp.shape == (5, 4)
    torch.testing.assert_close(lp[:, 0].cpu(), torch.full((5,), -log_surface(d), dtype=F64), rtol=1e-15, atol=0)
    for j in range(4):
        single = VonMisesFisher(dist.loc[j], dist.concentration[j]).log_prob(z[:, 0])
        torch.testing.assert_close(lp[:, j], single, rtol=0, atol=0)


# --- entropy and mean -----------------------------------------------------------------------------------------


@needs_scipy_vmf
@pytest.mark.parametrize("d", DIMS)
@pytest.mark.parametrize("kappa", KAPPAS)
def test_entropy_matches_scipy(d, kappa):
    ref = VONMISES_FISHER(unit(d, seed=0).numpy(), kappa).entropy()
    got = VonMisesFisher(unit(d, seed=0), kappa).entropy().item()
    assert math.isfinite(ref) and abs(got - ref) <= 1e-10 * max(1, abs(ref))


def test_entropy_limits(device):
    d = 6
    kappa = torch.tensor([0.0, math.inf, 1e6], dtype=F64, device=device)
    dist = VonMisesFisher(unit((3, d), seed=0, device=device), kappa)
    ent = dist.entropy().cpu()
    assert abs(ent[0].item() - log_surface(d)) <= 1e-14 * log_surface(d)
    assert ent[1].item() == -math.inf
    # kappa -> inf: the vMF is locally a (d-1)-dimensional Gaussian with variance 1/kappa,
    # H ~ (d-1)/2 (1 + log(2 pi / kappa)) + O(1/kappa).
    assert abs(ent[2].item() - (d - 1) / 2 * (1 + math.log(2 * math.pi / 1e6))) <= 1e-5


def test_mean_and_mean_resultant_length(device, dtype):
    kappa = torch.tensor([1e-3, 0.5, 3.0, 40.0, 900.0], dtype=dtype, device=device)
    mu = unit((5, 3), seed=7, dtype=dtype, device=device)
    dist = VonMisesFisher(mu, kappa)
    k = kappa.double().cpu()
    # A_3(kappa) = coth(kappa) - 1/kappa; at kappa = 1e-3 the series kappa/3 - kappa^3/45 avoids cancellation.
    a3 = torch.where(k < 1e-2, k / 3 - k**3 / 45, 1 / torch.tanh(k) - 1 / k)
    tol = 1e-13 if dtype == F64 else 1e-6
    torch.testing.assert_close(dist.mean_resultant_length.cpu().double(), a3, rtol=tol, atol=0)
    torch.testing.assert_close(dist.mean.cpu().double(), a3[:, None] * mu.cpu().double(), rtol=tol, atol=0)
    assert torch.equal(dist.mode, mu)
    assert dist.mean.shape == (5, 3) and dist.mean.dtype == dtype
    # The limits: kappa = 0 has mean 0, kappa = inf has mean loc.
    ends = VonMisesFisher(mu[:2], torch.tensor([0.0, math.inf], dtype=dtype, device=device))
    assert torch.equal(ends.mean[0], torch.zeros_like(mu[0])) and torch.equal(ends.mean[1], mu[1])
    # Other dimensions: through the ratio op, A_d = I_{d/2} / I_{d/2-1}.
    high = VonMisesFisher(unit(100, seed=1, dtype=dtype, device=device), torch.tensor(75.0, dtype=dtype, device=device))
    assert high.d == high.dim == 100
    torch.testing.assert_close(high.mean_resultant_length, bessel_iv_ratio(49.0, high.concentration))


# --- KL divergences -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("d", [2, 3, 10, 100, 1000, 10000])
@pytest.mark.parametrize("kappa", [1e-3, 0.1, 10.0, 1e3, 1e6])
def test_kl_uniform_against_mpmath_and_vmf_with_zero_concentration(d, kappa):
    mu = unit(d, seed=d)
    p = VonMisesFisher(mu, kappa)
    kl = kl_divergence(p, HypersphericalUniform(d, dtype=F64)).item()
    log_c, a, log_h = mp_vmf(d, kappa)
    ref = kappa * a - log_h
    # kappa A - log H from the ops: each rounding is eps times one of those two terms, with no log|S^{d-1}|
    # to cancel, so the KL keeps its relative accuracy when it is tiny (kappa -> 0 at large d).
    assert abs(kl - ref) <= 8 * EPS64 * (kappa * a + log_h)
    # The vMF-vMF formula with a zero concentration (and another mean direction) is the same quantity.
    q0 = VonMisesFisher(unit(d, seed=d + 1), 0.0)
    assert abs(kl_divergence(p, q0).item() - kl) <= 4 * EPS64 * (1 + kappa + abs(log_c) + log_surface_abs(d))
    # And the KL does not depend on loc.
    assert kl_divergence(VonMisesFisher(-mu, kappa), HypersphericalUniform(d, dtype=F64)).item() == kl


@pytest.mark.parametrize("d", [2, 3, 10, 100, 1000, 10000])
def test_kl_uniform_small_kappa(d):
    # KL = kappa A - log H = kappa^2 / (2 d) (1 + O(kappa^2 / d)).
    kappa = 1e-3
    kl = kl_divergence(VonMisesFisher(unit(d, seed=0), kappa), HypersphericalUniform(d, dtype=F64)).item()
    assert abs(kl / (kappa**2 / (2 * d)) - 1) <= 1e-3


def test_kl_vmf_vmf_zero_and_positive(device):
    d = 8
    mu = unit((6, d), seed=1, device=device)
    kappa = torch.tensor([0.0, 1e-3, 1.0, 20.0, 1e3, 1e5], dtype=F64, device=device)
    p = VonMisesFisher(mu, kappa)
    same = kl_divergence(p, VonMisesFisher(mu.clone(), kappa.clone()))
    # Identical distributions: log C terms cancel exactly; kappa A (1 - mu^T mu) is kappa times rounding.
    assert torch.all(same.abs() <= 8 * EPS64 * (1 + kappa))
    other = VonMisesFisher(unit((6, d), seed=2, device=device), kappa.flip(0))
    assert torch.all(kl_divergence(p, other) > 0)
    # Same direction, different concentration, and same concentration, different direction.
    assert torch.all(kl_divergence(p, VonMisesFisher(mu, kappa + 0.5)) > 0)
    assert torch.all(kl_divergence(p, VonMisesFisher(-mu, kappa))[1:] > 0)


def test_kl_vmf_vmf_closed_form_d3():
    # d = 3: log C = log kappa - log(4 pi sinh kappa), A = coth kappa - 1/kappa.
    def log_c(k):
        return math.log(k) - math.log(2 * math.pi) - k - math.log1p(-math.exp(-2 * k))

    def a(k):
        return 1 / math.tanh(k) - 1 / k

    mu1, mu2 = unit(3, seed=1), unit(3, seed=2)
    for k1, k2 in [(0.3, 2.0), (5.0, 0.7), (40.0, 60.0)]:
        ref = log_c(k1) - log_c(k2) + a(k1) * (k1 - k2 * (mu1 @ mu2).item())
        got = kl_divergence(VonMisesFisher(mu1, k1), VonMisesFisher(mu2, k2)).item()
        assert abs(got - ref) <= 1e-13 * max(1, abs(ref))


def test_kl_uniform_vmf_and_uniform_uniform():
    d = 5
    q = VonMisesFisher(unit(d, seed=3), 4.0)
    _, _, log_h = mp_vmf(d, 4.0)
    assert abs(kl_divergence(HypersphericalUniform(d, dtype=F64), q).item() - log_h) <= 1e-14 * log_h
    assert kl_divergence(HypersphericalUniform(d), HypersphericalUniform(d)).item() == 0.0


def test_kl_uniform_vmf_against_monte_carlo():
    # Uniform samples do not need vmf_sample: E_U[log U(z) - log q(z)].
    torch.manual_seed(0)
    d = 6
    u = HypersphericalUniform(d, dtype=F64)
    q = VonMisesFisher(unit(d, seed=4), 2.5)
    z = u.sample((100_000,))
    within_se(u.log_prob(z) - q.log_prob(z), kl_divergence(u, q))


def test_kl_dimension_mismatch():
    p = VonMisesFisher(unit(4, seed=0), 1.0)
    with pytest.raises(ValueError, match="different dimensions"):
        kl_divergence(p, HypersphericalUniform(5))
    with pytest.raises(ValueError, match="different dimensions"):
        kl_divergence(p, VonMisesFisher(unit(3, seed=0), 1.0))
    with pytest.raises(ValueError, match="different dimensions"):
        kl_divergence(HypersphericalUniform(3), p)


def test_kl_shapes():
    p = VonMisesFisher(unit((4, 1, 3), seed=0), torch.ones(4, 1, dtype=F64))
    q = VonMisesFisher(unit((5, 3), seed=1), torch.ones(5, dtype=F64))
    assert kl_divergence(p, q).shape == (4, 5)
    assert kl_divergence(p, HypersphericalUniform(3).expand((2, 1, 1))).shape == (2, 4, 1)
    assert kl_divergence(HypersphericalUniform(3), q).shape == (5,)


@pytest.mark.parametrize("d", [2, 3, 10, 1000, 10000])
def test_kl_gradcheck(d):
    kappa = torch.tensor([0.05, 1.0, 30.0, 2e3], dtype=F64, requires_grad=True)
    mu = unit((4, d), seed=d)
    u = HypersphericalUniform(d, dtype=F64)
    assert gradcheck(lambda k: kl_divergence(VonMisesFisher(mu, k, validate_args=False), u), (kappa,))
    assert gradgradcheck(lambda k: kl_divergence(VonMisesFisher(mu, k, validate_args=False), u), (kappa,))
    if d > 10:  # the direction gradients below: one finite difference per coordinate
        return
    # vMF || vMF in both concentrations and both directions (gradcheck steps off the sphere, so no validation).
    mu2 = unit((4, d), seed=d + 1)
    kappa2 = torch.tensor([2.0, 0.3, 25.0, 1e3], dtype=F64, requires_grad=True)
    loc1 = mu.clone().requires_grad_()
    loc2 = mu2.clone().requires_grad_()

    def kl_vv(k1, k2, m1, m2):
        return kl_divergence(VonMisesFisher(m1, k1, validate_args=False), VonMisesFisher(m2, k2, validate_args=False))

    assert gradcheck(kl_vv, (kappa, kappa2, loc1, loc2))


def test_kl_uniform_gradient_large():
    # d/dkappa KL(vMF || U) = kappa A'(kappa), A' = 1 - A^2 - (d - 1) A / kappa, against mpmath at d = 1e4 up to
    # kappa = 1e6 (mpmath's Bessel series is too slow around kappa = 1e5 at this order, hence the grid).
    mpmath = pytest.importorskip("mpmath")
    d = 10000
    kappas = [1e-3, 1.0, 100.0, 1e4, 3e4, 1e6]
    kappa = torch.tensor(kappas, dtype=F64, requires_grad=True)
    kl = kl_divergence(VonMisesFisher(unit(d, seed=0), kappa), HypersphericalUniform(d, dtype=F64))
    (g,) = torch.autograd.grad(kl.sum(), kappa)
    ref = []
    with mpmath.workdps(60):
        nu = mpmath.mpf(d) / 2 - 1
        for k in map(mpmath.mpf, kappas):
            a = mpmath.besseli(nu + 1, k, maxterms=10**6) / mpmath.besseli(nu, k, maxterms=10**6)
            ref.append(float(k * (1 - a * a) - (d - 1) * a))
    assert torch.isfinite(kl).all()
    torch.testing.assert_close(g, torch.tensor(ref, dtype=F64), rtol=1e-11, atol=0)


# --- Monte-Carlo checks through vmf_sample --------------------------------------------------------------------

MC_CASES = [(3, 1.0), (3, 50.0), (10, 0.1), (10, 5.0), (100, 200.0)]


@pytest.mark.parametrize("d, kappa", MC_CASES)
def test_entropy_mean_and_kl_against_monte_carlo(d, kappa):
    torch.manual_seed(1)
    p = VonMisesFisher(unit(d, seed=d), kappa)
    z = p.sample((100_000,))
    assert z.shape == (100_000, d) and not z.requires_grad
    lp = p.log_prob(z)
    within_se(-lp, p.entropy())
    within_se(z, p.mean)
    within_se(lp + log_surface(d), kl_divergence(p, HypersphericalUniform(d, dtype=F64)))
    q = VonMisesFisher(unit(d, seed=d + 1), 0.7 * kappa + 1)
    within_se(lp - q.log_prob(z), kl_divergence(p, q))


@pytest.mark.parametrize("d", [3, 10])
def test_uniform_limit_samples(d):
    torch.manual_seed(2)
    mu = unit(d, seed=0)
    w = VonMisesFisher(mu, 0.0).sample((100_000,)) @ mu
    within_se(w, torch.tensor(0.0, dtype=F64))
    within_se(w * w, torch.tensor(1.0 / d, dtype=F64))


def test_infinite_concentration_samples_are_loc():
    mu = unit((3, 5), seed=0)
    z = VonMisesFisher(mu, math.inf).sample((4,))
    torch.testing.assert_close(z, mu.expand(4, 3, 5), rtol=0, atol=4 * EPS64)


@pytest.mark.parametrize("d, kappa", [(3, 2.0), (5, 2.0), (5, 20.0), (10, 1.0)])
def test_rsample_concentration_gradient_is_unbiased(d, kappa):
    # d/dkappa E[mu^T z] = A_d'(kappa). One sample per batch element, so the gradient with respect to each
    # element's concentration is one sample of the pathwise derivative.
    torch.manual_seed(3)
    n = 100_000
    mu = unit(d, seed=d)
    k = torch.full((n,), kappa, dtype=F64, requires_grad=True)
    z = VonMisesFisher(mu, k).rsample()
    assert z.shape == (n, d)
    (g,) = torch.autograd.grad((z @ mu).sum(), k)
    within_se(g, torch.tensor(a_prime(d, kappa), dtype=F64))


@pytest.mark.parametrize("d, kappa", [(3, 4.0), (10, 15.0)])
def test_rsample_loc_gradient_is_unbiased(d, kappa):
    # E[c^T z] = A_d(kappa) c^T v / ||v|| for loc = v / ||v||: gradient A (c - (c^T mu) mu) at ||v|| = 1.
    torch.manual_seed(4)
    n = 100_000
    mu, c = unit(d, seed=1), unit(d, seed=2)
    v = mu.expand(n, d).clone().requires_grad_()
    z = VonMisesFisher(v / torch.linalg.vector_norm(v, dim=-1, keepdim=True), kappa).rsample()
    (g,) = torch.autograd.grad((z @ c).sum(), v)
    a = bessel_iv_ratio(d / 2 - 1, torch.tensor(kappa, dtype=F64))
    within_se(g, a * (c - (c @ mu) * mu))


def test_sample_shapes_and_reproducibility(device):
    loc = unit((4, 3), seed=0, device=device)
    dist = VonMisesFisher(loc, torch.tensor([[1.0], [2.0], [3.0], [4.0]], dtype=F64, device=device))
    torch.manual_seed(5)
    z = dist.rsample((2, 5))
    assert z.shape == (2, 5, 4, 3) and z.dtype == F64 and z.device == loc.device
    assert torch.allclose(torch.linalg.vector_norm(z, dim=-1), torch.ones((), dtype=F64, device=device))
    torch.manual_seed(5)
    assert torch.equal(dist.sample((2, 5)), z)
    assert dist.expand((6, 4)).sample().shape == (6, 4, 3)
    # float32 samples in high dimension at high concentration lie in the support as the validation sees it.
    dist32 = VonMisesFisher(unit((2, 1000), seed=1, dtype=torch.float32, device=device), 1e5, validate_args=True)
    z32 = dist32.sample((50,))
    assert z32.dtype == torch.float32 and sphere.check(z32).all()
    assert torch.isfinite(dist32.log_prob(z32)).all()


# --- HypersphericalUniform ------------------------------------------------------------------------------------


@pytest.mark.parametrize("d", [2, 5, 40])
def test_uniform_samples_moments(d, device):
    torch.manual_seed(6)
    u = HypersphericalUniform(d, device=device, dtype=F64)
    z = u.sample((50_000,))
    assert z.shape == (50_000, d) and z.device.type == device.type
    assert (torch.linalg.vector_norm(z, dim=-1) - 1).abs().max() <= 8 * EPS64
    z = z.cpu()
    within_se(z, u.mean.cpu())
    # Second moment E[z z^T] = I / d, every entry within 4 standard errors.
    outer = (z[:, :, None] * z[:, None, :]).reshape(z.shape[0], -1)
    within_se(outer, (torch.eye(d, dtype=F64) / d).reshape(-1))
    torch.testing.assert_close(u.variance.cpu(), torch.full((d,), 1.0 / d, dtype=F64))


def test_uniform_log_prob_entropy_shapes(device):
    d = 9
    u = HypersphericalUniform(d, device=device, dtype=F64)
    assert u.batch_shape == () and u.event_shape == (d,) and u.d == u.dim == d
    z = unit((3, 2, d), seed=0, device=device)
    lp = u.log_prob(z)
    assert lp.shape == (3, 2)
    torch.testing.assert_close(lp.cpu(), torch.full((3, 2), -log_surface(d), dtype=F64), rtol=1e-15, atol=0)
    assert abs(u.entropy().item() - log_surface(d)) <= 1e-15 * log_surface(d)
    # The kappa = 0 vMF is the same distribution.
    torch.testing.assert_close(lp, VonMisesFisher(unit(d, seed=1, device=device), 0.0).log_prob(z), rtol=1e-15,
                               atol=0)
    e = u.expand((4, 1))
    assert e.batch_shape == (4, 1) and e.log_prob(z[0]).shape == (4, 2) and e.entropy().shape == (4, 1)
    assert e.sample((2,)).shape == (2, 4, 1, d)
    # rsample has no parameters to differentiate: same as sample.
    torch.manual_seed(0)
    a = u.rsample((3,))
    torch.manual_seed(0)
    assert torch.equal(a, u.sample((3,)))
    assert HypersphericalUniform(3).sample().dtype == torch.get_default_dtype()
    u32 = HypersphericalUniform(3, dtype=torch.float32)
    assert u32.log_prob(unit((2, 3), seed=2, dtype=torch.float32)).dtype == torch.float32


def test_uniform_errors():
    for bad in (1, 0, 2.5, True, "3"):
        with pytest.raises(ValueError, match="dim"):
            HypersphericalUniform(bad)
    u = HypersphericalUniform(3, validate_args=True)
    with pytest.raises(ValueError, match="value"):
        u.log_prob(torch.ones(3))
    with pytest.raises(ValueError, match="value"):
        u.log_prob(torch.ones(4) / 2)


# --- construction, shapes, validation -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "loc_shape, kappa_shape, batch_shape",
    [
        ((3,), (), ()),
        ((3,), (1,), ()),  # the (..., 1) layout with ... = ()
        ((5, 3), (5,), (5,)),
        ((5, 3), (5, 1), (5,)),
        ((5, 3), (), (5,)),
        ((5, 3), (1, 1), (5,)),  # as many dims as loc, last 1: the (..., 1) layout, (1,) broadcasts with (5,)
        ((5, 3), (2, 5, 1), (2, 5, 5)),  # more dims than loc: a batch shape (as in dhvc_ext.ops.vmf_sample)
        ((2, 5, 3), (5,), (2, 5)),
        ((2, 5, 3), (2, 5, 1), (2, 5)),
        ((4, 1, 3), (4, 1), (4, 1)),  # fewer dims than loc: a batch shape
        ((3,), (7,), (7,)),
        ((3,), (7, 1), (7, 1)),  # more dims than loc: a batch shape
    ],
)
def test_batch_and_event_shapes(loc_shape, kappa_shape, batch_shape):
    loc = unit(loc_shape, seed=0)
    kappa = torch.rand(kappa_shape, generator=torch.Generator().manual_seed(0), dtype=F64) + 0.5
    dist = VonMisesFisher(loc, kappa)
    assert dist.batch_shape == batch_shape and dist.event_shape == (3,)
    assert dist.loc.shape == batch_shape + (3,) and dist.concentration.shape == batch_shape
    assert dist.entropy().shape == batch_shape and dist.mean.shape == batch_shape + (3,)
    assert dist.log_prob(unit((3,), seed=1)).shape == batch_shape
    # Every element behaves as the distribution built from its own loc and concentration.
    flat_loc = dist.loc.reshape(-1, 3)
    flat_kappa = dist.concentration.reshape(-1)
    for i in range(flat_kappa.numel()):
        single = VonMisesFisher(flat_loc[i], flat_kappa[i].item())
        assert single.entropy() == dist.entropy().reshape(-1)[i]


def test_scalar_concentration_and_dtypes():
    loc32 = unit((2, 4), seed=0, dtype=torch.float32)
    d = VonMisesFisher(loc32, 3.0)
    assert d.concentration.dtype == torch.float32 and d.concentration.shape == (2,)
    d64 = VonMisesFisher(loc32, torch.tensor([1.0, 2.0], dtype=F64))
    assert d64.loc.dtype == F64 and d64.concentration.dtype == F64
    assert VonMisesFisher(loc32, torch.tensor(2)).concentration.dtype == torch.float32


def test_expand():
    loc = unit((3, 4), seed=0)
    kappa = torch.tensor([0.5, 2.0, 9.0], dtype=F64)
    dist = VonMisesFisher(loc, kappa, validate_args=True)
    e = dist.expand((2, 3))
    assert isinstance(e, VonMisesFisher) and e.batch_shape == (2, 3) and e.event_shape == (4,)
    assert e.d == 4 and e._validate_args
    torch.testing.assert_close(e.entropy(), dist.entropy().expand(2, 3), rtol=0, atol=0)
    z = unit((2, 3, 4), seed=1)
    torch.testing.assert_close(e.log_prob(z), dist.log_prob(z), rtol=0, atol=0)
    with pytest.raises(RuntimeError):
        dist.expand((2,))


def test_construction_errors():
    with pytest.raises(ValueError, match="loc"):
        VonMisesFisher(torch.tensor(1.0, dtype=F64), 1.0)  # no last dimension
    with pytest.raises(ValueError, match="d must be an int >= 2"):
        VonMisesFisher(torch.ones(5, 1, dtype=F64), 1.0)  # d = 1
    with pytest.raises(ValueError, match="concentration of shape"):
        VonMisesFisher(unit((5, 3), seed=0), torch.ones(4, dtype=F64))
    with pytest.raises(TypeError, match="concentration"):
        VonMisesFisher(unit(3, seed=0), "1")


def test_validation_errors_name_the_argument():
    loc = unit((2, 3), seed=0)
    kappa = torch.tensor([1.0, 2.0], dtype=F64)
    with pytest.raises(ValueError, match="parameter loc"):
        VonMisesFisher(loc * 1.01, kappa, validate_args=True)
    with pytest.raises(ValueError, match="parameter loc"):
        VonMisesFisher(torch.tensor([[1.0, 0.0, float("nan")]], dtype=F64), 1.0, validate_args=True)
    with pytest.raises(ValueError, match="parameter concentration"):
        VonMisesFisher(loc, torch.tensor([1.0, -0.1], dtype=F64), validate_args=True)
    with pytest.raises(ValueError, match="parameter concentration"):
        VonMisesFisher(loc, torch.tensor([float("nan"), 1.0], dtype=F64), validate_args=True)
    dist = VonMisesFisher(loc, kappa, validate_args=True)
    with pytest.raises(ValueError, match="size of value must match event_shape"):
        dist.log_prob(unit((2, 4), seed=1))
    with pytest.raises(ValueError, match="value argument"):
        dist.log_prob(unit((2, 3), seed=1) * 2)
    with pytest.raises(ValueError, match="value argument"):
        dist.log_prob(torch.zeros(2, 3, dtype=F64))
    # Infinite concentration is valid (the point mass).
    VonMisesFisher(loc, math.inf, validate_args=True)


def test_without_validation():
    loc = unit((2, 3), seed=0)
    kappa = torch.tensor([1.0, -0.5], dtype=F64)
    dist = VonMisesFisher(loc * 2, kappa, validate_args=False)  # neither is checked
    z = unit((2, 3), seed=1)
    lp = dist.log_prob(z * 3)
    # log_prob is its expression (log C_d + kappa) - kappa |z - mu|^2 / 2 with whatever it is given (on the
    # sphere, the formula log C_d + kappa mu^T z); the negative concentration is NaN from the ops.
    at_mode = VonMisesFisher(loc[0], 1.0).log_prob(loc[0]).item()
    ref = at_mode - 0.5 * torch.sum((z[0] * 3 - loc[0] * 2) ** 2).item()
    assert abs(lp[0].item() - ref) <= 1e-14 * max(1, abs(ref))
    unit_lp = VonMisesFisher(loc[0], 1.0).log_prob(z[0]).item()
    assert abs(unit_lp - (at_mode - 1.0 + (loc[0] @ z[0]).item())) <= 1e-14 * max(1, abs(unit_lp))
    assert math.isnan(lp[1].item()) and math.isnan(dist.entropy()[1].item())


def test_sphere_tolerance_follows_dtype():
    d = 10000
    x = torch.randn(d, generator=torch.Generator().manual_seed(0), dtype=torch.float32)
    x32 = x / torch.linalg.vector_norm(x)
    assert sphere.check(x32) and sphere.check(x32.double() / torch.linalg.vector_norm(x32.double()))
    assert not sphere.check(x32 * (1 + 1e-3))
    x64 = x.double() / torch.linalg.vector_norm(x.double())
    assert sphere.check(x64 * (1 + 5e-7)) and not sphere.check(x64 * (1 + 2e-6))
    assert sphere.check(x32.double())  # normalised in float32, then cast
    VonMisesFisher(x32, 5.0, validate_args=True)  # float32-normalised, long: accepted
    assert sphere.check(unit((4, 2, 3), seed=0)).shape == (4, 2)


# --- the ops under the distributions: arguments they refuse or mark ------------------------------------------


def test_vmf_sample_of_a_zero_loc_is_nan():
    from dhvc_ext.ops import vmf_sample

    loc = torch.zeros(4, 5, dtype=F64)
    loc[1, 2] = 1.0
    samples = vmf_sample(loc, 10.0, generator=torch.Generator().manual_seed(0))
    assert torch.isnan(samples[[0, 2, 3]]).all()  # no direction: NaN rows, as for a NaN concentration
    assert torch.isfinite(samples[1]).all() and abs(torch.linalg.vector_norm(samples[1]).item() - 1) <= 1e-12
    loc = unit((3, 4), seed=2).requires_grad_()
    loss = vmf_sample(torch.cat([loc, torch.zeros(1, 4, dtype=F64)]), 5.0)[:3].sum()
    loss.backward()
    assert torch.isfinite(loc.grad).all()


def test_a_dimension_beyond_int64_is_a_value_error_naming_d():
    from dhvc_ext.ops import vmf_kappa_mle, vmf_log_normalizer

    for op, args in ((vmf_log_normalizer, (2**70, 3.0)), (vmf_kappa_mle, (2**63, 0.5))):
        with pytest.raises(ValueError, match=r"d must be an int >= 2 and <= 2\^63 - 1"):
            op(*args)
    assert torch.isfinite(vmf_log_normalizer(2**62, torch.tensor(3.0, dtype=F64)))
