// CPU kernel of _vmfmm_scores_log_softmax, the vMF-mixture E-step: scores = bias + z W^T by one matrix
// product (BLAS), then, for each row while it is in cache, the max, the sum of exponentials and the
// log-softmax, written in place into the scores the product just produced (the torch composite
// logsumexp + subtract reads the N x K matrix three times and allocates twice more). Rows are split across
// torch's threads with parallel_rows; the exponentials run in the scores' dtype and are summed in double.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <tuple>

#include "../checks.h"
#include "parallel_rows.h"

namespace dhvc_ext {
namespace {

std::tuple<at::Tensor, at::Tensor> vmfmm_scores_log_softmax_cpu(const at::Tensor& z, const at::Tensor& weighted_mu,
                                                                const at::Tensor& bias) {
  check_vmfmm_inputs("_vmfmm_scores_log_softmax", z, weighted_mu, bias);
  at::Tensor scores = at::addmm(bias, z, weighted_mu.t()).contiguous();
  const int64_t n = scores.size(0), k = scores.size(1);
  at::Tensor lse = at::empty({n}, scores.options());
  AT_DISPATCH_FLOATING_TYPES(scores.scalar_type(), "vmfmm_scores_log_softmax_cpu", [&] {
    scalar_t* s = scores.data_ptr<scalar_t>();
    scalar_t* l = lse.data_ptr<scalar_t>();
    parallel_rows(n, std::max<int64_t>(1, 16384 / std::max<int64_t>(k, 1)), [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        scalar_t* row = s + i * k;
        scalar_t m = -std::numeric_limits<scalar_t>::infinity();
        for (int64_t j = 0; j < k; ++j) m = std::max(m, row[j]);
        double total = 0.0;
        const bool finite = std::isfinite(m);
        if (finite) {
          for (int64_t j = 0; j < k; ++j) total += static_cast<double>(std::exp(row[j] - m));
        }
        // A row of -inf scores (every component impossible) has lse = -inf and NaN log-responsibilities,
        // as logsumexp would give; +inf or NaN scores propagate.
        const double norm = finite ? static_cast<double>(m) + std::log(total) : static_cast<double>(m);
        l[i] = static_cast<scalar_t>(norm);
        for (int64_t j = 0; j < k; ++j) row[j] = static_cast<scalar_t>(static_cast<double>(row[j]) - norm);
      }
    });
  });
  return {scores, lse};
}

}  // namespace

TORCH_LIBRARY_IMPL(dhvc_ext, CPU, m) { m.impl("_vmfmm_scores_log_softmax", &vmfmm_scores_log_softmax_cpu); }

}  // namespace dhvc_ext
