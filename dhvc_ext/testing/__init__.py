"""Slow, obviously-correct reference implementations, for tests, benchmarks and reports only: the runtime
package never imports ``dhvc_ext.testing`` (python_tests/test_layering.py checks it). One module per subject:

* ``dhvc_ext.testing.bessel``: the Bessel functions and log C_d the SciPy way (``*_scipy``) and in plain
  vectorised PyTorch (``*_torch``), and the benchmark inputs;
* ``dhvc_ext.testing.vmf``: Wood's sampler in plain PyTorch, the S-VAE estimator, and exact laws of w = mu^T z
  (CDFs by quadrature, A_d and A_d' by mpmath);
* ``dhvc_ext.testing.mixture``: SciPy's ive normaliser, the kappa MLE by root finding, the plain NumPy EM;
* ``dhvc_ext.testing.bessel_report``: ``python -m dhvc_ext.testing.bessel_report``, ours against SciPy.

Every public name of the three reference modules is also importable from ``dhvc_ext.testing`` itself.
"""
from dhvc_ext.testing.bessel import *  # noqa: F401,F403
from dhvc_ext.testing.bessel import __all__ as _bessel
from dhvc_ext.testing.mixture import *  # noqa: F401,F403
from dhvc_ext.testing.mixture import __all__ as _mixture
from dhvc_ext.testing.vmf import *  # noqa: F401,F403
from dhvc_ext.testing.vmf import __all__ as _vmf

__all__ = [*_bessel, *_vmf, *_mixture]
