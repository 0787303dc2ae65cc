"""Modified Bessel functions of the first kind for large real orders, and the vMF log-normaliser.

Public functions (``dhvc_ext.ops``):

- ``log_bessel_iv(nu, x)``: log I_nu(x)
- ``log_bessel_iv_normalized(nu, x)``: log H_nu(x) = log[Gamma(nu+1) (2/x)^nu I_nu(x)] = log 0F1(; nu+1; x^2/4)
- ``bessel_iv_ratio(nu, x)``: R_nu(x) = I_{nu+1}(x) / I_nu(x)
- ``vmf_log_normalizer(d, kappa)``: log C_d(kappa), the log normalising constant of the von Mises-Fisher
  density on the sphere S^{d-1} in R^d

Arguments and result:

- ``nu`` and ``x`` (and ``kappa``) are tensors or real Python numbers and broadcast like a torch binary op;
  the result has the broadcast shape, on the tensors' device.
- dtype: float32 and float64 are computed natively (in double internally, rounded once). Integer and bool
  inputs are promoted to ``torch.get_default_dtype()``; float16 and bfloat16 inputs are computed and
  returned in float32 (log I_nu(x) overflows half precision long before it stops being useful). Complex
  inputs are a TypeError.
- Devices: a 0-dim CPU tensor or a Python number combines with a tensor on any device, as in torch.
- Domain: nu >= 0, x >= 0. Edge cases, in this order: NaN in -> NaN out; nu < 0 or x < 0 -> NaN;
  x = 0 -> log I_0(0) = 0 and log I_nu(0) = -inf for nu > 0, R_nu(0) = 0; x = +inf -> log I = +inf,
  R = 1; nu = +inf -> log I = -inf, R = 0 (NaN when x = +inf too).
- Autograd: first and second derivatives with respect to x (and kappa), each backward built from these same
  ops: d/dx log I_nu = R_nu(x) + nu / x, d/dx R_nu = 1 - R^2 - (2 nu + 1) R / x,
  d/dkappa log C_d = -R_{d/2-1}(kappa). The order nu (and d) is a dimension, not a parameter: asking for a
  gradient with respect to nu raises.
"""
import numbers

import torch

from dhvc_ext.ops._extension import INT64_MAX, check_device

__all__ = ["log_bessel_iv", "log_bessel_iv_normalized", "bessel_iv_ratio", "vmf_log_normalizer"]

_ops = torch.ops.dhvc_ext


def _result_dtype(tensors):
    """torch's type promotion restricted to what the kernels compute (float32 or float64).

    As in torch, tensors with dimensions take precedence over 0-dim tensors, which take precedence over
    Python numbers: the first of these groups holding a floating tensor decides, float64 if it has one, else
    float32 (float16 and bfloat16 are computed in float32). With no floating tensor (integers, bools or
    numbers only) the result is torch.get_default_dtype(). Written out rather than torch.result_type so that
    torch.compile can trace it.
    """
    for group in ([v for v in tensors if v.dim() > 0], [v for v in tensors if v.dim() == 0]):
        floats = [v.dtype for v in group if v.dtype.is_floating_point]
        if floats:
            return torch.float64 if torch.float64 in floats else torch.float32
    return torch.get_default_dtype()


def _promote(op, nu, x, names=("nu", "x")):
    """Turn (nu, x) into two tensors of one floating dtype on one device, following the rules above."""
    tensors = []
    for name, v in zip(names, (nu, x)):
        if isinstance(v, torch.Tensor):
            if v.is_complex():
                raise TypeError(f"dhvc_ext.{op}: {name} must be real, got a {v.dtype} tensor")
            tensors.append(v)
        elif isinstance(v, bool) or not isinstance(v, numbers.Real):
            raise TypeError(f"dhvc_ext.{op}: {name} must be a tensor or a real number, got {type(v).__name__}")
    dtype = _result_dtype(tensors)
    devices = {t.device for t in tensors}
    if len(devices) > 1:
        # As in torch binary ops, a 0-dim CPU tensor may join a tensor on another device.
        movable = {t.device for t in tensors if t.dim() == 0 and t.device.type == "cpu"}
        fixed = {t.device for t in tensors} - movable if len(movable) < len(tensors) else {tensors[1].device}
        if len(fixed) > 1:
            raise RuntimeError(
                f"dhvc_ext.{op}: {names[0]} and {names[1]} are on different devices ({', '.join(map(str, devices))})"
            )
        device = fixed.pop()
    else:
        device = devices.pop() if devices else torch.device("cpu")
    check_device(op, device)
    out = []
    for v in (nu, x):
        if isinstance(v, torch.Tensor):
            out.append(v.to(device=device, dtype=dtype))
        else:
            out.append(torch.tensor(float(v), dtype=dtype, device=device))
    return out[0], out[1]


