// CPU kernel of _vmfmm_em_statistics: the vMF-mixture E-step and the M-step sums in one pass over z.
//
// Per block of rows (dhvc/kernels/vmfmm_row.h has the formulas):
//   1. the products P = W z_block^T, (K, block), by one small matrix product (BLAS; for d <= 12 and K <= 32 the
//      vectorised small products of dhvc/kernels/vmfmm_block.h on the block's rows transposed, see
//      kSmallMaxD): transposed, so that every loop of step 2 runs over the rows of the block and vectorises;
//   2. in place, column by column: the scores s = P + bias, the row maxima m (and argmaxima when hard), one
//      exponential per score (a branch-free polynomial exp, as libm's does not vectorise), t = sum_k e in
//      double, (soft) r = e / t with N_k += sum_n r_nk, and the block's log-likelihood sum_n m_n + log t_n;
//   3. soft: S_k += r_block z_block by a second small product, BLAS or ours (in float32 one block of rows is
//      summed in float32, the blocks in double); hard: N_k += 1 and S_k += z_n at the argmax, in double.
// Measured (1 thread; K = d = 10 and K = 100, d = 64): the second product beats K axpys per row into double
// accumulators by 25-75%; the whole is 3.2-4.7x the torch composite (matmul, logsumexp, exp, r^T z) and
// 2.3-3.2x the fused E-step op followed by exp and r^T z (benchmarks/results/vmfmm_cpu_2026-11-28.md).
// Step 2 and the small products are compiled for AVX-512, AVX2+FMA and the baseline, picked by the CPU at load
// time. A block with a NaN score or an infinite maximum is redone row by row by vmfmm_row (torch's NaN and inf
// semantics).
//
// DESIGN: the rows are cut into S contiguous ranges ("slots"); S depends on N, K and d only (at most 64, slots
// of at least kMinSlotRows rows, at most kMaxAccumulatorBytes of accumulators), never on the number of
// threads. Each slot has its own double accumulators (N_k, S_k, loglik) and is processed by one thread,
// block by block in row order; threads take whole slots (parallel_rows over slot indices), and the slots
// are summed in index order at the end. So the result is the same, bit for bit, whatever the number of
// threads (the block products run single-threaded inside the parallel region). Memory: S (K d + K + 1)
// doubles, and per thread a (K, block) score buffer, a (K, d) block product or the (d, block) transposed
// rows, and 4 vectors of block values: independent of N. Parallelism is at most S: N >= 64 kMinSlotRows rows
// use up to 64 threads.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/core/LegacyTypeDispatch.h>
#include <ATen/ops/addmm_cpu_dispatch.h>
#include <ATen/ops/mm_cpu_dispatch.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <tuple>
#include <type_traits>
#include <vector>

#include "dhvc/kernels/vmfmm_block.h"
#include "dhvc/kernels/vmfmm_row.h"
#include "parallel_rows.h"
#include "../checks.h"

