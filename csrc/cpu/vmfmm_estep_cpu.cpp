// CPU kernel of _vmfmm_scores_log_softmax, the vMF-mixture E-step: log_resp = s - lse(s) (N, K) and
// lse (N,), with s = bias + z W^T (z (N, d), W = kappa mu (K, d), bias = log pi + log C_d(kappa) (K,)).
//
// Per block of rows (dhvc/kernels/vmfmm_block.h, the formulas in vmfmm_row.h):
//   1. P = W z_block^T, (K, block), by one small matrix product (BLAS): transposed, so that the loops of
//      step 2 run over the rows of the block and vectorise. Measured (1 thread, float32): the blocks' products
//      at (N, d, K) = (1e6, 10, 10) take a tenth of the time of one addmm giving the (N, K) matrix, and half
//      at (2e5, 64, 100) and (1e5, 512, 10) (an (N, K) output with small K is a poor shape for BLAS).
//   2. column by column: the scores, the row maxima m, t = sum_k exp(s - m) in double (the branch-free exp),
//      lse = m + log t (a branch-free log, t in [1, K]) and s - lse in the scores' dtype (computed in double);
//   3. the block of log-responsibilities copied, transposed, into the (N, K) output.
// A block with a NaN score or an infinite maximum is redone row by row (torch.logsumexp's semantics, see
// row_log_normalizer). Step 2 is compiled for AVX-512, AVX2+FMA and the baseline, picked at load time.
//
// DESIGN: rows are independent: threads take whole blocks (parallel_rows over block indices), each with its
// own scratch ((K, block) scores and 4 vectors of block values), so the result does not depend on the number
// of threads.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/core/LegacyTypeDispatch.h>
#include <ATen/ops/mm_cpu_dispatch.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <tuple>
#include <vector>

#include "../checks.h"
#include "dhvc/kernels/vmfmm_block.h"
#include "parallel_rows.h"

