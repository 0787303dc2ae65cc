"""The vMF-mixture kernels: E-step log-responsibilities against a float64 reference with mpmath normalisers,
their gradients, the fused EM statistics (soft and hard) against the float64 torch composite, and the kappa MLE
against mpmath roots."""
import math

import mpmath as mp
import numpy as np
import pytest
import torch

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


@pytest.mark.parametrize("k", [3, 100])
def test_estep_op_blocks_with_non_finite_rows(k, device, dtype):
    """Several blocks of rows (the CPU kernel works on blocks, vectorised over their rows), with rows of NaN,
    +inf and all -inf scores in some of them: the composite's values, NaNs and infinities, row by row (the
    row maximum must not skip NaN: an all-NaN row has lse NaN, not -inf), and on the CPU the same bits
    whatever the number of threads."""
    n, d = 5003, 16
    g = torch.Generator().manual_seed(k)
    z = torch.randn(n, d, generator=g, dtype=F64)
    w = 20 * torch.randn(k, d, generator=g, dtype=F64)
    bias = torch.randn(k, generator=g, dtype=F64)
    z[17, 3] = math.nan  # a NaN row: every score NaN
    z[2500] = 0.0
    z[2500, 0] = math.inf  # +inf scores where w[:, 0] > 0, -inf where < 0
    z, w, bias = (t.to(device=device, dtype=dtype) for t in (z, w, bias))
    bias_inf = bias.clone()
    bias_inf[:] = -math.inf  # every score -inf: lse = -inf, log_resp NaN
    op = torch.ops.dhvc_ext._vmfmm_scores_log_softmax
    lr, lse = op(z, w, bias)
    scores = (bias.double() + z.double() @ w.double().t())
    ref_lse = torch.logsumexp(scores, 1)
    ref_lr = scores - ref_lse[:, None]
    tol = 1e-12 if dtype == F64 else 2e-3
    torch.testing.assert_close(lse.double(), ref_lse, rtol=tol, atol=tol, equal_nan=True)
    torch.testing.assert_close(lr.double(), ref_lr, rtol=tol, atol=tol, equal_nan=True)
    assert torch.isnan(lse[17]) and torch.isnan(lr[17]).all() and lse[2500] == math.inf
    assert torch.isfinite(lr[18]).all() and (lr[18].exp().sum() - 1).abs() < 1e-5
    lr_inf, lse_inf = op(z[18:1500], w, bias_inf)
    assert (lse_inf == -math.inf).all() and torch.isnan(lr_inf).all()
    # NaN beside +inf and beside -inf (torch.logsumexp gives NaN for both): a NaN component (w row 0 NaN)
    # next to the +inf row 2500, and next to components of bias -inf.
    w_nan = w.clone()
    w_nan[0] = math.nan
    for b in (bias, bias_inf):
        lr_nan, lse_nan = op(z[2495:2505], w_nan, b)
        assert torch.isnan(lse_nan).all() and torch.isnan(lr_nan).all()
    if device.type != "cpu":
        return
    # One thread against two.
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = op(z, w, bias)
        torch.set_num_threads(2)
        two = op(z, w, bias)
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(one, two):
        assert torch.equal(a.nan_to_num(0.0), b.nan_to_num(0.0)) and torch.equal(a.isnan(), b.isnan())


def em_reference(z, mu, kappa, log_pi, hard):
    """The EM statistics by the plain float64 torch composite (the slow, obvious way): all N x K scores,
    logsumexp, exp (or the one-hot argmax), r^T z."""
    z, mu, kappa, log_pi = (t.double() for t in (z, mu, kappa, log_pi))
    s = log_pi + vmf_log_normalizer(z.shape[1], kappa) + kappa * (z @ mu.t())
    lse = torch.logsumexp(s, 1)
    resp = torch.nn.functional.one_hot(s.argmax(1), s.shape[1]).double() if hard else (s - lse[:, None]).exp()
    return resp.sum(0), resp.t() @ z, lse.sum()


def em_plain(z, mu, kappa, log_pi, hard):
    """The same composite in the inputs' dtype (float32): the error the "2x the plain PyTorch error" rule allows."""
    s = log_pi + vmf_log_normalizer(z.shape[1], kappa) + kappa * (z @ mu.t())
    lse = torch.logsumexp(s, 1)
    resp = torch.nn.functional.one_hot(s.argmax(1), s.shape[1]).to(z.dtype) if hard else (s - lse[:, None]).exp()
    return resp.sum(0), resp.t() @ z, lse.double().sum()


