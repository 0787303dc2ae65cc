"""Tests of dhvc_ext.ops.vmf_sample (shared/KERNELS.md 2.1 and 2.2): the distribution it samples, its
numerical edges, shapes, seeding, gradients, and its integration with torch.library and torch.compile.

The distribution is checked against exact references from dhvc_ext.testing, not against another sampler:
the CDF of w = mu^T z (vmf_w_cdf, or vmf_t_cdf of t = 1 - w where w rounds to 1) by quadrature,
A_d(kappa) = E[w] and A_d'(kappa) by mpmath, and dw/dkappa by implicit reparameterisation
(vmf_dw_dkappa). The first section checks those references against closed forms and SciPy.

Statistical rules. Every sample is drawn from a fixed seed, so every test is deterministic; the thresholds
say how often a correct sampler would fail on an unlucky seed:
- moments: within 4 standard errors (two-sided p = 6.3e-5), or for a vector mean the chi-square statistic
  below its 1 - 6.3e-5 quantile;
- Kolmogorov-Smirnov at level 1e-3 on each of three seeds: a case fails if two seeds fall below 1e-3, or any
  one below 1e-6 (a correct sampler fails a case with probability about 3e-6; a wrong one fails all three).
1 - w is always computed in float64 as ||z - mu||^2 / 2 with mu = loc / ||loc|| (exact where mu^T z rounds
to 1), never as 1 - mu^T z.
"""
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import scipy.integrate
import scipy.stats
import torch

import dhvc_ext
from dhvc_ext import testing
from dhvc_ext.ops import vmf_sample

DIMS = [2, 3, 4, 5, 10, 64, 512, 4096]
KAPPAS = [0.0, 1e-3, 1.0, 50.0, 1e3, 1e5, 1e8]
SEEDS = (101, 202, 303)
# Two-sided tail probability of 4 standard errors.
P_4SE = 2 * scipy.stats.norm.sf(4.0)
KS_LEVEL = 1e-3
KS_HARD_LEVEL = 1e-6


def n_samples(d):
    """Samples per seed: 20000 up to d = 64, fewer at d = 512 and 4096 (memory and time)."""
    return 20000 if d <= 64 else (4000 if d <= 512 else 1000)


def generator(device, seed):
    return torch.Generator(device=device).manual_seed(seed)


def unit_vector(d, seed, dtype=torch.float64, device="cpu", first=None):
    """A fixed random unit vector (with first coordinate ``first`` if given), as float64 then cast."""
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(d, dtype=torch.float64, generator=g)
    if first is not None:
        v[0] = 0
        v = v / v.norm() * math.sqrt(1 - first**2)
        v[0] = first
    return (v / v.norm()).to(dtype=dtype, device=device)


def one_minus_w(z, mu):
    """t = 1 - mu^T z per sample as ||z - mu||^2 / 2, in float64 (mu normalised in float64)."""
    mu = mu.double()
    mu = mu / torch.linalg.vector_norm(mu, dim=-1, keepdim=True)
    return ((z.double() - mu) ** 2).sum(-1) / 2


def mean_and_se(x):
    x = np.asarray(x, dtype=np.float64)
    return x.mean(), x.std(ddof=1) / math.sqrt(x.size)


def chi2_limit(dof):
    return scipy.stats.chi2.isf(P_4SE, dof)


# --- the references the tests rely on -------------------------------------------------------------------


@pytest.mark.parametrize("kappa", KAPPAS)
def test_reference_cdf_closed_form_d3(kappa):
    # d = 3: P(1 - w <= t) = (1 - exp(-kappa t)) / (1 - exp(-2 kappa)), t / 2 at kappa = 0.
    t = np.concatenate([[0.0], np.logspace(-14, math.log10(2), 300)])
    want = t / 2 if kappa == 0 else np.expm1(-kappa * t) / np.expm1(-2 * kappa)
    np.testing.assert_allclose(testing.vmf_t_cdf(t, kappa, 3), want, rtol=3e-15, atol=1e-300)
    w = np.linspace(-1, 1, 201)
    np.testing.assert_allclose(testing.vmf_w_cdf(w, kappa, 3), 1 - testing.vmf_t_cdf(1 - w, kappa, 3),
                               rtol=0, atol=1e-15)
    if kappa >= 1:  # exp(kappa (w - 1)) - exp(-2 kappa) does not cancel here
        want_w = (np.exp(kappa * (w - 1)) - math.exp(-2 * kappa)) / -math.expm1(-2 * kappa)
        np.testing.assert_allclose(testing.vmf_w_cdf(w, kappa, 3), want_w, rtol=0, atol=1e-15)


@pytest.mark.parametrize("d,kappa", [(2, 0.0), (2, 3.0), (2, 1e8), (4, 0.5), (5, 2.0), (64, 1e4), (512, 1e8),
                                     (4096, 0.0), (4096, 1e3)])
