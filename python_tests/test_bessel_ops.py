"""Behaviour of the Bessel ops at the edges: special values, broadcasting, layouts, dtypes, devices, errors,
and their integration with torch.library (opcheck) and torch.compile. Values against high-precision
references are in test_bessel_reference.py; gradients in test_bessel_autograd.py."""
import math

import numpy as np
import pytest
import torch

import dhvc_ext
from dhvc_ext.ops import bessel_iv_ratio, log_bessel_iv, vmf_log_normalizer

from conftest import HAS_CUDA, cuda_only

INF = math.inf
NAN = math.nan


def t(values, dtype=torch.float64, device="cpu"):
    return torch.tensor(values, dtype=dtype, device=device)


# --- special values (shared/KERNELS.md section 1, in this order) ---------------------------------------------

EDGE_CASES = [
    # nu, x, log I_nu(x), R_nu(x)
    (NAN, 1.0, NAN, NAN),
    (1.0, NAN, NAN, NAN),
    (-0.5, 1.0, NAN, NAN),
    (1.0, -1.0, NAN, NAN),
    (0.0, 0.0, 0.0, 0.0),
    (2.5, 0.0, -INF, 0.0),
    (3000.0, 0.0, -INF, 0.0),
    (0.0, INF, INF, 1.0),
    (3000.0, INF, INF, 1.0),
    (INF, 5.0, -INF, 0.0),
    (INF, INF, NAN, NAN),
]


@pytest.mark.parametrize("nu, x, log_iv, ratio", EDGE_CASES)
def test_special_values(nu, x, log_iv, ratio, device, dtype):
    got_log = log_bessel_iv(t([nu], dtype, device), t([x], dtype, device)).cpu().double().item()
    got_ratio = bessel_iv_ratio(t([nu], dtype, device), t([x], dtype, device)).cpu().double().item()
    for got, want in ((got_log, log_iv), (got_ratio, ratio)):
        if math.isnan(want):
            assert math.isnan(got)
        else:
            assert got == want


def test_vmf_special_values(device, dtype):
    kappa = t([0.0, INF, -1.0, NAN], dtype, device)
    got = vmf_log_normalizer(5, kappa).cpu().double()
    # kappa = 0: the uniform density, -log|S^4| = -log(8 pi^2 / 3).
    assert got[0].item() == pytest.approx(-math.log(8 * math.pi**2 / 3), rel=1e-7 if dtype == torch.float32 else 1e-15)
    assert got[1].item() == INF
    assert math.isnan(got[2].item()) and math.isnan(got[3].item())


def test_finite_wherever_the_value_is(device, dtype):
    # Orders and arguments across the whole range, where log(ive) + x underflows to -inf for large orders.
    nu = torch.tensor([0.0, 0.5, 19.9, 20.0, 511.0, 5000.0, 1e4], dtype=dtype, device=device)[:, None]
    x = torch.logspace(-10, 6, 33, dtype=dtype, device=device)[None, :]
    for out in (log_bessel_iv(nu, x), bessel_iv_ratio(nu, x), vmf_log_normalizer(3000, x)):
        assert torch.isfinite(out).all()
    r = bessel_iv_ratio(nu, x)
    assert ((r > 0) & (r < 1) | (r == 1) & (dtype == torch.float32)).all()


# --- independent implementations ------------------------------------------------------------------------------


