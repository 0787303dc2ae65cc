// The element-wise functions behind the Bessel ops, as functors so that the CPU loop and the CUDA kernel
// instantiate the same code (a device lambda would need nvcc's --extended-lambda). Every functor works
// in double: float32 inputs are widened, computed and rounded once on output, which is what makes the
// float32 results correctly rounded to within an ulp or two.
#pragma once

#include "dhvc/macros.h"
#include "dhvc/math/bessel.h"
#include "dhvc/math/vmf.h"

namespace dhvc {
namespace kernels {

struct LogBesselIv {
  DHVC_HOST_DEVICE double operator()(double nu, double x) const { return math::log_bessel_iv(nu, x); }
};

// log H_nu(x) = log 0F1(; nu + 1; x^2 / 4) = log I_nu(x) - nu log(x / 2) + lgamma(nu + 1).
struct LogBesselIvNormalized {
  DHVC_HOST_DEVICE double operator()(double nu, double x) const { return math::log_bessel_h(nu, x); }
};

struct BesselIvRatio {
  DHVC_HOST_DEVICE double operator()(double nu, double x) const { return math::bessel_iv_ratio(nu, x); }
};

// order 1 or 2: the first or second derivative of the ratio with respect to x.
struct BesselIvRatioDerivative {
  int order;
  DHVC_HOST_DEVICE double operator()(double nu, double x) const {
    return order == 1 ? math::bessel_iv_ratio_dx(nu, x) : math::bessel_iv_ratio_dx2(nu, x);
  }
};

// Unary in kappa; d is the same for every element.
struct VmfLogNormalizer {
  double d;
  DHVC_HOST_DEVICE double operator()(double kappa) const { return math::vmf_log_normalizer(d, kappa); }
};

// Unary in rbar: the inverse of the mean resultant length.
struct VmfKappaMle {
  double d;
  DHVC_HOST_DEVICE double operator()(double rbar) const { return math::vmf_kappa_mle(d, rbar); }
};

}  // namespace kernels
}  // namespace dhvc