def test_reference_cdf_against_scipy_quad(d, kappa):
    # The angle density exp(-2 kappa sin^2(theta/2)) sin^{d-2}(theta), integrated by QUADPACK around its mode.
    m = d - 2
    mode = 0.0 if m == 0 else math.asin(math.sqrt(2 * m / (m + math.hypot(m, 2 * kappa))))
    curvature = kappa * math.cos(mode) + (m / math.sin(mode) ** 2 if m else 0.0)
    width = 1 / math.sqrt(max(curvature, 1 / math.pi**2))
    log_peak = -2 * kappa * math.sin(mode / 2) ** 2 + (m * math.log(math.sin(mode)) if m else 0)

    def density(theta):
        log_f = -2 * kappa * math.sin(theta / 2) ** 2 + (m * math.log(math.sin(theta)) if m else 0)
        return math.exp(log_f - log_peak)

    lo, hi = max(0.0, mode - 40 * width), min(math.pi, mode + 40 * width)

    def integral(a, b):
        return scipy.integrate.quad(density, a, b, epsabs=0, epsrel=1e-13, limit=500)[0]

    norm = integral(lo, mode) + integral(mode, hi)
    thetas = [th for th in mode + width * np.array([-3.0, -1.0, 0.0, 0.5, 2.0]) if lo < th < hi]
    for theta in thetas:
        want = (integral(lo, theta) if theta <= mode else norm - integral(theta, hi)) / norm
        got = testing.vmf_t_cdf(2 * math.sin(theta / 2) ** 2, kappa, d)
        assert abs(got - want) < 1e-12, (d, kappa, theta, got, want)


@pytest.mark.parametrize("kappa", [0.5, 2.0, 20.0, 200.0, 1e5, 1e8])
def test_reference_implicit_gradient_closed_form_d3(kappa):
    # d = 3 inverse CDF t = -log(u + (1 - u) e^{-2 kappa}) / kappa differentiated at fixed u, written in t:
    # dw/dkappa = t / kappa - 2 e^{kappa (t - 2)} expm1(-kappa t) / (kappa expm1(-2 kappa)).
    t = np.logspace(-3, math.log10(1.99), 50) * min(1.0, 3 / kappa)
    want = t / kappa - 2 * np.exp(kappa * (t - 2)) * np.expm1(-kappa * t) / (kappa * math.expm1(-2 * kappa))
    np.testing.assert_allclose(testing.vmf_dw_dkappa(t, kappa, 3), want, rtol=1e-12)


@pytest.mark.parametrize("d", [2, 3, 5, 64, 512, 4096])
@pytest.mark.parametrize("kappa", [0.0, 1.0, 1e3, 1e8])
def test_reference_mean_of_cdf_matches_mean_resultant(d, kappa):
    # E[t] = int_0^2 (1 - F_t(t)) dt from the quadrature CDF against 1 - A_d(kappa) from mpmath Bessel ratios,
    # integrated in the angle (t = 2 sin^2(theta/2), dt = sin(theta) dtheta), where F is smooth for every d.
    want = testing.vmf_one_minus_mean_resultant_length(d, kappa)
    top = 2 * math.asin(math.sqrt(min(1.0, 30 * want)))
    x, w = np.polynomial.legendre.leggauss(100)
    edges = np.concatenate([[0.0], np.geomspace(top * 1e-6, top, 40)])
    total = 0.0
    for a, b in zip(edges[:-1], edges[1:]):
        theta = (a + b) / 2 + (b - a) / 2 * x
        tail = 1 - testing.vmf_t_cdf(2 * np.sin(theta / 2) ** 2, kappa, d)
        total += (tail * np.sin(theta) * w).sum() * (b - a) / 2
    assert total == pytest.approx(want, rel=1e-9)


def test_reference_mean_resultant_derivative():
    # Small kappa: A_d(kappa) = kappa / d - kappa^3 / (d^2 (d + 2)) + ..., so A_d'(0) = 1/d.
    for d in (2, 3, 100):
        assert testing.vmf_mean_resultant_derivative(d, 0.0) == 1 / d
        assert testing.vmf_mean_resultant_derivative(d, 1e-6) == pytest.approx(1 / d, rel=1e-9)
    # Against a central difference of A_d.
    for d, kappa in [(5, 2.0), (10, 1.0), (1000, 200.0)]:
        h = 1e-4 * kappa
        fd = (testing.vmf_mean_resultant_length(d, kappa + h)
              - testing.vmf_mean_resultant_length(d, kappa - h)) / (2 * h)
        assert testing.vmf_mean_resultant_derivative(d, kappa) == pytest.approx(fd, rel=1e-6)
    assert testing.vmf_mean_resultant_derivative(5, 2.0) == pytest.approx(0.14739, abs=1e-5)  # KERNELS.md 2.2


# --- the distribution ------------------------------------------------------------------------------------


