"""Benchmarks of the Bessel ops: ours against the SciPy way and against plain PyTorch.

Inputs (benchmarks/conftest.py): 1e6 elements, nu uniform in [0, 500], x log-uniform in [1e-3, 1e4],
seed 0, float64 and float32; vmf_log_normalizer at d = 512 over a log-spaced kappa grid [1e-2, 1e5].
Every group holds ours and the plain PyTorch reference at 1 and 2 torch threads, and the SciPy way once
(SciPy is single-threaded). Each result's extra_info carries n_elements and nonfinite_share, from which
``benchmarks/summarize.py`` derives throughput and the speed-up over SciPy.

Every benchmark also checks what it timed: ours and the plain PyTorch reference must be finite and agree
(a fast wrong kernel fails here). SciPy is not held to that: its row records how often it fails, as
nonfinite_share (-inf / NaN) and inaccurate_share (finite but off: the float32 log of a subnormal ive, a
ratio of 0 where ive(nu + 1, x) underflows).
"""
import math

import numpy as np
import pytest
import torch

from dhvc_ext import testing
from conftest import torch_threads

DTYPES = ("float64", "float32")  # the keys of the bessel_inputs and kappa_grid fixtures
VMF_D = 512
# (implementation, torch threads) in every CPU group; SciPy ignores torch's thread count.
CPU_CASES = [("ours", 1), ("ours", 2), ("torch", 1), ("torch", 2), ("scipy", 1)]
# Few rounds (and no warm-up) for the slow plain-PyTorch reference: about 1 s per call at one thread,
# and far more at two when another process holds one of this machine's 2 cores.
ROUNDS = {"ours": 5, "torch": 2, "scipy": 3}
WARMUP = {"ours": 1, "torch": 0, "scipy": 1}
CUDA_ROUNDS = 20
# Agreement demanded of what was timed: |a - b| / max(1, |b|) for logs, relative for the ratio. Loose
# on purpose (python_tests/ holds the accuracy tests); it only catches wrong results. float32 leaves room
# for the reference's own float32 cancellation (up to 1e-4 in log I, 3e-4 in log C_512 where they cross 0).
TOL = {"float64": 1e-10, "float32": 1e-3}


def nonfinite_share(out):
    """Share of -inf / +inf / NaN values in a tensor or numpy array."""
    if isinstance(out, torch.Tensor):
        return float((~torch.isfinite(out)).double().mean().item())
    return float(np.mean(~np.isfinite(out)))


def _vmf_log_normalizer_scipy(d, kappa):
    """The SciPy way of log C_d(kappa): nu log kappa - d/2 log(2 pi) - log(ive(nu, kappa)) - kappa."""
    nu = d / 2 - 1
    with np.errstate(divide="ignore", invalid="ignore"):
        return nu * np.log(kappa) - d / 2 * math.log(2 * math.pi) - testing.log_bessel_iv_scipy(nu, kappa)


def _functions(op, ops):
    """op name -> {impl: callable on torch tensors (ours, torch) or numpy arrays (scipy)}."""
    table = {
        "log_bessel_iv": {
            "torch": testing.log_bessel_iv_torch,
            "scipy": testing.log_bessel_iv_scipy,
        },
        "bessel_iv_ratio": {
            "torch": testing.bessel_iv_ratio_torch,
            "scipy": testing.bessel_iv_ratio_scipy,
        },
        "vmf_log_normalizer": {
            "torch": lambda kappa: testing.vmf_log_normalizer_torch(VMF_D, kappa),
            "scipy": lambda kappa: _vmf_log_normalizer_scipy(VMF_D, kappa),
        },
    }[op]
    if ops is not None:
        if op == "vmf_log_normalizer":
            table["ours"] = lambda kappa: ops.vmf_log_normalizer(VMF_D, kappa)
        else:
            table["ours"] = getattr(ops, op)
    return table


def _errors(op, got, want):
    """Elementwise disagreement on the scale the tolerance is written in, where both are finite
    (non-finite outputs are counted separately, in nonfinite_share)."""
    got = got.detach().cpu().double().numpy() if isinstance(got, torch.Tensor) else np.asarray(got, float)
    want = want.detach().cpu().double().numpy() if isinstance(want, torch.Tensor) else np.asarray(want, float)
    finite = np.isfinite(want) & np.isfinite(got)
    scale = np.abs(want) if op == "bessel_iv_ratio" else np.maximum(1.0, np.abs(want))
    with np.errstate(invalid="ignore"):
        return np.abs(got - want)[finite] / np.maximum(scale[finite], np.finfo(float).tiny)


_EXPECTED = {}


def _expected(op, dtype_name, args_np, device="cpu"):
    """The plain PyTorch reference output for these inputs, computed once (1 thread) and cached."""
    key = (op, dtype_name, device)
    if key not in _EXPECTED:
        fn = _functions(op, None)["torch"]
        with torch_threads(1):
            _EXPECTED[key] = fn(*[torch.from_numpy(a).to(device) for a in args_np]).cpu()
    return _EXPECTED[key]


