"""Smoke test of an installed dhvc_ext (from the sdist or a wheel), run by tools/sdist_check.sh.

Run it from outside the source tree (`cd /tmp && python - < tools/sdist_smoke.py`), so that the installed
package is the one imported. Each public op is checked against a value computed here from SciPy/NumPy at
inputs where SciPy is accurate; the sampler against its known mean resultant length. It also checks that
the build recorded the running torch and that the distribution's metadata requires torch's major.minor.
"""
import importlib.metadata
import os
import subprocess
import sys

import numpy as np
import scipy.special as sc
import torch

import dhvc_ext
from dhvc_ext import _build_info, ops

f64 = torch.float64


def close(name, got, want, rtol, atol=0.0):
    got = np.asarray(got.detach().cpu() if isinstance(got, torch.Tensor) else got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    err = np.max(np.abs(got - want) / (atol + rtol * np.abs(want)))
    assert err <= 1.0, f"{name}: got {got}, want {want} (error {err:.3g} of the tolerance)"
    print(f"smoke: {name} OK (worst error {err:.2g} of the tolerance)")


def log_iv(nu, x):
    return np.log(sc.ive(nu, x)) + x


def log_vmf_normalizer(d, kappa):
    nu = d / 2 - 1
    return nu * np.log(kappa) - d / 2 * np.log(2 * np.pi) - log_iv(nu, kappa)


def mean_resultant(d, kappa):
    return sc.ive(d / 2, kappa) / sc.ive(d / 2 - 1, kappa)


# Installed, not read from a source tree.
here = os.path.dirname(dhvc_ext.__file__)
assert "site-packages" in here, f"dhvc_ext imported from {here}, not from an installed copy"
print(f"smoke: dhvc_ext {dhvc_ext.__version__} from {here}; torch {torch.__version__}")

# The torch coupling: the build recorded this torch, the metadata requires its major.minor.
assert _build_info.TORCH_VERSION == str(torch.__version__), (_build_info.TORCH_VERSION, torch.__version__)
major, minor = str(torch.__version__).split(".")[:2]
pin = f"torch=={major}.{minor}.*"
requires = importlib.metadata.requires("dhvc-ext")
assert pin in requires, f"metadata requires {requires}, expected {pin}"
print(f"smoke: built against torch {_build_info.TORCH_VERSION}; metadata requires {pin}")

nu = np.array([0.5, 3.0, 20.0, 100.5])
x = np.array([1.0, 10.0, 50.0, 300.0])
tnu, tx = torch.tensor(nu, dtype=f64), torch.tensor(x, dtype=f64)
close("log_bessel_iv", ops.log_bessel_iv(tnu, tx), log_iv(nu, x), rtol=1e-12)
close("bessel_iv_ratio", ops.bessel_iv_ratio(tnu, tx), sc.ive(nu + 1, x) / sc.ive(nu, x), rtol=1e-12)
# log H = log I - nu log(x/2) + lgamma(nu + 1) cancels terms of up to ~500 here: an absolute tolerance.
close("log_bessel_iv_normalized", ops.log_bessel_iv_normalized(tnu, tx),
      log_iv(nu, x) - nu * np.log(x / 2) + sc.gammaln(nu + 1), rtol=0.0, atol=1e-9)

d = 16
kappa = np.array([0.5, 10.0, 200.0])
close("vmf_log_normalizer", ops.vmf_log_normalizer(d, torch.tensor(kappa, dtype=f64)),
      log_vmf_normalizer(d, kappa), rtol=1e-12)
close("vmf_kappa_mle", ops.vmf_kappa_mle(d, torch.tensor(mean_resultant(d, kappa), dtype=f64)), kappa,
      rtol=1e-9)

# The sampler: unit vectors whose mean cosine to loc is A_d(kappa), within 5 standard errors.
torch.manual_seed(0)
n, d, k = 20000, 5, 10.0
loc = torch.nn.functional.normalize(torch.randn(d, dtype=f64), dim=0).expand(n, d)
z = ops.vmf_sample(loc, torch.full((n,), k, dtype=f64))
close("vmf_sample norms", z.norm(dim=1), np.ones(n), rtol=1e-12)
w = (z * loc).sum(1)
close("vmf_sample mean cosine", w.mean(), mean_resultant(d, k), rtol=0.0, atol=5 * float(w.std()) / n**0.5)

# The mixture E-step and EM statistics against the same sums in NumPy.
g = torch.Generator().manual_seed(1)
zz = torch.nn.functional.normalize(torch.randn(200, d, generator=g, dtype=f64), dim=1)
mu = torch.nn.functional.normalize(torch.randn(3, d, generator=g, dtype=f64), dim=1)
kap = torch.tensor([1.0, 5.0, 30.0], dtype=f64)
log_pi = torch.log(torch.tensor([0.2, 0.3, 0.5], dtype=f64))
scores = log_pi.numpy() + log_vmf_normalizer(d, kap.numpy()) + kap.numpy() * (zz.numpy() @ mu.numpy().T)
lse = sc.logsumexp(scores, axis=1)
log_resp, loglik = ops.vmfmm_log_responsibilities(zz, mu, kap, log_pi)
close("vmfmm_log_responsibilities", log_resp, scores - lse[:, None], rtol=0.0, atol=1e-12)
close("vmfmm_log_responsibilities loglik", loglik, lse, rtol=1e-12)
resp = np.exp(scores - lse[:, None])
n_k, s_k, total = ops.vmfmm_em_statistics(zz, mu, kap, log_pi)
close("vmfmm_em_statistics N_k", n_k, resp.sum(0), rtol=1e-12)
close("vmfmm_em_statistics S_k", s_k, resp.T @ zz.numpy(), rtol=0.0, atol=1e-12)
close("vmfmm_em_statistics loglik", total, lse.sum(), rtol=1e-12)

# The command line, from the environment's own bin folder.
dhvc = os.path.join(os.path.dirname(sys.executable), "dhvc")
out = subprocess.run([dhvc, "--help"], capture_output=True, text=True, check=True).stdout
assert "usage: dhvc" in out and "train" in out, out
print("smoke: dhvc --help OK")

print(f"smoke: dhvc_ext.cuda_available() = {dhvc_ext.cuda_available()}")
print("smoke: OK")
