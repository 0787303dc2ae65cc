// CPU kernel of _row_log_softmax: for each row of scores (N, K), the max, the sum of exponentials and the
// log-softmax, in one pass over the row while it is in cache (the torch composite logsumexp + subtract reads
// the matrix three times). Rows are split across torch's threads with parallel_rows.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <tuple>

#include "parallel_rows.h"

namespace dhvc_ext {
namespace {

std::tuple<at::Tensor, at::Tensor> row_log_softmax_cpu(const at::Tensor& scores) {
  TORCH_CHECK(scores.dim() == 2, "_row_log_softmax: scores must be (N, K), got ", scores.sizes());
  TORCH_CHECK(scores.scalar_type() == at::kFloat || scores.scalar_type() == at::kDouble,
              "_row_log_softmax: expected float32 or float64 scores, got ", scores.scalar_type());
  at::Tensor out = scores.contiguous().clone();
  const int64_t n = out.size(0), k = out.size(1);
  at::Tensor lse = at::empty({n}, out.options());
  AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "row_log_softmax_cpu", [&] {
    scalar_t* s = out.data_ptr<scalar_t>();
    scalar_t* l = lse.data_ptr<scalar_t>();
    parallel_rows(n, std::max<int64_t>(1, 16384 / std::max<int64_t>(k, 1)), [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        scalar_t* row = s + i * k;
        double m = -std::numeric_limits<double>::infinity();
        for (int64_t j = 0; j < k; ++j) m = std::max(m, static_cast<double>(row[j]));
        double total = 0.0;
        if (std::isfinite(m)) {
          for (int64_t j = 0; j < k; ++j) total += std::exp(static_cast<double>(row[j]) - m);
        }
        // A row of -inf scores (every component impossible) has lse = -inf and NaN log-responsibilities,
        // as logsumexp would give; +inf or NaN scores propagate.
        const double norm = std::isfinite(m) ? m + std::log(total) : m;
        l[i] = static_cast<scalar_t>(norm);
        for (int64_t j = 0; j < k; ++j) row[j] = static_cast<scalar_t>(static_cast<double>(row[j]) - norm);
      }
    });
  });
  return {out, lse};
}

}  // namespace

TORCH_LIBRARY_IMPL(dhvc_ext, CPU, m) { m.impl("_row_log_softmax", &row_log_softmax_cpu); }

}  // namespace dhvc_ext
