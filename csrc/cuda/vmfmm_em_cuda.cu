// CUDA kernel of _vmfmm_em_statistics (see csrc/cpu/vmfmm_em_cpu.cpp and dhvc/kernels/vmfmm_row.h).
//
// DESIGN: the rows go in chunks of at most C rows, C K <= 2^24 scores (64 MiB in float32), so that the
// workspace does not grow with N. Per chunk, on the current stream:
//   1. the products z_chunk W^T, (C, K), by one cuBLAS product into the workspace, in full precision whatever
//      the autocast and TF32 settings (full_precision.h);
//   2. one thread per row (grid-stride loop) adds the bias and runs vmfmm_row, the per-row routine the CPU
//      kernel falls back on: lse into a (C,) double buffer, and in place the responsibilities (soft) or the
//      argmax into a (C,) int32 buffer (hard);
//   3. soft: N_k += column sums of r (in double); S_k += r^T z_chunk, in float64 by cuBLAS for float64 input;
//      for float32, blocks of kSumRows = 2048 rows (the CPU kernel's block) are summed by one batched cuBLAS
//      product in float32, (B, K, d), and the blocks in double, so that no float32 sum runs over more than
//      2048 rows. Hard: each row is added, in double, to its own component only (a one-hot r^T z would spread
//      a NaN row to every component through 0 * NaN, and costs K N d multiply-adds): the rows of the chunk
//      are cut into T tiles (T depends on N, K and d only: at most kMaxPartialDoubles accumulators, tiles of
//      at least kMinTileRows rows); one thread per (tile, column) walks its tile's rows in order and adds
//      z_nl (or 1, in the extra column that holds N_k) to the tile's accumulator of the row's component,
//      keeping a running sum while consecutive rows share a component. The T tiles are summed at the end.
//   4. loglik += sum of lse (double).
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
#include <cstdint>
#include <tuple>

#include "../checks.h"
#include "dhvc/kernels/vmfmm_row.h"
#include "full_precision.h"

namespace dhvc_ext {
namespace {

constexpr int64_t kMaxChunkScores = int64_t(1) << 24;
constexpr int64_t kRowDim[] = {0};
// Soft float32 S_k: rows per float32 block sum, and at most this many float32 partial values per batched
// product (16 MiB), so that large d does not make the batch's output large.
constexpr int64_t kSumRows = 2048;
constexpr int64_t kMaxBatchValues = int64_t(1) << 22;
// Hard sums: at most 2^23 double accumulators (64 MiB, the CPU kernel's bound), tiles of at least 64 rows.
constexpr int64_t kMaxPartialDoubles = int64_t(1) << 23;
constexpr int64_t kMinTileRows = 64;
constexpr int kThreads = 128;

int blocks_for(int64_t n) { return static_cast<int>(std::min<int64_t>((n + kThreads - 1) / kThreads, 65535)); }

template <typename scalar_t>
__global__ void em_rows_kernel(scalar_t* __restrict__ s, const scalar_t* __restrict__ bias, double* __restrict__ lse,
                               int32_t* __restrict__ arg, int64_t n, int64_t k, bool hard) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    scalar_t* row = s + i * k;
    for (int64_t j = 0; j < k; ++j) row[j] += bias[j];  // in the scores' dtype, as the CPU kernel adds it
    int64_t at = 0;
    lse[i] = dhvc::kernels::vmfmm_row(row, k, 1, !hard, &at);
    if (hard) arg[i] = static_cast<int32_t>(at);
  }
}

