// CUDA kernel of _vmfmm_scores_log_softmax (see the CPU file): the products z W^T by one cuBLAS product
// (at::mm_out, in full precision: full_precision.h), then one thread per row adds the bias and takes the
// log-softmax in place, which suits the mixture E-step's small K (tens to hundreds of components); each row
// is read twice from L1/L2. The row normaliser follows torch.logsumexp, as the CPU kernel's
// row_log_normalizer does: NaN if a score is NaN (also beside +inf or -inf); else, with m the maximum, m
// itself when it is infinite (a +inf score, or every score -inf), and m + log sum_k exp(s_k - m) otherwise.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/core/LegacyTypeDispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>

#include "../checks.h"
#include "full_precision.h"

namespace dhvc_ext {
namespace {

template <typename scalar_t>
__global__ void row_log_softmax_kernel(scalar_t* __restrict__ s, const scalar_t* __restrict__ bias,
                                       scalar_t* __restrict__ lse, int64_t n, int64_t k) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    scalar_t* row = s + i * k;
    double m = -INFINITY;
    bool nan = false;
    for (int64_t j = 0; j < k; ++j) {
      const scalar_t v = row[j] + bias[j];  // in the scores' dtype, as the CPU kernel adds it
      row[j] = v;
      nan |= v != v;
      m = static_cast<double>(v) > m ? static_cast<double>(v) : m;
    }
    double norm = m;
    if (nan) {
      norm = NAN;
    } else if (isfinite(m)) {
      double total = 0.0;
      for (int64_t j = 0; j < k; ++j) total += exp(static_cast<double>(row[j]) - m);
      norm = m + log(total);
    }
    lse[i] = static_cast<scalar_t>(norm);
    for (int64_t j = 0; j < k; ++j) row[j] = static_cast<scalar_t>(static_cast<double>(row[j]) - norm);
  }
}

std::tuple<at::Tensor, at::Tensor> vmfmm_scores_log_softmax_cuda(const at::Tensor& z, const at::Tensor& weighted_mu,
                                                                 const at::Tensor& bias_in) {
  check_vmfmm_inputs("_vmfmm_scores_log_softmax", z, weighted_mu, bias_in);
  const c10::cuda::CUDAGuard guard(z.device());
  // The product below is internal: no autograd on it, no autocast, no TF32.
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  const FullPrecisionProducts products(z.scalar_type());
  const int64_t n = z.size(0), k = weighted_mu.size(0);
  at::Tensor scores = at::empty({n, k}, z.options());
  at::Tensor lse = at::empty({n}, z.options());
  if (n == 0) return {scores, lse};
  products.mm_out(scores, z, weighted_mu.t());
  const at::Tensor bias = bias_in.contiguous();
  const int threads = 128;
  const int blocks = static_cast<int>(std::min<int64_t>((n + threads - 1) / threads, 65535));
  AT_DISPATCH_FLOATING_TYPES(scores.scalar_type(), "vmfmm_scores_log_softmax_cuda", [&] {
    row_log_softmax_kernel<scalar_t><<<blocks, threads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        scores.data_ptr<scalar_t>(), bias.data_ptr<scalar_t>(), lse.data_ptr<scalar_t>(), n, k);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {scores, lse};
}

}  // namespace

TORCH_LIBRARY_IMPL(dhvc_ext, CUDA, m) { m.impl("_vmfmm_scores_log_softmax", &vmfmm_scores_log_softmax_cuda); }

}  // namespace dhvc_ext
