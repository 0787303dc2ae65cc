"""``torch.distributions`` classes on the unit sphere S^{d-1} in R^d, built on ``dhvc_ext.ops``.

- ``VonMisesFisher(loc, concentration)``: density C_d(kappa) exp(kappa mu^T z) with respect to the surface
  measure of S^{d-1}; reparameterised sampling (``rsample``) through ``dhvc_ext.ops.vmf_sample``.
- ``HypersphericalUniform(dim)``: the uniform distribution on S^{dim-1}, density 1 / |S^{dim-1}|.
- KL divergences registered with ``torch.distributions.kl.register_kl``: vMF || uniform, vMF || vMF,
  uniform || vMF and uniform || uniform.

Convention: the dimension ``d`` (also ``dim``) is always the ambient dimension, ``loc.shape[-1]``; the
sphere is S^{d-1} (d = 3 is the ordinary sphere in R^3). d >= 2.

All the special-function work (log C_d, A_d = I_{d/2}/I_{d/2-1}) is done by the ops, which stay finite and
accurate for d up to 1e4 and kappa up to 1e6 and carry first and second derivatives with respect to kappa;
this module only composes them (formulas in shared/KERNELS.md section 2):

    log_prob(z)  = log C_d(kappa) + kappa mu^T z    (computed as (log C_d + kappa) - kappa |z - mu|^2 / 2)
    entropy      = -log C_d(kappa) - kappa A_d(kappa)
    mean         = A_d(kappa) mu
    KL(vMF(mu1, k1) || vMF(mu2, k2)) = log C_d(k1) - log C_d(k2) + A_d(k1) (k1 - k2 mu2^T mu1)
    KL(vMF(mu, k) || uniform)        = k A_d(k) - log H_nu(k),  log H_nu = log_bessel_iv_normalized(nu, k)

Accuracy: each formula inherits the cancellation it contains. In float64 log_prob and entropy are accurate
to about 1e-16 times the size of their terms (kappa, |log C_d|), e.g. 1e-11 absolute at kappa = 1e5. The KL
to the uniform is computed from log H_nu directly (not as log C_d(k) - log C_d(0), which would leave an
absolute error of eps |log|S^{d-1}||, 4e-12 at d = 1e4), so it keeps its relative accuracy as kappa -> 0,
where it is about kappa^2 / (2 d). Float32 parameters are computed in float64 inside the ops and rounded
once, so float32 log C_d has a relative error of about 6e-8 of its size.
"""
import numbers

import torch
from torch.distributions import Distribution, constraints
from torch.distributions.kl import register_kl

from dhvc_ext import ops
from dhvc_ext.ops import bessel_iv_ratio, log_bessel_iv_normalized, vmf_log_normalizer

__all__ = ["HypersphericalUniform", "VonMisesFisher", "sphere"]


class _Sphere(constraints.Constraint):
    """Unit vectors: the last dimension is the event, | ||x|| - 1 | <= max(sqrt(eps), 1e-6) for x's dtype.

    That is 1e-6 in float64 and sqrt(eps) = 3.5e-4 in float32 (0.03 in float16): it accepts any vector
    normalised in its own dtype however long it is, and a float32-normalised vector cast to float64 (which is
    about 6e-8 off), while rejecting vectors a user forgot to normalise. NaN and infinite entries are outside
    the sphere.
    """

    is_discrete = False
    event_dim = 1

    def check(self, value):
        compute = value if value.dtype == torch.float64 else value.float()
        tol = max(torch.finfo(value.dtype if value.is_floating_point() else torch.float32).eps ** 0.5, 1e-6)
        return (torch.linalg.vector_norm(compute, dim=-1) - 1).abs() <= tol


#: The unit sphere as a constraint (``event_dim`` 1): the support of both distributions, and the constraint
#: on ``VonMisesFisher.loc``.
sphere = _Sphere()


def _check_dim(d, who):
    if isinstance(d, torch.Tensor) and d.dim() == 0 and not d.is_floating_point() and not d.is_complex():
        d = int(d)
    if isinstance(d, bool) or not isinstance(d, numbers.Integral) or d < 2:
        raise ValueError(f"{who}: the ambient dimension d must be an int >= 2 (the sphere S^(d-1) in R^d), got {d!r}")
    return int(d)


