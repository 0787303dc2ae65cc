// CPU kernels of the Bessel ops: log_bessel_iv, bessel_iv_ratio, _bessel_iv_ratio_derivative,
// vmf_log_normalizer. TensorIterator does the broadcasting, the strides (non-contiguous and expanded
// inputs are read in place, never copied) and the split across at::parallel_for threads; each element
// runs the functor of dhvc/kernels/bessel_functors.h in double.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/TensorIterator.h>
#include <torch/library.h>

#include "../checks.h"
#include "dhvc/kernels/bessel_functors.h"

namespace dhvc_ext {
namespace {

// About 100 ns per element: a grain well below TensorIterator's default (32768) lets a few thousand
// elements already use every thread.
constexpr int64_t kGrainSize = 2048;

template <typename Functor>
at::Tensor binary_cpu(const at::Tensor& nu, const at::Tensor& x, Functor f) {
  auto iter = at::TensorIteratorConfig()
                  .add_owned_output(at::Tensor())
                  .add_const_input(nu)
                  .add_const_input(x)
                  .build();
  AT_DISPATCH_FLOATING_TYPES(iter.common_dtype(), "dhvc_ext_binary_cpu", [&] {
    iter.for_each(
        [&](char** data, const int64_t* strides, int64_t n0, int64_t n1) {
          for (int64_t j = 0; j < n1; ++j) {
            char* out = data[0] + j * strides[3];
            const char* a = data[1] + j * strides[4];
            const char* b = data[2] + j * strides[5];
            for (int64_t i = 0; i < n0; ++i) {
              const double v = f(static_cast<double>(*reinterpret_cast<const scalar_t*>(a + i * strides[1])),
                                 static_cast<double>(*reinterpret_cast<const scalar_t*>(b + i * strides[2])));
              *reinterpret_cast<scalar_t*>(out + i * strides[0]) = static_cast<scalar_t>(v);
            }
          }
        },
        kGrainSize);
  });
  return iter.output();
}

template <typename Functor>
at::Tensor unary_cpu(const at::Tensor& x, Functor f) {
  auto iter = at::TensorIteratorConfig().add_owned_output(at::Tensor()).add_const_input(x).build();
  AT_DISPATCH_FLOATING_TYPES(iter.common_dtype(), "dhvc_ext_unary_cpu", [&] {
    iter.for_each(
        [&](char** data, const int64_t* strides, int64_t n0, int64_t n1) {
          for (int64_t j = 0; j < n1; ++j) {
            char* out = data[0] + j * strides[2];
            const char* a = data[1] + j * strides[3];
            for (int64_t i = 0; i < n0; ++i) {
              const double v = f(static_cast<double>(*reinterpret_cast<const scalar_t*>(a + i * strides[1])));
              *reinterpret_cast<scalar_t*>(out + i * strides[0]) = static_cast<scalar_t>(v);
            }
          }
        },
        kGrainSize);
  });
  return iter.output();
}

at::Tensor log_bessel_iv_cpu(const at::Tensor& nu, const at::Tensor& x) {
  check_binary_inputs("log_bessel_iv", nu, x);
  return binary_cpu(nu, x, dhvc::kernels::LogBesselIv{});
}

at::Tensor log_bessel_iv_normalized_cpu(const at::Tensor& nu, const at::Tensor& x) {
  check_binary_inputs("log_bessel_iv_normalized", nu, x);
  return binary_cpu(nu, x, dhvc::kernels::LogBesselIvNormalized{});
}

at::Tensor bessel_iv_ratio_cpu(const at::Tensor& nu, const at::Tensor& x) {
  check_binary_inputs("bessel_iv_ratio", nu, x);
  return binary_cpu(nu, x, dhvc::kernels::BesselIvRatio{});
}

at::Tensor bessel_iv_ratio_derivative_cpu(const at::Tensor& nu, const at::Tensor& x, int64_t order) {
  check_binary_inputs("_bessel_iv_ratio_derivative", nu, x);
  check_order("_bessel_iv_ratio_derivative", order);
  return binary_cpu(nu, x, dhvc::kernels::BesselIvRatioDerivative{static_cast<int>(order)});
}

at::Tensor vmf_log_normalizer_cpu(const at::Tensor& kappa, int64_t d) {
  check_vmf_inputs("vmf_log_normalizer", kappa, d);
  return unary_cpu(kappa, dhvc::kernels::VmfLogNormalizer{static_cast<double>(d)});
}

at::Tensor vmf_kappa_mle_cpu(const at::Tensor& rbar, int64_t d) {
  check_vmf_inputs("vmf_kappa_mle", rbar, d);
  return unary_cpu(rbar, dhvc::kernels::VmfKappaMle{static_cast<double>(d)});
}

}  // namespace

TORCH_LIBRARY_IMPL(dhvc_ext, CPU, m) {
  m.impl("log_bessel_iv", &log_bessel_iv_cpu);
  m.impl("log_bessel_iv_normalized", &log_bessel_iv_normalized_cpu);
  m.impl("bessel_iv_ratio", &bessel_iv_ratio_cpu);
  m.impl("_bessel_iv_ratio_derivative", &bessel_iv_ratio_derivative_cpu);
  m.impl("vmf_log_normalizer", &vmf_log_normalizer_cpu);
  m.impl("vmf_kappa_mle", &vmf_kappa_mle_cpu);
}

}  // namespace dhvc_ext
