// CUDA kernels of the Bessel ops, on the current stream of the inputs' device.
//
// DESIGN: one thread per output element in a grid-stride loop; each element runs the same double-precision
// functor as the CPU kernel (dhvc/kernels/bessel_functors.h). The per-element work is branchy (three
// regions, loops of data-dependent length up to ~50) but every loop is bounded, so a warp never waits on
// the host and no synchronisation is needed. Broadcast or strided inputs are expanded and made contiguous
// first (a copy only when they are not already contiguous in the output shape).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>

#include "../checks.h"
#include "dhvc/kernels/bessel_functors.h"

namespace dhvc_ext {
namespace {

constexpr int kThreads = 256;

template <typename scalar_t, typename Functor>
__global__ void binary_kernel(const scalar_t* __restrict__ a, const scalar_t* __restrict__ b,
                              scalar_t* __restrict__ out, int64_t n, Functor f) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    out[i] = static_cast<scalar_t>(f(static_cast<double>(a[i]), static_cast<double>(b[i])));
  }
}

template <typename scalar_t, typename Functor>
__global__ void unary_kernel(const scalar_t* __restrict__ a, scalar_t* __restrict__ out, int64_t n,
                             Functor f) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    out[i] = static_cast<scalar_t>(f(static_cast<double>(a[i])));
  }
}

int blocks_for(int64_t n) {
  // Enough blocks to fill any current GPU several times over; the grid-stride loop covers the rest.
  return static_cast<int>(std::min<int64_t>((n + kThreads - 1) / kThreads, 65535));
}

template <typename Functor>
at::Tensor binary_cuda(const at::Tensor& nu, const at::Tensor& x, Functor f) {
  const c10::cuda::CUDAGuard guard(x.device());
  const auto shape = at::infer_size(nu.sizes(), x.sizes());
  const at::Tensor a = nu.expand(shape).contiguous();
  const at::Tensor b = x.expand(shape).contiguous();
  at::Tensor out = at::empty(shape, x.options());
  const int64_t n = out.numel();
  if (n == 0) return out;
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "dhvc_ext_binary_cuda", [&] {
    binary_kernel<scalar_t><<<blocks_for(n), kThreads, 0, stream>>>(
        a.data_ptr<scalar_t>(), b.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), n, f);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

template <typename Functor>
at::Tensor unary_cuda(const at::Tensor& x, Functor f) {
  const c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor a = x.contiguous();
  at::Tensor out = at::empty(x.sizes(), x.options());
  const int64_t n = out.numel();
  if (n == 0) return out;
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "dhvc_ext_unary_cuda", [&] {
    unary_kernel<scalar_t><<<blocks_for(n), kThreads, 0, stream>>>(a.data_ptr<scalar_t>(),
                                                                    out.data_ptr<scalar_t>(), n, f);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

at::Tensor log_bessel_iv_cuda(const at::Tensor& nu, const at::Tensor& x) {
  check_binary_inputs("log_bessel_iv", nu, x);
  return binary_cuda(nu, x, dhvc::kernels::LogBesselIv{});
}

at::Tensor log_bessel_iv_normalized_cuda(const at::Tensor& nu, const at::Tensor& x) {
  check_binary_inputs("log_bessel_iv_normalized", nu, x);
  return binary_cuda(nu, x, dhvc::kernels::LogBesselIvNormalized{});
}

at::Tensor bessel_iv_ratio_cuda(const at::Tensor& nu, const at::Tensor& x) {
  check_binary_inputs("bessel_iv_ratio", nu, x);
  return binary_cuda(nu, x, dhvc::kernels::BesselIvRatio{});
}

at::Tensor bessel_iv_ratio_derivative_cuda(const at::Tensor& nu, const at::Tensor& x, int64_t order) {
  check_binary_inputs("_bessel_iv_ratio_derivative", nu, x);
  check_order("_bessel_iv_ratio_derivative", order);
  return binary_cuda(nu, x, dhvc::kernels::BesselIvRatioDerivative{static_cast<int>(order)});
}

at::Tensor vmf_log_normalizer_cuda(const at::Tensor& kappa, int64_t d) {
  check_vmf_inputs("vmf_log_normalizer", kappa, d);
  return unary_cuda(kappa, dhvc::kernels::VmfLogNormalizer{static_cast<double>(d)});
}

at::Tensor vmf_kappa_mle_cuda(const at::Tensor& rbar, int64_t d) {
  check_vmf_inputs("vmf_kappa_mle", rbar, d);
  return unary_cuda(rbar, dhvc::kernels::VmfKappaMle{static_cast<double>(d)});
}

}  // namespace

TORCH_LIBRARY_IMPL(dhvc_ext, CUDA, m) {
  m.impl("log_bessel_iv", &log_bessel_iv_cuda);
  m.impl("log_bessel_iv_normalized", &log_bessel_iv_normalized_cuda);
  m.impl("bessel_iv_ratio", &bessel_iv_ratio_cuda);
  m.impl("_bessel_iv_ratio_derivative", &bessel_iv_ratio_derivative_cuda);
  m.impl("vmf_log_normalizer", &vmf_log_normalizer_cuda);
  m.impl("vmf_kappa_mle", &vmf_kappa_mle_cuda);
}

}  // namespace dhvc_ext
