// CUDA kernels of vmf_sample and its backward, on the current stream of loc's device.
//
// DESIGN: one thread per sample. The thread runs the whole rejection loop for its sample (acceptance is
// above 0.68 for every d and kappa, so a warp's slowest lane needs a few rounds at most) and then writes its
// row, so there is no host synchronisation and no second launch for rejected rows. The seed is read from
// device memory inside the kernel (it was drawn from torch's CUDA generator), so no value travels to the
// host either. Rows are written by one thread each, which is uncoalesced for large d; a block-per-row
// variant for d >= 64 is the known next step once GPU measurements exist.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>

#include "../checks.h"
#include "dhvc/math/bessel.h"
#include "dhvc/random/philox.h"
#include "dhvc/sampling/vmf_wood.h"

namespace dhvc_ext {
namespace {

constexpr int kThreads = 128;

int blocks_for(int64_t n) { return static_cast<int>(std::min<int64_t>((n + kThreads - 1) / kThreads, 65535)); }

template <typename scalar_t>
__global__ void vmf_sample_kernel(const scalar_t* __restrict__ mu, const scalar_t* __restrict__ kappa,
                                  const int64_t* __restrict__ seed, scalar_t* __restrict__ out,
                                  double* __restrict__ one_minus_w, int64_t n, int64_t d) {
  const uint64_t key = static_cast<uint64_t>(seed[0]);
  const uint64_t offset = static_cast<uint64_t>(seed[1]);
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    dhvc::random::PhiloxStream rng(key, offset, static_cast<uint64_t>(i));
    one_minus_w[i] = dhvc::sampling::sample_vmf(rng, mu + i * d, 1, d, static_cast<double>(kappa[i]), out + i * d);
  }
}

template <typename scalar_t>
__global__ void vmf_sample_backward_kernel(const scalar_t* __restrict__ g, const scalar_t* __restrict__ z,
                                           const scalar_t* __restrict__ mu, const scalar_t* __restrict__ kappa,
                                           const double* __restrict__ t, scalar_t* __restrict__ grad_loc,
                                           scalar_t* __restrict__ grad_kappa, int64_t n, int64_t d, bool need_loc,
                                           bool need_kappa) {
  const double nu = 0.5 * static_cast<double>(d) - 1.0;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    const double k = static_cast<double>(kappa[i]);
    const double one_minus_a = need_kappa ? dhvc::math::bessel_iv_ratio_complement(nu, k) : 0.0;
    grad_kappa[i] = static_cast<scalar_t>(dhvc::sampling::vmf_sample_backward(
        g + i * d, z + i * d, mu + i * d, d, k, need_kappa ? t[i] : 0.0, one_minus_a,
        need_loc ? grad_loc + i * d : static_cast<scalar_t*>(nullptr)));
  }
}

std::tuple<at::Tensor, at::Tensor> vmf_sample_cuda(const at::Tensor& loc, const at::Tensor& concentration,
                                                   const at::Tensor& seed) {
  check_vmf_sample_inputs(loc, concentration, seed);
  const c10::cuda::CUDAGuard guard(loc.device());
  const at::Tensor mu = loc.contiguous();
  const at::Tensor kappa = concentration.contiguous();
  const at::Tensor seed_dev = seed.to(loc.device()).contiguous();
  const int64_t d = mu.size(-1);
  const int64_t n = kappa.numel();
  at::Tensor out = at::empty_like(mu, at::MemoryFormat::Contiguous);
  at::Tensor one_minus_w = at::empty(kappa.sizes(), mu.options().dtype(at::kDouble));
  if (n == 0) return {out, one_minus_w};
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(mu.scalar_type(), "vmf_sample_cuda", [&] {
    vmf_sample_kernel<scalar_t><<<blocks_for(n), kThreads, 0, stream>>>(
        mu.data_ptr<scalar_t>(), kappa.data_ptr<scalar_t>(), seed_dev.data_ptr<int64_t>(), out.data_ptr<scalar_t>(),
        one_minus_w.data_ptr<double>(), n, d);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {out, one_minus_w};
}

std::tuple<at::Tensor, at::Tensor> vmf_sample_backward_cuda(const at::Tensor& grad, const at::Tensor& samples,
                                                            const at::Tensor& one_minus_w, const at::Tensor& loc,
                                                            const at::Tensor& concentration, bool need_loc,
                                                            bool need_kappa) {
  check_vmf_sample_backward_inputs(grad, samples, one_minus_w, loc, concentration);
  const c10::cuda::CUDAGuard guard(loc.device());
  const at::Tensor g = grad.contiguous(), z = samples.contiguous(), mu = loc.contiguous();
  const at::Tensor kappa = concentration.contiguous(), t = one_minus_w.contiguous();
  const int64_t d = mu.size(-1);
  const int64_t n = kappa.numel();
  at::Tensor grad_loc = at::zeros_like(mu, at::MemoryFormat::Contiguous);
  at::Tensor grad_kappa = at::zeros_like(kappa, at::MemoryFormat::Contiguous);
  if (n == 0 || (!need_loc && !need_kappa)) return {grad_loc, grad_kappa};
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(mu.scalar_type(), "vmf_sample_backward_cuda", [&] {
    vmf_sample_backward_kernel<scalar_t><<<blocks_for(n), kThreads, 0, stream>>>(
        g.data_ptr<scalar_t>(), z.data_ptr<scalar_t>(), mu.data_ptr<scalar_t>(), kappa.data_ptr<scalar_t>(),
        t.data_ptr<double>(), grad_loc.data_ptr<scalar_t>(), grad_kappa.data_ptr<scalar_t>(), n, d, need_loc,
        need_kappa);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {grad_loc, grad_kappa};
}

}  // namespace

TORCH_LIBRARY_IMPL(dhvc_ext, CUDA, m) {
  m.impl("vmf_sample", &vmf_sample_cuda);
  m.impl("_vmf_sample_backward", &vmf_sample_backward_cuda);
}

}  // namespace dhvc_ext