def log_bessel_iv(nu, x):
    """log I_nu(x), the log of the modified Bessel function of the first kind of real order nu >= 0.

    Args:
        nu: order, tensor or number, broadcastable with ``x``.
        x: argument >= 0, tensor or number.
    Returns:
        Tensor of the broadcast shape. Accurate to about 1e-15 relative to max(1, |log I_nu(x)|) in float64
        over nu in [0, 1e4], x in [0, 1e6]; finite wherever the true value is (no underflow for large orders).
    """
    nu, x = _promote("log_bessel_iv", nu, x)
    return _ops.log_bessel_iv(nu, x)


def log_bessel_iv_normalized(nu, x):
    """log H_nu(x) = log[Gamma(nu + 1) (2 / x)^nu I_nu(x)] = log 0F1(; nu + 1; x^2 / 4) >= 0.

    The part of log I_nu(x) that is left after its leading power: computed directly (never as the difference
    log I - nu log(x/2) + lgamma(nu+1), whose terms are ~1e4 times larger when x << nu), so it keeps its
    accuracy where it is small, e.g. KL(vMF || uniform) = kappa A_d(kappa) - log H_{d/2-1}(kappa).
    H_nu(0) = 1; d/dx log H_nu(x) = R_nu(x).

    Args:
        nu: order >= 0, tensor or number, broadcastable with ``x``.
        x: argument >= 0, tensor or number.
    Returns:
        Tensor of the broadcast shape; edge cases as log_bessel_iv, with 0 at x = 0.
    """
    nu, x = _promote("log_bessel_iv_normalized", nu, x)
    return _ops.log_bessel_iv_normalized(nu, x)


def bessel_iv_ratio(nu, x):
    """R_nu(x) = I_{nu+1}(x) / I_nu(x) in [0, 1), computed directly (never as a quotient of two Bessel values).

    Args:
        nu: order >= 0, tensor or number, broadcastable with ``x``.
        x: argument >= 0, tensor or number.
    Returns:
        Tensor of the broadcast shape; about 1e-16 relative error in float64.
    """
    nu, x = _promote("bessel_iv_ratio", nu, x)
    return _ops.bessel_iv_ratio(nu, x)


def vmf_log_normalizer(d, kappa):
    """log C_d(kappa) of the von Mises-Fisher density C_d(kappa) exp(kappa mu^T z) on S^{d-1} in R^d.

    C_d(kappa) = kappa^{d/2-1} / ((2 pi)^{d/2} I_{d/2-1}(kappa)), computed as -log|S^{d-1}| - log H_nu(kappa)
    so that it stays exact when kappa << d (no cancellation between nu log kappa and log I_nu(kappa)).

    Args:
        d: the ambient dimension, an int >= 2 (a Python int or an integer 0-dim tensor).
        kappa: concentration >= 0, tensor of any shape or a number.
    Returns:
        Tensor of kappa's shape. kappa = 0 gives the uniform density, -log|S^{d-1}|; kappa = +inf gives +inf;
        kappa < 0 or NaN gives NaN.
    """
    if isinstance(d, torch.Tensor):
        if d.dim() != 0 or d.dtype.is_floating_point or d.is_complex() or d.requires_grad:
            raise TypeError(
                "dhvc_ext.vmf_log_normalizer: d is the dimension, an integer (no gradient with respect to it); "
                f"got a {tuple(d.shape)} {d.dtype} tensor"
            )
        d = int(d)
    if isinstance(d, bool) or not isinstance(d, numbers.Integral):
        raise TypeError(f"dhvc_ext.vmf_log_normalizer: d must be an int >= 2, got {d!r}")
    if not 2 <= d <= INT64_MAX:
        raise ValueError(f"dhvc_ext.vmf_log_normalizer: d must be an int >= 2 and <= 2^63 - 1, got {d}")
    _, kappa = _promote("vmf_log_normalizer", 0.0, kappa, names=("d", "kappa"))
    return _ops.vmf_log_normalizer(kappa, int(d))


# ---------------------------------------------------------------------------------------------------------
# torch.library registrations: fake (meta) kernels for torch.compile, and autograd built from the ops.


def _broadcast_fake(nu, x):
    torch._check(nu.dtype == x.dtype, lambda: "nu and x must have the same dtype")
    return x.new_empty(torch.broadcast_shapes(nu.shape, x.shape))


