"""Print the worst errors of the Bessel ops against the mpmath tables in python_tests/data.

The same measures as python_tests/test_bessel_reference.py (which asserts the acceptance bounds), printed as
a table for notes and the README:  python tools/accuracy_report.py [--device cuda]
"""
import argparse
from pathlib import Path

import numpy as np
import torch

from dhvc_ext.ops import bessel_iv_ratio, log_bessel_iv, vmf_log_normalizer

DATA = Path(__file__).resolve().parents[1] / "python_tests" / "data"


def load(name):
    table = np.genfromtxt(DATA / name, delimiter=",", names=True, dtype=np.float64)
    return {k: table[k] for k in table.dtype.names}


def worst(err, *cols):
    i = int(np.argmax(err))
    return err[i], ", ".join(f"{c[i]:.6g}" for c in cols)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    bessel, vmf = load("bessel_reference.csv"), load("vmf_log_normalizer_reference.csv")
    nu, x = bessel["nu"], bessel["x"]
    rows = []
    with np.errstate(all="ignore"):
        for dtype in (torch.float64, torch.float32):
            def run(fn, *cols):
                ts = [torch.as_tensor(c, dtype=dtype, device=args.device) for c in cols]
                return fn(*ts).double().cpu().numpy()

            got = run(log_bessel_iv, nu, x)
            ref = bessel["log_iv"]
            err = np.where(got == ref, 0, np.abs(got - ref) / np.maximum(1, np.abs(ref)))
            rows.append(("log_bessel_iv", dtype, "err / max(1, ref)", *worst(err, nu, x), (~np.isfinite(got) & np.isfinite(ref)).sum()))
            got = run(bessel_iv_ratio, nu, x)
            ref = bessel["ratio"]
            err = np.where(got == ref, 0, np.abs(got - ref) / np.abs(ref))
            rows.append(("bessel_iv_ratio", dtype, "relative", *worst(err, nu, x), (~np.isfinite(got) & np.isfinite(ref)).sum()))
            d, kappa, ref = vmf["d"], vmf["kappa"], vmf["log_c"]
            got = np.empty_like(ref)
            for dim in np.unique(d):
                m = d == dim
                got[m] = run(lambda k: vmf_log_normalizer(int(dim), k), kappa[m])
            err = np.where(got == ref, 0, np.abs(got - ref) / np.maximum(1, np.abs(ref)))
            rows.append(("vmf_log_normalizer", dtype, "err / max(1, ref)", *worst(err, d, kappa), (~np.isfinite(got) & np.isfinite(ref)).sum()))
    print(f"{len(nu)} Bessel rows (nu in [0, {nu.max():g}], x in [0, {x.max():g}]), {len(vmf['d'])} vMF rows, device {args.device}")
    print("| op | dtype | measure | worst error | at (nu or d, x or kappa) | non-finite where finite |")
    print("|---|---|---|---|---|---|")
    for op, dtype, measure, e, where, bad in rows:
        print(f"| {op} | {str(dtype).replace('torch.', '')} | {measure} | {e:.2e} | {where} | {bad} |")


if __name__ == "__main__":
    main()