// partial: (tiles, K, d + 1) doubles, column d the counts; rows [t tile_rows, (t + 1) tile_rows) of the chunk
// go to tile t. One thread per (tile, column); consecutive threads take consecutive columns of one tile, so
// that a warp reads a row's values and writes one component's accumulators contiguously.
template <typename scalar_t>
__global__ void hard_sums_kernel(const scalar_t* __restrict__ z, int64_t zs0, int64_t zs1,
                                 const int32_t* __restrict__ arg, double* __restrict__ partial, int64_t n, int64_t d,
                                 int64_t k, int64_t tiles, int64_t tile_rows) {
  const int64_t width = d + 1;
  for (int64_t g = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; g < tiles * width;
       g += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    const int64_t t = g / width, l = g % width;
    const int64_t begin = t * tile_rows, end = begin + tile_rows < n ? begin + tile_rows : n;
    double* p = partial + t * k * width + l;
    int32_t current = -1;
    double run = 0.0;
    for (int64_t i = begin; i < end; ++i) {
      const int32_t c = arg[i];
      if (c != current) {
        if (current >= 0) p[current * width] += run;
        current = c;
        run = 0.0;
      }
      run += l < d ? static_cast<double>(z[i * zs0 + l * zs1]) : 1.0;
    }
    if (current >= 0) p[current * width] += run;
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> vmfmm_em_statistics_cuda(const at::Tensor& z,
                                                                        const at::Tensor& weighted_mu,
                                                                        const at::Tensor& bias_in, bool hard) {
  check_vmfmm_em_inputs(z, weighted_mu, bias_in);
  const c10::cuda::CUDAGuard guard(z.device());
  // The products below are internal: no autograd or out= checks on them, no autocast, no TF32.
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  const FullPrecisionProducts products(z.scalar_type());
  const int64_t n = z.size(0), d = z.size(1), k = weighted_mu.size(0);
  const bool is_double = z.scalar_type() == at::kDouble;
  const auto f64 = z.options().dtype(at::kDouble);
  const at::Tensor bias = bias_in.contiguous();
  at::Tensor counts = at::zeros({k}, f64);
  at::Tensor sums = at::zeros({k, d}, f64);
  at::Tensor total = at::zeros({}, f64);
  const int64_t chunk = std::max<int64_t>(1, std::min(n, kMaxChunkScores / k));
  at::Tensor scores = at::empty({n > 0 ? chunk * k : 0}, z.options());
  at::Tensor lse = at::empty({n > 0 ? chunk : 0}, f64);
  // Hard: the argmax of each row of the chunk, and the tiles' accumulators.
  const int64_t width = d + 1;
  const int64_t tiles = std::max<int64_t>(
      1, std::min(kMaxPartialDoubles / (k * width), (chunk + kMinTileRows - 1) / kMinTileRows));
  at::Tensor arg = at::empty({hard && n > 0 ? chunk : 0}, z.options().dtype(at::kInt));
  at::Tensor partial = at::zeros({hard && n > 0 ? tiles : 0, k, width}, f64);
  const at::Tensor wt = weighted_mu.t();
  const int64_t batch_blocks = std::max<int64_t>(1, kMaxBatchValues / (k * d));
  auto stream = c10::cuda::getCurrentCUDAStream();
  for (int64_t c0 = 0; c0 < n; c0 += chunk) {
    const int64_t nc = std::min(chunk, n - c0);
    at::Tensor zc = z.narrow(0, c0, nc);
    at::Tensor sc = scores.narrow(0, 0, nc * k).view({nc, k});
    at::Tensor lc = lse.narrow(0, 0, nc);
    products.mm_out(sc, zc, wt);
    AT_DISPATCH_FLOATING_TYPES(sc.scalar_type(), "vmfmm_em_statistics_cuda", [&] {
      em_rows_kernel<scalar_t><<<blocks_for(nc), kThreads, 0, stream>>>(
          sc.data_ptr<scalar_t>(), bias.data_ptr<scalar_t>(), lc.data_ptr<double>(),
          hard ? arg.data_ptr<int32_t>() : nullptr, nc, k, hard);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      if (hard) {
        const int64_t tile_rows = (nc + tiles - 1) / tiles;
        hard_sums_kernel<scalar_t><<<blocks_for(tiles * width), kThreads, 0, stream>>>(
            zc.data_ptr<scalar_t>(), zc.stride(0), zc.stride(1), arg.data_ptr<int32_t>(), partial.data_ptr<double>(),
            nc, d, k, tiles, tile_rows);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }
    });
    if (!hard) {
      counts.add_(sc.sum(at::IntArrayRef(kRowDim), /*keepdim=*/false, at::kDouble));
      if (is_double) {
        sums.add_(products.mm(sc.t(), zc));
      } else {
        // Float32: no float32 sum over more than kSumRows rows (step 3).
        const int64_t full_blocks = nc / kSumRows;
        for (int64_t b0 = 0; b0 < full_blocks; b0 += batch_blocks) {
          const int64_t nb = std::min(batch_blocks, full_blocks - b0);
          const at::Tensor r = sc.narrow(0, b0 * kSumRows, nb * kSumRows).view({nb, kSumRows, k});
          const at::Tensor zb = zc.narrow(0, b0 * kSumRows, nb * kSumRows).view({nb, kSumRows, d});
          sums.add_(products.bmm(r.transpose(1, 2), zb).sum(at::IntArrayRef(kRowDim), false, at::kDouble));
        }
        const int64_t tail = nc - full_blocks * kSumRows;
        if (tail > 0) {
          sums.add_(products.mm(sc.narrow(0, nc - tail, tail).t(), zc.narrow(0, nc - tail, tail)));
        }
      }
    }
    total.add_(at::sum(lc));
  }
  if (hard && n > 0) {
    const at::Tensor tiles_summed = partial.sum(at::IntArrayRef(kRowDim));
    // Copies, so that the outputs alias neither each other nor the accumulators.
    counts = tiles_summed.select(1, d).clone(at::MemoryFormat::Contiguous);
    sums = tiles_summed.narrow(1, 0, d).clone(at::MemoryFormat::Contiguous);
  }
  return {counts.to(z.scalar_type()), sums.to(z.scalar_type()), total};
}

}  // namespace

TORCH_LIBRARY_IMPL(dhvc_ext, CUDA, m) { m.impl("_vmfmm_em_statistics", &vmfmm_em_statistics_cuda); }

}  // namespace dhvc_ext