def assert_em_close(got, ref, n, dtype, plain=None):
    """N_k and S_k to within tol * N, the total log-likelihood to within tol relative (float64: 1e-12); in
    float32 at most twice the plain float32 composite's error, with a floor of a few ulps."""
    counts, sums, total = got
    assert total.dtype == F64 and total.dim() == 0
    assert counts.dtype == dtype and sums.dtype == dtype
    scales = (max(n, 1), max(n, 1), max(abs(ref[2].item()), 1.0))
    for i, (ours, r, scale) in enumerate(zip(got, ref, scales)):
        err = (ours.double().cpu() - r.cpu()).abs().max().item() / scale if r.numel() else 0.0
        if dtype == F64:
            assert err <= 1e-12, (i, err)
        else:
            plain_err = (plain[i].double().cpu() - r.cpu()).abs().max().item() / scale if r.numel() else 0.0
            assert err <= 2 * plain_err + 16 * torch.finfo(dtype).eps, (i, err, plain_err)


# N = 10007: three slots of 3336 rows (blocks of 1504 + 1504 + 328) on the CPU, not a multiple of anything.
# d <= 12 and K <= 32 take the CPU kernel's small products (odd d and K: the tails of its 2 x 2 tiles; d = 12,
# K = 32: the largest), larger ones BLAS.
@pytest.mark.parametrize("n, d, k", [(10007, 6, 4), (3001, 7, 9), (4001, 12, 32), (1000, 64, 37), (1, 5, 3),
                                     (777, 3, 1), (0, 4, 2)])
@pytest.mark.parametrize("hard", [False, True], ids=["soft", "hard"])
def test_em_statistics_against_float64_composite(n, d, k, hard, device, dtype):
    z, mu, kappa, log_pi = mixture(n, d, k, seed=n + d, device=device, kappas=(2.0, 15.0, 60.0))
    args = [t.to(dtype) for t in (z, mu, kappa, log_pi)]
    got = vmfmm_em_statistics(*args, hard=hard)
    ref = em_reference(*args, hard)
    assert_em_close(got, ref, n, dtype, plain=em_plain(*args, hard) if dtype != F64 else None)
    if n:
        # Every point's responsibilities sum to 1.
        assert got[0].double().sum().item() == pytest.approx(n, rel=1e-12 if dtype == F64 else 1e-5)


def test_em_statistics_large_kappa_and_dimension(device, dtype):
    # kappa up to 1e6 at d = 4096, points near the means: log C_d(kappa) ~ -1e6 cancels against kappa mu^T z.
    d, k, n = 4096, 3, 300
    g = torch.Generator().manual_seed(7)
    mu = torch.nn.functional.normalize(torch.randn(k, d, generator=g, dtype=F64), dim=1)
    labels = torch.arange(n) % k
    z = torch.nn.functional.normalize(mu[labels] + 3e-3 * torch.randn(n, d, generator=g, dtype=F64), dim=1)
    kappa = torch.tensor([1e6, 3e5, 1e4], dtype=F64)
    log_pi = torch.log(torch.tensor([0.5, 0.3, 0.2], dtype=F64))
    args = [t.to(device=device, dtype=dtype) for t in (z, mu, kappa, log_pi)]
    for hard in (False, True):
        counts, sums, total = vmfmm_em_statistics(*args, hard=hard)
        assert torch.isfinite(counts).all() and torch.isfinite(sums).all() and math.isfinite(total.item())
        # The points belong to their own component beyond doubt.
        torch.testing.assert_close(counts.double().cpu(), torch.bincount(labels, minlength=k).double(), rtol=0,
                                   atol=1e-6)
        if dtype == F64:
            assert_em_close((counts, sums, total), em_reference(*args, hard), n, dtype)