def _bench_cpu(benchmark, request, op, dtype_name, impl, threads, args_np):
    ops = request.getfixturevalue("ops") if impl == "ours" else None
    fn = _functions(op, ops)[impl]
    n = int(args_np[0].size)
    args = args_np if impl == "scipy" else tuple(torch.from_numpy(a) for a in args_np)

    benchmark.group = f"{op} {dtype_name} cpu"
    benchmark.extra_info.update(op=op, impl=impl, threads=threads, dtype=dtype_name, device="cpu",
                                n_elements=n)
    with torch_threads(threads):
        out = benchmark.pedantic(fn, args=args, rounds=ROUNDS[impl], iterations=1,
                                 warmup_rounds=WARMUP[impl])
    share = nonfinite_share(out)
    benchmark.extra_info["nonfinite_share"] = share

    err = _errors(op, out, _expected(op, dtype_name, args_np))
    benchmark.extra_info["max_error_vs_torch_reference"] = float(err.max()) if err.size else 0.0
    # Finite but wrong: SciPy's float32 log of a subnormal ive, or its ratio of two underflowed ive.
    benchmark.extra_info["inaccurate_share"] = float(np.sum(err >= TOL[dtype_name])) / n
    if impl != "scipy":  # SciPy is timed as it is; how often it fails is what its row reports
        assert share == 0.0, f"{impl} gave {share:.3%} non-finite outputs on finite inputs"
        assert err.max() < TOL[dtype_name], f"{impl} disagrees with the torch reference by {err.max():.3g}"


@pytest.mark.parametrize("impl,threads", CPU_CASES, ids=[f"{i}-t{t}" for i, t in CPU_CASES])
@pytest.mark.parametrize("dtype_name", DTYPES)
def test_log_bessel_iv(benchmark, request, bessel_inputs, dtype_name, impl, threads):
    _bench_cpu(benchmark, request, "log_bessel_iv", dtype_name, impl, threads, bessel_inputs[dtype_name])


@pytest.mark.parametrize("impl,threads", CPU_CASES, ids=[f"{i}-t{t}" for i, t in CPU_CASES])
@pytest.mark.parametrize("dtype_name", DTYPES)
def test_bessel_iv_ratio(benchmark, request, bessel_inputs, dtype_name, impl, threads):
    _bench_cpu(benchmark, request, "bessel_iv_ratio", dtype_name, impl, threads, bessel_inputs[dtype_name])


@pytest.mark.parametrize("impl,threads", CPU_CASES, ids=[f"{i}-t{t}" for i, t in CPU_CASES])
@pytest.mark.parametrize("dtype_name", DTYPES)
def test_vmf_log_normalizer(benchmark, request, kappa_grid, dtype_name, impl, threads):
    _bench_cpu(benchmark, request, "vmf_log_normalizer", dtype_name, impl, threads,
               (kappa_grid[dtype_name],))


CUDA_CASES = [(op, impl) for op in ("log_bessel_iv", "bessel_iv_ratio", "vmf_log_normalizer")
              for impl in ("ours", "torch")]


@pytest.mark.cuda
@pytest.mark.parametrize("op,impl", CUDA_CASES, ids=[f"{o}-{i}" for o, i in CUDA_CASES])
@pytest.mark.parametrize("dtype_name", DTYPES)
def test_cuda(benchmark, cuda_ops, bessel_inputs, kappa_grid, dtype_name, op, impl):
    args_np = (kappa_grid[dtype_name],) if op == "vmf_log_normalizer" else bessel_inputs[dtype_name]
    args = tuple(torch.from_numpy(a).cuda() for a in args_np)
    fn = _functions(op, cuda_ops)[impl]

    def timed():
        out = fn(*args)
        torch.cuda.synchronize()
        return out

    n = int(args_np[0].size)
    benchmark.group = f"{op} {dtype_name} cuda"
    # Bytes moved: the inputs read and the output written once (what a memory-bound kernel cannot beat).
    benchmark.extra_info.update(op=op, impl=impl, threads=0, dtype=dtype_name, device="cuda", n_elements=n,
                                bytes=(len(args) + 1) * n * args[0].element_size())
    # The device is idle when each round starts (setup) and the round ends when the kernels have (timed).
    out = benchmark.pedantic(timed, setup=torch.cuda.synchronize, rounds=CUDA_ROUNDS, iterations=1,
                             warmup_rounds=2)
    assert out.is_cuda
    share = nonfinite_share(out)
    benchmark.extra_info["nonfinite_share"] = share
    err = _errors(op, out, _expected(op, dtype_name, args_np, device="cuda"))
    benchmark.extra_info["max_error_vs_torch_reference"] = float(err.max()) if err.size else 0.0
    assert share == 0.0, f"{impl} on cuda gave {share:.3%} non-finite outputs on finite inputs"
    assert err.max() < TOL[dtype_name], f"{impl} on cuda disagrees with the torch reference: {err.max():.3g}"
