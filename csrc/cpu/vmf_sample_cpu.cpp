// CPU kernels of vmf_sample and its backward. One sample per loop iteration, split across torch's threads
// with parallel_rows; each sample draws from its own Philox stream (subsequence = its row index), so the
// result does not depend on the number of threads.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>

#include "../checks.h"
#include "parallel_rows.h"
#include "dhvc/math/bessel.h"
#include "dhvc/random/philox.h"
#include "dhvc/random/ziggurat.h"
#include "dhvc/sampling/vmf_wood.h"

namespace dhvc_ext {
namespace {

// Samples per task: enough normals per task (about 4096) that scheduling is negligible.
int64_t grain_for(int64_t d) { return std::max<int64_t>(1, 4096 / std::max<int64_t>(d, 1)); }

std::tuple<at::Tensor, at::Tensor> vmf_sample_cpu(const at::Tensor& loc, const at::Tensor& concentration,
                                                  const at::Tensor& seed) {
  check_vmf_sample_inputs(loc, concentration, seed);
  const at::Tensor mu = loc.contiguous();
  const at::Tensor kappa = concentration.contiguous();
  const int64_t d = mu.size(-1);
  const int64_t n = kappa.numel();
  at::Tensor out = at::empty_like(mu, at::MemoryFormat::Contiguous);
  at::Tensor one_minus_w = at::empty(kappa.sizes(), mu.options().dtype(at::kDouble));
  const at::Tensor seed_cpu = seed.to(at::kCPU);
  const uint64_t key = static_cast<uint64_t>(seed_cpu.data_ptr<int64_t>()[0]);
  const uint64_t offset = static_cast<uint64_t>(seed_cpu.data_ptr<int64_t>()[1]);
  double* t_ptr = one_minus_w.data_ptr<double>();
  AT_DISPATCH_FLOATING_TYPES(mu.scalar_type(), "vmf_sample_cpu", [&] {
    const scalar_t* mu_ptr = mu.data_ptr<scalar_t>();
    const scalar_t* kappa_ptr = kappa.data_ptr<scalar_t>();
    scalar_t* out_ptr = out.data_ptr<scalar_t>();
    parallel_rows(n, grain_for(d), [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        dhvc::random::PhiloxZigguratStream rng(key, offset, static_cast<uint64_t>(i));
        t_ptr[i] = dhvc::sampling::sample_vmf(rng, mu_ptr + i * d, 1, d, static_cast<double>(kappa_ptr[i]),
                                              out_ptr + i * d);
      }
    });
  });
  return {out, one_minus_w};
}

std::tuple<at::Tensor, at::Tensor> vmf_sample_backward_cpu(const at::Tensor& grad, const at::Tensor& samples,
                                                           const at::Tensor& one_minus_w, const at::Tensor& loc,
                                                           const at::Tensor& concentration, bool need_loc,
                                                           bool need_kappa) {
  check_vmf_sample_backward_inputs(grad, samples, one_minus_w, loc, concentration);
  const at::Tensor g = grad.contiguous(), z = samples.contiguous(), mu = loc.contiguous();
  const at::Tensor kappa = concentration.contiguous(), t = one_minus_w.contiguous();
  const int64_t d = mu.size(-1);
  const int64_t n = kappa.numel();
  at::Tensor grad_loc = at::zeros_like(mu, at::MemoryFormat::Contiguous);
  at::Tensor grad_kappa = at::zeros_like(kappa, at::MemoryFormat::Contiguous);
  if (!need_loc && !need_kappa) return {grad_loc, grad_kappa};
  const double nu = 0.5 * static_cast<double>(d) - 1.0;
  AT_DISPATCH_FLOATING_TYPES(mu.scalar_type(), "vmf_sample_backward_cpu", [&] {
    const scalar_t *g_ptr = g.data_ptr<scalar_t>(), *z_ptr = z.data_ptr<scalar_t>(), *mu_ptr = mu.data_ptr<scalar_t>();
    const scalar_t* kappa_ptr = kappa.data_ptr<scalar_t>();
    const double* t_ptr = t.data_ptr<double>();
    scalar_t* gl_ptr = grad_loc.data_ptr<scalar_t>();
    scalar_t* gk_ptr = grad_kappa.data_ptr<scalar_t>();
    // The kappa gradient costs a quadrature (~100 transcendental calls) per sample: small grains.
    parallel_rows(n, 16, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const double k = static_cast<double>(kappa_ptr[i]);
        const double one_minus_a = need_kappa ? dhvc::math::bessel_iv_ratio_complement(nu, k) : 0.0;
        const double gk = dhvc::sampling::vmf_sample_backward(g_ptr + i * d, z_ptr + i * d, mu_ptr + i * d, d, k,
                                                              need_kappa ? t_ptr[i] : 0.0, one_minus_a,
                                                              need_loc ? gl_ptr + i * d : nullptr);
        gk_ptr[i] = static_cast<scalar_t>(gk);
      }
    });
  });
  return {grad_loc, grad_kappa};
}

}  // namespace

TORCH_LIBRARY_IMPL(dhvc_ext, CPU, m) {
  m.impl("vmf_sample", &vmf_sample_cpu);
  m.impl("_vmf_sample_backward", &vmf_sample_backward_cpu);
}

}  // namespace dhvc_ext
