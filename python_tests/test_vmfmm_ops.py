"""The vMF-mixture kernels: E-step log-responsibilities against a float64 reference with mpmath normalisers,
their gradients, the EM statistics (soft, hard, chunked), and the kappa MLE against mpmath roots."""
import math

import mpmath as mp
import numpy as np
import pytest
import torch

import dhvc_ext.ops.vmfmm as vmfmm_module
from dhvc_ext.ops import vmf_kappa_mle, vmf_log_normalizer, vmfmm_em_statistics, vmfmm_log_responsibilities

F64 = torch.float64


def mixture(n, d, k, seed, dtype=F64, device="cpu", kappas=(1.0, 30.0, 900.0)):
    g = torch.Generator().manual_seed(seed)
    z = torch.nn.functional.normalize(torch.randn(n, d, generator=g, dtype=F64), dim=1)
    mu = torch.nn.functional.normalize(torch.randn(k, d, generator=g, dtype=F64), dim=1)
    kappa = torch.tensor([kappas[i % len(kappas)] * (1 + i) for i in range(k)], dtype=F64)
    log_pi = torch.log_softmax(torch.randn(k, generator=g, dtype=F64), 0)
    return [t.to(device=device, dtype=dtype) for t in (z, mu, kappa, log_pi)]


def mp_log_normalizer(d, kappa):
    """log C_d(kappa) with mpmath, 40 digits."""
    with mp.workdps(40):
        nu = mp.mpf(d) / 2 - 1
        k = mp.mpf(float(kappa))
        if k == 0:
            return float(-(mp.log(2) + mp.mpf(d) / 2 * mp.log(mp.pi) - mp.loggamma(mp.mpf(d) / 2)))
        return float(nu * mp.log(k) - mp.mpf(d) / 2 * mp.log(2 * mp.pi) - mp.log(mp.besseli(nu, k)))


@pytest.mark.parametrize("d, k", [(3, 4), (64, 10), (512, 3)])
def test_log_responsibilities_against_float64_reference(d, k, device, dtype):
    z, mu, kappa, log_pi = mixture(300, d, k, seed=d, device=device)
    # Exact-ish reference: float64 scores with mpmath normalisers.
    log_c = torch.tensor([mp_log_normalizer(d, x) for x in kappa.cpu()], dtype=F64, device=device)
    s = log_pi + log_c + kappa * (z @ mu.t())
    ref_ll = torch.logsumexp(s, 1)
    ref_lr = s - ref_ll[:, None]
    lr, ll = vmfmm_log_responsibilities(*(t.to(dtype) for t in (z, mu, kappa, log_pi)))
    assert lr.dtype == dtype and ll.dtype == dtype and lr.shape == (300, k)
    # The plain PyTorch composite in the same dtype, with the normaliser computed in that dtype too.
    zc, muc, kc, lpc = (t.to(dtype) for t in (z, mu, kappa, log_pi))
    sc = lpc + vmf_log_normalizer(d, kc) + kc * (zc @ muc.t())
    plain_ll = torch.logsumexp(sc, 1)
    plain_lr = sc - plain_ll[:, None]
    for ours, plain, ref in ((lr, plain_lr, ref_lr), (ll, plain_ll, ref_ll)):
        our_err = (ours.double() - ref).abs().max().item()
        plain_err = (plain.double() - ref).abs().max().item()
        # "At most 2x the plain PyTorch error", with a floor of a few ulps of the values' size.
        floor = 8 * torch.finfo(dtype).eps * max(1.0, ref.abs().max().item())
        assert our_err <= 2 * plain_err + floor, (our_err, plain_err)


def test_gradients(device):
    z, mu, kappa, log_pi = mixture(7, 4, 3, seed=1, device=device, kappas=(0.5, 3.0, 20.0))
    args = [t.clone().requires_grad_() for t in (z, mu, kappa, log_pi)]

    def f(*a):
        lr, ll = vmfmm_log_responsibilities(*a)
        return lr, ll

    assert torch.autograd.gradcheck(f, args)
    assert torch.autograd.gradgradcheck(f, args)


def test_estep_op_opcheck_and_edges(device):
    g = torch.Generator().manual_seed(5)
    z = torch.randn(6, 3, generator=g, dtype=F64).to(device).requires_grad_()
    w = torch.randn(5, 3, generator=g, dtype=F64).to(device).requires_grad_()
    bias = torch.randn(5, generator=g, dtype=F64).to(device).requires_grad_()
    torch.library.opcheck(torch.ops.dhvc_ext._vmfmm_scores_log_softmax.default, (z, w, bias))
    lr, lse = torch.ops.dhvc_ext._vmfmm_scores_log_softmax(z.detach(), w.detach(), bias.detach())
    scores = bias.detach() + z.detach() @ w.detach().t()
    torch.testing.assert_close(lse, torch.logsumexp(scores, 1), rtol=1e-15, atol=0)
    # Huge scores do not overflow; a component with bias -inf gets log-responsibility -inf.
    zz = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=F64, device=device)
    ww = torch.tensor([[1e300, 0.0], [0.0, 0.0]], dtype=F64, device=device)
    lr, lse = torch.ops.dhvc_ext._vmfmm_scores_log_softmax(zz, ww, torch.tensor([0.0, -math.inf], dtype=F64, device=device))
    assert torch.isfinite(lse).all() and lr[0, 0].item() == 0.0 and lr[1, 1].item() == -math.inf


