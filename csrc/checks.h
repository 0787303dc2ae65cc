// Argument checks shared by the CPU and CUDA kernels. The Python wrappers in dhvc_ext/ops promote and
// move arguments before calling the ops, so these fire only when an op is called directly.
#pragma once

#include <ATen/ATen.h>

namespace dhvc_ext {

inline void check_binary_inputs(const char* op, const at::Tensor& nu, const at::Tensor& x) {
  TORCH_CHECK(nu.device() == x.device(), op, ": nu and x must be on the same device, got ", nu.device(),
              " and ", x.device());
  TORCH_CHECK(nu.scalar_type() == x.scalar_type(), op, ": nu and x must have the same dtype, got ",
              nu.scalar_type(), " and ", x.scalar_type());
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble, op,
              ": expected float32 or float64 inputs, got ", x.scalar_type());
}

inline void check_vmf_inputs(const char* op, const at::Tensor& kappa, int64_t d) {
  TORCH_CHECK(d >= 2, op, ": the dimension d must be >= 2, got ", d);
  TORCH_CHECK(kappa.scalar_type() == at::kFloat || kappa.scalar_type() == at::kDouble, op,
              ": expected a float32 or float64 kappa, got ", kappa.scalar_type());
}

inline void check_order(const char* op, int64_t order) {
  TORCH_CHECK(order == 1 || order == 2, op, ": order must be 1 or 2, got ", order);
}

}  // namespace dhvc_ext
