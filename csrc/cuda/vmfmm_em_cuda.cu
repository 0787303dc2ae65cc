// CUDA kernel of _vmfmm_em_statistics (see csrc/cpu/vmfmm_em_cpu.cpp and dhvc/kernels/vmfmm_row.h).
//
// DESIGN: the rows go in chunks of at most C rows, C K <= 2^24 scores (64 MiB in float32), so that the
// workspace does not grow with N. Per chunk, on the current stream:
//   1. the scores s = bias + z_chunk W^T, (C, K), by one cuBLAS product (at::addmm_out) into the workspace;
//   2. one thread per row (grid-stride loop) runs vmfmm_row, the per-row routine the CPU kernel falls back
//      on: lse into a (C,) double buffer, and in place the responsibilities (soft) or the one-hot row at the
//      argmax (hard);
//   3. N_k += column sums of r (in double), S_k += r^T z_chunk (cuBLAS in the compute dtype, added to double
//      accumulators), loglik += sum of lse (double).
// The products run on cuBLAS, which beats a hand-written per-thread dot product for every d worth a GPU;
// the mixture E-step's K (tens to hundreds) suits one thread per row, whose K scores stay in L1/L2. No
// atomics: the result is deterministic for a given GPU and cuBLAS.
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
#include "dhvc/kernels/vmfmm_row.h"

namespace dhvc_ext {
namespace {

constexpr int64_t kMaxChunkScores = int64_t(1) << 24;
constexpr int64_t kRowDim[] = {0};

template <typename scalar_t>
__global__ void em_rows_kernel(scalar_t* __restrict__ s, double* __restrict__ lse, int64_t n, int64_t k, bool hard) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    scalar_t* row = s + i * k;
    int64_t at = 0;
    lse[i] = dhvc::kernels::vmfmm_row(row, k, 1, !hard, &at);
    if (hard) {
      for (int64_t j = 0; j < k; ++j) row[j] = j == at ? scalar_t(1) : scalar_t(0);
    }
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> vmfmm_em_statistics_cuda(const at::Tensor& z,
                                                                        const at::Tensor& weighted_mu,
                                                                        const at::Tensor& bias, bool hard) {
  check_vmfmm_em_inputs(z, weighted_mu, bias);
  const c10::cuda::CUDAGuard guard(z.device());
  // The products below are internal: no autograd or out= checks on them.
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  const int64_t n = z.size(0), d = z.size(1), k = weighted_mu.size(0);
  const auto f64 = z.options().dtype(at::kDouble);
  at::Tensor counts = at::zeros({k}, f64);
  at::Tensor sums = at::zeros({k, d}, f64);
  at::Tensor total = at::zeros({}, f64);
  const int64_t chunk = std::max<int64_t>(1, std::min(n, kMaxChunkScores / k));
  at::Tensor scores = at::empty({n > 0 ? chunk * k : 0}, z.options());
  at::Tensor lse = at::empty({n > 0 ? chunk : 0}, f64);
  const at::Tensor wt = weighted_mu.t();
  const int threads = 128;
  for (int64_t c0 = 0; c0 < n; c0 += chunk) {
    const int64_t nc = std::min(chunk, n - c0);
    at::Tensor zc = z.narrow(0, c0, nc);
    at::Tensor sc = scores.narrow(0, 0, nc * k).view({nc, k});
    at::Tensor lc = lse.narrow(0, 0, nc);
    at::addmm_out(sc, bias, zc, wt);
    const int blocks = static_cast<int>(std::min<int64_t>((nc + threads - 1) / threads, 65535));
    AT_DISPATCH_FLOATING_TYPES(sc.scalar_type(), "vmfmm_em_statistics_cuda", [&] {
      em_rows_kernel<scalar_t><<<blocks, threads, 0, c10::cuda::getCurrentCUDAStream()>>>(
          sc.data_ptr<scalar_t>(), lc.data_ptr<double>(), nc, k, hard);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
    counts.add_(sc.sum(at::IntArrayRef(kRowDim), /*keepdim=*/false, at::kDouble));
    sums.add_(at::mm(sc.t(), zc));
    total.add_(at::sum(lc));
  }
  return {counts.to(z.scalar_type()), sums.to(z.scalar_type()), total};
}

}  // namespace

TORCH_LIBRARY_IMPL(dhvc_ext, CUDA, m) { m.impl("_vmfmm_em_statistics", &vmfmm_em_statistics_cuda); }

}  // namespace dhvc_ext
