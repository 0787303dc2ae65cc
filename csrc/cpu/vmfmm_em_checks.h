// Argument checks of _vmfmm_em_statistics, shared by its CPU and CUDA kernels (csrc/cpu/vmfmm_em_cpu.cpp,
// csrc/cuda/vmfmm_em_cuda.cu). dhvc_ext/ops/vmfmm.py builds the arguments, so these fire only when the op
// is called directly.
#pragma once

#include <ATen/ATen.h>

namespace dhvc_ext {

// z (N, d), weighted_mu (K, d), bias (K,): one floating dtype (float32 or float64), one device, K >= 1.
inline void check_vmfmm_em_inputs(const at::Tensor& z, const at::Tensor& weighted_mu, const at::Tensor& bias) {
  TORCH_CHECK(z.dim() == 2 && weighted_mu.dim() == 2 && bias.dim() == 1,
              "_vmfmm_em_statistics: expected z (N, d), weighted_mu (K, d), bias (K,), got ", z.sizes(), ", ",
              weighted_mu.sizes(), ", ", bias.sizes());
  TORCH_CHECK(z.size(1) == weighted_mu.size(1) && bias.size(0) == weighted_mu.size(0),
              "_vmfmm_em_statistics: shapes do not match: z ", z.sizes(), ", weighted_mu ", weighted_mu.sizes(),
              ", bias ", bias.sizes());
  TORCH_CHECK(weighted_mu.size(0) >= 1 && weighted_mu.size(0) < (int64_t(1) << 31),
              "_vmfmm_em_statistics: expected 1 <= K < 2^31 components, got weighted_mu ", weighted_mu.sizes());
  TORCH_CHECK(z.scalar_type() == weighted_mu.scalar_type() && z.scalar_type() == bias.scalar_type() &&
                  (z.scalar_type() == at::kFloat || z.scalar_type() == at::kDouble),
              "_vmfmm_em_statistics: expected one dtype, float32 or float64, got ", z.scalar_type(), ", ",
              weighted_mu.scalar_type(), ", ", bias.scalar_type());
  TORCH_CHECK(z.device() == weighted_mu.device() && z.device() == bias.device(),
              "_vmfmm_em_statistics: arguments must be on one device, got ", z.device(), ", ",
              weighted_mu.device(), ", ", bias.device());
}

}  // namespace dhvc_ext