class VonMisesFisher(Distribution):
    """The von Mises-Fisher distribution on S^{d-1} in R^d: density C_d(kappa) exp(kappa mu^T z).

    Args:
        loc: mean direction mu, a tensor of shape (..., d), unit vectors along the last dimension, d >= 2.
        concentration: kappa >= 0, a number, a 0-dim tensor, a tensor of shape (...) that broadcasts with
            loc.shape[:-1], or a tensor of shape (..., 1) with as many dimensions as loc (a ``keepdim=True``
            layout; the trailing 1 is dropped, as ``dhvc_ext.ops.vmf_sample`` does). Tensors are the floating
            dtype that torch's promotion of loc and concentration gives; a Python number takes loc's dtype.
        validate_args: as in ``torch.distributions``. When on (torch's default outside ``python -O``), a loc
            off the unit sphere (see ``sphere``), a negative or NaN concentration, and in ``log_prob`` a value
            of the wrong last size or off the sphere raise ValueError naming the argument. When off, nothing
            is checked: a negative concentration gives NaN from the ops, and ``log_prob`` of a non-unit value
            is the expression of ``log_prob``'s docstring, which equals the formula on the sphere only.

    Shapes: ``batch_shape`` is the broadcast of loc.shape[:-1] and concentration's shape (without the trailing
    1 of the (..., 1) layout); ``event_shape`` is (d,). ``loc`` and ``concentration`` are stored expanded to
    batch_shape + (d,) and batch_shape.

    Limits: kappa = 0 is the uniform distribution (log_prob = -log|S^{d-1}|, mean 0, entropy log|S^{d-1}|).
    kappa = +inf is the point mass at loc: mode, mean and samples are loc, entropy is -inf, but there is no
    density, and log_prob's value there (+inf or NaN) means nothing. The KL formulas are not special-cased
    for infinite concentrations either.

    ``d`` and ``dim`` are the ambient dimension d (an int); ``mean_resultant_length`` is A_d(kappa) = ||E z||.
    """

    arg_constraints = {"loc": sphere, "concentration": constraints.nonnegative}
    support = sphere
    has_rsample = True

    def __init__(self, loc, concentration, validate_args=None):
        if not isinstance(loc, torch.Tensor):
            loc = torch.as_tensor(loc, dtype=torch.get_default_dtype())
        if loc.dim() < 1:
            raise ValueError("VonMisesFisher: loc must have shape (..., d) with d >= 2, got a 0-dim tensor")
        d = _check_dim(loc.shape[-1], f"VonMisesFisher: loc of shape {tuple(loc.shape)}")
        if not loc.is_floating_point():
            loc = loc.to(torch.get_default_dtype())
        if isinstance(concentration, torch.Tensor):
            if concentration.is_floating_point():
                loc = loc.to(torch.promote_types(loc.dtype, concentration.dtype))
            kappa = concentration.to(loc.dtype)
            if kappa.dim() == 0:
                kappa = kappa.to(loc.device)
            elif kappa.device != loc.device:
                raise ValueError(
                    f"VonMisesFisher: loc is on {loc.device} but concentration is on {kappa.device}"
                )
            if kappa.dim() == loc.dim() and kappa.shape[-1] == 1:  # the rule of dhvc_ext.ops.vmf_sample
                kappa = kappa.squeeze(-1)
        elif isinstance(concentration, numbers.Real) and not isinstance(concentration, bool):
            kappa = torch.tensor(float(concentration), dtype=loc.dtype, device=loc.device)
        else:
            raise TypeError(
                f"VonMisesFisher: concentration must be a tensor or a real number, got {type(concentration).__name__}"
            )
        try:
            batch_shape = torch.broadcast_shapes(loc.shape[:-1], kappa.shape)
        except RuntimeError:
            raise ValueError(
                f"VonMisesFisher: concentration of shape {tuple(concentration.shape)} does not broadcast with "
                f"loc of shape {tuple(loc.shape)}: expected a shape broadcastable with loc.shape[:-1] = "
                f"{tuple(loc.shape[:-1])}, or that shape followed by 1"
            ) from None
        self._d = d
        self.loc = loc.expand(batch_shape + (d,))
        self.concentration = kappa.expand(batch_shape)
        super().__init__(batch_shape, torch.Size((d,)), validate_args=validate_args)

    @property
    def d(self):
        """The ambient dimension d = loc.shape[-1] (the sphere is S^{d-1})."""
        return self._d

    dim = d

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(VonMisesFisher, _instance)
        batch_shape = torch.Size(batch_shape)
        new._d = self._d
        new.loc = self.loc.expand(batch_shape + (self._d,))
        new.concentration = self.concentration.expand(batch_shape)
        super(VonMisesFisher, new).__init__(batch_shape, self.event_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    @property
    def mean_resultant_length(self):
        """A_d(kappa) = I_{d/2}(kappa) / I_{d/2-1}(kappa) in [0, 1], shape batch_shape."""
        return bessel_iv_ratio(self._d / 2 - 1, self.concentration)

    @property
    def mean(self):
        """E[z] = A_d(kappa) mu, shape batch_shape + (d,)."""
        return self.mean_resultant_length.unsqueeze(-1) * self.loc

    @property
    def mode(self):
        """The mean direction loc (for kappa = 0 every point is a mode; loc is returned)."""
        return self.loc

    def rsample(self, sample_shape=torch.Size()):
        """Reparameterised samples of shape sample_shape + batch_shape + (d,), differentiable with respect to
        loc and concentration (``dhvc_ext.ops.vmf_sample``: Wood's sampler, implicit-reparameterisation
        gradient). Reproducible with ``torch.manual_seed``."""
        shape = self._extended_shape(sample_shape)
        return ops.vmf_sample(self.loc.expand(shape), self.concentration.expand(shape[:-1]))

    def sample(self, sample_shape=torch.Size()):
        """``rsample`` without the autograd graph."""
        with torch.no_grad():
            return self.rsample(sample_shape)

    def log_prob(self, value):
        """log C_d(kappa) + kappa mu^T z for value z of shape (..., d) broadcasting with batch_shape + (d,);
        returns the broadcast shape without the last dimension. Density with respect to the surface measure
        of S^{d-1} (so it integrates to 1 over the sphere).

        Computed as (log C_d(kappa) + kappa) - kappa |z - mu|^2 / 2, equal for unit z and mu: log C_d(kappa)
        is about -kappa, and the plain sum would cancel kappa against -kappa in the working precision (in
        float32 20 nats off at kappa = 1e8, at the mode). Here log C_d(kappa) + kappa is formed in float64
        and rounded once, and |z - mu|^2 is small exactly where kappa is large, so float32 stays within 1e-3
        relative of float64 at any kappa (python_tests/test_distributions.py). For z off the sphere (with
        validation off) it is this expression, not the formula's value there."""
        if self._validate_args:
            self._validate_sample(value)
        kappa = self.concentration
        wide = kappa.double()
        shifted = (vmf_log_normalizer(self._d, wide) + wide).to(kappa.dtype)
        return shifted - 0.5 * kappa * (value - self.loc).pow(2).sum(-1)

    def entropy(self):
        """-log C_d(kappa) - kappa A_d(kappa), shape batch_shape."""
        kappa = self.concentration
        return -vmf_log_normalizer(self._d, kappa) - kappa * self.mean_resultant_length


class HypersphericalUniform(Distribution):
    """The uniform distribution on the unit sphere S^{dim-1} in R^dim.

    Args:
        dim: the ambient dimension d >= 2, an int: samples are vectors of shape (d,), like a vMF whose loc has
            shape (..., d). ``HypersphericalUniform(3)`` is uniform on the ordinary 2-sphere in R^3.
        validate_args: as in ``torch.distributions``; when on, ``log_prob`` checks its value as
            ``VonMisesFisher`` does.
        device, dtype: of samples and results (default: CPU and ``torch.get_default_dtype()``).

    batch_shape is () (``expand`` gives others), event_shape is (d,). The density with respect to the surface
    measure is 1 / |S^{d-1}|, |S^{d-1}| = 2 pi^{d/2} / Gamma(d/2), the kappa = 0 limit of ``VonMisesFisher``.
    ``rsample`` is the same as ``sample`` (there is no parameter to differentiate); both normalise standard
    Gaussian vectors.
    """

    arg_constraints = {}
    support = sphere
    has_rsample = True

    def __init__(self, dim, validate_args=None, device=None, dtype=None):
        self._d = _check_dim(dim, "HypersphericalUniform: dim")
        dtype = torch.get_default_dtype() if dtype is None else dtype
        if not dtype.is_floating_point:
            raise ValueError(f"HypersphericalUniform: dtype must be a floating dtype, got {dtype}")
        # log|S^{d-1}| = -log C_d(0), a 0-dim tensor that also records the dtype and device.
        self._log_surface = -vmf_log_normalizer(self._d, torch.zeros((), dtype=dtype, device=device))
        super().__init__(torch.Size(), torch.Size((self._d,)), validate_args=validate_args)

    @property
    def d(self):
        """The ambient dimension d (the sphere is S^{d-1})."""
        return self._d

    dim = d

    @property
    def dtype(self):
        return self._log_surface.dtype

    @property
    def device(self):
        return self._log_surface.device

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(HypersphericalUniform, _instance)
        new._d = self._d
        new._log_surface = self._log_surface
        super(HypersphericalUniform, new).__init__(torch.Size(batch_shape), self.event_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    @property
    def mean(self):
        return torch.zeros(self._extended_shape(), dtype=self.dtype, device=self.device)

    @property
    def variance(self):
        """1/d per coordinate (the covariance is I/d)."""
        return torch.full(self._extended_shape(), 1.0 / self._d, dtype=self.dtype, device=self.device)

    def rsample(self, sample_shape=torch.Size()):
        """Unit vectors of shape sample_shape + batch_shape + (d,): normalised standard normal vectors."""
        x = torch.randn(self._extended_shape(sample_shape), dtype=self.dtype, device=self.device)
        return x / torch.linalg.vector_norm(x, dim=-1, keepdim=True)

    def sample(self, sample_shape=torch.Size()):
        with torch.no_grad():
            return self.rsample(sample_shape)

    def log_prob(self, value):
        """-log|S^{d-1}| for every value, shape broadcast(value.shape[:-1], batch_shape)."""
        if self._validate_args:
            self._validate_sample(value)
        shape = torch.broadcast_shapes(value.shape[:-1], self.batch_shape)
        return (-self._log_surface).to(value.device).expand(shape).clone()

    def entropy(self):
        """log|S^{d-1}|, shape batch_shape."""
        return self._log_surface.expand(self.batch_shape).clone()


def _check_same_dim(p, q):
    if p.d != q.d:
        raise ValueError(
            f"kl_divergence: the distributions live on spheres of different dimensions "
            f"({type(p).__name__} d = {p.d}, {type(q).__name__} d = {q.d})"
        )


def _log_h(d, kappa):
    """log H_nu(kappa) = log C_d(0) - log C_d(kappa), nu = d/2 - 1, kappa's shape; computed directly, without
    the cancellation of that difference (4e-12 absolute at d = 1e4)."""
    return log_bessel_iv_normalized(0.5 * d - 1.0, kappa)


@register_kl(VonMisesFisher, HypersphericalUniform)
def _kl_vmf_uniform(p, q):
    """kappa A_d(kappa) - log H_nu(kappa); independent of loc. Shape broadcast(p.batch_shape, q.batch_shape)."""
    _check_same_dim(p, q)
    kappa = p.concentration
    kl = kappa * p.mean_resultant_length - _log_h(p.d, kappa)
    return kl.expand(torch.broadcast_shapes(p.batch_shape, q.batch_shape))


@register_kl(VonMisesFisher, VonMisesFisher)
def _kl_vmf_vmf(p, q):
    """log C_d(k1) - log C_d(k2) + A_d(k1) (k1 - k2 mu2^T mu1), shape broadcast of the batch shapes."""
    _check_same_dim(p, q)
    k1, k2 = p.concentration, q.concentration
    cos = (p.loc * q.loc).sum(-1)
    return vmf_log_normalizer(p.d, k1) - vmf_log_normalizer(q.d, k2) + p.mean_resultant_length * (k1 - k2 * cos)


@register_kl(HypersphericalUniform, VonMisesFisher)
def _kl_uniform_vmf(p, q):
    """log H_nu(kappa) (E_uniform[z] = 0, so loc drops out), shape broadcast of the batch shapes."""
    _check_same_dim(p, q)
    kl = _log_h(q.d, q.concentration)
    return kl.expand(torch.broadcast_shapes(p.batch_shape, q.batch_shape))


@register_kl(HypersphericalUniform, HypersphericalUniform)
def _kl_uniform_uniform(p, q):
    _check_same_dim(p, q)
    return torch.zeros(torch.broadcast_shapes(p.batch_shape, q.batch_shape), dtype=p.dtype, device=p.device)