namespace dhvc_ext {
namespace {

using dhvc::kernels::Block;

// Rows per block: 1024 up to K = 16, fewer beyond (at most 2^14 scores, 64 KiB in float32). Measured (1 thread,
// float32) at (N, d, K) = (1e6, 10, 10) and (2e5, 64, 100): a quarter or half as many rows are 5-15% slower,
// twice or four times as many within the noise.
int64_t estep_block_rows(int64_t k) {
  return std::clamp<int64_t>((int64_t(1) << 14) / std::max<int64_t>(k, 16), 16, 1024);
}

// The log-normaliser of one row of k scores at stride `stride`, as torch.logsumexp gives it: NaN if a score
// is NaN; else with m the maximum, m + log sum_k exp(s_k - m) if m is finite, and m itself if it is +inf or
// every score is -inf (so that s - lse is NaN where s = m and -inf elsewhere, as in the composite).
template <typename T>
double row_log_normalizer(const T* s, int64_t k, int64_t stride) {
  T m = -std::numeric_limits<T>::infinity();
  for (int64_t j = 0; j < k; ++j) {
    const T v = s[j * stride];
    if (std::isnan(v)) return std::numeric_limits<double>::quiet_NaN();
    m = std::max(m, v);
  }
  if (!std::isfinite(m)) return static_cast<double>(m);
  double total = 0.0;
  for (int64_t j = 0; j < k; ++j) total += static_cast<double>(std::exp(s[j * stride] - m));
  return static_cast<double>(m) + std::log(total);
}

// Steps 2 and 3 for one block: lse (nb, double scratch) and the output rows out[i * K + j], lse_out[i].
template <typename T>
DHVC_ROW_INLINE void block_log_softmax(const Block<T>& b, double* lse, T* out, T* lse_out) {
  const int64_t nb = b.nb, k = b.k;
  if (dhvc::kernels::block_scores<T, false>(b)) {
    dhvc::kernels::block_exp_sums<T, false>(b);
    for (int64_t i = 0; i < nb; ++i) {
      lse[i] = static_cast<double>(b.m[i]) + dhvc::kernels::vmfmm_log_at_least_one(b.t[i]);
    }
  } else {
    for (int64_t i = 0; i < nb; ++i) lse[i] = row_log_normalizer(b.s + i, k, nb);
  }
  for (int64_t i = 0; i < nb; ++i) lse_out[i] = static_cast<T>(lse[i]);
  for (int64_t j = 0; j < k; ++j) {
    T* sj = b.s + j * nb;
    for (int64_t i = 0; i < nb; ++i) sj[i] = static_cast<T>(static_cast<double>(sj[i]) - lse[i]);
  }
  // The transposed copy, in tiles of 16 rows: a tile's K scores are read from K lines that stay in L1.
  constexpr int64_t kTile = 16;
  for (int64_t i0 = 0; i0 < nb; i0 += kTile) {
    const int64_t i1 = std::min(nb, i0 + kTile);
    for (int64_t i = i0; i < i1; ++i) {
      T* row = out + i * k;
      for (int64_t j = 0; j < k; ++j) row[j] = b.s[j * nb + i];
    }
  }
}

DHVC_CPU_CLONES void block_log_softmax_f32(const Block<float>& b, double* lse, float* out, float* lse_out) {
  block_log_softmax(b, lse, out, lse_out);
}

DHVC_CPU_CLONES void block_log_softmax_f64(const Block<double>& b, double* lse, double* out, double* lse_out) {
  block_log_softmax(b, lse, out, lse_out);
}

void block_log_softmax_any(const Block<float>& b, double* lse, float* out, float* lse_out) {
  block_log_softmax_f32(b, lse, out, lse_out);
}

void block_log_softmax_any(const Block<double>& b, double* lse, double* out, double* lse_out) {
  block_log_softmax_f64(b, lse, out, lse_out);
}

std::tuple<at::Tensor, at::Tensor> vmfmm_scores_log_softmax_cpu(const at::Tensor& z_in, const at::Tensor& weighted_mu,
                                                                const at::Tensor& bias_in) {
  check_vmfmm_inputs("_vmfmm_scores_log_softmax", z_in, weighted_mu, bias_in);
  // The block products below are internal: no autograd or out= checks on them.
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  const at::Tensor z = z_in.contiguous();
  const at::Tensor w = weighted_mu.contiguous();
  const at::Tensor bias = bias_in.contiguous();
  const int64_t n = z.size(0), k = w.size(0);
  at::Tensor log_resp = at::empty({n, k}, z.options());
  at::Tensor lse = at::empty({n}, z.options());
  if (n == 0 || k == 0) return {log_resp, lse};
  const int64_t block = std::min(estep_block_rows(k), n);
  const int64_t blocks = (n + block - 1) / block;
  AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "vmfmm_scores_log_softmax_cpu", [&] {
    const scalar_t* b = bias.data_ptr<scalar_t>();
    scalar_t* out = log_resp.data_ptr<scalar_t>();
    scalar_t* lse_out = lse.data_ptr<scalar_t>();
    parallel_rows(blocks, 1, [&](int64_t first, int64_t last) {
      at::Tensor scores = at::empty({k * block}, z.options());
      std::vector<scalar_t> m(block);
      std::vector<double> t(block), scratch(block);
      for (int64_t q = first; q < last; ++q) {
        const int64_t b0 = q * block, nb = std::min(block, n - b0);
        at::Tensor sb = scores.narrow(0, 0, k * nb).view({k, nb});
        at::cpu::mm_out(sb, w, z.narrow(0, b0, nb).t());
        const Block<scalar_t> blk{sb.data_ptr<scalar_t>(), b, nb, k, m.data(), t.data(), nullptr, nullptr};
        block_log_softmax_any(blk, scratch.data(), out + b0 * k, lse_out + b0);
      }
    });
  });
  return {log_resp, lse};
}

}  // namespace

TORCH_LIBRARY_IMPL(dhvc_ext, CPU, m) { m.impl("_vmfmm_scores_log_softmax", &vmfmm_scores_log_softmax_cpu); }

}  // namespace dhvc_ext