def _ks_failures(name, pvalues):
    low = [p for p in pvalues if p < KS_LEVEL]
    if len(low) >= 2 or any(p < KS_HARD_LEVEL for p in pvalues):
        return [f"KS of {name}: p-values {', '.join(f'{p:.2g}' for p in pvalues)} (seeds {SEEDS})"]
    return []


@pytest.mark.parametrize("kappa", KAPPAS, ids=[f"kappa={k:g}" for k in KAPPAS])
@pytest.mark.parametrize("d", DIMS, ids=[f"d={d}" for d in DIMS])
def test_distribution(d, kappa, device, dtype):
    """Unit norm and finiteness, the law of w (KS), E[z] = A_d(kappa) mu, and a tangent part that is uniform on
    the sphere orthogonal to mu (mean 0, second moment (I - mu mu^T) / (d - 1)); every failure is listed."""
    n = n_samples(d)
    loc = unit_vector(d, seed=d, dtype=dtype, device=device)
    mu = (loc.double() / loc.double().norm()).cpu()
    norm_tol = 1e-6 if dtype == torch.float32 else 1e-12
    one_minus_a = testing.vmf_one_minus_mean_resultant_length(d, kappa)
    # KS on w itself while its spread is far above float rounding; on t = 1 - w where w crowds at 1.
    ks_on_t = one_minus_a < 1e-3
    failures, pvalues, t_all, z_perp_sum, y_all = [], [], [], torch.zeros(d, dtype=torch.float64), []
    for seed in SEEDS:
        z = vmf_sample(loc.expand(n, d), torch.full((n,), kappa, dtype=dtype, device=device),
                       generator=generator(device, seed))
        assert z.shape == (n, d) and z.dtype == dtype and z.device == loc.device
        z = z.double().cpu()
        if not torch.isfinite(z).all():
            failures.append(f"seed {seed}: {int((~torch.isfinite(z)).any(-1).sum())} non-finite samples")
            continue
        norm_err = (torch.linalg.vector_norm(z, dim=-1) - 1).abs().max().item()
        if norm_err > norm_tol:
            failures.append(f"seed {seed}: | ||z|| - 1 | up to {norm_err:.2g} > {norm_tol:g}")
        t = one_minus_w(z, mu)
        t_all.append(t)
        if ks_on_t:
            pvalues.append(scipy.stats.kstest(t.numpy(), lambda x: testing.vmf_t_cdf(x, kappa, d)).pvalue)
        else:
            w = (z @ mu).numpy()
            pvalues.append(scipy.stats.kstest(w, lambda x: testing.vmf_w_cdf(x, kappa, d)).pvalue)
        w = 1 - t
        perp = z - w[:, None] * mu  # the tangent part, sqrt(1 - w^2) y
        z_perp_sum += perp.sum(0)
        y_all.append(perp / torch.linalg.vector_norm(perp, dim=-1, keepdim=True))
    if failures:
        pytest.fail("\n".join(failures))
    failures += _ks_failures("t = 1 - w" if ks_on_t else "w = mu^T z", pvalues)

    t = torch.cat(t_all).numpy()
    y = torch.cat(y_all)
    n_all = t.size
    # E[z] along mu: E[1 - w] = 1 - A_d(kappa).
    mean, se = mean_and_se(t)
    if abs(mean - one_minus_a) > 4 * se:
        failures.append(f"E[1 - w] = {mean:.6g} +- {se:.2g}, want 1 - A_d = {one_minus_a:.6g} "
                        f"({(mean - one_minus_a) / se:+.1f} SE)")
    # E[z] orthogonal to mu is 0: each of the d - 1 directions has variance E[1 - w^2] / (d - 1).
    var_perp = np.mean(t * (2 - t)) / (d - 1)
    stat = float((z_perp_sum / n_all).pow(2).sum()) * n_all / var_perp
    if stat > chi2_limit(d - 1):
        failures.append(f"E[z] has a component orthogonal to mu: chi2 = {stat:.1f} > {chi2_limit(d - 1):.1f} "
                        f"({d - 1} dof)")
    # Tangent direction y uniform on S^{d-2} in mu-perp: E[y] = 0 and E[y y^T] = (I - mu mu^T) / (d - 1).
    stat = float(y.mean(0).pow(2).sum()) * n_all * (d - 1)
    if stat > chi2_limit(d - 1):
        failures.append(f"mean tangent direction is not 0: chi2 = {stat:.1f} > {chi2_limit(d - 1):.1f}")
    if 3 <= d <= 64:
        # Bingham's test (Mardia & Jupp 2000, 10.7.1): for y uniform on the unit sphere of a p-dimensional
        # space (here mu-perp, p = d - 1) with mean outer product S, n p (p + 2) / 2 (tr(S^2) - 1/p) is
        # asymptotically chi-square with (p - 1)(p + 2) / 2 dof; it sees any departure of E[y y^T] from I / p.
        p = d - 1
        s2 = torch.linalg.matrix_norm(y.T @ y / n_all).item() ** 2
        stat = n_all * p * (p + 2) / 2 * (s2 - 1 / p)
        dof = (p - 1) * (p + 2) // 2
        if stat > chi2_limit(dof):
            failures.append(f"second moment of the tangent direction is not (I - mu mu^T) / (d - 1): Bingham "
                            f"statistic {stat:.1f} > {chi2_limit(dof):.1f} ({dof} dof)")
    elif d > 64:  # S is d x d: probe it along two fixed directions in mu-perp instead
        c = torch.stack([unit_vector(d, seed=7), unit_vector(d, seed=8)])
        c = c - (c @ mu)[:, None] * mu  # two orthonormal directions in mu-perp
        c[0] /= c[0].norm()
        c[1] -= (c[1] @ c[0]) * c[0]
        c[1] /= c[1].norm()
        proj = y @ c.T
        for name, values, want in [("E[(c1.y)^2]", proj[:, 0] ** 2, 1 / (d - 1)),
                                   ("E[(c2.y)^2]", proj[:, 1] ** 2, 1 / (d - 1)),
                                   ("E[(c1.y)(c2.y)]", proj[:, 0] * proj[:, 1], 0.0)]:
            mean, se = mean_and_se(values.numpy())
            if abs(mean - want) > 4 * se:
                failures.append(f"{name} = {mean:.5g} +- {se:.2g}, want {want:.5g} ({(mean - want) / se:+.1f} SE)")
    if failures:
        pytest.fail(f"d = {d}, kappa = {kappa:g}, {dtype}:\n" + "\n".join(failures))


