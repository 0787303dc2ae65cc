// CUDA kernel of _vmfmm_scores_log_softmax (see the CPU file): the scores by one cuBLAS product through
// at::addmm, then one thread per row for the log-softmax in place, which suits the mixture E-step's small K
// (tens to hundreds of components); each row is read twice from L1/L2.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>

#include "../checks.h"

namespace dhvc_ext {
namespace {

template <typename scalar_t>
__global__ void row_log_softmax_kernel(scalar_t* __restrict__ s, scalar_t* __restrict__ lse, int64_t n, int64_t k) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    scalar_t* row = s + i * k;
    double m = -INFINITY;
    for (int64_t j = 0; j < k; ++j) m = fmax(m, static_cast<double>(row[j]));
    double total = 0.0;
    const bool finite = isfinite(m);
    if (finite) {
      for (int64_t j = 0; j < k; ++j) total += exp(static_cast<double>(row[j]) - m);
    }
    const double norm = finite ? m + log(total) : m;
    lse[i] = static_cast<scalar_t>(norm);
    for (int64_t j = 0; j < k; ++j) row[j] = static_cast<scalar_t>(static_cast<double>(row[j]) - norm);
  }
}

std::tuple<at::Tensor, at::Tensor> vmfmm_scores_log_softmax_cuda(const at::Tensor& z, const at::Tensor& weighted_mu,
                                                                 const at::Tensor& bias) {
  check_vmfmm_inputs("_vmfmm_scores_log_softmax", z, weighted_mu, bias);
  const c10::cuda::CUDAGuard guard(z.device());
  at::Tensor scores = at::addmm(bias, z, weighted_mu.t()).contiguous();
  const int64_t n = scores.size(0), k = scores.size(1);
  at::Tensor lse = at::empty({n}, scores.options());
  if (n == 0) return {scores, lse};
  const int threads = 128;
  const int blocks = static_cast<int>(std::min<int64_t>((n + threads - 1) / threads, 65535));
  AT_DISPATCH_FLOATING_TYPES(scores.scalar_type(), "vmfmm_scores_log_softmax_cuda", [&] {
    row_log_softmax_kernel<scalar_t><<<blocks, threads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        scores.data_ptr<scalar_t>(), lse.data_ptr<scalar_t>(), n, k);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {scores, lse};
}

}  // namespace

TORCH_LIBRARY_IMPL(dhvc_ext, CUDA, m) { m.impl("_vmfmm_scores_log_softmax", &vmfmm_scores_log_softmax_cuda); }

}  // namespace dhvc_ext
