"""A short accuracy-and-speed report of our Bessel ops against SciPy (the main job of ``make demo``).

Run: ``python -m dhvc_ext.testing.bessel_report [--n 200000] [--seed 0]``

It prints
  (a) single-thread time per element of ours and of the SciPy way on the benchmark distribution
      (nu uniform in [0, 500], x log-uniform in [1e-3, 1e4], float64), best of 3;
  (b) the share of failed (-inf / NaN, or zero ratio) outputs of each, and how far ours is from SciPy
      where neither failed;
  (c) a few points where SciPy fails, against mpmath at 50 digits when mpmath is installed;
  (d) whether the CUDA kernels are compiled in.
Uses numpy, scipy and torch (mpmath optional). A report, not library code: it uses the references of ``dhvc_ext.testing``.
"""
import argparse
import time

import numpy as np
import scipy
import torch

from dhvc_ext import ops, testing

try:
    import mpmath
except ImportError:  # optional: the exact column is left out
    mpmath = None

# Points where the exp(-x)-scaled SciPy way under/overflows (KERNELS.md section 1).
FAILURE_POINTS = [(511.0, 100.0), (5000.0, 1e4), (49.5, 1e-8), (255.0, 1.0), (1000.0, 500.0)]


def _best_of(fn, repeats=3):
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def _valid(values, kind):
    """Outputs that can be right on these inputs (all x > 0): finite, and for the ratio also > 0
    (SciPy's ratio is 0 where ive(nu + 1, x) underflows but ive(nu, x) does not)."""
    ok = np.isfinite(values)
    return ok & (values > 0) if kind == "ratio" else ok


def _percent(share):
    return "0" if share == 0 else f"{100 * share:.1f}%"


def _mp_log_iv(nu, x):
    with mpmath.workdps(50):
        return float(mpmath.log(mpmath.besseli(mpmath.mpf(nu), mpmath.mpf(x))))


def speed_and_accuracy(n, seed):
    """Rows (op, ours ns/elem, scipy ns/elem, ours non-finite, scipy non-finite, max error where finite)."""
    nu_np, x_np = testing.benchmark_inputs(n, seed)
    nu_t, x_t = torch.from_numpy(nu_np), torch.from_numpy(x_np)
    cases = [
        ("log_bessel_iv", ops.log_bessel_iv, testing.log_bessel_iv_scipy, "log"),
        ("bessel_iv_ratio", ops.bessel_iv_ratio, testing.bessel_iv_ratio_scipy, "ratio"),
    ]
    rows = []
    for name, ours_fn, scipy_fn, kind in cases:
        ours_fn(nu_t, x_t)  # warm-up: first dispatch, page faults
        t_ours = _best_of(lambda: ours_fn(nu_t, x_t))
        t_scipy = _best_of(lambda: scipy_fn(nu_np, x_np))
        ours = ours_fn(nu_t, x_t).numpy()
        theirs = scipy_fn(nu_np, x_np)
        ours_ok, theirs_ok = _valid(ours, kind), _valid(theirs, kind)
        both = ours_ok & theirs_ok
        scale = np.abs(theirs[both]) if kind == "ratio" else np.maximum(1.0, np.abs(theirs[both]))
        err = np.abs(ours[both] - theirs[both]) / scale
        rows.append((name, 1e9 * t_ours / n, 1e9 * t_scipy / n, 1 - ours_ok.mean(), 1 - theirs_ok.mean(),
                     float(err.max()) if err.size else float("nan")))
    return rows


def failure_rows():
    """Rows (nu, x, ours log I, scipy log I, mpmath log I or None, ours R, scipy R)."""
    nu = torch.tensor([p[0] for p in FAILURE_POINTS], dtype=torch.float64)
    x = torch.tensor([p[1] for p in FAILURE_POINTS], dtype=torch.float64)
    ours = ops.log_bessel_iv(nu, x).numpy()
    ours_r = ops.bessel_iv_ratio(nu, x).numpy()
    theirs = testing.log_bessel_iv_scipy(nu.numpy(), x.numpy())
    theirs_r = testing.bessel_iv_ratio_scipy(nu.numpy(), x.numpy())
    rows = []
    for i, (a, b) in enumerate(FAILURE_POINTS):
        exact = _mp_log_iv(a, b) if mpmath is not None else None
        rows.append((a, b, ours[i], theirs[i], exact, ours_r[i], theirs_r[i]))
    return rows


def _table(header, rows):
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    fmt = "  ".join("{:>%d}" % w for w in widths)
    return "\n".join([fmt.format(*header), fmt.format(*("-" * w for w in widths))]
                     + [fmt.format(*r) for r in rows])


def report(n=200_000, seed=0):
    """The report as a string."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        speed = speed_and_accuracy(n, seed)
        fails = failure_rows()
    finally:
        torch.set_num_threads(threads)

    out = [f"dhvc_ext Bessel report (torch {torch.__version__}, scipy {scipy.__version__}, "
           f"numpy {np.__version__}{', mpmath ' + mpmath.__version__ if mpmath else ''})", ""]
    out.append(f"(a, b) {n} elements, nu ~ U[0, 500], x ~ log-U[1e-3, 1e4], float64, seed {seed}; "
               "one thread, best of 3.")
    out.append("SciPy way: log(ive(nu, x)) + x and ive(nu + 1, x) / ive(nu, x). Failed: -inf/NaN, or a "
               "ratio of 0. Error where neither failed: |diff| / max(1, |log I|), relative for the ratio.")
    out.append(_table(
        ["op", "ours ns/elem", "scipy ns/elem", "speed-up", "ours failed", "scipy failed",
         "max error vs scipy"],
        [(name, f"{to:.1f}", f"{ts:.1f}", f"{ts / to:.2f}x", _percent(fo), _percent(fs), f"{err:.2g}")
         for name, to, ts, fo, fs, err in speed]))
    out.append("")
    out.append("(c) Points where the SciPy way fails" + (" (exact: mpmath, 50 digits)" if mpmath else
                                                       " (install mpmath for an exact column)"))
    header = ["nu", "x", "ours log I", "scipy log I"] + (["mpmath log I"] if mpmath else []) + [
        "ours I_{nu+1}/I_nu", "scipy ratio"]
    rows = []
    for a, b, o, s, e, o_r, s_r in fails:
        row = [f"{a:g}", f"{b:g}", f"{o:.15g}", f"{s:.15g}"]
        if mpmath:
            row.append(f"{e:.15g}")
        rows.append(row + [f"{o_r:.6g}", f"{s_r:.6g}"])
    out.append(_table(header, rows))
    out.append("")
    out.append(f"(d) CUDA kernels compiled in: {'yes' if ops.cuda_available() else 'no'}; "
               f"CUDA device visible to torch: {'yes' if torch.cuda.is_available() else 'no'}")
    return "\n".join(out)


def main(argv=None):
    parser = argparse.ArgumentParser(description="Accuracy-and-speed report of dhvc_ext's Bessel ops")
    parser.add_argument("--n", type=int, default=200_000, help="elements timed (default 200000)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the inputs (default 0)")
    args = parser.parse_args(argv)
    if args.n < 1:
        parser.error(f"--n must be >= 1, got {args.n}")
    print(report(args.n, args.seed))


if __name__ == "__main__":
    main()