@pytest.mark.parametrize("kappa", [1.0, 1e3])
@pytest.mark.parametrize("d", [16, 17, 65, 129])
def test_distribution_where_the_float32_cpu_path_changes_layout(d, kappa, device):
    """The same checks at the dimensions around the float32 CPU path's seams: d <= 16 is drawn 16 rows at a
    time, d > 16 row by row with 64 normals per Philox batch (d - 1 = 64 and 128 fill whole batches)."""
    test_distribution(d, kappa, device, torch.float32)


@pytest.mark.parametrize("kappa", [1e6, 1e7, 1e8])
@pytest.mark.parametrize("d", [2, 3, 10, 512])
def test_float32_keeps_one_minus_w(d, kappa, device):
    # Formed as 1 - w in float32, every sample equals loc from kappa ~ 1e7 on; the stable form keeps
    # 1 - w to about 1e-5 relative. Mean of ||z - mu||^2 / 2 against 1 - A_d(kappa) ~ (d - 1) / (2 kappa).
    # t is about Gamma((d - 1)/2, 1/kappa): coefficient of variation sqrt(2 / (d - 1)).
    n = {2: 60000, 3: 40000, 10: 10000, 512: 2000}[d]
    loc = unit_vector(d, seed=5, dtype=torch.float32, device=device)
    z = vmf_sample(loc.expand(n, d), torch.full((n,), kappa, device=device), generator=generator(device, 9))
    t = one_minus_w(z.cpu(), loc.cpu())
    want = testing.vmf_one_minus_mean_resultant_length(d, kappa)
    mean, se = mean_and_se(t.numpy())
    assert 4 * se < 0.025 * want  # enough samples for the rule below to be a 2.5% rule
    assert abs(mean - want) < 4 * se, f"mean 1 - w = {mean:.5g}, want {want:.5g} ({mean / want - 1:+.2%})"
    assert (t > 0).float().mean() > 0.99  # not collapsed onto loc


# --- edges, layouts and shapes ---------------------------------------------------------------------------


@pytest.mark.parametrize("d", [2, 3, 10, 512])
@pytest.mark.parametrize("which", ["+e1", "-e1", "near+e1", "near-e1"])
def test_unit_norm_at_the_poles(d, which, device, dtype):
    # mu = +-e1 is where a Householder vector (e1 - mu) / ||e1 - mu|| without the sign trick is 0/0.
    first = {"+e1": 1.0, "-e1": -1.0, "near+e1": 1 - 1e-12, "near-e1": -1 + 1e-12}[which]
    loc = unit_vector(d, seed=3, dtype=dtype, device=device, first=first)
    n = 4000
    for kappa in (0.0, 1.0, 1e3, 1e8):
        z = vmf_sample(loc.expand(n, d), torch.full((n,), kappa, dtype=dtype, device=device),
                       generator=generator(device, 4))
        assert torch.isfinite(z).all(), f"non-finite samples at loc = {which}, kappa = {kappa}"
        norm_err = (torch.linalg.vector_norm(z.double(), dim=-1) - 1).abs().max().item()
        assert norm_err <= (1e-6 if dtype == torch.float32 else 1e-12), (kappa, norm_err)
        # The samples gather around loc (not -loc, not e1): mean 1 - w against 1 - A_d(kappa).
        mean, se = mean_and_se(one_minus_w(z.cpu(), loc.cpu()).numpy())
        want = testing.vmf_one_minus_mean_resultant_length(d, kappa)
        assert abs(mean - want) <= 4 * se + 1e-6 * want, (which, kappa, mean, want, se)