def test_em_statistics_non_contiguous_z(device, dtype):
    z, mu, kappa, log_pi = (t.to(dtype) for t in mixture(5003, 8, 5, seed=11, device=device))
    wide = torch.cat([z, z.flip(1)], dim=1)  # (N, 16): z is every other column of a (N, 16) view...
    every_other = torch.stack([z, -z], dim=2).reshape(5003, 16)[:, ::2]  # ...column stride 2
    assert not every_other.is_contiguous() and torch.equal(every_other, z)
    row_strided = wide[:, :8]  # row stride 16, unit column stride: used as it is
    assert not row_strided.is_contiguous() and torch.equal(row_strided, z)
    rows_skipped = torch.stack([z, z], dim=1).reshape(10006, 8)[::2]
    expected = vmfmm_em_statistics(z, mu, kappa, log_pi)
    for view in (every_other, row_strided, rows_skipped):
        for ours, ref in zip(vmfmm_em_statistics(view, mu, kappa, log_pi), expected):
            assert torch.equal(ours, ref)


def test_em_statistics_thread_count_independent():
    # Enough rows for 64 slots: the result is the same bit for bit whatever the number of threads.
    z, mu, kappa, log_pi = mixture(64 * 4096 + 123, 8, 5, seed=2)
    before = torch.get_num_threads()
    try:
        results = []
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            results.append(vmfmm_em_statistics(z, mu, kappa, log_pi))
    finally:
        torch.set_num_threads(before)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert torch.equal(a, b)
    assert_em_close(results[0], em_reference(z, mu, kappa, log_pi, False), z.shape[0], F64)


def test_em_statistics_ties_and_impossible_components(device):
    # Two identical components: soft splits evenly, hard goes to the lower index (as torch.argmax); a component
    # of weight 0 (log_pi = -inf) gets nothing and changes nothing.
    z, mu, kappa, log_pi = mixture(3001, 4, 3, seed=4, device=device)
    mu = torch.cat([mu[:1], mu[:1], mu[1:2]])
    kappa = torch.cat([kappa[:1], kappa[:1], kappa[1:2]])
    log_pi = torch.tensor([math.log(0.5), math.log(0.5), -math.inf], dtype=F64, device=device)
    counts, sums, total = vmfmm_em_statistics(z, mu, kappa, log_pi)
    assert counts[0].item() == pytest.approx(counts[1].item(), rel=1e-14) and counts[2].item() == 0.0
    torch.testing.assert_close(sums[0], sums[1], rtol=1e-14, atol=1e-14)
    assert torch.equal(sums[2], torch.zeros_like(sums[2]))
    counts_h, sums_h, total_h = vmfmm_em_statistics(z, mu, kappa, log_pi, hard=True)
    assert counts_h.tolist() == [3001.0, 0.0, 0.0]
    torch.testing.assert_close(sums_h[0], z.sum(0), rtol=1e-13, atol=1e-12)
    assert total_h.item() == total.item()


@pytest.mark.parametrize("hard", [False, True], ids=["soft", "hard"])
def test_em_statistics_op_non_finite_rows(hard, device):
    # The op on its own: a NaN row among 5000 (its block falls back to the row-by-row routine) and an
    # all -inf row give what the composite gives: NaN or -inf spread through N_k, S_k and the total.
    g = torch.Generator().manual_seed(9)
    z = torch.nn.functional.normalize(torch.randn(5000, 3, generator=g, dtype=F64), dim=1).to(device)
    w = (10 * torch.randn(4, 3, generator=g, dtype=F64)).to(device)
    bias = torch.randn(4, generator=g, dtype=F64).to(device)

    def composite(z, w, bias):
        s = bias + z @ w.t()
        lse = torch.logsumexp(s, 1)
        if hard:
            # S_k sums the rows assigned to k (r^T z would spread a NaN row to every k through 0 * NaN).
            at = s.argmax(1)
            return torch.bincount(at, minlength=4).to(F64), torch.zeros_like(w).index_add_(0, at, z), lse.sum()
        r = (s - lse[:, None]).exp()
        return r.sum(0), r.t() @ z, lse.sum()

    op = torch.ops.dhvc_ext._vmfmm_em_statistics
    clean = op(z, w, bias, hard)
    z_nan = z.clone()
    z_nan[2500, 1] = math.nan
    for ours, ref in zip(op(z_nan, w, bias, hard), composite(z_nan, w, bias)):
        torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12, equal_nan=True)
    # Only the component row(s) the NaN row reaches are NaN; hard sends it to its first NaN score.
    assert torch.isnan(clean[2]).sum() == 0 and math.isnan(op(z_nan, w, bias, hard)[2].item())
    impossible = torch.full_like(bias, -math.inf)
    counts, sums, total = op(z, w, impossible, hard)
    assert total.item() == -math.inf
    if hard:
        assert counts.tolist() == [5000.0, 0.0, 0.0, 0.0]
    else:
        assert torch.isnan(counts).all()


