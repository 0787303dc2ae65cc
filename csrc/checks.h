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

// loc (N..., d) and concentration (N...) of one floating dtype on one device, d >= 2; seed: 2 int64 values.
inline void check_vmf_sample_inputs(const at::Tensor& loc, const at::Tensor& concentration, const at::Tensor& seed) {
  TORCH_CHECK(loc.dim() >= 1 && loc.size(-1) >= 2, "vmf_sample: loc must have a last dimension d >= 2, got shape ",
              loc.sizes());
  TORCH_CHECK(loc.scalar_type() == at::kFloat || loc.scalar_type() == at::kDouble,
              "vmf_sample: expected a float32 or float64 loc, got ", loc.scalar_type());
  TORCH_CHECK(concentration.scalar_type() == loc.scalar_type(), "vmf_sample: concentration must have loc's dtype ",
              loc.scalar_type(), ", got ", concentration.scalar_type());
  TORCH_CHECK(concentration.device() == loc.device(), "vmf_sample: concentration and loc must be on one device");
  TORCH_CHECK(concentration.sizes() == loc.sizes().slice(0, loc.dim() - 1),
              "vmf_sample: concentration must have loc's batch shape ", loc.sizes().slice(0, loc.dim() - 1),
              ", got ", concentration.sizes());
  TORCH_CHECK(seed.scalar_type() == at::kLong && seed.numel() == 2, "vmf_sample: seed must hold 2 int64 values");
}

inline void check_vmf_sample_backward_inputs(const at::Tensor& grad, const at::Tensor& samples,
                                             const at::Tensor& one_minus_w, const at::Tensor& loc,
                                             const at::Tensor& concentration) {
  // The kernels read every tensor through raw pointers on loc's device: a tensor elsewhere would be a host
  // pointer read on the GPU (or the reverse).
  TORCH_CHECK(grad.device() == loc.device() && samples.device() == loc.device() &&
                  one_minus_w.device() == loc.device() && concentration.device() == loc.device(),
              "_vmf_sample_backward: grad, samples, one_minus_w, loc and concentration must be on one device, got ",
              grad.device(), ", ", samples.device(), ", ", one_minus_w.device(), ", ", loc.device(), ", ",
              concentration.device());
  TORCH_CHECK(grad.sizes() == samples.sizes() && samples.sizes() == loc.sizes(),
              "_vmf_sample_backward: grad, samples and loc must have one shape");
  TORCH_CHECK(grad.scalar_type() == loc.scalar_type() && samples.scalar_type() == loc.scalar_type(),
              "_vmf_sample_backward: grad, samples and loc must have one dtype");
  TORCH_CHECK(one_minus_w.scalar_type() == at::kDouble && one_minus_w.sizes() == concentration.sizes(),
              "_vmf_sample_backward: one_minus_w must be float64 of concentration's shape");
  TORCH_CHECK(concentration.sizes() == loc.sizes().slice(0, loc.dim() - 1),
              "_vmf_sample_backward: concentration must have loc's batch shape");
}

// The arguments of the vMF-mixture ops (_vmfmm_scores_log_softmax, _vmfmm_em_statistics), built by
// dhvc_ext/ops/vmfmm.py: z (N, d), weighted_mu (K, d), bias (K,), one dtype, float32 or float64, one device. ``op`` names
// the op in the messages.
inline void check_vmfmm_inputs(const char* op, const at::Tensor& z, const at::Tensor& weighted_mu,
                               const at::Tensor& bias) {
  TORCH_CHECK(z.dim() == 2 && weighted_mu.dim() == 2 && bias.dim() == 1, op,
              ": expected z (N, d), weighted_mu (K, d), bias (K,), got ", z.sizes(), ", ", weighted_mu.sizes(), ", ",
              bias.sizes());
  TORCH_CHECK(z.size(1) == weighted_mu.size(1) && bias.size(0) == weighted_mu.size(0), op,
              ": shapes do not match: z ", z.sizes(), ", weighted_mu ", weighted_mu.sizes(), ", bias ", bias.sizes());
  TORCH_CHECK(z.scalar_type() == weighted_mu.scalar_type() && z.scalar_type() == bias.scalar_type() &&
                  (z.scalar_type() == at::kFloat || z.scalar_type() == at::kDouble),
              op, ": expected one dtype, float32 or float64, got ", z.scalar_type(), ", ", weighted_mu.scalar_type(),
              ", ", bias.scalar_type());
  TORCH_CHECK(z.device() == weighted_mu.device() && z.device() == bias.device(), op,
              ": arguments must be on one device, got ", z.device(), ", ", weighted_mu.device(), ", ", bias.device());
}

// _vmfmm_em_statistics also needs 1 <= K < 2^31 (its per-row argmax is an int).
inline void check_vmfmm_em_inputs(const at::Tensor& z, const at::Tensor& weighted_mu, const at::Tensor& bias) {
  check_vmfmm_inputs("_vmfmm_em_statistics", z, weighted_mu, bias);
  TORCH_CHECK(weighted_mu.size(0) >= 1 && weighted_mu.size(0) < (int64_t(1) << 31),
              "_vmfmm_em_statistics: expected 1 <= K < 2^31 components, got weighted_mu ", weighted_mu.sizes());
}

}  // namespace dhvc_ext
