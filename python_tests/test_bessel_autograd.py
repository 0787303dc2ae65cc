"""Gradients of the Bessel ops: gradcheck and gradgradcheck (float64) in every region of the kernels,
analytic derivatives at known points, the x = 0 limits, broadcasting reductions, and the errors for
gradients that do not exist. Derivatives against the mpmath table are in test_bessel_reference.py."""
import math

import pytest
import torch
from torch.autograd import gradcheck, gradgradcheck

from dhvc_ext.ops import bessel_iv_ratio, log_bessel_iv, vmf_log_normalizer

# (nu, x values) covering: the power series (nu < 20, x^2/4 <= nu + 1), the shifted order (nu < 20, large x),
# Olver's expansion at small, moderate and large x / nu, and very large orders.
REGIONS = {
    "series": (3.0, [0.05, 0.7, 3.5]),
    "shifted": (3.0, [4.5, 30.0, 400.0]),
    "order-zero": (0.0, [0.01, 1.0, 50.0]),
    "olver": (55.5, [0.2, 40.0, 3000.0]),
    "large-order": (5000.0, [10.0, 4000.0, 2e5]),
}


@pytest.mark.parametrize("region", list(REGIONS))
def test_gradcheck_log_bessel_iv(region, device):
    nu, xs = REGIONS[region]
    x = torch.tensor(xs, dtype=torch.float64, device=device, requires_grad=True)
    nu_t = torch.full((3,), nu, dtype=torch.float64, device=device)
    assert gradcheck(lambda t: log_bessel_iv(nu_t, t), (x,))
    assert gradgradcheck(lambda t: log_bessel_iv(nu_t, t), (x,))


@pytest.mark.parametrize("region", list(REGIONS))
def test_gradcheck_bessel_iv_ratio(region, device):
    nu, xs = REGIONS[region]
    x = torch.tensor(xs, dtype=torch.float64, device=device, requires_grad=True)
    assert gradcheck(lambda t: bessel_iv_ratio(nu, t), (x,))
    assert gradgradcheck(lambda t: bessel_iv_ratio(nu, t), (x,))


@pytest.mark.parametrize("d", [2, 3, 10, 41, 42, 512, 10000])
def test_gradcheck_vmf_log_normalizer(d, device):
    kappa = torch.tensor([0.03, 2.0, 80.0, 5000.0], dtype=torch.float64, device=device, requires_grad=True)
    assert gradcheck(lambda k: vmf_log_normalizer(d, k), (kappa,))
    assert gradgradcheck(lambda k: vmf_log_normalizer(d, k), (kappa,))


def test_half_integer_order_derivatives(device):
    # I_{1/2}(x) = sqrt(2/(pi x)) sinh x: d/dx log I = coth x - 1/(2x), d^2/dx^2 = -1/sinh^2 x + 1/(2x^2).
    x = torch.tensor([0.3, 2.0, 15.0], dtype=torch.float64, device=device, requires_grad=True)
    (g,) = torch.autograd.grad(log_bessel_iv(0.5, x).sum(), x, create_graph=True)
    (h,) = torch.autograd.grad(g.sum(), x)
    xd = x.detach()
    torch.testing.assert_close(g.detach(), 1 / torch.tanh(xd) - 0.5 / xd, rtol=1e-13, atol=0)
    torch.testing.assert_close(h, -1 / torch.sinh(xd) ** 2 + 0.5 / xd**2, rtol=1e-11, atol=0)
    # R_{1/2}(x) = coth x - 1/x: R' = -1/sinh^2 x + 1/x^2.
    (gr,) = torch.autograd.grad(bessel_iv_ratio(0.5, x).sum(), x)
    torch.testing.assert_close(gr, -1 / torch.sinh(xd) ** 2 + 1 / xd**2, rtol=1e-11, atol=0)