def test_em_statistics_hard_sums_each_row_in_double(device, dtype):
    # Hard mode adds each row to its own component only, in double. The values lie on a grid of 2^-12 in
    # [-1, 3], so every partial sum over these 2^20 rows is exact in double, and N_k and S_k must be the exact
    # sums rounded once to the dtype, bit for bit (a float32 running sum, or a one-hot float32 product r^T z,
    # rounds on the way). Each row's own coordinate is in [2, 3] and the others in [-1, 1], w = 100 I: the
    # argmax is beyond doubt. Row 77 has a NaN coordinate, so every score of it is NaN (0 * NaN in the
    # products): it goes to its first NaN score, component 0 (as torch.argmax), and makes NaN that component's
    # coordinate only (a one-hot product r^T z would spread it to every component through 0 * NaN).
    n, d, k = 2**20 + 123, 3, 3
    g = torch.Generator().manual_seed(21)
    labels = torch.randint(0, k, (n,), generator=g)
    z = torch.randint(-4096, 4097, (n, d), generator=g).double() / 4096
    z[torch.arange(n), labels] = 2 + torch.randint(0, 4097, (n,), generator=g).double() / 4096
    z[77, 1] = math.nan
    labels[77] = 0
    w = 100 * torch.eye(k, dtype=F64)
    bias = torch.zeros(k, dtype=F64)
    want_counts = torch.bincount(labels, minlength=k).double()
    want_sums = torch.zeros(k, d, dtype=F64).index_add_(0, labels, z)
    op = torch.ops.dhvc_ext._vmfmm_em_statistics
    counts, sums, total = op(*(t.to(device=device, dtype=dtype) for t in (z, w, bias)), True)
    assert torch.equal(counts.cpu(), want_counts.to(dtype))
    torch.testing.assert_close(sums.cpu(), want_sums.to(dtype), rtol=0, atol=0, equal_nan=True)
    assert torch.isnan(sums).sum().item() == 1 and math.isnan(total.item())


def test_em_statistics_soft_float32_sums_in_double(device):
    # Soft float32 S_k: no float32 sum of r_n z_n may run over more than one block of rows (2048 rows on both
    # devices, 1504 on the CPU's small-product path) before the double accumulators. One component (r = 1
    # exactly) and every row equal to v, whose coordinates have 13 significant bits: a sum of at most 2048 of
    # them is exact in float32, any sum of them exact in double, so S_1 = N v rounded once to float32 -- where
    # a float32 running sum over 2^22 rows loses bits. N = 2^22 + 1000: whole blocks and a tail.
    n = 2**22 + 1000
    v = torch.tensor([6792.0, -5016.0, 4097.0], dtype=F64) / 8192
    z = v.expand(n, 3).to(device=device, dtype=torch.float32).contiguous()
    w = (3.0 * v).to(device=device, dtype=torch.float32)[None]
    bias = torch.zeros(1, device=device, dtype=torch.float32)
    counts, sums, total = torch.ops.dhvc_ext._vmfmm_em_statistics(z, w, bias, False)
    assert counts.item() == n
    assert torch.equal(sums.cpu(), (n * v).float()[None]), (sums.cpu().double() - n * v).tolist()


def _float32_mixture(device):
    # kappa 100 to 1600 at d = 64: a TF32 product errs by about 1e-3 kappa nats, a bfloat16 one more; float32
    # by about 1e-3 nats at most.
    return mixture(4096, 64, 16, seed=3, dtype=torch.float32, device=device, kappas=(100.0,))