def test_non_contiguous_inputs_give_the_same_samples(device, dtype):
    n, d = 500, 7
    g = torch.Generator().manual_seed(0)
    base = torch.randn(d, n, 2, dtype=torch.float64, generator=g)
    loc = (base / base.norm(dim=0, keepdim=True)).to(dtype=dtype, device=device)[..., 0].t()  # (n, d), strided
    kappa = torch.logspace(-2, 6, 2 * n, dtype=dtype, device=device)[::2]
    assert not loc.is_contiguous() and not kappa.is_contiguous()
    a = vmf_sample(loc, kappa, generator=generator(device, 1))
    b = vmf_sample(loc.contiguous(), kappa.contiguous(), generator=generator(device, 1))
    assert torch.equal(a, b)


def test_shapes_and_broadcasting(device, dtype):
    d = 5
    loc = unit_vector(d, seed=1, dtype=dtype, device=device).expand(2, 3, d)
    kappa = torch.tensor([[0.5, 1.0, 2.0], [5.0, 10.0, 1e4]], dtype=dtype, device=device)

    def draw(k, where=loc):
        return vmf_sample(where, k, generator=generator(device, 5))

    z = draw(kappa)
    assert z.shape == (2, 3, d) and z.dtype == dtype and z.device == loc.device
    assert torch.equal(draw(kappa[..., None]), z)  # concentration (..., 1)
    # A number, a 0-dim tensor and a full tensor of that number give the same samples.
    full = draw(torch.full((2, 3), 3.0, dtype=dtype, device=device))
    assert torch.equal(draw(3.0), full)
    assert torch.equal(draw(torch.tensor(3.0, dtype=dtype, device=device)), full)
    # One loc for a batch of concentrations, and a concentration of another floating dtype.
    other = torch.float64 if dtype == torch.float32 else torch.float32
    z = draw(kappa.to(other), where=loc[0, 0])
    assert z.shape == (2, 3, d) and z.dtype == dtype
    # A single vector.
    assert draw(2.0, where=loc[0, 0]).shape == (d,)
    assert draw(torch.tensor([2.0], dtype=dtype, device=device), where=loc[0, 0]).shape == (d,)


def test_concentration_edges(device, dtype):
    # KERNELS.md / the op's documentation: kappa = +inf gives loc itself, a negative or NaN kappa gives NaN.
    d = 6
    loc = unit_vector(d, seed=2, dtype=dtype, device=device).expand(4, d)
    kappa = torch.tensor([math.inf, -1.0, math.nan, 1.0], dtype=dtype, device=device)
    z = vmf_sample(loc, kappa, generator=generator(device, 0))
    torch.testing.assert_close(z[0], loc[0], rtol=0, atol=4 * torch.finfo(dtype).eps)
    assert torch.isnan(z[1]).all() and torch.isnan(z[2]).all()
    assert torch.isfinite(z[3]).all()


def test_errors(device):
    with pytest.raises(ValueError, match="loc"):
        vmf_sample(torch.ones(4, 1, device=device), 1.0)
    with pytest.raises(ValueError, match="concentration"):
        vmf_sample(torch.eye(3, device=device), torch.ones(4, device=device))


@pytest.mark.parametrize("which", ["grad", "samples", "one_minus_w", "loc", "concentration"])
def test_backward_op_requires_one_device(which, device):
    # _vmf_sample_backward reads every tensor through raw pointers on loc's device: one elsewhere must be an
    # error naming the arguments, never a host pointer read on the GPU. On CUDA: one argument on the CPU
    # (the dispatcher picks the CUDA kernel). The CPU twin: the CPU kernel, reached by redispatch, with one
    # argument on the meta device (whose data pointer is null: without the check it would crash).
    n, d = 5, 3
    loc = unit_vector(d, seed=1, device=device).expand(n, d).contiguous()
    args = {"grad": torch.ones(n, d, dtype=torch.float64, device=device), "samples": loc.clone(),
            "one_minus_w": torch.zeros(n, dtype=torch.float64, device=device), "loc": loc,
            "concentration": torch.ones(n, dtype=torch.float64, device=device)}
    args[which] = args[which].to("cpu" if device.type == "cuda" else "meta")
    op = torch.ops.dhvc_ext._vmf_sample_backward.default
    with pytest.raises(RuntimeError, match="must be on one device"):
        if device.type == "cuda":
            op(*args.values(), True, True)
        else:
            op.redispatch(torch._C.DispatchKeySet(torch._C.DispatchKey.CPU), *args.values(), True, True)


# --- seeding ---------------------------------------------------------------------------------------------