def test_orders_zero_and_one_match_torch_special(device):
    # torch.special.i0e / i1e (Cephes) are an independent implementation of orders 0 and 1.
    x = torch.logspace(-6, 5, 200, dtype=torch.float64, device=device)
    ref0 = torch.log(torch.special.i0e(x)) + x
    ref1 = torch.log(torch.special.i1e(x)) + x
    torch.testing.assert_close(log_bessel_iv(0.0, x), ref0, rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(log_bessel_iv(1.0, x), ref1, rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(bessel_iv_ratio(0.0, x), torch.special.i1e(x) / torch.special.i0e(x), rtol=1e-14, atol=0)


def test_vmf_normalizer_closed_form_d3(device, dtype):
    # C_3(kappa) = kappa / (4 pi sinh kappa).
    kappa = torch.logspace(-4, 3, 50, dtype=torch.float64)
    ref = torch.log(kappa) - math.log(4 * math.pi) - (kappa + torch.log(-torch.expm1(-2 * kappa)) - math.log(2))
    got = vmf_log_normalizer(3, kappa.to(device=device, dtype=dtype)).cpu().double()
    tol = 2e-6 if dtype == torch.float32 else 1e-14
    assert ((got - ref).abs() / ref.abs().clamp(min=1)).max() <= tol


# --- broadcasting and layouts ---------------------------------------------------------------------------------


def test_broadcasting_matches_elementwise(device, dtype):
    nu = torch.tensor([[0.0], [2.5], [40.0]], dtype=dtype, device=device)  # (3, 1)
    x = torch.tensor([0.1, 1.0, 30.0, 700.0], dtype=dtype, device=device)  # (4,)
    out = log_bessel_iv(nu, x)
    assert out.shape == (3, 4)
    for i in range(3):
        for j in range(4):
            assert out[i, j] == log_bessel_iv(nu[i, 0:1], x[j : j + 1])[0]
    # Python numbers broadcast as 0-dim tensors.
    assert torch.equal(bessel_iv_ratio(2.5, x), bessel_iv_ratio(torch.full_like(x, 2.5), x))
    assert bessel_iv_ratio(2.5, 3.0).shape == ()


def test_non_contiguous_and_expanded_inputs(device, dtype):
    g = torch.Generator().manual_seed(0)
    base_x = (torch.rand(8, 12, generator=g, dtype=torch.float64) * 50).to(device=device, dtype=dtype)
    base_nu = (torch.rand(12, 8, generator=g, dtype=torch.float64) * 30).to(device=device, dtype=dtype)
    x = base_x[:, ::2]  # strided
    nu = base_nu.t()[:, 1::2]  # transposed and strided
    assert not x.is_contiguous() and not nu.is_contiguous()
    torch.testing.assert_close(log_bessel_iv(nu, x), log_bessel_iv(nu.contiguous(), x.contiguous()), rtol=0, atol=0)
    torch.testing.assert_close(bessel_iv_ratio(nu, x), bessel_iv_ratio(nu.contiguous(), x.contiguous()), rtol=0, atol=0)
    expanded = torch.tensor([3.0], dtype=dtype, device=device).expand(8, 6)
    torch.testing.assert_close(
        vmf_log_normalizer(7, x.t()), vmf_log_normalizer(7, x.t().contiguous()), rtol=0, atol=0
    )
    torch.testing.assert_close(log_bessel_iv(expanded, x), log_bessel_iv(expanded.contiguous(), x), rtol=0, atol=0)


def test_empty_input(device, dtype):
    x = torch.empty(0, 3, dtype=dtype, device=device)
    assert log_bessel_iv(1.0, x).shape == (0, 3)
    assert vmf_log_normalizer(4, x).shape == (0, 3)


# --- dtypes ---------------------------------------------------------------------------------------------------


def test_dtype_promotion():
    x64 = torch.tensor([1.5, 20.0], dtype=torch.float64)
    x32 = x64.float()
    assert log_bessel_iv(2, x32).dtype == torch.float32
    assert log_bessel_iv(torch.tensor([2.0], dtype=torch.float64), x32).dtype == torch.float64
    # torch's own rule: a 0-dim tensor does not raise the dtype of a dimensioned one of the same kind.
    assert log_bessel_iv(torch.tensor(2.0, dtype=torch.float64), x32).dtype == torch.float32
    # Integer inputs promote to the default dtype, like torch.special functions.
    ints = torch.tensor([2, 20])
    assert log_bessel_iv(2, ints).dtype == torch.get_default_dtype()
    torch.testing.assert_close(log_bessel_iv(2, ints), log_bessel_iv(2, torch.tensor([2.0, 20.0])))
    # Half and bfloat16 are computed and returned in float32 (log I overflows half precision).
    for low in (torch.float16, torch.bfloat16):
        out = log_bessel_iv(2.0, x64.to(low))
        assert out.dtype == torch.float32
        torch.testing.assert_close(out, log_bessel_iv(2.0, x64.to(low).float()), rtol=0, atol=0)
        assert vmf_log_normalizer(10, x64.to(low)).dtype == torch.float32


def test_dtype_errors():
    with pytest.raises(TypeError, match="nu must be real"):
        log_bessel_iv(torch.tensor([1 + 1j]), torch.tensor([1.0]))
    with pytest.raises(TypeError, match="x must be a tensor or a real number"):
        bessel_iv_ratio(1.0, "3")
    with pytest.raises(TypeError, match="x must be a tensor or a real number"):
        bessel_iv_ratio(1.0, True)
    # The raw op refuses mixed dtypes rather than guessing.
    with pytest.raises(RuntimeError, match="same dtype"):
        torch.ops.dhvc_ext.log_bessel_iv(torch.tensor([1.0]), torch.tensor([1.0], dtype=torch.float64))
    with pytest.raises(RuntimeError, match="float32 or float64"):
        torch.ops.dhvc_ext.bessel_iv_ratio(torch.tensor([1]), torch.tensor([1]))


def test_vmf_dimension_errors():
    with pytest.raises(ValueError, match="d must be an int >= 2"):
        vmf_log_normalizer(1, torch.tensor([1.0]))
    with pytest.raises(TypeError, match="d must be an int"):
        vmf_log_normalizer(3.0, torch.tensor([1.0]))
    with pytest.raises(TypeError, match="no gradient with respect to it"):
        vmf_log_normalizer(torch.tensor(3.0, requires_grad=True), torch.tensor([1.0]))
    assert vmf_log_normalizer(torch.tensor(3), torch.tensor([1.0])).item() == vmf_log_normalizer(3, 1.0).item()
    with pytest.raises(RuntimeError, match="d must be >= 2"):
        torch.ops.dhvc_ext.vmf_log_normalizer(torch.tensor([1.0]), 1)


# --- devices --------------------------------------------------------------------------------------------------


def test_cuda_kernels_present_when_gpu_is():
    # A visible GPU with a build that has no CUDA kernels must not pass silently.
    if torch.cuda.is_available():
        assert dhvc_ext.cuda_available(), "a GPU is visible but dhvc_ext was built without its CUDA kernels"
    else:
        assert not HAS_CUDA


def check_devices_agree(got, ref):
    """CUDA against CPU: |got - ref| <= 1e-14 max(1, |ref|), the accuracy measure of these functions
    (shared/KERNELS.md), plus one float32 rounding in float32. Both devices evaluate the same double-precision
    code, but nvcc contracts multiply-adds and libdevice's log, log1p and lgamma differ from glibc's by a few
    ulp, so the float64 results are not the same bits, and a float32 output, rounded once from them, may fall
    on the other side of a rounding boundary. NaNs and infinities must match exactly."""
    got, ref64 = got.cpu().double(), ref.cpu().double()
    assert torch.equal(got.isnan(), ref64.isnan()), "NaNs differ"
    finite = torch.isfinite(ref64)
    assert torch.equal(got[ref64.isinf()], ref64[ref64.isinf()]), "infinities differ"
    g, r = got[finite], ref64[finite]
    bound = 1e-14 * r.abs().clamp(min=1.0)
    if ref.dtype == torch.float32:
        bound = bound + torch.finfo(torch.float32).eps * r.abs()
    err = (g - r).abs()
    assert (err <= bound).all(), f"{ref.dtype}: worst error {(err / bound).max().item():.2f} x the bound"


@cuda_only
def test_cuda_matches_cpu():
    g = torch.Generator().manual_seed(1)
    nu = torch.rand(20000, generator=g, dtype=torch.float64) * 600
    x = torch.exp(torch.empty(20000, dtype=torch.float64).uniform_(-20, 14, generator=g))
    for dtype in (torch.float32, torch.float64):
        a, b = nu.to(dtype), x.to(dtype)
        for fn in (log_bessel_iv, bessel_iv_ratio):
            check_devices_agree(fn(a.cuda(), b.cuda()), fn(a, b))
        check_devices_agree(vmf_log_normalizer(512, b.cuda()), vmf_log_normalizer(512, b))
    # A 0-dim CPU tensor (or a number) combines with CUDA tensors, as in torch.
    assert log_bessel_iv(torch.tensor(2.0), x.cuda()).device.type == "cuda"


def test_devices_agree_rule():
    # The rule of test_cuda_matches_cpu on CPU values: 9e-15 relative to a large value and 9e-15 absolute on a
    # small one pass; 4e-14 does not; a NaN in place of a value does not.
    ref = t([1e5, 1e-8, -3.0, INF, NAN])
    check_devices_agree(ref + t([9e-10, 9e-15, 0, 0, 0]), ref)
    with pytest.raises(AssertionError, match="the bound"):
        check_devices_agree(ref + t([0, 0, 4e-14, 0, 0]), ref)
    with pytest.raises(AssertionError, match="NaNs differ"):
        check_devices_agree(t([1e5, NAN, -3.0, INF, NAN]), ref)
    # float32: one float32 ulp of the value on top.
    ref32 = t([3.0, 1e-8], torch.float32)
    check_devices_agree(torch.nextafter(ref32, t([INF, INF], torch.float32)), ref32)
    with pytest.raises(AssertionError, match="the bound"):
        check_devices_agree(ref32 * 1.001, ref32)


@cuda_only
def test_device_mismatch_is_an_error():
    with pytest.raises(RuntimeError, match="different devices"):
        log_bessel_iv(torch.ones(3), torch.ones(3, device="cuda"))


# --- torch.library integration --------------------------------------------------------------------------------


def _sample_inputs(device, dtype):
    nu = torch.tensor([[0.0], [3.5], [60.0]], dtype=dtype, device=device)
    x = torch.tensor([0.25, 4.0, 90.0], dtype=dtype, device=device, requires_grad=True)
    return nu, x


def test_opcheck(device, dtype):
    nu, x = _sample_inputs(device, dtype)
    ops = torch.ops.dhvc_ext
    torch.library.opcheck(ops.log_bessel_iv.default, (nu, x))
    torch.library.opcheck(ops.bessel_iv_ratio.default, (nu, x))
    torch.library.opcheck(ops._bessel_iv_ratio_derivative.default, (nu, x.detach(), 1))
    torch.library.opcheck(ops.vmf_log_normalizer.default, (x, 64))


def test_torch_compile_fullgraph(device):
    def kl_to_uniform(kappa, d: int):
        # KL(vMF(mu, kappa) || U(S^{d-1})) = kappa A_d(kappa) + log C_d(kappa) + log|S^{d-1}|.
        a = bessel_iv_ratio(d / 2 - 1, kappa)
        return kappa * a + vmf_log_normalizer(d, kappa) - vmf_log_normalizer(d, torch.zeros_like(kappa))

    kappa = torch.logspace(-2, 4, 64, dtype=torch.float64, device=device)
    compiled = torch.compile(kl_to_uniform, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(kappa, 128), kl_to_uniform(kappa, 128), rtol=0, atol=0)
    # Also with the default backend (inductor) and gradients through the compiled graph.
    k = kappa.clone().requires_grad_()
    out = torch.compile(kl_to_uniform, fullgraph=True)(k, 128).sum()
    (g,) = torch.autograd.grad(out, k)
    k2 = kappa.clone().requires_grad_()
    (g_eager,) = torch.autograd.grad(kl_to_uniform(k2, 128).sum(), k2)
    torch.testing.assert_close(g, g_eager)
    assert np.all(np.isfinite(g.detach().cpu().numpy()))


# --- log_bessel_iv_normalized ---------------------------------------------------------------------------------


def test_log_bessel_iv_normalized_matches_its_definition(device, dtype):
    from dhvc_ext.ops import log_bessel_iv_normalized

    # Where log I - nu log(x/2) + lgamma(nu+1) does not cancel much, it is the definition.
    nu = torch.tensor([[0.0], [2.5], [19.5], [60.0]], dtype=torch.float64)
    x = torch.tensor([1.0, 30.0, 500.0, 1e5], dtype=torch.float64)
    ref = log_bessel_iv(nu, x) - nu * torch.log(x / 2) + torch.lgamma(nu + 1)
    got = log_bessel_iv_normalized(nu.to(device, dtype), x.to(device, dtype)).cpu().double()
    tol = 1e-6 if dtype == torch.float32 else 1e-13
    assert ((got - ref).abs() / ref.abs().clamp(min=1)).max() <= tol
    # Where it does cancel (x << nu), the power series sum_k (x^2/4)^k / (k! (nu+1)_k) is the reference.
    nu_big, x_small = 5000.0, torch.tensor([1e-3, 1.0, 70.0], dtype=torch.float64)
    q = x_small**2 / 4
    terms = torch.ones_like(q)
    total = torch.zeros_like(q)
    for k in range(1, 40):
        terms = terms * q / (k * (nu_big + k))
        total = total + terms
    got = log_bessel_iv_normalized(nu_big, x_small.to(device, dtype)).cpu().double()
    torch.testing.assert_close(got, torch.log1p(total), rtol=1e-6 if dtype == torch.float32 else 1e-13, atol=0)
    # Edges: 0 at x = 0 (H = 1), NaN for negative input.
    edge = log_bessel_iv_normalized(torch.tensor([3.0, 3.0, -1.0], dtype=dtype, device=device),
                                    torch.tensor([0.0, -1.0, 1.0], dtype=dtype, device=device)).cpu()
    assert edge[0].item() == 0.0 and math.isnan(edge[1].item()) and math.isnan(edge[2].item())


def test_log_bessel_iv_normalized_gradients(device):
    from dhvc_ext.ops import log_bessel_iv_normalized

    x = torch.tensor([0.0, 1e-3, 2.0, 40.0, 3e3], dtype=torch.float64, device=device, requires_grad=True)
    for nu in (0.0, 3.5, 255.0):
        (g,) = torch.autograd.grad(log_bessel_iv_normalized(nu, x).sum(), x)
        torch.testing.assert_close(g, bessel_iv_ratio(nu, x.detach()), rtol=0, atol=0)
        xp = x.detach()[1:].clone().requires_grad_()
        assert torch.autograd.gradcheck(lambda t: log_bessel_iv_normalized(nu, t), (xp,))
        assert torch.autograd.gradgradcheck(lambda t: log_bessel_iv_normalized(nu, t), (xp,))
    torch.library.opcheck(torch.ops.dhvc_ext.log_bessel_iv_normalized.default,
                          (torch.tensor([[1.0], [30.0]], device=device), x.detach().float().requires_grad_()))