def test_vmf_gradient_is_minus_mean_resultant_length(device):
    kappa = torch.logspace(-3, 5, 30, dtype=torch.float64, device=device).requires_grad_()
    for d in (3, 64, 4096):
        (g,) = torch.autograd.grad(vmf_log_normalizer(d, kappa).sum(), kappa)
        torch.testing.assert_close(g, -bessel_iv_ratio(d / 2 - 1, kappa.detach()), rtol=0, atol=0)
    # d = 3: A_3(kappa) = coth kappa - 1/kappa.
    k = kappa.detach()[kappa.detach() > 0.1]
    torch.testing.assert_close(bessel_iv_ratio(0.5, k), 1 / torch.tanh(k) - 1 / k, rtol=1e-12, atol=0)


def test_gradients_at_zero(device):
    x = torch.zeros(3, dtype=torch.float64, device=device, requires_grad=True)
    nu = torch.tensor([0.0, 1.0, 9.5], dtype=torch.float64, device=device)
    (g,) = torch.autograd.grad(log_bessel_iv(nu, x).sum(), x, create_graph=True)
    # log I_0(x) = x^2/4 + ...: slope 0, curvature 1/2; log I_nu(x) ~ nu log x: slope +inf.
    assert g[0].item() == 0.0 and g[1].item() == math.inf and g[2].item() == math.inf
    (h,) = torch.autograd.grad(g[0], x)
    assert h[0].item() == 0.5
    (gr,) = torch.autograd.grad(bessel_iv_ratio(nu, x).sum(), x)
    torch.testing.assert_close(gr, 1 / (2 * nu + 2), rtol=0, atol=0)
    kappa = torch.zeros(1, dtype=torch.float64, device=device, requires_grad=True)
    (gk,) = torch.autograd.grad(vmf_log_normalizer(7, kappa).sum(), kappa)
    assert gk.item() == 0.0


def test_broadcast_gradients_reduce_to_input_shapes(device):
    nu = torch.tensor([[0.5], [4.0], [30.0]], dtype=torch.float64, device=device)
    x = torch.tensor([0.5, 8.0], dtype=torch.float64, device=device, requires_grad=True)
    (g,) = torch.autograd.grad(log_bessel_iv(nu, x).sum(), x)
    assert g.shape == x.shape
    expected = sum(torch.autograd.grad(log_bessel_iv(nu[i], x).sum(), x)[0] for i in range(3))
    torch.testing.assert_close(g, expected, rtol=1e-15, atol=0)


def test_float32_and_half_gradients(device):
    x = torch.tensor([0.5, 8.0, 300.0], dtype=torch.float32, device=device, requires_grad=True)
    (g,) = torch.autograd.grad(log_bessel_iv(20.0, x).sum(), x)
    assert g.dtype == torch.float32
    ref = bessel_iv_ratio(20.0, x.detach().double()) + 20.0 / x.detach().double()
    torch.testing.assert_close(g.double(), ref, rtol=1e-6, atol=0)
    xh = x.detach().half().requires_grad_()
    (gh,) = torch.autograd.grad(log_bessel_iv(20.0, xh).sum(), xh)
    assert gh.dtype == torch.float16


def test_no_gradient_with_respect_to_the_order(device):
    nu = torch.tensor([2.0], dtype=torch.float64, device=device, requires_grad=True)
    x = torch.tensor([3.0], dtype=torch.float64, device=device, requires_grad=True)
    for fn in (log_bessel_iv, bessel_iv_ratio):
        with pytest.raises(RuntimeError, match="no gradient with respect to the order nu"):
            fn(nu, x).sum().backward()


def test_third_derivative_of_ratio_is_refused(device):
    x = torch.tensor([3.0], dtype=torch.float64, device=device, requires_grad=True)
    (g,) = torch.autograd.grad(bessel_iv_ratio(2.0, x), x, create_graph=True)
    (h,) = torch.autograd.grad(g, x, create_graph=True)
    with pytest.raises(NotImplementedError, match="beyond the second"):
        torch.autograd.grad(h, x)