def _batch(device, dtype, n=300, d=9):
    loc = unit_vector(d, seed=11, dtype=dtype, device=device).expand(n, d)
    kappa = torch.logspace(-3, 8, n, dtype=dtype, device=device)
    return loc, kappa


def test_manual_seed_reproduces(device, dtype):
    loc, kappa = _batch(device, dtype)
    torch.manual_seed(1234)
    a = vmf_sample(loc, kappa)
    b = vmf_sample(loc, kappa)
    torch.manual_seed(1234)
    assert torch.equal(vmf_sample(loc, kappa), a)
    assert not torch.equal(a, b)  # the generator advances between calls
    torch.manual_seed(1235)
    assert (vmf_sample(loc, kappa) != a).any(-1).all()  # another seed changes every sample


def test_explicit_generator(device, dtype):
    loc, kappa = _batch(device, dtype)
    a = vmf_sample(loc, kappa, generator=generator(device, 77))
    assert torch.equal(vmf_sample(loc, kappa, generator=generator(device, 77)), a)
    assert (vmf_sample(loc, kappa, generator=generator(device, 78)) != a).any(-1).all()
    # A generator seeded with s and torch.manual_seed(s) are the same stream...
    torch.manual_seed(77)
    assert torch.equal(vmf_sample(loc, kappa), a)
    # ...and drawing from an explicit generator leaves the default one alone.
    get_state = torch.cuda.get_rng_state if loc.is_cuda else torch.get_rng_state
    state = get_state()
    vmf_sample(loc, kappa, generator=generator(device, 79))
    assert torch.equal(get_state(), state)


@pytest.mark.parametrize("d", [3, 5, 10, 17, 64])
def test_thread_count_and_batch_size_do_not_change_samples(d, dtype):
    # Row i's sample depends on the seed and i alone: not on the number of threads, nor on the rows around it
    # (the float32 CPU path works in blocks of 16 rows and chunks of 1024, with rejection-loop lanes that take
    # the next row when they accept). n is not a multiple of 16; the concentrations span every regime.
    n = 5003
    loc = torch.randn(n, d, dtype=torch.float64, generator=torch.Generator().manual_seed(d))
    loc = (loc / loc.norm(dim=-1, keepdim=True)).to(dtype)
    kappa = torch.logspace(-3, 8, n, dtype=dtype)[torch.randperm(n, generator=torch.Generator().manual_seed(1))]
    kappa[::97] = 0.0
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        a = vmf_sample(loc, kappa, generator=generator("cpu", 3))
        torch.set_num_threads(max(2, before))
        b = vmf_sample(loc, kappa, generator=generator("cpu", 3))
    finally:
        torch.set_num_threads(before)
    assert torch.equal(a, b)
    for m in (1, 37, 1037):  # a prefix of the rows draws the same samples
        assert torch.equal(vmf_sample(loc[:m], kappa[:m], generator=generator("cpu", 3)), a[:m])


_SCALAR_PATH_SCRIPT = """
import math, sys, torch
from dhvc_ext import testing
from dhvc_ext.ops import vmf_sample
worst = 0.0
for d in (2, 3, 10, 64):
    for kappa in (0.0, 1.0, 1e3):
        g = torch.Generator().manual_seed(d)
        loc = torch.nn.functional.normalize(torch.randn(d, dtype=torch.float64, generator=g), dim=0)
        z = vmf_sample(loc.float().expand(20000, d), torch.full((20000,), kappa), generator=g.manual_seed(4))
        t = ((z.double() - loc) ** 2).sum(-1) / 2
        want = testing.vmf_one_minus_mean_resultant_length(d, kappa)
        worst = max(worst, abs(t.mean().item() - want) / (t.std().item() / math.sqrt(t.numel())))
        assert (torch.linalg.vector_norm(z.double(), dim=-1) - 1).abs().max() < 1e-6
z = vmf_sample(torch.eye(5)[:1].expand(8, 5), torch.full((8,), 2.0), generator=torch.Generator().manual_seed(0))
print(worst, *z.flatten().tolist())
"""


def test_float32_scalar_path_when_avx512_is_off():
    # ATEN_CPU_CAPABILITY below avx512 sends float32 to the scalar sampler (the path of CPUs without AVX-512):
    # it must also be right (mean 1 - w within 4 SE on a few cases, unit norm), and it draws other numbers.
    root = str(Path(dhvc_ext.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root] + [p for p in [os.environ.get("PYTHONPATH")] if p])}
    out = {}
    for capability in ("default", "avx512"):
        run = subprocess.run([sys.executable, "-c", _SCALAR_PATH_SCRIPT], capture_output=True, text=True, timeout=300,
                             cwd=tempfile.gettempdir(), env={**env, "ATEN_CPU_CAPABILITY": capability})
        assert run.returncode == 0, run.stderr[-3000:]
        values = [float(v) for v in run.stdout.split()]
        assert values[0] < 4, f"ATEN_CPU_CAPABILITY={capability}: mean 1 - w off by {values[0]:.1f} SE"
        out[capability] = values[1:]
    assert out["default"] != out["avx512"]