@pytest.mark.parametrize("hard", [False, True])
def test_em_statistics(hard, device, monkeypatch):
    z, mu, kappa, log_pi = mixture(1000, 6, 4, seed=3, device=device, kappas=(2.0, 5.0))
    lr, ll = vmfmm_log_responsibilities(z, mu, kappa, log_pi)
    resp = torch.nn.functional.one_hot(lr.argmax(1), 4).to(F64) if hard else lr.exp()
    counts, sums, total = vmfmm_em_statistics(z, mu, kappa, log_pi, hard=hard)
    torch.testing.assert_close(counts, resp.sum(0), rtol=1e-13, atol=1e-12)
    torch.testing.assert_close(sums, resp.t() @ z, rtol=1e-13, atol=1e-12)
    torch.testing.assert_close(total, ll.sum(), rtol=1e-13, atol=0)
    assert counts.sum().item() == pytest.approx(1000, rel=1e-13)
    # Chunking does not change the result.
    monkeypatch.setattr(vmfmm_module, "EM_CHUNK_ROWS", 77)
    counts2, sums2, total2 = vmfmm_em_statistics(z, mu, kappa, log_pi, hard=hard)
    torch.testing.assert_close(counts2, counts, rtol=1e-13, atol=1e-12)
    torch.testing.assert_close(sums2, sums, rtol=1e-13, atol=1e-12)
    torch.testing.assert_close(total2, total, rtol=1e-13, atol=0)


def test_argument_errors():
    z, mu, kappa, log_pi = mixture(5, 3, 2, seed=0)
    with pytest.raises(ValueError, match="share a dimension"):
        vmfmm_log_responsibilities(z, mu[:, :2], kappa, log_pi)
    with pytest.raises(ValueError, match="kappa and log_pi must have shape"):
        vmfmm_log_responsibilities(z, mu, kappa[:1], log_pi)
    with pytest.raises(ValueError, match="z must be"):
        vmfmm_log_responsibilities(z[0], mu, kappa, log_pi)
    with pytest.raises(ValueError, match="d must be an int >= 2"):
        vmf_kappa_mle(1, 0.5)


def mp_kappa_mle(d, rbar):
    """The root of A_d(kappa) = rbar with mpmath (50 digits), bracketed by Banerjee's start."""
    with mp.workdps(50):
        nu = mp.mpf(d) / 2 - 1
        r = mp.mpf(rbar)
        a = lambda k: mp.besseli(nu + 1, k) / mp.besseli(nu, k) - r  # noqa: E731
        start = r * (d - r * r) / (1 - r * r)
        return float(mp.findroot(a, start, tol=mp.mpf(10) ** -40))


@pytest.mark.parametrize("d", [2, 3, 10, 100, 1000])
def test_kappa_mle_against_mpmath(d, device):
    rbars = [1e-6, 0.05, 0.3, 0.5, 0.7, 0.95, 0.999]
    got = vmf_kappa_mle(d, torch.tensor(rbars, dtype=F64, device=device)).cpu()
    for r, k in zip(rbars, got.tolist()):
        ref = mp_kappa_mle(d, r)
        assert abs(k - ref) <= 1e-10 * ref, (d, r, k, ref)


def test_kappa_mle_large_dimension(device):
    # d = 10000: mpmath's besseli does not converge there in reasonable time, so check the root through the
    # ratio op (itself checked against mpmath to 3e-16, test_bessel_reference.py): A(kappa) = rbar to 1e-14,
    # which bounds the kappa error by 1e-14 A / (kappa A'(kappa)) relative.
    d = 10000
    rbars = torch.tensor([1e-6, 0.05, 0.3, 0.5, 0.7, 0.95, 0.999], dtype=F64, device=device)
    kappa = vmf_kappa_mle(d, rbars)
    residual = (dhvc_ext_ratio(d, kappa) - rbars).abs() / rbars
    assert residual.max().item() <= 1e-14
    slope = torch.ops.dhvc_ext._bessel_iv_ratio_derivative(torch.tensor(d / 2 - 1, dtype=F64, device=device), kappa, 1)
    kappa_rel_err_bound = residual * rbars / (kappa * slope)
    assert kappa_rel_err_bound.max().item() <= 1e-10


def test_kappa_mle_edges_and_gradient(device, dtype):
    r = torch.tensor([0.0, 1.0, 1.5, -0.1, math.nan], dtype=dtype, device=device)
    k = vmf_kappa_mle(5, r).cpu()
    assert k[0].item() == 0.0 and k[1].item() == math.inf and k[2].item() == math.inf
    assert math.isnan(k[3].item()) and math.isnan(k[4].item())
    # A_d(kappa_mle(rbar)) = rbar, and dkappa/drbar = 1 / A_d'(kappa).
    rbar = torch.tensor([0.1, 0.6, 0.99], dtype=F64, device=device, requires_grad=True)
    kappa = vmf_kappa_mle(7, rbar)
    torch.testing.assert_close(dhvc_ext_ratio(7, kappa.detach()), rbar.detach(), rtol=1e-14, atol=0)
    assert torch.autograd.gradcheck(lambda x: vmf_kappa_mle(7, x), (rbar,))
    torch.library.opcheck(torch.ops.dhvc_ext.vmf_kappa_mle.default, (rbar.detach().to(dtype), 7))


def dhvc_ext_ratio(d, kappa):
    from dhvc_ext.ops import bessel_iv_ratio

    return bessel_iv_ratio(d / 2 - 1, kappa)
