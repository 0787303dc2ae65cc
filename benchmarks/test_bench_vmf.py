"""Benchmarks of von Mises-Fisher sampling: dhvc_ext.ops.vmf_sample against plain PyTorch, SciPy and the Power
Spherical distribution.

Inputs (benchmarks/conftest.py, vmf_locs): n = 1e5 samples per call, float32, one random unit mean direction
per row and one concentration per row (a tensor of n values, all equal to the group's kappa: the batched use,
as in a VAE, where every row may have its own), d in {3, 10, 64, 512}, kappa in {1, 50, 1e3}. One group per
(d, kappa) holds:
- ours: dhvc_ext.ops.vmf_sample, at 1 and 2 torch threads;
- torch: testing.vmf_sample_torch, Wood's sampler in vectorised plain PyTorch (a masked loop that draws
  again for the rejected rows only), at 1 and 2 threads;
- scipy: scipy.stats.vonmises_fisher(mu, kappa).rvs(n), a single parameter (one mu for the whole call, which
  is all it accepts), float64, single-threaded. Its rotation costs O(d^2) per sample (a QR-built d x d
  matrix applied by einsum), 60 us per sample at d = 512, so there it draws n = 1e4 (extra_info n_elements
  records the n of every row; benchmarks/summarize.py compares throughputs, not times);
- power_spherical: power_spherical.PowerSpherical(loc, scale).rsample() (De Cao & Aziz 2020) at 1 and 2
  threads: a different distribution, with no rejection step; the speed to beat, not a reference.
Samples per second are ``n_elements / mean`` in summarize.py's "elements/s" column.

Every benchmark also checks what it timed: shape, finiteness, unit norm, and for ours and the torch reference
the mean of 1 - mu^T z (as ||z - mu||^2 / 2) within 5 standard errors of 1 - A_d(kappa), so that a fast but
wrong sampler fails here. SciPy and Power Spherical are timed as they are: their rows record that deviation
(extra_info mean_one_minus_w_error_se, in standard errors) without failing.
A CUDA group (ours, torch, power_spherical; synchronised) runs only where a GPU and our CUDA kernels are.
"""
import math

import numpy as np
import pytest
import scipy.stats
import torch

from dhvc_ext import testing
from conftest import torch_threads

try:  # a comparison, not a dependency: its rows are skipped where it is not installed (the GPU machine)
    import power_spherical
except ImportError:
    power_spherical = None

DIMS = (3, 10, 64, 512)
KAPPAS = (1.0, 50.0, 1e3)
CPU_CASES = [("ours", 1), ("ours", 2), ("torch", 1), ("torch", 2), ("scipy", 1),
             ("power_spherical", 1), ("power_spherical", 2)]
ROUNDS = {"ours": 20, "torch": 5, "scipy": 3, "power_spherical": 5}
WARMUP = {"ours": 2, "torch": 1, "scipy": 0, "power_spherical": 1}
CUDA_ROUNDS = 20
# SciPy's samples per call, where fewer than the others' (its O(d^2) rotation: about 6 s for 1e5 at d = 512).
SCIPY_N = {512: 10_000}
# Agreement demanded of what was timed: | ||z|| - 1 | in float32, and the mean of 1 - w in standard errors.
NORM_TOL = 1e-5
MEAN_SE_TOL = 5.0


def _one_minus_w(z, loc):
    """Per-sample 1 - loc^T z as ||z - loc||^2 / 2 (torch or numpy; loc (n, d) or (d,)), summed in float64."""
    if isinstance(z, torch.Tensor):
        return ((z - loc) ** 2).sum(-1, dtype=torch.float64).cpu().numpy() / 2
    return ((z - loc) ** 2).sum(-1) / 2


def _check(benchmark, out, loc, d, kappa, n, impl):
    """Record (and for ours and torch, assert) what the timed call returned."""
    assert tuple(out.shape) == (n, d), f"{impl} returned shape {tuple(out.shape)}, want {(n, d)}"
    finite = bool(torch.isfinite(out).all()) if isinstance(out, torch.Tensor) else bool(np.isfinite(out).all())
    benchmark.extra_info["nonfinite_share"] = 0.0 if finite else float(
        (~torch.isfinite(out)).any(-1).double().mean() if isinstance(out, torch.Tensor)
        else (~np.isfinite(out)).any(-1).mean())
    norms = (torch.linalg.vector_norm(out.double(), dim=-1).cpu().numpy() if isinstance(out, torch.Tensor)
             else np.linalg.norm(out, axis=-1))
    t = _one_minus_w(out, loc)
    want = testing.vmf_one_minus_mean_resultant_length(d, kappa)
    deviation = (t.mean() - want) / (t.std(ddof=1) / math.sqrt(n))
    benchmark.extra_info["max_norm_error"] = float(np.abs(norms - 1).max())
    benchmark.extra_info["mean_one_minus_w_error_se"] = float(deviation)
    if impl in ("ours", "torch"):
        assert finite, f"{impl} gave non-finite samples"
        assert np.abs(norms - 1).max() < NORM_TOL, f"{impl}: | ||z|| - 1 | up to {np.abs(norms - 1).max():.2g}"
        assert abs(deviation) < MEAN_SE_TOL, f"{impl}: mean 1 - w is {deviation:+.1f} SE from 1 - A_d(kappa)"