# --- gradients -------------------------------------------------------------------------------------------

GRAD_DIMS = [3, 5, 10, 100, 1000]
GRAD_KAPPAS = [0.5, 2.0, 20.0, 200.0]


def kappa_gradients(sampler, d, kappa, n, seed, device="cpu"):
    """Per-sample d(mu^T z)/dkappa by autograd (one concentration per row, so each row's gradient is its own),
    float64. Returns (gradients, t = 1 - w) as numpy arrays."""
    mu = unit_vector(d, seed=d + 1, device=device)
    conc = torch.full((n,), kappa, dtype=torch.float64, device=device, requires_grad=True)
    z = sampler(mu.expand(n, d), conc, generator=generator(device, seed))
    (grad,) = torch.autograd.grad((z @ mu).sum(), conc)
    return grad.cpu().numpy(), one_minus_w(z.detach().cpu(), mu.cpu()).numpy()


def grad_n_samples(d):
    return 20000 if d <= 100 else 5000


@pytest.mark.parametrize("kappa", GRAD_KAPPAS)
@pytest.mark.parametrize("d", GRAD_DIMS)
def test_concentration_gradient_is_unbiased(d, kappa, device):
    # KERNELS.md 2.2: the Monte-Carlo mean of d(mu^T z)/dkappa must be A_d'(kappa) = dE[mu^T z]/dkappa.
    grad, t = kappa_gradients(vmf_sample, d, kappa, grad_n_samples(d), seed=17, device=device)
    want = testing.vmf_mean_resultant_derivative(d, kappa)
    mean, se = mean_and_se(grad)
    assert abs(mean - want) <= 4 * se, \
        f"mean {mean:.6g} +- {se:.2g}, want {want:.6g} ({(mean - want) / se:+.1f} SE)"
    # Sample by sample: the implicit-reparameterisation dw/dkappa at the sample's own 1 - w.
    ref = testing.vmf_dw_dkappa(t, kappa, d)
    assert np.all(np.isfinite(ref))
    # The op's quadrature (two 16-point Gauss-Legendre panels on each side of the integrand's peak) is within
    # 6e-12 of the reference at every sample measured, tails included; the reference is within 1e-13 of mpmath.
    np.testing.assert_allclose(grad, ref, rtol=1e-9, atol=1e-12 * np.abs(ref).mean())


def test_the_gradient_check_rejects_the_svae_estimator():
    # The check above, applied to S-VAE's estimator (Wood's transform with its Beta draw held fixed), must
    # fail: at d = 5, kappa = 2 its mean is 0.12767 against A_d'(2) = 0.14739 (-13%, KERNELS.md 2.2).
    d, kappa = 5, 2.0
    grad, _ = kappa_gradients(testing.vmf_sample_svae_rsample, d, kappa, 20000, seed=17)
    want = testing.vmf_mean_resultant_derivative(d, kappa)
    mean, se = mean_and_se(grad)
    # The 4-SE rule fails it, with room to spare (about 60 SE with these 20000 samples).
    assert abs(mean - want) > 10 * se, \
        f"the check could not tell the biased estimator apart ({(mean - want) / se:+.1f} SE)"
    assert abs(mean - 0.12767) <= 4 * se + 1e-5  # the known bias, reproduced


def test_concentration_gradient_sums_over_broadcast(device):
    d, n = 5, 1000
    mu = unit_vector(d, seed=1, device=device)
    per_row = torch.full((n,), 2.0, dtype=torch.float64, device=device, requires_grad=True)
    shared = torch.tensor(2.0, dtype=torch.float64, device=device, requires_grad=True)
    for conc in (per_row, shared):
        z = vmf_sample(mu.expand(n, d), conc, generator=generator(device, 8))
        (z @ mu).sum().backward()
    torch.testing.assert_close(shared.grad, per_row.grad.sum(), rtol=1e-12, atol=0)


@pytest.mark.parametrize("kappa", [0.5, 20.0, 1e4])
def test_concentration_gradient_d3_matches_finite_differences(kappa, device):
    # At d = 3 the op samples by the exact inverse CDF, so with a fixed seed each sample is a smooth function
    # of kappa and its pathwise derivative is a plain derivative (no rejection step to jump over).
    d, n, h = 3, 200, 1e-6 * kappa
    mu = unit_vector(d, seed=4, device=device)
    c = unit_vector(d, seed=5, device=device)

    def f(k):
        conc = torch.full((n,), k, dtype=torch.float64, device=device)
        return vmf_sample(mu.expand(n, d), conc, generator=generator(device, 6)) @ c

    conc = torch.full((n,), kappa, dtype=torch.float64, device=device, requires_grad=True)
    (grad,) = torch.autograd.grad(vmf_sample(mu.expand(n, d), conc, generator=generator(device, 6)) @ c,
                                  conc, torch.ones(n, dtype=torch.float64, device=device))
    fd = (f(kappa + h) - f(kappa - h)) / (2 * h)
    torch.testing.assert_close(grad, fd, rtol=1e-5, atol=1e-7 * fd.abs().max().item())