namespace dhvc_ext {
namespace {

using dhvc::kernels::Block;
using dhvc::kernels::block_scores;
template <typename T>
using Index = dhvc::kernels::BlockIndex<T>;

constexpr int64_t kMaxSlots = 64;
constexpr int64_t kMinSlotRows = 4096;
constexpr int64_t kMaxAccumulatorBytes = int64_t(64) << 20;
constexpr int64_t kLanes = 8;  // independent partial sums, so that the sums over rows vectorise

// Rows per block: the (K, block) score buffer holds at most 2^18 values (1 or 2 MiB). Measured at K = 10 and
// 100: 1024 rows are 3-10% slower than 2048, 4096 no faster.
int64_t block_rows(int64_t k) { return std::clamp<int64_t>((int64_t(1) << 18) / k, 16, 2048); }

// The small products replace BLAS for d <= 12 and K <= 32 (measured, 1 thread, per 2048 rows, float64: 28 us
// against 41 at d = K = 10, 6 against 12 at d = 3, K = 4, 48 against 85 at d = 8, K = 32; at d = K = 16 BLAS
// is faster), on blocks of 1504 rows (a multiple of 32, and not of 512: rows of 2048 values, 16 KiB apart in
// float64, share cache sets and made the transposition 2-3x slower).
constexpr int64_t kSmallMaxD = 12, kSmallMaxK = 32, kSmallBlockRows = 1504;

int64_t slot_count(int64_t n, int64_t k, int64_t d) {
  if (n == 0) return 0;
  const int64_t slot_bytes = (k * d + k + 1) * static_cast<int64_t>(sizeof(double));
  const int64_t by_rows = (n + kMinSlotRows - 1) / kMinSlotRows;
  const int64_t by_memory = std::max<int64_t>(1, kMaxAccumulatorBytes / slot_bytes);
  return std::min({kMaxSlots, by_rows, by_memory});
}

// e = exp(s - m) (in place when soft), t = sum_k e in double, and (soft) r = e / t in place with the counts
// N_k += sum_n r_nk. Returns the block's log-likelihood sum_n (m_n + log t_n): the m_n summed in lanes, the
// log t_n as the logarithm of their product, taken whenever the product passes 2^900 (t <= K).
template <typename T, bool Hard>
DHVC_ROW_INLINE double block_responsibilities(const Block<T>& b, double* counts) {
  const int64_t nb = b.nb, k = b.k;
  dhvc::kernels::block_exp_sums<T, !Hard>(b);
  const int64_t full = nb - nb % kLanes;
  if (!Hard) {
    for (int64_t i = 0; i < nb; ++i) b.inv[i] = 1.0 / b.t[i];
    for (int64_t j = 0; j < k; ++j) {
      T* sj = b.s + j * nb;
      double lanes[kLanes] = {};
      for (int64_t i0 = 0; i0 < full; i0 += kLanes) {
        for (int64_t l = 0; l < kLanes; ++l) {
          const T r = static_cast<T>(static_cast<double>(sj[i0 + l]) * b.inv[i0 + l]);
          sj[i0 + l] = r;
          lanes[l] += static_cast<double>(r);
        }
      }
      double total = 0.0;
      for (int64_t i = full; i < nb; ++i) {
        const T r = static_cast<T>(static_cast<double>(sj[i]) * b.inv[i]);
        sj[i] = r;
        total += static_cast<double>(r);
      }
      for (int64_t l = 0; l < kLanes; ++l) total += lanes[l];
      counts[j] += total;
    }
  }
  double lanes[kLanes] = {};
  for (int64_t i0 = 0; i0 < full; i0 += kLanes) {
    for (int64_t l = 0; l < kLanes; ++l) lanes[l] += static_cast<double>(b.m[i0 + l]);
  }
  double loglik = 0.0;
  for (int64_t i = full; i < nb; ++i) loglik += static_cast<double>(b.m[i]);
  for (int64_t l = 0; l < kLanes; ++l) loglik += lanes[l];
  double product = 1.0;
  for (int64_t i = 0; i < nb; ++i) {
    product *= b.t[i];
    if (product > 0x1p900) {
      loglik += std::log(product);
      product = 1.0;
    }
  }
  return loglik + std::log(product);
}

// Hard: N_k += 1 and S_k += z_n at the argmax k of each row.
template <typename T>
DHVC_ROW_INLINE void block_axpy_hard(const Index<T>* arg, int64_t nb, const T* z, int64_t zs, int64_t d,
                                     double* counts, double* sums) {
  for (int64_t i = 0; i < nb; ++i) {
    const T* zn = z + i * zs;
    counts[arg[i]] += 1.0;
    double* sj = sums + arg[i] * d;
    for (int64_t l = 0; l < d; ++l) sj[l] += static_cast<double>(zn[l]);
  }
}

// The row pass of one block (everything but the matrix products), in the multiversioned functions: returns
// the block's log-likelihood; adds to counts, and to sums when hard.
template <typename T, bool Hard>
DHVC_ROW_INLINE double block_pass(const Block<T>& b, const T* z, int64_t zs, int64_t d, double* counts,
                                  double* sums) {
  double loglik = 0.0;
  if (block_scores<T, Hard>(b)) {
    loglik = block_responsibilities<T, Hard>(b, counts);
  } else {
    for (int64_t i = 0; i < b.nb; ++i) {
      int64_t at = 0;
      loglik += dhvc::kernels::vmfmm_row(b.s + i, b.k, b.nb, !Hard, &at);
      b.arg[i] = static_cast<Index<T>>(at);
    }
    if (!Hard) {
      for (int64_t j = 0; j < b.k; ++j) {
        for (int64_t i = 0; i < b.nb; ++i) counts[j] += static_cast<double>(b.s[j * b.nb + i]);
      }
    }
  }
  if (Hard) block_axpy_hard(b.arg, b.nb, z, zs, d, counts, sums);
  return loglik;
}

DHVC_CPU_CLONES double block_pass_f32(const Block<float>& b, bool hard, const float* z, int64_t zs, int64_t d,
                                      double* counts, double* sums) {
  return hard ? block_pass<float, true>(b, z, zs, d, counts, sums)
              : block_pass<float, false>(b, z, zs, d, counts, sums);
}

DHVC_CPU_CLONES double block_pass_f64(const Block<double>& b, bool hard, const double* z, int64_t zs, int64_t d,
                                      double* counts, double* sums) {
  return hard ? block_pass<double, true>(b, z, zs, d, counts, sums)
              : block_pass<double, false>(b, z, zs, d, counts, sums);
}

double block_pass_any(const Block<float>& b, bool hard, const float* z, int64_t zs, int64_t d, double* counts,
                      double* sums) {
  return block_pass_f32(b, hard, z, zs, d, counts, sums);
}

double block_pass_any(const Block<double>& b, bool hard, const double* z, int64_t zs, int64_t d,
                      double* counts, double* sums) {
  return block_pass_f64(b, hard, z, zs, d, counts, sums);
}

// The small products (dhvc/kernels/vmfmm_block.h), in multiversioned functions: the block's rows transposed
// into zt and the products into s; then (soft) sums += r zt^T.
template <typename T>
DHVC_ROW_INLINE void small_scores(const T* z, int64_t zs, int64_t nb, int64_t d, int64_t k, const T* w, T* zt, T* s) {
  dhvc::kernels::block_transpose(z, zs, nb, d, zt);
  dhvc::kernels::block_product_scores(w, zt, nb, d, k, s);
}

DHVC_CPU_CLONES void small_scores_f32(const float* z, int64_t zs, int64_t nb, int64_t d, int64_t k, const float* w,
                                      float* zt, float* s) {
  small_scores(z, zs, nb, d, k, w, zt, s);
}

DHVC_CPU_CLONES void small_scores_f64(const double* z, int64_t zs, int64_t nb, int64_t d, int64_t k, const double* w,
                                      double* zt, double* s) {
  small_scores(z, zs, nb, d, k, w, zt, s);
}

DHVC_CPU_CLONES void small_sums_f32(const float* r, const float* zt, int64_t nb, int64_t d, int64_t k, double* sums) {
  dhvc::kernels::block_product_sums(r, zt, nb, d, k, sums);
}

DHVC_CPU_CLONES void small_sums_f64(const double* r, const double* zt, int64_t nb, int64_t d, int64_t k,
                                    double* sums) {
  dhvc::kernels::block_product_sums(r, zt, nb, d, k, sums);
}

void small_scores_any(const float* z, int64_t zs, int64_t nb, int64_t d, int64_t k, const float* w, float* zt,
                      float* s) {
  small_scores_f32(z, zs, nb, d, k, w, zt, s);
}

void small_scores_any(const double* z, int64_t zs, int64_t nb, int64_t d, int64_t k, const double* w, double* zt,
                      double* s) {
  small_scores_f64(z, zs, nb, d, k, w, zt, s);
}

void small_sums_any(const float* r, const float* zt, int64_t nb, int64_t d, int64_t k, double* sums) {
  small_sums_f32(r, zt, nb, d, k, sums);
}

void small_sums_any(const double* r, const double* zt, int64_t nb, int64_t d, int64_t k, double* sums) {
  small_sums_f64(r, zt, nb, d, k, sums);
}

// Per-thread scratch: the (K, block) scores, the per-row m, t, 1/t, argmax, the (K, d) block product (BLAS,
// float32) or the (d, block) transposed rows (small products).
template <typename T>
struct Scratch {
  at::Tensor scores, part;
  std::vector<T> m, zt;
  std::vector<double> t, inv;
  std::vector<Index<T>> arg;
};

// Accumulates rows [begin, end) into acc = [N_k (K) | S_k (K d, row-major) | loglik] (double).
template <typename T>
void accumulate_rows(const at::Tensor& z, const at::Tensor& w, const T* bias, int64_t begin, int64_t end,
                     int64_t block, bool hard, Scratch<T>& scratch, at::Tensor& acc) {
  const int64_t k = w.size(0), d = w.size(1);
  double* counts = acc.data_ptr<double>();
  double* sums = counts + k;
  at::Tensor sums_t = acc.narrow(0, k, k * d).view({k, d});
  const int64_t zs = z.stride(0);
  double loglik = 0.0;
  for (int64_t b0 = begin; b0 < end; b0 += block) {
    const int64_t nb = std::min(block, end - b0);
    at::Tensor zb = z.narrow(0, b0, nb);
    at::Tensor sb = scratch.scores.narrow(0, 0, k * nb).view({k, nb});
    const bool small = !scratch.zt.empty();
    if (small) {
      small_scores_any(zb.data_ptr<T>(), zs, nb, d, k, w.data_ptr<T>(), scratch.zt.data(), sb.data_ptr<T>());
    } else {
      at::cpu::mm_out(sb, w, zb.t());
    }
    const Block<T> b{sb.data_ptr<T>(), bias, nb, k, scratch.m.data(), scratch.t.data(), scratch.inv.data(),
                     scratch.arg.data()};
    loglik += block_pass_any(b, hard, zb.data_ptr<T>(), zs, d, counts, sums);
    if (!hard && small) {
      small_sums_any(sb.data_ptr<T>(), scratch.zt.data(), nb, d, k, sums);
    } else if (!hard) {
      if constexpr (std::is_same_v<T, double>) {
        at::cpu::addmm_out(sums_t, sums_t, sb, zb);
      } else {
        at::cpu::mm_out(scratch.part, sb, zb);
        const T* p = scratch.part.template data_ptr<T>();
        for (int64_t l = 0; l < k * d; ++l) sums[l] += static_cast<double>(p[l]);
      }
    }
  }
  counts[k + k * d] += loglik;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> vmfmm_em_statistics_cpu(const at::Tensor& z_in,
                                                                       const at::Tensor& weighted_mu,
                                                                       const at::Tensor& bias_in, bool hard) {
  check_vmfmm_em_inputs(z_in, weighted_mu, bias_in);
  // The block products below are internal: no autograd or out= checks on them.
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  const int64_t n = z_in.size(0), d = z_in.size(1), k = weighted_mu.size(0);
  // Any row stride is used as it is; the rows themselves must be contiguous.
  const at::Tensor z = (n > 0 && d > 1 && z_in.stride(1) != 1) ? z_in.contiguous() : z_in;
  const at::Tensor w = weighted_mu.contiguous();
  const at::Tensor bias = bias_in.contiguous();
  const int64_t slots = slot_count(n, k, d);
  const int64_t slot_rows = slots > 0 ? (n + slots - 1) / slots : 0;
  const int64_t width = k + k * d + 1;
  const bool small = d <= kSmallMaxD && k <= kSmallMaxK;
  const auto f64 = z.options().dtype(at::kDouble);
  at::Tensor acc = at::zeros({std::max<int64_t>(slots, 1), width}, f64);
  AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "vmfmm_em_statistics_cpu", [&] {
    const scalar_t* b = bias.data_ptr<scalar_t>();
    parallel_rows(slots, 1, [&](int64_t first, int64_t last) {
      const int64_t block = std::min(small ? kSmallBlockRows : block_rows(k), slot_rows);
      Scratch<scalar_t> scratch;
      scratch.scores = at::empty({k * block}, z.options());
      if (small) {
        scratch.zt.resize(d * block);
      } else if (!hard && !std::is_same_v<scalar_t, double>) {
        scratch.part = at::empty({k, d}, z.options());
      }
      scratch.m.resize(block);
      scratch.t.resize(block);
      scratch.inv.resize(block);
      scratch.arg.resize(block);
      for (int64_t s = first; s < last; ++s) {
        at::Tensor slot_acc = acc.select(0, s);
        accumulate_rows<scalar_t>(z, w, b, s * slot_rows, std::min(n, (s + 1) * slot_rows), block, hard, scratch,
                                  slot_acc);
      }
    });
  });
  // The slots in index order, so that the sum does not depend on how they were spread over threads.
  at::Tensor total = at::zeros({width}, f64);
  double* t = total.data_ptr<double>();
  const double* a = acc.data_ptr<double>();
  for (int64_t s = 0; s < slots; ++s) {
    for (int64_t i = 0; i < width; ++i) t[i] += a[s * width + i];
  }
  // Fresh outputs (copies), so that they alias neither each other nor the accumulators.
  at::Tensor counts = at::empty({k}, z.options()).copy_(total.narrow(0, 0, k));
  at::Tensor sums = at::empty({k, d}, z.options()).copy_(total.narrow(0, k, k * d).view({k, d}));
  return {counts, sums, total.select(0, width - 1).clone()};
}

}  // namespace

TORCH_LIBRARY_IMPL(dhvc_ext, CPU, m) { m.impl("_vmfmm_em_statistics", &vmfmm_em_statistics_cpu); }

}  // namespace dhvc_ext