def _sampler(impl, ops_sample, loc, kappa, d):
    """(callable, args, loc to check against, n) for one implementation on CPU tensors / numpy."""
    n = loc.shape[0]
    if impl == "scipy":
        n = SCIPY_N.get(d, n)
        mu = loc[0].double().numpy()
        mu = mu / np.linalg.norm(mu)
        dist = scipy.stats.vonmises_fisher(mu, kappa)
        rng = np.random.default_rng(0)
        return (lambda: dist.rvs(n, random_state=rng)), mu, n
    conc = torch.full((n,), kappa, dtype=loc.dtype, device=loc.device)
    if impl == "ours":
        return (lambda: ops_sample(loc, conc)), loc, n
    if impl == "torch":
        return (lambda: testing.vmf_sample_torch(loc, conc)), loc, n
    if power_spherical is None:
        pytest.skip("power_spherical is not installed")
    return (lambda: power_spherical.PowerSpherical(loc, conc).rsample()), loc, n


@pytest.mark.parametrize("impl,threads", CPU_CASES, ids=[f"{i}-t{t}" for i, t in CPU_CASES])
@pytest.mark.parametrize("kappa", KAPPAS, ids=[f"kappa={k:g}" for k in KAPPAS])
@pytest.mark.parametrize("d", DIMS, ids=[f"d={d}" for d in DIMS])
def test_vmf_sample(benchmark, request, vmf_locs, d, kappa, impl, threads):
    ops_sample = request.getfixturevalue("vmf_sample_op") if impl == "ours" else None
    loc = vmf_locs(d)
    fn, check_loc, n = _sampler(impl, ops_sample, loc, kappa, d)
    benchmark.group = f"vmf_sample d={d} kappa={kappa:g} cpu"
    benchmark.extra_info.update(op="vmf_sample", impl=impl, threads=threads, device="cpu", d=d, kappa=kappa,
                                dtype="float64" if impl == "scipy" else "float32", n_elements=n)
    with torch_threads(threads):
        out = benchmark.pedantic(fn, rounds=ROUNDS[impl], iterations=1, warmup_rounds=WARMUP[impl])
    _check(benchmark, out, check_loc, d, kappa, n, impl)


CUDA_IMPLS = ("ours", "torch", "power_spherical")


@pytest.mark.cuda
@pytest.mark.parametrize("impl", CUDA_IMPLS)
@pytest.mark.parametrize("kappa", KAPPAS, ids=[f"kappa={k:g}" for k in KAPPAS])
@pytest.mark.parametrize("d", DIMS, ids=[f"d={d}" for d in DIMS])
def test_vmf_sample_cuda(benchmark, cuda_ops, vmf_locs, d, kappa, impl):
    if not hasattr(cuda_ops, "vmf_sample"):
        pytest.skip("dhvc_ext.ops lacks vmf_sample")
    loc = vmf_locs(d).cuda()
    fn, check_loc, n = _sampler(impl, cuda_ops.vmf_sample, loc, kappa, d)

    def timed():
        out = fn()
        torch.cuda.synchronize()
        return out

    benchmark.group = f"vmf_sample d={d} kappa={kappa:g} cuda"
    # Bytes moved: loc and kappa read, the samples (and ours: the float64 1 - w) written.
    written = n * d * 4 + (n * 8 if impl == "ours" else 0)
    benchmark.extra_info.update(op="vmf_sample", impl=impl, threads=0, device="cuda", d=d, kappa=kappa,
                                dtype="float32", n_elements=n, bytes=n * d * 4 + n * 4 + written)
    # The device is idle when each round starts (setup) and the round ends when the kernels have (timed).
    out = benchmark.pedantic(timed, setup=torch.cuda.synchronize, rounds=CUDA_ROUNDS, iterations=1,
                             warmup_rounds=2)
    assert out.is_cuda
    _check(benchmark, out, check_loc, d, kappa, n, impl)