class _Setting:
    """bf16 autocast, TF32 allowed, or TF32 allowed with cuBLASLt preferred, for the scope; restored after."""

    def __init__(self, name, device):
        self.name, self.device = name, device

    def __enter__(self):
        self.precision = torch.get_float32_matmul_precision()
        if self.name == "bf16-autocast":
            self.autocast = torch.autocast(self.device.type, dtype=torch.bfloat16)
            self.autocast.__enter__()
        else:
            torch.set_float32_matmul_precision("high")
        if self.name == "tf32-cublaslt":
            self.blas = torch.backends.cuda.preferred_blas_library()
            torch.backends.cuda.preferred_blas_library("cublaslt")
        return self

    def __exit__(self, *exc):
        if self.name == "bf16-autocast":
            self.autocast.__exit__(*exc)
        torch.set_float32_matmul_precision(self.precision)
        if self.name == "tf32-cublaslt":
            torch.backends.cuda.preferred_blas_library(self.blas)
        return False


@pytest.mark.parametrize("setting", ["bf16-autocast", "tf32", "tf32-cublaslt"])
def test_products_in_full_precision_under_autocast_and_tf32(setting, device):
    # The kernels' internal products are theirs: under bf16 autocast they stay float32 (an autocast product
    # came back in bfloat16, so that the E-step's dispatch failed and the EM sums were rounded to bfloat16), and
    # with TF32 allowed they do not use it. Both settings must leave the float32 results the same bits as
    # without them; with cuBLASLt preferred (whose paths ignore torch's no-TF32 guard) the float32 products
    # are taken in float64, so the results are as close to the float64 ones as the plain float32 ones are.
    if setting == "tf32-cublaslt" and device.type != "cuda":
        pytest.skip("cuBLASLt is a CUDA backend")
    z, mu, kappa, log_pi = _float32_mixture(device)
    plain_e = vmfmm_log_responsibilities(z, mu, kappa, log_pi)
    plain_em = [vmfmm_em_statistics(z, mu, kappa, log_pi, hard=hard) for hard in (False, True)]
    with _Setting(setting, device):
        if setting == "bf16-autocast":  # in force: a plain product is autocast
            assert (z @ mu.t()).dtype == torch.bfloat16
        ours_e = vmfmm_log_responsibilities(z, mu, kappa, log_pi)
        ours_em = [vmfmm_em_statistics(z, mu, kappa, log_pi, hard=hard) for hard in (False, True)]
    assert all(t.dtype == torch.float32 for t in ours_e)
    assert all(t.dtype == torch.float32 for got in ours_em for t in got[:2])
    if setting != "tf32-cublaslt":
        for ours, plain in zip([*ours_e, *ours_em[0], *ours_em[1]], [*plain_e, *plain_em[0], *plain_em[1]]):
            assert torch.equal(ours, plain)
        return
    ref_e = vmfmm_log_responsibilities(*(t.double() for t in (z, mu, kappa, log_pi)))
    for ours, plain, ref in zip(ours_e, plain_e, ref_e):
        our_err = (ours.double() - ref).abs().max().item()
        plain_err = (plain.double() - ref).abs().max().item()
        assert our_err <= 2 * plain_err + 1e-4, (our_err, plain_err)
    for hard, ours in zip((False, True), ours_em):
        ref = em_reference(z, mu, kappa, log_pi, hard)
        assert_em_close(ours, ref, z.shape[0], torch.float32, plain=em_plain(z, mu, kappa, log_pi, hard))


def test_em_statistics_opcheck(device, dtype):
    g = torch.Generator().manual_seed(5)
    z = torch.nn.functional.normalize(torch.randn(300, 3, generator=g, dtype=F64), dim=1).to(device, dtype)
    w = torch.randn(5, 3, generator=g, dtype=F64).to(device, dtype)
    bias = torch.randn(5, generator=g, dtype=F64).to(device, dtype)
    for hard in (False, True):
        torch.library.opcheck(torch.ops.dhvc_ext._vmfmm_em_statistics.default, (z, w, bias, hard))
    with pytest.raises(RuntimeError, match="_vmfmm_em_statistics: expected one dtype"):
        torch.ops.dhvc_ext._vmfmm_em_statistics(z, w.to(F64 if dtype != F64 else torch.float32), bias, False)
    with pytest.raises(RuntimeError, match="_vmfmm_em_statistics: shapes do not match"):
        torch.ops.dhvc_ext._vmfmm_em_statistics(z, w[:, :2], bias, False)


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
