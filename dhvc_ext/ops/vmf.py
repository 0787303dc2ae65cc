"""von Mises-Fisher sampling with reparameterised gradients.

``vmf_sample(loc, concentration, generator=None)`` draws z ~ vMF(loc, concentration) on S^{d-1} in R^d:

- ``loc``: (..., d) unit vectors, d >= 2; ``concentration``: tensor or number broadcastable to
  ``loc.shape[:-1]`` (a trailing size-1 dimension, as in (..., 1), is accepted and dropped). The result has
  the broadcast batch shape + (d,), loc's dtype and device (float16/bfloat16 are computed in float32 and
  cast back).
- Wood's rejection sampler in closed forms that keep 1 - loc^T z exact at any concentration, the exact
  inverse CDF at d = 3, a Householder rotation that is defined at loc = +-e1, all inside the kernel: no
  host synchronisation, no Python loop.
- Randomness: a Philox stream per sample, keyed by a 64-bit seed drawn from ``generator`` (torch's default
  generator of loc's device when None), so ``torch.manual_seed`` reproduces the samples, whatever the number
  of threads.
- Gradients: with respect to loc through the rotation, and with respect to concentration by implicit
  reparameterisation, dw/dkappa = -(dF/dkappa) / q(w) (Figurnov et al. 2018), which is unbiased (unlike
  differentiating Wood's transform with its Beta draw held fixed, as S-VAE does: -13% at d = 5, kappa = 2).
  Second derivatives through the sampler are not implemented.
- Edges: concentration 0 gives the uniform distribution, +inf gives loc itself, a negative or NaN
  concentration gives NaN samples (``dhvc_ext.distributions.VonMisesFisher(validate_args=True)`` raises
  instead), and so does a loc of zeros (it has no direction). Otherwise loc is used as given: a loc that is
  not unit-norm gives samples near the sphere of its norm.
"""
import numbers

import torch

from dhvc_ext.ops._extension import check_device

__all__ = ["vmf_sample"]

_ops = torch.ops.dhvc_ext


def _draw_seed(generator, device):
    """Two int64 (Philox key and counter offset) from torch's generator, on ``device`` (no host sync)."""
    return torch.randint(-(2**63), 2**63 - 1, (2,), dtype=torch.int64, device=device, generator=generator)


def vmf_sample(loc, concentration, generator=None):
    """Samples of vMF(loc, concentration); see the module docstring. Returns a (batch..., d) tensor."""
    if not isinstance(loc, torch.Tensor) or not loc.dtype.is_floating_point:
        raise TypeError(f"dhvc_ext.vmf_sample: loc must be a floating-point tensor, got {type(loc).__name__}"
                        + (f" of {loc.dtype}" if isinstance(loc, torch.Tensor) else ""))
    if loc.dim() < 1 or loc.shape[-1] < 2:
        raise ValueError(f"dhvc_ext.vmf_sample: loc must have a last dimension d >= 2, got shape {tuple(loc.shape)}")
    check_device("vmf_sample", loc.device)
    out_dtype = loc.dtype
    dtype = torch.float64 if loc.dtype == torch.float64 else torch.float32
    if isinstance(concentration, torch.Tensor):
        if concentration.is_complex():
            raise TypeError("dhvc_ext.vmf_sample: concentration must be real")
        kappa = concentration.to(device=loc.device, dtype=dtype)
    elif isinstance(concentration, numbers.Real) and not isinstance(concentration, bool):
        kappa = torch.tensor(float(concentration), dtype=dtype, device=loc.device)
    else:
        raise TypeError(f"dhvc_ext.vmf_sample: concentration must be a tensor or a number, got {type(concentration).__name__}")
    batch = loc.shape[:-1]
    if kappa.dim() == loc.dim() and kappa.shape[-1] == 1:
        kappa = kappa.squeeze(-1)
    try:
        batch = torch.broadcast_shapes(batch, kappa.shape)
    except RuntimeError:
        raise ValueError(
            f"dhvc_ext.vmf_sample: concentration of shape {tuple(kappa.shape)} does not broadcast with loc's batch "
            f"shape {tuple(loc.shape[:-1])}"
        ) from None
    d = loc.shape[-1]
    mu = loc.to(dtype).expand(*batch, d)
    kappa = kappa.expand(batch)
    samples, _ = _ops.vmf_sample(mu.contiguous(), kappa.contiguous(), _draw_seed(generator, loc.device))
    # The kernel's rotation of a zero loc gives vectors of arbitrary norm: NaN rows say it (no host sync).
    samples = samples.masked_fill((mu == 0).all(-1, keepdim=True), float("nan"))
    return samples.to(out_dtype)


# ---------------------------------------------------------------------------------------------------------
# torch.library registrations.


@torch.library.register_fake("dhvc_ext::vmf_sample")
def _(loc, concentration, seed):
    torch._check(loc.dim() >= 1 and loc.shape[-1] >= 2, lambda: "vmf_sample: loc must have a last dimension >= 2")
    torch._check(concentration.shape == loc.shape[:-1], lambda: "vmf_sample: concentration must have loc's batch shape")
    return torch.empty_like(loc, memory_format=torch.contiguous_format), loc.new_empty(loc.shape[:-1], dtype=torch.float64)


@torch.library.register_fake("dhvc_ext::_vmf_sample_backward")
def _(grad, samples, one_minus_w, loc, concentration, need_loc, need_kappa):
    return (torch.empty_like(loc, memory_format=torch.contiguous_format),
            torch.empty_like(concentration, memory_format=torch.contiguous_format))


def _save_for_backward(ctx, inputs, output):
    loc, concentration, _ = inputs
    samples, one_minus_w = output
    ctx.save_for_backward(loc, concentration, samples, one_minus_w)


def _vmf_sample_backward(ctx, grad_samples, grad_one_minus_w):
    loc, concentration, samples, one_minus_w = ctx.saved_tensors
    need_loc, need_kappa = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    if grad_samples is None or not (need_loc or need_kappa):
        return None, None, None
    grad_loc, grad_kappa = _ops._vmf_sample_backward(
        grad_samples.contiguous(), samples, one_minus_w, loc, concentration, need_loc, need_kappa
    )
    return (grad_loc if need_loc else None), (grad_kappa if need_kappa else None), None


def _no_double_backward(ctx, *grads):
    raise NotImplementedError("dhvc_ext.vmf_sample: second derivatives through the sampler are not implemented")


def _setup_nothing(ctx, inputs, output):
    pass


torch.library.register_autograd("dhvc_ext::vmf_sample", _vmf_sample_backward, setup_context=_save_for_backward)
torch.library.register_autograd("dhvc_ext::_vmf_sample_backward", _no_double_backward, setup_context=_setup_nothing)