torch.library.register_fake("dhvc_ext::log_bessel_iv")(_broadcast_fake)
torch.library.register_fake("dhvc_ext::bessel_iv_ratio")(_broadcast_fake)
torch.library.register_fake("dhvc_ext::log_bessel_iv_normalized")(_broadcast_fake)


@torch.library.register_fake("dhvc_ext::_bessel_iv_ratio_derivative")
def _(nu, x, order):
    return _broadcast_fake(nu, x)


@torch.library.register_fake("dhvc_ext::vmf_log_normalizer")
def _(kappa, d):
    torch._check(d >= 2, lambda: f"vmf_log_normalizer: d must be >= 2, got {d}")
    return torch.empty_like(kappa, memory_format=torch.contiguous_format)


def _refuse_order_gradient(ctx, op):
    if ctx.needs_input_grad[0]:
        raise RuntimeError(
            f"dhvc_ext.{op}: there is no gradient with respect to the order nu (a dimension, not a learned "
            "quantity); pass nu as a tensor that does not require grad"
        )


def _save_nu_x(ctx, inputs, output):
    ctx.save_for_backward(inputs[0], inputs[1])


def _log_bessel_iv_backward(ctx, grad):
    _refuse_order_gradient(ctx, "log_bessel_iv")
    nu, x = ctx.saved_tensors
    if not ctx.needs_input_grad[1]:
        return None, None
    # d/dx log I_nu(x) = R_nu(x) + nu / x. At x = 0 this is 0 for nu = 0 (R_0(0) = 0) and +inf for nu > 0;
    # dividing by 1 where nu = 0 keeps the nu = 0, x = 0 case (and its second derivative) free of 0/0.
    x_safe = torch.where(nu == 0, torch.ones_like(x), x)
    slope = _ops.bessel_iv_ratio(nu, x) + nu / x_safe
    return None, (grad * slope).sum_to_size(x.shape)


def _log_bessel_iv_normalized_backward(ctx, grad):
    _refuse_order_gradient(ctx, "log_bessel_iv_normalized")
    nu, x = ctx.saved_tensors
    if not ctx.needs_input_grad[1]:
        return None, None
    # d/dx log H_nu(x) = d/dx log I_nu(x) - nu / x = R_nu(x), finite at x = 0 (where it is 0).
    return None, (grad * _ops.bessel_iv_ratio(nu, x)).sum_to_size(x.shape)


def _bessel_iv_ratio_backward(ctx, grad):
    _refuse_order_gradient(ctx, "bessel_iv_ratio")
    nu, x = ctx.saved_tensors
    if not ctx.needs_input_grad[1]:
        return None, None
    return None, (grad * _ops._bessel_iv_ratio_derivative(nu, x, 1)).sum_to_size(x.shape)


def _save_derivative(ctx, inputs, output):
    ctx.save_for_backward(inputs[0], inputs[1])
    ctx.order = inputs[2]


def _bessel_iv_ratio_derivative_backward(ctx, grad):
    _refuse_order_gradient(ctx, "bessel_iv_ratio")
    nu, x = ctx.saved_tensors
    if not ctx.needs_input_grad[1]:
        return None, None, None
    if ctx.order != 1:
        raise NotImplementedError("dhvc_ext.bessel_iv_ratio: derivatives beyond the second are not implemented")
    return None, (grad * _ops._bessel_iv_ratio_derivative(nu, x, 2)).sum_to_size(x.shape), None


def _save_kappa(ctx, inputs, output):
    ctx.save_for_backward(inputs[0])
    ctx.d = inputs[1]


def _vmf_log_normalizer_backward(ctx, grad):
    (kappa,) = ctx.saved_tensors
    # d/dkappa log C_d(kappa) = -A_d(kappa) = -R_{d/2-1}(kappa).
    nu = kappa.new_full((), 0.5 * ctx.d - 1.0)
    return -grad * _ops.bessel_iv_ratio(nu, kappa), None


torch.library.register_autograd("dhvc_ext::log_bessel_iv", _log_bessel_iv_backward, setup_context=_save_nu_x)
torch.library.register_autograd("dhvc_ext::bessel_iv_ratio", _bessel_iv_ratio_backward, setup_context=_save_nu_x)
torch.library.register_autograd(
    "dhvc_ext::log_bessel_iv_normalized", _log_bessel_iv_normalized_backward, setup_context=_save_nu_x
)
torch.library.register_autograd(
    "dhvc_ext::_bessel_iv_ratio_derivative", _bessel_iv_ratio_derivative_backward, setup_context=_save_derivative
)
torch.library.register_autograd(
    "dhvc_ext::vmf_log_normalizer", _vmf_log_normalizer_backward, setup_context=_save_kappa
)