@pytest.mark.parametrize("kappa", [0.5, 50.0, 1e5])
@pytest.mark.parametrize("d", [2, 3, 10, 64])
def test_loc_gradient_matches_finite_differences(d, kappa, device):
    # With a fixed seed the sample is U(loc) x with x independent of loc, a smooth function of loc while
    # sign(loc_1) (the Householder branch) does not change. Directional derivative of c^T z along a tangent
    # path loc(s) = cos(s) mu + sin(s) v that stays on the sphere, per row, both signs of loc_1.
    n, h = 64, 1e-6
    g = torch.Generator().manual_seed(d)
    mu = torch.randn(n, d, dtype=torch.float64, generator=g)
    mu[:, 0] = torch.where(torch.arange(n) % 2 == 0, 1.0, -1.0) * (0.2 + mu[:, 0].abs())  # |loc_1| away from 0
    mu = mu / mu.norm(dim=-1, keepdim=True)
    v = torch.randn(n, d, dtype=torch.float64, generator=g)
    v = v - (v * mu).sum(-1, keepdim=True) * mu
    v = v / v.norm(dim=-1, keepdim=True)
    c = torch.randn(n, d, dtype=torch.float64, generator=g)
    mu, v, c = mu.to(device), v.to(device), c.to(device)
    conc = torch.full((n,), kappa, dtype=torch.float64, device=device)

    def f(loc):
        return (vmf_sample(loc, conc, generator=generator(device, 12)) * c).sum(-1)

    loc = mu.clone().requires_grad_()
    (grad,) = torch.autograd.grad(f(loc).sum(), loc)
    directional = (grad * v).sum(-1)
    fd = (f(math.cos(h) * mu + math.sin(h) * v) - f(math.cos(h) * mu - math.sin(h) * v)) / (2 * h)
    torch.testing.assert_close(directional, fd, rtol=1e-6, atol=1e-7)


# --- torch.library integration ---------------------------------------------------------------------------


def test_opcheck(device, dtype):
    ops = torch.ops.dhvc_ext
    loc = torch.stack([unit_vector(6, seed=s, dtype=dtype, device=device) for s in range(4)]).requires_grad_()
    kappa = torch.tensor([0.0, 0.7, 30.0, 1e6], dtype=dtype, device=device, requires_grad=True)
    seed = torch.tensor([123456789, 42], dtype=torch.int64, device=device)
    torch.library.opcheck(ops.vmf_sample.default, (loc, kappa, seed))
    samples, t = ops.vmf_sample(loc.detach(), kappa.detach(), seed)
    grad = torch.randn_like(samples)
    torch.library.opcheck(ops._vmf_sample_backward.default,
                          (grad, samples, t, loc.detach(), kappa.detach(), True, True))
    # The op's second output is 1 - loc^T sample, exact (float64) where it would cancel.
    torch.testing.assert_close(t.cpu(), one_minus_w(samples.cpu(), loc.detach().cpu()),
                               rtol=1e-4 if dtype == torch.float32 else 1e-10, atol=1e-300)


def test_torch_compile_fullgraph(device):
    def loss(loc, kappa):
        z = dhvc_ext.ops.vmf_sample(loc, kappa)
        return (z * loc).sum(-1).mean(), z

    loc = torch.stack([unit_vector(8, seed=s, device=device) for s in range(32)])
    kappa = torch.logspace(-1, 4, 32, dtype=torch.float64, device=device)
    torch.manual_seed(5)
    _, eager = loss(loc, kappa)
    # aot_eager runs the same kernels, and so draws the seed from the same generator state: equal samples.
    torch.manual_seed(5)
    _, compiled = torch.compile(loss, fullgraph=True, backend="aot_eager")(loc, kappa)
    assert torch.equal(compiled, eager)
    # Inductor, with gradients through the compiled graph. Inductor replaces torch's random ops with its own
    # unless fallback_random is set, so set it to compare with eager under the same seed.
    import torch._inductor.config as inductor_config

    with inductor_config.patch(fallback_random=True):
        loc_c, kappa_c = loc.clone().requires_grad_(), kappa.clone().requires_grad_()
        torch.manual_seed(5)
        out, z = torch.compile(loss, fullgraph=True)(loc_c, kappa_c)
        out.backward()
    assert torch.equal(z, eager)
    loc_e, kappa_e = loc.clone().requires_grad_(), kappa.clone().requires_grad_()
    torch.manual_seed(5)
    loss(loc_e, kappa_e)[0].backward()
    torch.testing.assert_close(loc_c.grad, loc_e.grad)
    torch.testing.assert_close(kappa_c.grad, kappa_e.grad)
